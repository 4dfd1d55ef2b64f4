"""Reads COCO panoptic 2017 (the official zip layout) into `coco_reader`'s examples.

  ROOT/{train2017,val2017}/*.jpg
  ROOT/annotations/panoptic_{train,val}2017.json    per image `file_name`, `segments_info`
  ROOT/annotations/panoptic_{train,val}2017/*.png   segment id = R + 256·G + 256²·B, 0 VOID

Class set `panoptic`. As panopticapi's converters/panoptic2detection_coco_format.py, each
segment listed in `segments_info` is the mask of the PNG pixels carrying its id, with its
`iscrowd`: a thing segment is an instance (a crowd one a crowd instance, as in
instances_*.json); the segments of one stuff category in an image are one region, as in
the stuff JSON. VOID pixels (id 0) belong to no instance. The image decoding, the boxes and
the cropped masks are `coco_reader`'s, on these masks as RLE annotations.

Bad input, counted in `counts` under coco_reader's keys and these:

  missing_png           the annotation's PNG is absent: image skipped
  corrupt_png           the PNG does not decode or is not RGB: image skipped (logged)
  png_size_mismatch     the PNG's size differs from the image's: image skipped (logged)
  unannotated_image     an image without an entry in `annotations`: skipped (logged)
  unlisted_segment      PNG pixels of an id that `segments_info` does not list: left VOID,
                        as panopticapi's converters leave them (logged per image)
  empty_instance        a listed segment without pixels: skipped
  malformed_entry       an image, annotation or segment entry without a field it needs,
                        a repeated segment id: skipped (logged with file and id)
  orphan_annotation     an annotation whose image id is not in the JSON's images
  duplicate_image       an image entry whose id an earlier entry has: skipped
  duplicate_annotation  a second annotation of one image: skipped

A category outside the class set raises DataError naming the file and the segment id: it
means the wrong file or a corrupt one.
"""

import collections
from typing import Any, Iterator

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_jax.data import DataError
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.evaluation import panoptic

_ANNOTATION_FIELDS = {"image_id": int, "file_name": str, "segments_info": list}
_SEGMENT_FIELDS = {"id": int, "category_id": int}


def png_dir(json_path) -> epath.Path:
  """The PNG folder beside a panoptic JSON: its path without `.json`."""
  json_path = epath.Path(json_path)
  return json_path.parent / json_path.name.removesuffix(".json")


def index_json(json_path, class_set: categories.ClassSet, counts: collections.Counter
                ) -> tuple[dict[int, dict], dict[int, dict]]:
  """(images by id, annotations by image id) of a panoptic JSON, both of the usable images.

  Annotations keep their well-formed segments only; bad entries are counted (module doc).
  """
  json_path = epath.Path(json_path)
  data = coco_reader._load_json(json_path)
  images = {i["id"]: i for i in coco_reader._unique(coco_reader._well_formed(
      data["images"], coco_reader._IMAGE_FIELDS, json_path, "image entry", counts),
      json_path, "image", counts)}
  anns = {}
  # One annotation per image: a panoptic annotation's id is its image's.
  for ann in coco_reader._unique(coco_reader._well_formed(
      data["annotations"], _ANNOTATION_FIELDS, json_path, "annotation", counts),
      json_path, "annotation", counts, key="image_id"):
    image_id = ann["image_id"]
    if image_id not in images:
      counts["orphan_annotation"] += 1
      continue
    segments, seen = [], set()
    for seg in coco_reader._well_formed(
        ann["segments_info"], _SEGMENT_FIELDS, json_path, f"image {image_id}: segment",
        counts):
      if not class_set.contains(seg["category_id"]):
        raise DataError(f"{json_path}: image {image_id}, segment {seg['id']} has category_id "
                        f"{seg['category_id']}, not one of class set {class_set.name!r}")
      if seg["id"] in seen or seg["id"] == panoptic.VOID:
        logging.warning("%s: image %d: segment id %d repeated or VOID: skipped", json_path,
                        image_id, seg["id"])
        counts["malformed_entry"] += 1
        continue
      seen.add(seg["id"])
      segments.append(seg)
    anns[image_id] = dict(ann, segments_info=segments)
  for image_id in sorted(images.keys() - anns.keys()):
    logging.warning("%s: image %d has no annotation: skipped", json_path, image_id)
    counts["unannotated_image"] += 1
    del images[image_id]
  return images, anns


def read_png(path, height: int, width: int) -> tuple[np.ndarray | None, str | None, str | None]:
  """([H, W] int64 segment ids or None, the count key of the problem, its message)."""
  path = epath.Path(path)
  if not path.is_file():
    return None, "missing_png", f"{path}: missing: skipped"
  try:
    pan = panoptic.read_png(path)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    return None, "corrupt_png", f"{path}: cannot decode ({e}): skipped"
  if pan.shape != (height, width):
    return None, "png_size_mismatch", (f"{path}: size {pan.shape}, the image is "
                                       f"{(height, width)}: skipped")
  return pan, None, None


