"""torchvision's side of test_converted_parity.py (run by the torch venv's python).

  .venv-torch/bin/python tests/weights/converted_parity_ref.py SPEC_JSON OUT.npz

Seeded random weights; BatchNorm statistics set to the batch statistics of the input, then
perturbed, so that the network stays well-scaled and BN is exercised. `spec["kind"]`:

- "resnet": torchvision `resnet{depth}` on x [2, 3, 64, 96]: `x`, `state/KEY`, `c2`..`c5`.
- "mask_rcnn": `maskrcnn_resnet50_fpn` (91 classes) on a batch of images of `images`
  ([H, W] each; image I drawn from seed `seed` + I), resized by its transform with `min_size` / `max_size` and padded to
  `canvas`²: `image/I` (the original), `input` (normalised, NHWC), `image_sizes`,
  `state/KEY`, `features/I`, and per image `proposals/I`, detections `boxes/I`, `scores/I`,
  `labels/I`, `masks/I` [N, 28, 28] (resized frame) and `original_boxes/I` (its
  postprocess: the original frame).
- "pth": a ResNet-18 with FrozenBatchNorm2d saved with torch.save to `spec["pth"]`:
  `state/KEY`, `x` [1, 3, 64, 64], `c5`.
- "evil_pth": a .pth at `spec["pth"]` whose unpickling would run `touch spec["marker"]`.
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision


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


def nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


def state(module):
  return {f"state/{k}": v.detach().numpy() for k, v in module.state_dict().items()}


def resnet(depth):
  torch.manual_seed(depth)
  net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
  x = torch.randn(2, 3, 64, 96)
  calibrate_bn(net, x, seed=depth)
  body = torchvision.models._utils.IntermediateLayerGetter(  # pylint: disable=protected-access
      net, {f"layer{i}": f"c{i + 1}" for i in range(1, 5)})
  with torch.no_grad():
    out = {k: nhwc(v) for k, v in body(x).items()}
  return {"x": nhwc(x), **state(net), **out}


def image(height, width, seed):
  """Rectangles of random colour on noise: [height, width, 3] uint8."""
  rng = np.random.default_rng(seed)
  img = rng.uniform(0, 60, (height, width, 3))
  for _ in range(12):
    x, y = rng.integers(0, width - 40), rng.integers(0, height - 40)
    w, h = rng.integers(20, width // 2), rng.integers(20, height // 2)
    img[y:y + h, x:x + w] += rng.uniform(0, 190, 3)
  return np.clip(img, 0, 255).astype(np.uint8)


def mask_rcnn(spec):
  torch.manual_seed(0)
  tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
      weights=None, weights_backbone=None, num_classes=91, min_size=spec["min_size"],
      max_size=spec["max_size"])
  tv.eval()
  tv.transform.size_divisible = spec["canvas"]
  imgs = [image(h, w, spec["seed"] + i) for i, (h, w) in enumerate(spec["images"])]
  originals = [img.shape[:2] for img in imgs]
  images, _ = tv.transform([torch.from_numpy(img).permute(2, 0, 1).float() / 255
                            for img in imgs])
  assert images.tensors.shape[2:] == (spec["canvas"],) * 2
  calibrate_bn(tv.backbone.body, images.tensors, seed=0)
  with torch.no_grad():
    # Small random box deltas keep boxes near their anchors / proposals: sensible sizes.
    tv.rpn.head.bbox_pred.weight.mul_(0.1)
    tv.roi_heads.box_predictor.bbox_pred.weight.mul_(0.1)
    features = tv.backbone(images.tensors)
    proposals, _ = tv.rpn(images, features)
    detections, _ = tv.roi_heads(features, proposals, images.image_sizes)
    original = tv.transform.postprocess([dict(d) for d in detections], images.image_sizes,
                                        originals)
  out = {"input": nhwc(images.tensors), "image_sizes": np.array(images.image_sizes), **state(tv)}
  for i, (det, post) in enumerate(zip(detections, original)):
    out.update({f"{k}/{i}": v.numpy() for k, v in det.items()})
    out[f"masks/{i}"] = out[f"masks/{i}"][:, 0]
    out[f"original_boxes/{i}"] = post["boxes"].numpy()
    out[f"proposals/{i}"] = proposals[i].numpy()
    out[f"image/{i}"] = imgs[i]
  out.update({f"features/{i}": nhwc(features[k])
              for i, k in enumerate(("0", "1", "2", "3", "pool"))})
  return out


def pth(path):
  torch.manual_seed(1)
  net = torchvision.models.resnet18(norm_layer=torchvision.ops.FrozenBatchNorm2d)
  with torch.no_grad():
    for name, value in net.state_dict().items():
      if "running_var" in name:
        value.uniform_(0.5, 1.5)
  torch.save(net.state_dict(), path)
  x = torch.randn(1, 3, 64, 64)
  with torch.no_grad():
    c5 = torch.nn.Sequential(*list(net.children())[:-2])(x)
  return {"x": nhwc(x), "c5": nhwc(c5), **state(net)}


class _RunsCode:
  """Unpickling this calls os.system: what a hostile checkpoint does."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def main(spec, out_path):
  kind = spec["kind"]
  if kind == "resnet":
    out = resnet(spec["depth"])
  elif kind == "mask_rcnn":
    out = mask_rcnn(spec)
  elif kind == "pth":
    out = pth(spec["pth"])
  elif kind == "evil_pth":
    torch.save({"conv1.weight": torch.zeros(1), "x": _RunsCode(spec["marker"])}, spec["pth"])
    out = {}
  else:
    raise ValueError(f"unknown kind {kind!r}")
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]), sys.argv[2])
