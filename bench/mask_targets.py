"""Fidelity of the 28x28 mask targets: box-cropped GT masks of side Sm vs torchvision's.

  python -m bench.mask_targets [--sizes 28,56,112,224] [--rois 16]
                               [--samples ../shared/coco_samples] [--time_rois 256]

For every instance, `--rois` proposals at IoU >= 0.5 with its box (jittered boxes), and
for each of them the target a perfect resampler would give: the area average of the
full-resolution mask over each of the 28x28 bins (8x8 points per bin). Against it:
  torchvision  RoIAlign of the full-image mask, aligned=False, adaptive sampling ratio
               (`project_masks_on_boxes`), in NumPy;
  crop Sm      ours: the mask cropped to its box at Sm x Sm (`coco_reader.crop_mask`, as
               stored), then `roi_heads.mask_targets` (what training computes).
Columns: mean absolute error of the soft targets, and the mean IoU of the targets
binarised at 0.5 with the binarised perfect target. Instances: the real COCO-Stuff stuff
masks of `--samples` (`stuff_examples.json`, RLE) and synthetic thin shapes (1-4 px
lines, rings) and solid objects of 100-500 px in a 640x640 image. Bytes per instance are
the stored bit-packed mask (Sm² / 8, before zlib).

The cost in the training step (`--time_rois R`, 0: off): `roi_heads.mask_targets` jitted
alone on R RoIs per Sm (8 images x 32 positive slots at 128 RoIs per image: 256), its
median time over 20 calls, XLA's FLOP and byte counts; sampling ceil(Sm / 28) points per
bin and axis makes it grow with Sm².
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import mask as mask_utils

from bench import ops as bench_ops
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.models import roi_heads
from maskrcnn_jax.ops import boxes as box_ops

SIDE = roi_heads.MASK_SIZE


def real_masks(samples: str) -> list[np.ndarray]:
  path = os.path.join(samples, "stuff_examples", "annotations", "stuff_examples.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    data = json.load(f)
  sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
  out = []
  for ann in data["annotations"]:
    seg = ann["segmentation"]
    if isinstance(seg["counts"], list):
      seg = mask_utils.frPyObjects(seg, *sizes[ann["image_id"]])
    out.append(mask_utils.decode(seg).astype(np.uint8))
  return out


def synthetic_masks(rng) -> dict[str, list[np.ndarray]]:
  yy, xx = np.mgrid[:640, :640].astype(np.float32)
  thin, solid = [], []
  for width in (1, 2, 4):
    for angle in (0.3, 0.8, 1.3):  # Lines through the centre.
      d = np.abs((xx - 320) * np.sin(angle) - (yy - 320) * np.cos(angle))
      r = np.hypot(xx - 320, yy - 320)
      thin.append(((d < width / 2) & (r < 200)).astype(np.uint8))
    r = np.hypot(xx - 300, yy - 340)
    thin.append((np.abs(r - 150) < width / 2).astype(np.uint8))  # A ring.
  for side in (100, 200, 300, 500):
    for _ in range(3):  # Blobs: a disc with a wavy edge.
      cx, cy = rng.uniform(side / 2, 640 - side / 2, 2)
      t = np.arctan2(yy - cy, xx - cx)
      radius = side / 2 * (0.8 + 0.2 * np.sin(rng.integers(3, 9) * t + rng.uniform(0, 6)))
      solid.append((np.hypot(xx - cx, yy - cy) < radius).astype(np.uint8))
  return {"thin shapes": thin, "solid 100-500 px": solid}


def proposals(box: np.ndarray, n: int, rng, shape) -> np.ndarray:
  """`n` jittered copies of `box` with IoU >= 0.5, inside the image."""
  w, h = box[2] - box[0], box[3] - box[1]
  out = []
  while len(out) < n:
    cand = box + rng.normal(scale=0.12, size=4) * np.array([w, h, w, h])
    cand = np.clip(cand, 0, [shape[1], shape[0], shape[1], shape[0]])
    if cand[2] - cand[0] < 1 or cand[3] - cand[1] < 1:
      continue
    if float(box_ops.box_iou(box[None], cand[None])[0, 0]) >= 0.5:
      out.append(cand)
  return np.asarray(out, np.float32)


def bilinear(mask: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """torchvision's `bilinear_interpolate` of `mask` at (y, x) (same shapes)."""
  h, w = mask.shape
  outside = (y < -1) | (y > h) | (x < -1) | (x > w)
  y, x = np.maximum(y, 0), np.maximum(x, 0)
  y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
  y_edge, x_edge = y0 >= h - 1, x0 >= w - 1
  y0, x0 = np.where(y_edge, h - 1, y0), np.where(x_edge, w - 1, x0)
  y1, x1 = np.where(y_edge, y0, y0 + 1), np.where(x_edge, x0, x0 + 1)
  ly, lx = np.where(y_edge, 0, y - y0), np.where(x_edge, 0, x - x0)
  m = mask.astype(np.float32)
  v = ((1 - ly) * (1 - lx) * m[y0, x0] + (1 - ly) * lx * m[y0, x1]
       + ly * (1 - lx) * m[y1, x0] + ly * lx * m[y1, x1])
  return np.where(outside, 0.0, v)


