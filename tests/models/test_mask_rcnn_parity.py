"""The model against torchvision's Mask R-CNN with the same (converted) random weights.

A ResNet-18 FPN Mask R-CNN at 128 px, eval mode: FPN features, RPN outputs, proposals,
detections and 28x28 masks agree. Runs only where torch and torchvision import (see
tests/conftest.py, TORCH_SITE).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from configs import default  # pylint: disable=g-import-not-at-top
from flax import traverse_util  # pylint: disable=g-import-not-at-top
from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top

from torchvision.models.detection import backbone_utils  # pylint: disable=g-import-not-at-top
from torchvision.models.detection import faster_rcnn  # pylint: disable=g-import-not-at-top
from torchvision.models.detection import mask_rcnn  # pylint: disable=g-import-not-at-top
from torchvision.models.detection import anchor_utils  # pylint: disable=g-import-not-at-top
from torchvision.ops import misc  # pylint: disable=g-import-not-at-top

S = 128
NUM_CLASSES = 4  # With the background.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZES = (16, 32, 64, 128, 256)

# torchvision state_dict key -> our '/'-joined path; kernels need a layout change.
_RULES = [
    (r"backbone\.body\.conv1\.(.*)", r"backbone/stem/conv1/\1"),
    (r"backbone\.body\.bn1\.(.*)", r"backbone/stem/bn1/\1"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.(.*)",
     lambda m: f"backbone/res{int(m[1]) + 1}/block{m[2]}/downsample_conv/{m[3]}"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.*)",
     lambda m: f"backbone/res{int(m[1]) + 1}/block{m[2]}/downsample_bn/{m[3]}"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.(\w+)\.(.*)",
     lambda m: f"backbone/res{int(m[1]) + 1}/block{m[2]}/{m[3]}/{m[4]}"),
    (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(.*)", lambda m: f"fpn/lateral{int(m[1]) + 2}/{m[2]}"),
    (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(.*)", lambda m: f"fpn/output{int(m[1]) + 2}/{m[2]}"),
    (r"rpn\.head\.conv\.0\.0\.(.*)", r"rpn/head/conv/\1"),
    (r"rpn\.head\.(\w+)\.(.*)", r"rpn/head/\1/\2"),
    (r"roi_heads\.box_head\.(\w+)\.(.*)", r"roi_heads/box_head/\1/\2"),
    (r"roi_heads\.box_predictor\.(\w+)\.(.*)", r"roi_heads/box_head/\1/\2"),
    (r"roi_heads\.mask_head\.(\d)\.0\.(.*)",
     lambda m: f"roi_heads/mask_head/mask_conv{int(m[1]) + 1}/{m[2]}"),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(.*)", r"roi_heads/mask_head/deconv/\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(.*)", r"roi_heads/mask_head/mask_logits/\1"),
]
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def convert(state_dict):
  """torchvision MaskRCNN state_dict -> {"params", "frozen_bn"}."""
  params, frozen = {}, {}
  for key, value in state_dict.items():
    value = value.detach().numpy()
    for pattern, repl in _RULES:
      if re.fullmatch(pattern, key):
        path = re.sub(pattern, repl, key)
        break
    else:
      raise KeyError(key)
    module, name = path.rsplit("/", 1)
    if re.search(r"/(bn\d|downsample_bn)$", module):
      frozen[f"{module}/{_BN[name]}"] = value
    elif name == "bias":
      params[path] = value
    elif module.endswith("deconv"):  # [in, out, a, b] -> [1 - a, 1 - b, in, out]
      params[f"{module}/kernel"] = value[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
    elif value.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
      params[f"{module}/kernel"] = value.transpose(2, 3, 1, 0)
    else:  # Linear [out, in] -> [in, out]
      params[f"{module}/kernel"] = value.T
  unflat = lambda d: traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in d.items()},
                                                  sep="/")
  return {"params": unflat(params), "frozen_bn": unflat(frozen)}


def _torch_model():
  torch.manual_seed(0)
  backbone = backbone_utils.resnet_fpn_backbone(
      backbone_name="resnet18", weights=None, norm_layer=misc.FrozenBatchNorm2d,
      trainable_layers=3, returned_layers=[1, 2, 3, 4])
  channels = backbone.out_channels
  model = mask_rcnn.MaskRCNN(
      backbone, num_classes=None, min_size=S, max_size=S, image_mean=MEAN,
      image_std=STD,
      rpn_anchor_generator=anchor_utils.AnchorGenerator(tuple((s,) for s in SIZES),
                                                        ((0.5, 1.0, 2.0),) * 5),
      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
      box_head=faster_rcnn.TwoMLPHead(channels * 49, 64),
      box_predictor=faster_rcnn.FastRCNNPredictor(64, NUM_CLASSES),
      box_detections_per_img=20,
      mask_head=mask_rcnn.MaskRCNNHeads(channels, (32, 32), 1),
      mask_predictor=mask_rcnn.MaskRCNNPredictor(32, 32, NUM_CLASSES))
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, buf in model.named_buffers():
      if name.endswith("running_mean"):
        buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
      elif name.endswith("running_var"):
        buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
      elif name.endswith("bn1.weight") or name.endswith("bn2.weight"):
        buf.copy_(0.5 + 0.5 * torch.rand(buf.shape, generator=gen))
    # Spread the near-constant initial scores so that rankings are not float ties.
    for head in (model.rpn.head.cls_logits, model.roi_heads.box_predictor.bbox_pred,
                 model.rpn.head.bbox_pred):
      head.weight.normal_(0.0, 0.05, generator=gen)
    model.roi_heads.box_predictor.cls_score.weight.normal_(0.0, 1.0, generator=gen)
    for p in model.roi_heads.mask_predictor.parameters():
      p.normal_(0.0, 0.05, generator=gen)
  return model.eval()


def _jax_model():
  config = default.get_config().model
  config.depth = 18
  config.fpn_channels = 256
  config.pixel_mean = tuple(255 * m for m in MEAN)
  config.pixel_std = tuple(255 * s for s in STD)
  config.anchor_sizes = SIZES
  config.rpn.pre_nms_topk_test = 300
  config.rpn.post_nms_topk_test = 100
  config.roi_heads.aligned = False  # torchvision's MultiScaleRoIAlign.
  config.roi_heads.fc_dim = 64
  config.roi_heads.mask_convs = 2
  config.roi_heads.mask_channels = 32
  config.roi_heads.detections_per_image = 20
  return models.build(config, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def outputs():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
  image[20:70, 30:100] = (250, 30, 30)  # Some structure for the proposals to find.
  tmodel = _torch_model()
  with torch.no_grad():
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    images, _ = tmodel.transform([x])
    features = tmodel.backbone(images.tensors)
    objectness, deltas = tmodel.rpn.head(list(features.values()))
    proposals, _ = tmodel.rpn(images, features)
    detections, _ = tmodel.roi_heads(features, proposals, images.image_sizes)
  torch_out = {"features": [f.permute(0, 2, 3, 1).numpy() for f in features.values()],
               "objectness": [o.permute(0, 2, 3, 1).numpy() for o in objectness],
               "proposals": proposals[0].numpy(), "detections": detections[0]}

  model = _jax_model()
  variables = convert(tmodel.state_dict())
  batch = {"image": image[None], "image_info": np.array([[S, S, 1.0, S, S]], np.float32)}
  jax_out = jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)
  jax_features = jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: m.fpn(m.backbone(x))))(
          variables, (image[None].astype(np.float32) - np.array(model.pixel_mean))
          / np.array(model.pixel_std))
  return torch_out, jax_out, jax_features


def test_converted_variables_match_init_structure():
  model = _jax_model()
  batch = {"image": np.zeros((1, S, S, 3), np.uint8),
           "image_info": np.array([[S, S, 1.0, S, S]], np.float32)}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  converted = jax.eval_shape(lambda: convert(_torch_model().state_dict()))
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, converted)


def test_fpn_features(outputs):
  torch_out, _, jax_features = outputs
  for got, want in zip(jax_features, torch_out["features"]):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_proposals(outputs):
  torch_out, jax_out, _ = outputs
  want = torch_out["proposals"]
  valid = np.asarray(jax_out["proposal_valid"][0])
  assert valid.sum() == len(want)
  np.testing.assert_allclose(jax_out["proposals"][0][valid], want, atol=1e-2)


def test_detections(outputs):
  torch_out, jax_out, _ = outputs
  want = torch_out["detections"]
  n = int(jax_out["num_detections"][0])
  assert n == len(want["boxes"]) > 0
  np.testing.assert_allclose(jax_out["boxes"][0, :n], want["boxes"].numpy(), atol=1e-2)
  np.testing.assert_allclose(jax_out["scores"][0, :n], want["scores"].numpy(), atol=1e-4)
  np.testing.assert_array_equal(jax_out["classes"][0, :n], want["labels"].numpy())
  np.testing.assert_allclose(jax_out["masks"][0, :n], want["masks"][:, 0].numpy(), atol=1e-3)
