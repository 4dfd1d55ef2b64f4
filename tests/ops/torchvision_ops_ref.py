"""torchvision's side of the op parity tests (run by the torch venv's python).

  .venv-torch/bin/python tests/ops/torchvision_ops_ref.py SPEC_JSON OUT.npz

`spec["op"]` names the op, `spec["inputs"]` the npz of its input arrays (NHWC maps, as
the tests hold them); the other keys are its arguments. Outputs are numpy arrays.
"""

import json
import sys

import numpy as np
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection import anchor_utils
from torchvision.models.detection import image_list


def anchors(x, image, sizes, ratios):
  del x
  gen = anchor_utils.AnchorGenerator(tuple((s,) for s in sizes), (tuple(ratios),) * len(sizes))
  images = image_list.ImageList(torch.zeros(1, 3, image, image), [(image, image)])
  maps = [torch.zeros(1, 1, image // s, image // s) for s in (4, 8, 16, 32, 64)]
  return {"anchors": gen(images, maps)[0].numpy()}


def boxes(x, weights, clip_hw, min_size):
  a, b, wild = (torch.from_numpy(x[k]) for k in ("a", "b", "wild"))
  coder = det_utils.BoxCoder(tuple(weights))
  return {"iou": torchvision.ops.box_iou(a, b).numpy(),
          "clip": torchvision.ops.clip_boxes_to_image(a, tuple(clip_hw)).numpy(),
          "keep": torchvision.ops.remove_small_boxes(a, min_size).numpy(),
          "encode": coder.encode_single(a, b).numpy(),
          "decode": coder.decode_single(wild, b).numpy()}


def nms(x, iou_threshold):
  b, s, g = (torch.from_numpy(x[k]) for k in ("boxes", "scores", "groups"))
  return {"keep": torchvision.ops.nms(b, s, iou_threshold).numpy(),
          "batched_keep": torchvision.ops.batched_nms(b, s, g, iou_threshold).numpy()}


def _rois(boxes):
  b, n, _ = boxes.shape
  ids = np.repeat(np.arange(b, dtype=np.float32), n)[:, None]
  return torch.from_numpy(np.concatenate([ids, boxes.reshape(-1, 4)], 1))


def roi_align(x, output_size, spatial_scale, sampling_ratio, aligned):
  features = torch.from_numpy(x["features"].transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  out = torchvision.ops.roi_align(features, _rois(x["boxes"]), output_size=tuple(output_size),
                                  spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                                  aligned=aligned)
  result = {"out": out.detach().numpy().transpose(0, 2, 3, 1)}
  if "cotangent" in x:
    out.backward(torch.from_numpy(x["cotangent"].transpose(0, 3, 1, 2).copy()))
    result["grad"] = features.grad.numpy().transpose(0, 2, 3, 1)
  return result


def multiscale_roi_align(x, output_size, sampling_ratio, image):
  pool = torchvision.ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size,
                                            sampling_ratio)
  maps = {f"p{l + 2}": torch.from_numpy(x[f"level{l}"].transpose(0, 3, 1, 2).copy())
          for l in range(4)}
  out = pool(maps, list(torch.from_numpy(x["boxes"])), [(image, image)] * len(x["boxes"]))
  return {"out": out.numpy().transpose(0, 2, 3, 1)}


def match(x, high, low, allow_low_quality_matches):
  matcher = det_utils.Matcher(high, low, allow_low_quality_matches)
  return {"matches": matcher(torch.from_numpy(x["iou"])).numpy()}


def paste(x, height, width):
  """detectron2's `_do_paste_mask`: pixel centres normalised to the box, grid_sample."""
  b, probs = torch.from_numpy(x["boxes"]), torch.from_numpy(x["probs"])
  n = len(b)
  gx = ((torch.arange(width) + 0.5)[None] - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]) * 2 - 1
  gy = ((torch.arange(height) + 0.5)[None] - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]) * 2 - 1
  grid = torch.stack([gx[:, None, :].expand(n, height, width),
                      gy[:, :, None].expand(n, height, width)], -1)
  out = torch.nn.functional.grid_sample(probs[:, None], grid, align_corners=False)
  return {"pasted": out[:, 0].numpy()}


OPS = {f.__name__: f for f in (anchors, boxes, nms, roi_align, multiscale_roi_align, match,
                               paste)}


def main(spec, out_path):
  spec = dict(spec)
  inputs = spec.pop("inputs", None)
  x = dict(np.load(inputs)) if inputs else {}
  np.savez(out_path, **OPS[spec.pop("op")](x, **spec))


if __name__ == "__main__":
  main(json.loads(sys.argv[1]), sys.argv[2])
