"""A synthetic data set in the COCO-Stuff 2017 download layout, learnable by a tiny model.

Each image is split into a few large regions with wavy boundaries (a perturbed Voronoi
diagram); each region shows one stuff class with its own colour and texture (sky gradient,
grass, sea waves, brick wall, ...). A few thing objects (solid-colour discs, rectangles,
triangles) are painted on top; as in the real COCO-Stuff, their pixels are labelled
`other` (183) in the stuff annotations. Written files:

  ROOT/{train2017,val2017}/000000xxxxxx.jpg
  ROOT/annotations/stuff_{train,val}2017.json      one RLE annotation per (image, stuff class)
  ROOT/annotations/instances_{train,val}2017.json  polygons of the thing objects

    python -m maskrcnn_jax.data.synthetic --out ROOT --num_train 96 --num_val 24 \
        --image_size 256 --seed 0
"""

import json
import pathlib
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_jax.data import categories

Texture = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _noise(yy, rng, amount):
  return amount * rng.standard_normal(yy.shape + (3,), dtype=np.float32)


def _sky(yy, xx, rng):
  t = (yy / yy.shape[0])[..., None]
  return (1 - t) * np.array([40, 90, 200]) + t * np.array([170, 210, 250]) + _noise(yy, rng, 3)


def _grass(yy, xx, rng):
  blades = 25 * np.sin(xx * 1.7 + 3 * np.sin(yy * 0.3))[..., None]
  return np.array([50, 150, 40]) + blades * np.array([0.3, 1.0, 0.2]) + _noise(yy, rng, 12)


def _sea(yy, xx, rng):
  waves = np.sin(yy * 0.6 + 2 * np.sin(xx * 0.08))[..., None]
  return np.array([20, 70, 130]) + 35 * waves * np.array([0.4, 0.8, 1.0]) + _noise(yy, rng, 4)


def _brick(yy, xx, rng):
  row = yy // 8
  mortar = (yy % 8 == 0) | ((xx + 8 * (row % 2)) % 16 == 0)
  base = np.where(mortar[..., None], np.array([210, 200, 190]), np.array([160, 60, 40]))
  return base + _noise(yy, rng, 8)


def _sand(yy, xx, rng):
  return np.array([220, 195, 140]) + _noise(yy, rng, 15)


def _snow(yy, xx, rng):
  return np.array([240, 244, 252]) + _noise(yy, rng, 3)


def _road(yy, xx, rng):
  return np.array([90, 90, 95]) + _noise(yy, rng, 10)


def _tree(yy, xx, rng):
  blotch = (np.sin(xx * 0.35) * np.sin(yy * 0.4) + np.sin((xx + yy) * 0.21))[..., None]
  return np.array([25, 85, 30]) + 22 * blotch + _noise(yy, rng, 6)


def _dirt(yy, xx, rng):
  return np.array([115, 80, 50]) + _noise(yy, rng, 20)


def _wood(yy, xx, rng):
  grain = np.sin(yy * 1.1 + 1.5 * np.sin(xx * 0.05))[..., None]
  return np.array([180, 120, 60]) + 30 * grain + _noise(yy, rng, 4)


