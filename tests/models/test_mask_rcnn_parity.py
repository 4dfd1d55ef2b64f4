"""The model against torchvision's Mask R-CNN with the same (converted) random weights.

A ResNet-18 FPN Mask R-CNN at 128 px, eval mode, on a square, a 4:3 and a 3:4 image padded
to 128 x 128 (torchvision pads its normalised batch with 0, the mean colour; so does the
model): FPN features, RPN outputs, proposals, detections and 28x28 masks agree. torchvision runs in its own process
(mask_rcnn_parity_ref.py, the `torch_reference` fixture of tests/conftest.py).
"""

import re

from configs import default
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import models

REF = "tests/models/mask_rcnn_parity_ref.py"

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


def _jax_model():
  config = default.get_config().model
  default.torchvision_weights(config)
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


def _group(ref, prefix):
  return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=[(S, S), (96, S), (S, 96)],
                ids=["square", "4:3", "3:4"])
def reference(torch_reference, request):
  height, width = request.param
  return torch_reference(REF, size=S, height=height, width=width, num_classes=NUM_CLASSES,
                         mean=MEAN, std=STD, sizes=SIZES)


@pytest.fixture(scope="module")
def outputs(reference):
  image = reference["image"]
  h, w = image.shape[:2]
  features = _group(reference, "features/")
  torch_out = {"features": [features[str(i)] for i in range(len(features))],
               "proposals": reference["proposals"],
               "detections": {k: reference[k] for k in ("boxes", "scores", "labels", "masks")}}
  model = _jax_model()
  variables = convert(_group(reference, "state/"))
  padded = np.zeros((1, S, S, 3), np.uint8)  # Black: the model must make it the mean.
  padded[0, :h, :w] = image
  batch = {"image": padded, "image_info": np.array([[h, w, 1.0, h, w]], np.float32)}
  jax_out = jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)
  x = np.zeros((1, S, S, 3), np.float32)
  x[0, :h, :w] = (image - np.array(model.pixel_mean)) / np.array(model.pixel_std)
  jax_features = jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: m.fpn(m.backbone(x))))(variables, x)
  return torch_out, jax_out, jax_features


def test_converted_variables_match_init_structure(reference):
  model = _jax_model()
  batch = {"image": np.zeros((1, S, S, 3), np.uint8),
           "image_info": np.array([[S, S, 1.0, S, S]], np.float32)}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  converted = jax.eval_shape(lambda: convert(_group(reference, "state/")))
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
  np.testing.assert_allclose(jax_out["boxes"][0, :n], want["boxes"], atol=1e-2)
  np.testing.assert_allclose(jax_out["scores"][0, :n], want["scores"], atol=1e-4)
  np.testing.assert_array_equal(jax_out["classes"][0, :n], want["labels"])
  np.testing.assert_allclose(jax_out["masks"][0, :n], want["masks"], atol=1e-3)
