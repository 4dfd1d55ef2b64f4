"""Converted torchvision models compute what torchvision computes (needs torch + torchvision).

Run with `TORCH_SITE=/work/torchvenv/lib/python3.11/site-packages`; skipped without torch.
Weights are random (seeded); BatchNorm statistics are set to the batch statistics of the
test image, then perturbed, so that the network stays well-scaled and BN is exercised.
"""

import functools

import jax
import numpy as np
import pytest

from maskrcnn_jax.models import resnet
from maskrcnn_jax.weights import convert_torchvision as conv

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def calibrate_bn(module, x, seed):
  """BN running stats := the statistics of `x` (one train-mode pass), affine randomised."""
  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for bn in bns:
    bn.momentum = 1.0
  module.train()
  with torch.no_grad():
    module(x)
    for bn in bns:
      n = bn.num_features
      bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)
      bn.bias.copy_(torch.randn(n, generator=gen) * 0.1)
      bn.running_mean.add_(torch.randn(n, generator=gen) * 0.05)
      bn.running_var.mul_(torch.rand(n, generator=gen) * 0.5 + 0.75)
  module.eval()


def state_numpy(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def nhwc(x):
  return np.asarray(x.detach().numpy()).transpose(0, 2, 3, 1)


def max_rel_err(ours, theirs):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("depth", [50, 101])
def test_imagenet_resnet_c2_to_c5(depth):
  torch.manual_seed(depth)
  net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
  x = torch.randn(2, 3, 64, 96)
  calibrate_bn(net, x, seed=depth)
  body = torchvision.models._utils.IntermediateLayerGetter(
      net, {f"layer{i}": f"c{i + 1}" for i in range(1, 5)})
  with torch.no_grad():
    expected = body(x)
  variables = conv.convert(state_numpy(net), depth=depth)
  variables = {c: v["backbone"] for c, v in variables.items()}
  outputs = resnet.ResNet(depth=depth).apply(variables, nhwc(x))
  for level, ours in zip(range(2, 6), outputs):
    err = max_rel_err(ours, nhwc(expected[f"c{level}"]))
    print(f"resnet{depth} C{level} max abs err / max abs: {err:.2e}")
    assert err < 1e-4, level


SIZE = 320  # Square, a multiple of 64; torchvision's transform is told not to resize it.


def _image():
  """Rectangles of random colour on noise: [SIZE, SIZE, 3] uint8."""
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 60, (SIZE, SIZE, 3))
  for _ in range(12):
    x, y = rng.integers(0, SIZE - 40, 2)
    w, h = rng.integers(20, SIZE // 2, 2)
    image[y:y + h, x:x + w] += rng.uniform(0, 190, 3)
  return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mask_rcnn_outputs():
  """torchvision's maskrcnn_resnet50_fpn and the converted model on one image."""
  from configs import torchvision_r50_fpn  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
      weights=None, weights_backbone=None, num_classes=91, min_size=SIZE, max_size=SIZE)
  tv.eval()
  image = _image()
  images, _ = tv.transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
  assert images.image_sizes == [(SIZE, SIZE)] and images.tensors.shape == (1, 3, SIZE, SIZE)
  calibrate_bn(tv.backbone.body, images.tensors, seed=0)
  with torch.no_grad():
    # Small random box deltas keep boxes near their anchors / proposals: sensible sizes.
    tv.rpn.head.bbox_pred.weight.mul_(0.1)
    tv.roi_heads.box_predictor.bbox_pred.weight.mul_(0.1)
    features = tv.backbone(images.tensors)
    proposals, _ = tv.rpn(images, features)
    detections, _ = tv.roi_heads(features, proposals, images.image_sizes)
  theirs = {k: v.numpy() for k, v in detections[0].items()}
  theirs["masks"] = theirs["masks"][:, 0]
  theirs["proposals"] = proposals[0].numpy()
  theirs["features"] = [nhwc(features[k]) for k in ("0", "1", "2", "3", "pool")]
  theirs["input"] = nhwc(images.tensors)

  config = torchvision_r50_fpn.get_config().model
  model = models.build(config, num_classes=91)
  variables = conv.convert(state_numpy(tv), depth=50)
  batch = {"image": image[None],
           "image_info": np.array([[SIZE, SIZE, 1.0, SIZE, SIZE]], np.float32)}
  ours = jax.jit(functools.partial(model.apply, train=False))(variables, batch)
  ours = {k: np.asarray(v[0]) for k, v in ours.items()}
  ours["input"] = ((image[None] - np.float32(config.pixel_mean))
                   / np.float32(config.pixel_std))
  ours["features"] = jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: m.fpn(m.backbone(x))))(variables, ours["input"])
  return ours, theirs