def _gravel(yy, xx, rng):
  coarse = rng.normal(0, 30, (yy.shape[0] // 3 + 1, yy.shape[1] // 3 + 1))
  coarse = np.repeat(np.repeat(coarse, 3, 0), 3, 1)[: yy.shape[0], : yy.shape[1], None]
  return np.array([140, 135, 125]) + coarse


def _water(yy, xx, rng):
  ripples = np.sin(np.hypot(yy - yy.mean(), xx - xx.mean()) * 0.5)[..., None]
  return np.array([60, 170, 180]) + 25 * ripples + _noise(yy, rng, 4)


# Stuff classes in the order they are taken: (COCO id, texture).
STUFF_TEXTURES: tuple[tuple[int, Texture], ...] = (
    (157, _sky),  # sky-other
    (124, _grass),
    (155, _sea),
    (171, _brick),  # wall-brick
    (154, _sand),
    (159, _snow),
    (149, _road),
    (169, _tree),
    (111, _dirt),
    (182, _wood),
    (125, _gravel),
    (178, _water),  # water-other
)

# Thing classes: (COCO id, shape, RGB colour).
THINGS = (
    (37, "disc", (255, 140, 0)),  # sports ball
    (72, "rectangle", (230, 30, 200)),  # tv
    (38, "triangle", (250, 230, 40)),  # kite
)

_SPLITS = (("train2017", 1, 10_000_000), ("val2017", 2, 20_000_000))


def _regions(height, width, num_regions, rng) -> np.ndarray:
  """[H, W] int region index: a Voronoi diagram with sinusoidally perturbed distances."""
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  size = max(height, width)
  dist = []
  for _ in range(num_regions):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    d = np.hypot(yy - cy, xx - cx)
    for _ in range(2):
      fy, fx = rng.uniform(-1, 1, 2) * 12 / size
      d += rng.uniform(0.03, 0.08) * size * np.sin(fy * yy + fx * xx + rng.uniform(0, 6.3))
    dist.append(d)
  return np.argmin(np.stack(dist), axis=0)


def _polygon(shape: str, cy, cx, r, rng) -> list[float]:
  """A flat COCO polygon [x1, y1, x2, y2, ...] of a shape centred at (cx, cy)."""
  if shape == "disc":
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], -1)
  elif shape == "rectangle":
    w, h = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
    pts = np.array([[cx - w, cy - h], [cx + w, cy - h], [cx + w, cy + h], [cx - w, cy + h]])
  else:
    pts = np.array([[cx, cy - r], [cx + r, cy + r * 0.8], [cx - r, cy + r * 0.8]])
  return [round(float(v), 2) for v in pts.reshape(-1)]


def _things(height, width, rng):
  """Non-overlapping thing objects: a list of (coco id, colour, polygon, [H, W] mask)."""
  out, taken = [], np.zeros((height, width), bool)
  for _ in range(rng.integers(0, 4)):
    cid, shape, colour = THINGS[rng.integers(len(THINGS))]
    for _ in range(10):
      r = rng.uniform(0.07, 0.15) * min(height, width)
      cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
      poly = _polygon(shape, cy, cx, r, rng)
      rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
      mask = mask_utils.decode(rle).astype(bool)
      if mask.any() and not (mask & taken).any():
        taken |= mask
        out.append((cid, colour, poly, mask))
        break
  return out


def _rle(mask: np.ndarray) -> dict:
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _image(height, width, stuff, rng):
  """One image: (RGB uint8 [H, W, 3], [H, W] stuff label map of COCO ids, things)."""
  num_regions = int(rng.integers(2, 5))
  regions = _regions(height, width, num_regions, rng)
  picks = rng.choice(len(stuff), size=min(num_regions, len(stuff)), replace=False)
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  pixels = np.zeros((height, width, 3), np.float32)
  labels = np.zeros((height, width), np.int32)
  for region, pick in enumerate(picks):
    cid, texture = stuff[pick]
    inside = regions == region
    np.copyto(pixels, texture(yy, xx, rng), where=inside[..., None])
    labels[inside] = cid
  things = _things(height, width, rng)
  for _, colour, _, mask in things:
    pixels[mask] = colour
    labels[mask] = categories.OTHER_ID
  return np.clip(pixels, 0, 255).astype(np.uint8), labels, things


def _coco_json(images, annotations, coco_ids) -> dict:
  return {
      "info": {"description": "maskrcnn_jax synthetic COCO-Stuff", "version": "1.0", "year": 2017},
      "licenses": [{"id": 1, "name": "synthetic", "url": ""}],
      "images": images,
      "annotations": annotations,
      "categories": categories.coco_json_categories(coco_ids),
  }