def bin_points(roi, per_bin: int, offset: float):
  """Sample coordinates `[SIDE * per_bin]` along y and x of `roi`, bin-major."""
  x1, y1, x2, y2 = roi - offset
  steps = (np.arange(SIDE * per_bin) + 0.5) / per_bin
  return y1 + steps * (y2 - y1) / SIDE, x1 + steps * (x2 - x1) / SIDE


def pool(values: np.ndarray, per_bin: int) -> np.ndarray:
  return values.reshape(SIDE, per_bin, SIDE, per_bin).mean((1, 3))


def perfect_target(mask, roi, per_bin=8):
  """Area average per bin: nearest pixel of 8x8 points per bin (pixel k covers [k, k+1))."""
  y, x = bin_points(roi, per_bin, 0.0)
  h, w = mask.shape
  inside = ((y >= 0) & (y < h))[:, None] & ((x >= 0) & (x < w))[None, :]
  yi, xi = np.clip(np.floor(y).astype(int), 0, h - 1), np.clip(np.floor(x).astype(int), 0, w - 1)
  return pool(np.where(inside, mask[yi[:, None], xi[None, :]], 0).astype(np.float32), per_bin)


def torchvision_target(mask, roi):
  """torchvision: roi_align(mask, roi, 28, spatial_scale=1, sampling_ratio=-1, aligned=False)."""
  w, h = max(roi[2] - roi[0], 1.0), max(roi[3] - roi[1], 1.0)
  sy, sx = int(np.ceil(h / SIDE)), int(np.ceil(w / SIDE))
  # Unaligned: the RoI is at least 1 px; points at (p + (s + .5) / sr) * bin from x1, y1.
  y = roi[1] + (np.arange(SIDE * sy) + 0.5) / sy * h / SIDE
  x = roi[0] + (np.arange(SIDE * sx) + 0.5) / sx * w / SIDE
  v = bilinear(mask, np.repeat(y[:, None], len(x), 1), np.repeat(x[None, :], len(y), 0))
  return v.reshape(SIDE, sy, SIDE, sx).mean((1, 3))


def scores(targets: np.ndarray, perfect: np.ndarray) -> tuple[float, float]:
  """(mean abs error, mean IoU of the targets binarised at 0.5), over RoIs."""
  a, b = targets >= 0.5, perfect >= 0.5
  union = (a | b).sum((1, 2))
  iou = np.where(union > 0, (a & b).sum((1, 2)) / np.maximum(union, 1), 1.0)
  return float(np.abs(targets - perfect).mean()), float(iou.mean())