def nearest(a, b):
  """For each box of a [N, 4], the index in b [M, 4] of the closest and its max |coord diff|."""
  d = np.abs(a[:, None] - b[None]).max(-1)
  return d.argmin(1), d.min(1)


def test_mask_rcnn_fpn_features(mask_rcnn_outputs):
  ours, theirs = mask_rcnn_outputs
  np.testing.assert_allclose(ours["input"], theirs["input"], atol=1e-5)
  for level, (a, b) in enumerate(zip(ours["features"], theirs["features"]), 2):
    err = max_rel_err(a, b)
    print(f"P{level} max abs err {np.abs(np.asarray(a) - b).max():.2e}, / max abs {err:.2e}")
    assert a.shape == b.shape and err < 1e-4, level


def test_mask_rcnn_proposals(mask_rcnn_outputs):
  ours, theirs = mask_rcnn_outputs
  boxes = ours["proposals"][ours["proposal_valid"]]
  assert len(boxes) == len(theirs["proposals"])
  _, err = nearest(theirs["proposals"], boxes)
  _, err_back = nearest(boxes, theirs["proposals"])
  print(f"proposals: {len(boxes)}, max coordinate error {max(err.max(), err_back.max()):.2e} px")
  assert err.max() < 1e-2 and err_back.max() < 1e-2


def test_mask_rcnn_detections_and_masks(mask_rcnn_outputs):
  from maskrcnn_jax.evaluation import masks as mask_lib  # pylint: disable=g-import-not-at-top

  ours, theirs = mask_rcnn_outputs
  valid = ours["valid"]
  assert valid.sum() == len(theirs["scores"]) > 10
  boxes, scores = ours["boxes"][valid], ours["scores"][valid]
  classes, masks = ours["classes"][valid], ours["masks"][valid]
  # Match by box within the same class: order may differ where scores tie.
  same_class = theirs["labels"][:, None] == classes[None]
  d = np.where(same_class, np.abs(theirs["boxes"][:, None] - boxes[None]).max(-1), np.inf)
  match, box_err = d.argmin(1), d.min(1)
  assert len(set(match)) == len(match)
  score_err = np.abs(scores[match] - theirs["scores"])
  mask_err = np.abs(masks[match] - theirs["masks"])
  info = np.array([SIZE, SIZE, 1.0, SIZE, SIZE], np.float32)
  pasted = mask_lib.paste_masks(masks[match], boxes[match], info) > 0.5
  pasted_theirs = mask_lib.paste_masks(theirs["masks"], theirs["boxes"], info) > 0.5
  union = (pasted | pasted_theirs).sum((1, 2))
  iou = np.where(union > 0, (pasted & pasted_theirs).sum((1, 2)) / np.maximum(union, 1), 1.0)
  print(f"detections: {len(match)}, box error {box_err.max():.2e} px, score error "
        f"{score_err.max():.2e}, 28x28 mask probability error {mask_err.max():.2e}, "
        f"pasted mask IoU min {iou.min():.4f} mean {iou.mean():.4f}")
  assert box_err.max() < 1e-2
  assert score_err.max() < 1e-3
  assert mask_err.max() < 1e-2
  # Random weights make checkerboard masks, so pixels near 0.5 abound: a few may flip.
  assert iou.mean() > 0.99 and iou.min() > 0.97


def test_pth_file_with_frozen_batchnorm(tmp_path):
  """A .pth read through torch.load; FrozenBatchNorm2d has no num_batches_tracked."""
  from maskrcnn_jax.weights import checkpoint  # pylint: disable=g-import-not-at-top

  torch.manual_seed(1)
  net = torchvision.models.resnet18(norm_layer=torchvision.ops.FrozenBatchNorm2d)
  with torch.no_grad():
    for name, value in net.state_dict().items():
      if "running_var" in name:
        value.uniform_(0.5, 1.5)
  torch.save(net.state_dict(), tmp_path / "r18.pth")
  conv.convert_file(str(tmp_path / "r18.pth"), str(tmp_path / "r18"), depth=18)
  loaded = checkpoint.load_variables(str(tmp_path / "r18"))
  expected = conv.convert(state_numpy(net))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, expected)
  x = torch.randn(1, 3, 64, 64)
  with torch.no_grad():
    c5 = torch.nn.Sequential(*list(net.children())[:-2])(x)
  variables = {c: v["backbone"] for c, v in loaded.items()}
  ours = resnet.ResNet(depth=18).apply(variables, nhwc(x))[-1]
  assert max_rel_err(ours, nhwc(c5)) < 1e-4
