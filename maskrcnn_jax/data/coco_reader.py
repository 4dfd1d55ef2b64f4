"""Reads COCO-Stuff 2017 from the download layout into per-image training examples.

  ROOT/{train2017,val2017}/*.jpg
  ROOT/annotations/stuff_{train,val}2017.json       RLE, one annotation per (image, stuff class)
  ROOT/annotations/instances_{train,val}2017.json   things (polygons or RLE); things_and_stuff, coco

Class set `coco` reads the instances files only: a plain COCO 2017 root.

N instances of one image, Sm the mask side. Boxes come from the decoded masks (tight, in
original pixels, (x1, y1, x2, y2) with x2 = last column + 1), never from the JSON `bbox`.

Bad input is handled as follows and counted in `counts` under these keys:

  missing_image         image file absent: image skipped
  corrupt_image         not decodable or truncated: image skipped
  image_size_mismatch   decoded size differs from the JSON: image skipped
  converted_image       grayscale, CMYK, PNG, ... content: re-encoded as an RGB JPEG, kept
  rle_size_mismatch     an RLE `size` differs from the image: annotation skipped (logged
                        with file and annotation id); a mask at the wrong size cannot be placed
  empty_instance        the mask has no pixel inside the image (zero area, or a polygon
                        entirely outside): instance skipped
  dropped_category      a known COCO id outside the class set (e.g. 183 for stuff_no_other)
  orphan_annotation     an annotation whose image id is not in the JSON's images
  no_instances          an image left without instances: kept (evaluation scores it; the
                        training pipeline skips it)
  images                images written

An unknown category id (not one of the 183 COCO-Stuff ids) raises ValueError naming the
file and the annotation id: it means the wrong file or a corrupt one.
"""

import collections
import io
import json
import pathlib
from typing import Iterator

from absl import logging
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_jax.data import categories

SPLIT_DIRS = {"train": "train2017", "validation": "val2017"}


def annotation_path(root, split: str, kind: str) -> pathlib.Path:
  """ROOT/annotations/{kind}_{train,val}2017.json, kind is `stuff` or `instances`."""
  return pathlib.Path(root) / "annotations" / f"{kind}_{SPLIT_DIRS[split]}.json"


def annotation_kinds(class_set: categories.ClassSet) -> tuple[str, ...]:
  """The annotation files a class set reads: stuff when it has stuff classes, instances
  when it has things (`coco`: a plain COCO 2017 root, no stuff file needed)."""
  things = any(cid < categories.FIRST_STUFF_ID for cid in class_set.coco_ids)
  stuff = any(cid >= categories.FIRST_STUFF_ID for cid in class_set.coco_ids)
  return ("stuff",) * stuff + ("instances",) * things


def _load_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"annotation file {path} does not exist")
  with open(path) as f:
    return json.load(f)


def _rgb_jpeg(data: bytes) -> tuple[bytes, tuple[int, int], bool]:
  """(JPEG bytes, (height, width), converted): `data` itself when it is already an RGB JPEG.

  Raises OSError (or a PIL error) when `data` cannot be fully decoded.
  """
  with Image.open(io.BytesIO(data)) as image:
    image.load()  # Decodes every pixel: truncated files raise here.
    size = (image.height, image.width)
    if image.format == "JPEG" and image.mode == "RGB":
      return data, size, False
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue(), size, True


def _to_rle(segmentation, height: int, width: int):
  """A compressed RLE of a COCO segmentation (polygons, uncompressed or compressed RLE)."""
  if isinstance(segmentation, list):
    polygons = [p for p in segmentation if len(p) >= 6]
    if not polygons:
      return None
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  if isinstance(segmentation["counts"], list):
    return mask_utils.frPyObjects(segmentation, height, width)
  return segmentation


def crop_mask(mask: np.ndarray, box: np.ndarray, mask_size: int) -> np.ndarray:
  """[H, W] binary mask, box (x1, y1, x2, y2) integer pixels -> [Sm, Sm] uint8 in {0, 1}.

  The box crop is resized with PIL's area-aware bilinear filter and thresholded at 0.5.
  """
  x1, y1, x2, y2 = (int(v) for v in box)
  crop = Image.fromarray(mask[y1:y2, x1:x2].astype(np.uint8) * 255)
  resized = np.asarray(crop.resize((mask_size, mask_size), Image.BILINEAR))
  return (resized >= 128).astype(np.uint8)