def evaluate(masks, sizes, n_rois, rng) -> dict[str, tuple[float, float]]:
  perfect, tv, rois_all, boxes_all, which = [], [], [], [], []
  for i, mask in enumerate(masks):
    rle = mask_utils.encode(np.asfortranarray(mask))
    x, y, w, h = mask_utils.toBbox(rle)
    box = np.array([x, y, x + w, y + h], np.float32)
    for roi in proposals(box, n_rois, rng, mask.shape):
      perfect.append(perfect_target(mask, roi))
      tv.append(torchvision_target(mask, roi))
      rois_all.append(roi)
      boxes_all.append(box)
      which.append(i)
  perfect = np.stack(perfect)
  out = {"torchvision": scores(np.stack(tv), perfect)}
  targets = jax.jit(roi_heads.mask_targets)
  for sm in sizes:
    crops = []
    for i, mask in enumerate(masks):
      rle = mask_utils.encode(np.asfortranarray(mask))
      x, y, w, h = mask_utils.toBbox(rle)
      crops.append(coco_reader.crop_mask(mask, np.array([x, y, x + w, y + h]), sm))
    ours = targets(jnp.asarray(np.stack([crops[i] for i in which])),
                   jnp.asarray(np.stack(boxes_all)), jnp.asarray(np.stack(rois_all)))
    out[f"crop {sm}"] = scores(np.asarray(ours), perfect)
  return out


def time_targets(sizes, n_rois: int) -> None:
  """Prints the time and FLOPs of `roi_heads.mask_targets` on n_rois RoIs per Sm."""
  rng = np.random.default_rng(1)
  box = np.array([100.0, 120.0, 400.0, 360.0], np.float32)
  rois = jnp.asarray(np.concatenate([proposals(box, 1, rng, (640, 640))
                                     for _ in range(n_rois)]))
  boxes = jnp.broadcast_to(jnp.asarray(box), (n_rois, 4))
  targets = jax.jit(roi_heads.mask_targets)
  for sm in sizes:
    masks = jnp.asarray(rng.integers(0, 2, (n_rois, sm, sm), dtype=np.uint8))
    cost = targets.lower(masks, boxes, rois).compile().cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    ms = bench_ops.median_ms(targets, masks, boxes, rois, repeats=20)
    print(f"mask_targets, {n_rois} RoIs, crop {sm}: {ms:.2f} ms, "
          f"{cost.get('flops', float('nan')) / 1e6:.0f} MFLOP, "
          f"{cost.get('bytes accessed', float('nan')) / 1e6:.0f} MB accessed, sampling ratio "
          f"{max(2, -(-sm // SIDE))}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="28,56,112,224")
  parser.add_argument("--rois", type=int, default=16, help="proposals per instance")
  parser.add_argument("--samples", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                        "shared", "coco_samples"))
  parser.add_argument("--time_rois", type=int, default=0,
                      help="also time mask_targets on this many RoIs per size (0: no)")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  sizes = [int(s) for s in args.sizes.split(",")]
  if args.time_rois:
    time_targets(sizes, args.time_rois)
  sets = {"real stuff (COCO-Stuff)": real_masks(args.samples), **synthetic_masks(rng)}
  methods = ["torchvision"] + [f"crop {s}" for s in sizes]
  print(f"{'instances':<26} {'n':>3} | " + " | ".join(f"{m:>16}" for m in methods))
  print(f"{'(mean abs err / IoU)':<26} {'':>3} | " + " | ".join(
      f"{'full mask':>16}" if m == "torchvision" else f"{int(m.split()[1])**2 // 8:>10} bytes"
      for m in methods))
  for name, masks in sets.items():
    if not masks:
      print(f"{name:<26}   - | {args.samples} not found")
      continue
    res = evaluate(masks, sizes, args.rois, rng)
    print(f"{name:<26} {len(masks):>3} | " + " | ".join(
        f"{res[m][0]:7.4f} / {res[m][1]:.3f}" for m in methods), flush=True)


if __name__ == "__main__":
  main()