def write_synthetic(
    root: str | pathlib.Path,
    *,
    num_train: int,
    num_val: int,
    image_size: int | Sequence[int] | Sequence[Sequence[int]],
    seed: int,
    num_stuff_classes: int = 8,
) -> None:
  """Writes the synthetic set under `root`; the same arguments give the same files.

  Args:
    root: the data root (created if missing).
    num_train, num_val: images in train2017 and val2017.
    image_size: side S of square images, (height, width), or a list of (height, width)
      taken in turn, image after image, in each split.
    seed: seeds everything drawn.
    num_stuff_classes: how many of `STUFF_TEXTURES` the images use (1 to 12).
  """
  if not 1 <= num_stuff_classes <= len(STUFF_TEXTURES):
    raise ValueError(
        f"num_stuff_classes must be in [1, {len(STUFF_TEXTURES)}], got {num_stuff_classes}")
  sizes = ([(image_size, image_size)] if np.isscalar(image_size) else
           [image_size] if np.isscalar(image_size[0]) else image_size)
  sizes = [(int(h), int(w)) for h, w in sizes]
  if min(min(hw) for hw in sizes) < 16:
    raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
  root = pathlib.Path(root)
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  stuff = STUFF_TEXTURES[:num_stuff_classes]
  stuff_ids = categories.STUFF_IDS + (categories.OTHER_ID,)
  next_image_id = 1
  for (split, split_index, first_ann_id), count in zip(_SPLITS, (num_train, num_val)):
    rng = np.random.default_rng([seed, split_index])
    (root / split).mkdir(exist_ok=True)
    images, stuff_anns, thing_anns = [], [], []
    for i in range(count):
      height, width = sizes[i % len(sizes)]
      image_id, next_image_id = next_image_id, next_image_id + 1
      file_name = f"{image_id:012d}.jpg"
      pixels, labels, things = _image(height, width, stuff, rng)
      Image.fromarray(pixels).save(root / split / file_name, quality=90)
      images.append({"id": image_id, "file_name": file_name, "height": height, "width": width,
                     "license": 1})
      for cid in np.unique(labels):
        rle = _rle(labels == cid)
        stuff_anns.append({
            "id": first_ann_id + len(stuff_anns),
            "image_id": image_id,
            "category_id": int(cid),
            "segmentation": rle,
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
        })
      for cid, _, poly, mask in things:
        rle = _rle(mask)
        thing_anns.append({
            "id": len(thing_anns) + 1,
            "image_id": image_id,
            "category_id": cid,
            "segmentation": [poly],
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
        })
    name = split.removesuffix("2017")
    with open(root / "annotations" / f"stuff_{name}2017.json", "w") as f:
      json.dump(_coco_json(images, stuff_anns, stuff_ids), f)
    with open(root / "annotations" / f"instances_{name}2017.json", "w") as f:
      json.dump(_coco_json(images, thing_anns, categories.THING_IDS), f)
    logging.info("wrote %d %s images, %d stuff and %d thing annotations", count, split,
                 len(stuff_anns), len(thing_anns))


def _parse_size(text: str) -> int | tuple[int, int]:
  if "x" in text:
    height, width = text.split("x")
    return int(height), int(width)
  return int(text)


def main(argv):
  del argv
  f = flags.FLAGS
  write_synthetic(f.out, num_train=f.num_train, num_val=f.num_val,
                  image_size=_parse_size(f.image_size), seed=f.seed,
                  num_stuff_classes=f.num_stuff_classes)


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Data root to write.", required=True)
  flags.DEFINE_integer("num_train", 96, "Training images.")
  flags.DEFINE_integer("num_val", 24, "Validation images.")
  flags.DEFINE_string("image_size", "256", "S for S×S images, or HxW (e.g. 480x640).")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_integer("num_stuff_classes", 8, "Stuff classes used (1 to 12).")
  app.run(main)