def _instance(ann, source, class_set, height, width, mask_size, counts):
  """One decoded instance (box [4], train id, crowd, area, mask [Sm, Sm]) or None if skipped."""
  cid = ann["category_id"]
  if not categories.is_known(cid):
    raise ValueError(f"{source}: annotation {ann['id']} has unknown category_id {cid}")
  if not class_set.contains(cid):
    counts["dropped_category"] += 1
    return None
  seg = ann["segmentation"]
  if isinstance(seg, dict) and [int(v) for v in seg["size"]] != [height, width]:
    logging.warning("%s: annotation %s has RLE size %s, image is %dx%d: skipped",
                    source, ann["id"], seg["size"], height, width)
    counts["rle_size_mismatch"] += 1
    return None
  rle = _to_rle(seg, height, width)
  area = 0 if rle is None else int(mask_utils.area(rle))
  if area == 0:
    counts["empty_instance"] += 1
    return None
  x, y, w, h = mask_utils.toBbox(rle)
  box = np.array([x, y, x + w, y + h], np.float32)
  mask = crop_mask(mask_utils.decode(rle), box, mask_size)
  return box, class_set.to_train_id(cid), bool(ann.get("iscrowd", 0)), area, mask


def read_examples(
    root,
    split: str,
    class_set: categories.ClassSet,
    *,
    mask_size: int,
    counts: collections.Counter,
) -> Iterator[dict]:
  """Yields one example per usable image of `split` (train | validation), by image id.

  An example: image (RGB JPEG bytes), image_id, height, width, and per instance
  boxes [N, 4] float32 original pixels, classes [N] int32 training ids in [1, K],
  is_crowd [N] bool, areas [N] int32 (mask pixels), masks [N, Sm, Sm] uint8 in {0, 1}
  (the mask cropped to its box, resized). Bad input is skipped and counted in `counts`
  (see the module docstring).
  """
  root = pathlib.Path(root)
  images, anns_by_image = {}, collections.defaultdict(list)
  for kind in annotation_kinds(class_set):
    path = annotation_path(root, split, kind)
    data = _load_json(path)
    for image in data["images"]:
      images.setdefault(image["id"], image)
    known = {image["id"] for image in data["images"]}
    for ann in data["annotations"]:
      if ann["image_id"] not in known:
        counts["orphan_annotation"] += 1
        continue
      anns_by_image[ann["image_id"]].append((path.name, ann))
  image_dir = root / SPLIT_DIRS[split]
  for image_id in sorted(images):
    info = images[image_id]
    path = image_dir / info["file_name"]
    if not path.is_file():
      counts["missing_image"] += 1
      continue
    try:
      data, size, converted = _rgb_jpeg(path.read_bytes())
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      logging.warning("%s: cannot decode (%s): skipped", path, e)
      counts["corrupt_image"] += 1
      continue
    height, width = info["height"], info["width"]
    if size != (height, width):
      logging.warning("%s: decoded size %s, JSON says %s: skipped", path, size, (height, width))
      counts["image_size_mismatch"] += 1
      continue
    counts["converted_image"] += converted
    instances = [_instance(ann, source, class_set, height, width, mask_size, counts)
                 for source, ann in anns_by_image[image_id]]
    instances = [i for i in instances if i is not None]
    counts["no_instances"] += not instances
    counts["images"] += 1
    yield {
        "image": data,
        "image_id": image_id,
        "height": height,
        "width": width,
        "boxes": np.array([i[0] for i in instances], np.float32).reshape(-1, 4),
        "classes": np.array([i[1] for i in instances], np.int32),
        "is_crowd": np.array([i[2] for i in instances], bool),
        "areas": np.array([i[3] for i in instances], np.int32),
        "masks": np.array([i[4] for i in instances], np.uint8).reshape(-1, mask_size, mask_size),
    }