def segment_annotations(pan: np.ndarray, segments: list[dict], source: str,
                        counts: collections.Counter, warnings: list[str]
                        ) -> list[dict[str, Any]]:
  """One image's segments as COCO annotations (module doc).

  Args:
    pan: [H, W] segment ids.
    segments: its `segments_info` (`id`, `category_id` (things < 92), optional `iscrowd`).
    source: the PNG, named in warnings.
    counts, warnings: unlisted pixels and empty segments are counted and reported here.

  Returns:
    Per thing segment and per (stuff category, iscrowd), in `segments_info` order:
    `id` (the first segment's), `category_id`, `iscrowd`, `area`, `bbox` [x, y, w, h] and
    `segmentation` (a compressed RLE with `counts` a str).
  """
  ids = np.array([s["id"] for s in segments], np.int64)
  order = np.argsort(ids)
  pos = np.searchsorted(ids[order], pan)  # Per pixel, in [0, n]: n past the largest id.
  listed = np.append(ids[order], -1)[pos] == pan
  unlisted = np.unique(pan[~listed & (pan != panoptic.VOID)])
  if len(unlisted):
    warnings.append(f"{source}: pixels of segment ids {unlisted[:5].tolist()} not in "
                    "segments_info: left VOID")
    counts["unlisted_segment"] += len(unlisted)
  groups = {}  # Key → (first segment, group number); things one each, stuff per category.
  group_of = np.zeros(len(ids), np.int32)  # Per segment in `segments` order.
  for i, seg in enumerate(segments):
    thing = seg["category_id"] < categories.FIRST_STUFF_ID
    key = (seg["id"],) if thing else (seg["category_id"], int(seg.get("iscrowd", 0)))
    group_of[i] = groups.setdefault(key, (seg, len(groups) + 1))[1]
  # The runs of the column-major group map (COCO RLE order), sorted by group.
  flat = np.where(listed, np.append(group_of[order], 0)[pos], 0).T.ravel()
  starts = np.flatnonzero(np.diff(flat, prepend=-1))
  ends = np.append(starts[1:], flat.size)
  runs = np.argsort(flat[starts], kind="stable")
  bounds = np.searchsorted(flat[starts][runs], np.arange(len(groups) + 2))
  height, width = pan.shape
  anns = []
  for seg, g in groups.values():
    run = runs[bounds[g]:bounds[g + 1]]
    if not len(run):
      counts["empty_instance"] += 1
      continue
    # Run lengths from 0s: before the first run, each run, the gap to the next, ..., the
    # end (none when the last run ends the image, as pycocotools' encode writes it).
    edges = np.concatenate([[0], np.stack([starts[run], ends[run]], 1).ravel(), [flat.size]])
    lengths = np.diff(edges)[:None if ends[run[-1]] < flat.size else -1]
    rle = mask_utils.frPyObjects(dict(size=[height, width], counts=lengths.tolist()),
                                 height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    anns.append(dict(id=seg["id"], category_id=seg["category_id"],
                     iscrowd=int(seg.get("iscrowd", 0)),
                     area=int((ends[run] - starts[run]).sum()),
                     bbox=[float(v) for v in mask_utils.toBbox(rle)], segmentation=rle))
  return anns


def index(root, split: str, class_set: categories.ClassSet, *, mask_size: int,
          counts: collections.Counter, partial: set | None = None) -> list[coco_reader.Task]:
  """`coco_reader.index` of a COCO panoptic root: its JSON checked before any image is
  decoded; each task's annotations are (PNG path, segments_info). `partial` stays empty:
  one annotation file annotates no image in part."""
  del partial
  root = epath.Path(root)
  json_path = coco_reader.annotation_path(root, split, "panoptic")
  images, anns = index_json(json_path, class_set, counts)
  pngs = png_dir(json_path)
  segments = {i: (str(pngs / a["file_name"]), a["segments_info"]) for i, a in anns.items()}
  return coco_reader.tasks_of(root / coco_reader.SPLIT_DIRS[split], images, segments,
                              class_set, mask_size, counts)


def decode_task(task: coco_reader.Task) -> tuple[dict | None, collections.Counter, list[str]]:
  """One image of `index` (`coco_reader._example` on its segments): (example or None,
  counts, warnings)."""
  image_id, info, image_path, size, (png_path, segments), class_set, mask_size = task
  pan, problem, message = read_png(png_path, info["height"], info["width"])
  if pan is None:
    return None, collections.Counter({problem: 1}), [message]
  counts, warnings = collections.Counter(), []
  anns = segment_annotations(pan, segments, str(png_path), counts, warnings)
  example, image_counts, image_warnings = coco_reader._example(
      (image_id, info, image_path, size, [(png_path, a) for a in anns], class_set, mask_size))
  return example, counts + image_counts, warnings + image_warnings


def read_examples(root, split: str, class_set: categories.ClassSet, *, mask_size: int,
                  counts: collections.Counter, partial: set | None = None) -> Iterator[dict]:
  """`coco_reader.read_examples` of a COCO panoptic root (module doc)."""
  tasks = index(root, split, class_set, mask_size=mask_size, counts=counts, partial=partial)
  yield from coco_reader.examples(tasks, counts, decode_task)
