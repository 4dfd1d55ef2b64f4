"""Reads COCO-Stuff 2017 from the download layout into per-image training examples.

  ROOT/{train2017,val2017}/*.jpg
  ROOT/annotations/stuff_{train,val}2017.json       RLE, one annotation per (image, stuff class)
  ROOT/annotations/instances_{train,val}2017.json   things (polygons or RLE); things_and_stuff, coco

Class set `coco` reads the instances files only: a plain COCO 2017 root.

N instances of one image, Sm the mask side. Boxes come from the decoded masks (tight, in
original pixels, (x1, y1, x2, y2) with x2 = last column + 1), never from the JSON `bbox`.

Bad input is handled as follows and counted in `counts` under these keys:

  missing_image         image file absent: image skipped (its file logged)
  corrupt_image         not decodable or truncated: image skipped
  image_size_mismatch   decoded size differs from the JSON: image skipped
  converted_image       grayscale, CMYK, PNG, ... content: stored as RGB PNG, kept
  exif_orientation_N    EXIF orientation N (2-8: mirrored and/or rotated) applied before the
                        size check, as `pixels.decode` applies it in prediction; the image
                        is stored as RGB PNG (its pixels as shown), kept
  rle_size_mismatch     an RLE `size` differs from the image: annotation skipped (logged
                        with file and annotation id); a mask at the wrong size cannot be placed
  malformed_rle         an RLE whose counts do not decode, are negative or do not sum to
                        height × width: annotation skipped (logged with file and annotation id)
  malformed_entry       a JSON image or annotation entry without a field it needs, or with
                        one of the wrong type (a polygon that is not numbers): entry skipped
                        (logged with file and id)
  partial_annotations   things_and_stuff: an image listed in only one of the stuff and
                        instances files (logged with the first ids); kept, its id reported in
                        `partial` so that training can leave it out
  empty_instance        the mask has no pixel inside the image (zero area, or a polygon
                        entirely outside): instance skipped
  dropped_category      a known COCO id outside the class set (e.g. 183 for stuff_no_other)
  orphan_annotation     an annotation whose image id is not in the JSON's images
  duplicate_image       an image entry whose id an earlier entry of the same file has: skipped
  duplicate_annotation  an annotation whose id an earlier one of the same file has: skipped
  no_instances          an image left without instances: kept (evaluation scores it; the
                        training pipeline skips it)
  images                images written

`index` checks the annotation files in one pass before any image is decoded. Unknown
category ids (neither COCO-Stuff's 183 ids nor COCO panoptic's merged 184-200) raise
`DataError` naming the file, their number and the first ids, and so does a file that is not
COCO JSON: they mean the wrong file or a corrupt one.

The images are decoded in image-id order, by a process pool when one is given (`decode`:
the JSON is read once, in the calling process; each worker gets its images' annotations
and returns the masks bit-packed).
"""

import collections
import io
import json
import multiprocessing
from multiprocessing import pool as mp_pool
import sys
import types
from typing import Any, Iterator

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_jax.data import categories
from maskrcnn_jax.data import DataError
from maskrcnn_jax.data import pixels

# One image to decode: (image id, JSON image entry, file path, file size in bytes,
# [(annotation file name, annotation)], class set, mask side Sm).
Task = tuple[int, dict, str, int, list, categories.ClassSet, int]

SPLIT_DIRS = {"train": "train2017", "validation": "val2017"}


def annotation_path(root, split: str, kind: str) -> epath.Path:
  """ROOT/annotations/{kind}_{train,val}2017.json, kind `stuff`, `instances` or `panoptic`."""
  return epath.Path(root) / "annotations" / f"{kind}_{SPLIT_DIRS[split]}.json"


def annotation_kinds(class_set: categories.ClassSet) -> tuple[str, ...]:
  """The annotation files a class set reads: stuff when it has stuff classes, instances
  when it has things (`coco`: a plain COCO 2017 root, no stuff file needed); `panoptic`
  reads the panoptic file (`panoptic_reader`)."""
  if class_set.name == "panoptic":
    return ("panoptic",)
  things = any(cid < categories.FIRST_STUFF_ID for cid in class_set.coco_ids)
  stuff = any(cid >= categories.FIRST_STUFF_ID for cid in class_set.coco_ids)
  return ("stuff",) * stuff + ("instances",) * things


def packed_mask_bytes(mask_size: int) -> int:
  """Bytes of one bit-packed Sm×Sm mask."""
  return (mask_size * mask_size + 7) // 8


def pack_masks(masks: np.ndarray) -> np.ndarray:
  """[N, Sm, Sm] uint8 in {0, 1} -> [N, packed_mask_bytes(Sm)] uint8 (bits, MSB first)."""
  n, height, width = masks.shape
  return np.packbits(masks.reshape(n, height * width).astype(bool), axis=1)


def _load_json(path: epath.Path) -> dict:
  if not path.is_file():
    raise DataError(f"annotation file {path} does not exist")
  try:
    data = json.loads(path.read_text())
  except ValueError as e:
    raise DataError(f"{path}: not valid JSON ({e})") from None
  if not (isinstance(data, dict) and isinstance(data.get("images"), list)
          and isinstance(data.get("annotations"), list)):
    raise DataError(f"{path}: not COCO JSON (needs `images` and `annotations` lists)")
  return data


_IMAGE_FIELDS = {"id": int, "file_name": str, "height": int, "width": int}
_ANNOTATION_FIELDS = {"id": int, "image_id": int, "category_id": int, "segmentation": (list, dict)}


def _malformed(entry, fields) -> str | None:
  """What is wrong with a JSON entry (a missing or mistyped field), or None."""
  if not isinstance(entry, dict):
    return f"is a {type(entry).__name__}, not an object"
  for name, kind in fields.items():
    value = entry.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
      return f"field {name!r} is missing or not {getattr(kind, '__name__', 'list or dict')}"
  return None


def rle_counts(counts) -> np.ndarray:
  """The run lengths of a COCO RLE: `counts` a list, or its compressed string (5 bits per
  character plus a continuation bit, runs from the fourth on stored as a difference to the
  run two before, as pycocotools' rleFrString). Returns [R] int64; raises ValueError if it
  does not decode."""
  if isinstance(counts, list):
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
      raise ValueError("counts are not integers")
    return np.array(counts, np.int64)
  if isinstance(counts, bytes):
    counts = counts.decode("ascii")
  if not isinstance(counts, str):
    raise ValueError(f"counts is a {type(counts).__name__}")
  chars = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
  if not len(chars) or chars.min() < 0 or chars.max() > 63 or chars[-1] & 0x20:
    raise ValueError("counts string is empty, has characters outside the code or ends "
                     "mid-number")
  last = (chars & 0x20) == 0  # The last character of each number.
  number = np.cumsum(np.concatenate([[0], last[:-1]]))  # Which number each character is of.
  digit = np.arange(len(chars)) - np.flatnonzero(np.concatenate([[True], last[:-1]]))[number]
  values = np.zeros(int(last.sum()), np.int64)
  np.add.at(values, number, (chars & 0x1f) << (5 * digit))
  width = 5 * (digit[last] + 1)
  negative = (chars[last] & 0x10) != 0
  values = np.where(negative, values - (np.int64(1) << width), values)
  # Runs 3, 4, 5, ... (0-based) are stored as differences to the run two before.
  out = values.copy()
  for parity in (0, 1):
    idx = np.arange(len(values))
    idx = idx[(idx >= 3) & (idx % 2 == parity)]
    if len(idx):
      out[idx] = values[idx[0] - 2] + np.cumsum(values[idx])
  return out


def _rle_problem(segmentation: dict, height: int, width: int) -> str | None:
  """Why an RLE cannot be decoded at height × width, or None (its size already matches)."""
  try:
    counts = rle_counts(segmentation.get("counts"))
  except (ValueError, UnicodeError, TypeError) as e:
    return str(e)
  if (counts < 0).any():
    return "negative run length"
  if counts.sum() != height * width:
    return f"run lengths sum to {counts.sum()}, not {height} × {width}"
  return None


def _rgb_jpeg(data: bytes) -> tuple[bytes, tuple[int, int], bool, int]:
  """(stored bytes, (height, width) as shown, converted, EXIF orientation) of an image file.

  `data` itself when it is an RGB JPEG without an orientation to apply; otherwise the
  pixels `pixels.decode` gives (orientation applied), losslessly as PNG. Raises OSError
  (or a PIL error) when `data` cannot be fully decoded.
  """
  with Image.open(io.BytesIO(data)) as image:
    image.load()  # Decodes every pixel: truncated files raise here.
    orientation = pixels.orientation(image)
    converted = not (image.format == "JPEG" and image.mode == "RGB")
    if not converted and orientation == 1:
      return data, (image.height, image.width), False, orientation
  shown = pixels.decode(data)
  out = io.BytesIO()
  Image.fromarray(shown).save(out, format="PNG", compress_level=1)
  return out.getvalue(), shown.shape[:2], converted, orientation


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


def _instance(ann, source, class_set, height, width, mask_size, counts, warnings):
  """One decoded instance (box [4], train id, crowd, area, mask [Sm, Sm]) or None if skipped.

  Skips are counted in `counts`; their messages are appended to `warnings`.
  """
  cid = ann["category_id"]  # Known: `index` refuses unknown ids.
  if not class_set.contains(cid):
    counts["dropped_category"] += 1
    return None
  seg = ann["segmentation"]
  if isinstance(seg, dict):
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
      problem = f"size {size!r} is not [height, width]"
    elif size != [height, width]:
      warnings.append(f"{source}: annotation {ann['id']} has RLE size {size}, image is "
                      f"{height}x{width}: skipped")
      counts["rle_size_mismatch"] += 1
      return None
    else:
      problem = _rle_problem(seg, height, width)
    if problem:
      warnings.append(f"{source}: annotation {ann['id']} has a malformed RLE ({problem}): skipped")
      counts["malformed_rle"] += 1
      return None
  try:
    rle = _to_rle(seg, height, width)
  except (TypeError, ValueError, IndexError, OverflowError) as e:
    warnings.append(f"{source}: annotation {ann['id']} has a malformed polygon ({e}): skipped")
    counts["malformed_entry"] += 1
    return None
  area = 0 if rle is None else int(mask_utils.area(rle))
  if area == 0:
    counts["empty_instance"] += 1
    return None
  x, y, w, h = mask_utils.toBbox(rle)
  box = np.array([x, y, x + w, y + h], np.float32)
  mask = crop_mask(mask_utils.decode(rle), box, mask_size)
  return box, class_set.to_train_id(cid), bool(ann.get("iscrowd", 0)), area, mask


def _example(task: Task) -> tuple[dict | None, collections.Counter, list[str]]:
  """One image: (its example or None when skipped, its counts, its warning messages)."""
  image_id, info, path, _, anns, class_set, mask_size = task
  counts, warnings = collections.Counter(), []
  path = epath.Path(path)
  try:
    data, size, converted, orientation = _rgb_jpeg(path.read_bytes())
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    warnings.append(f"{path}: cannot decode ({e}): skipped")
    counts["corrupt_image"] += 1
    return None, counts, warnings
  if orientation != 1:
    counts[f"exif_orientation_{orientation}"] += 1
  height, width = info["height"], info["width"]
  if size != (height, width):
    warnings.append(f"{path}: decoded size {size}, JSON says {(height, width)}: skipped")
    counts["image_size_mismatch"] += 1
    return None, counts, warnings
  counts["converted_image"] += converted
  instances = [_instance(ann, source, class_set, height, width, mask_size, counts, warnings)
               for source, ann in anns]
  instances = [i for i in instances if i is not None]
  counts["no_instances"] += not instances
  counts["images"] += 1
  return {
      "image": data,
      "image_id": image_id,
      "height": height,
      "width": width,
      "boxes": np.array([i[0] for i in instances], np.float32).reshape(-1, 4),
      "classes": np.array([i[1] for i in instances], np.int32),
      "is_crowd": np.array([i[2] for i in instances], bool),
      "areas": np.array([i[3] for i in instances], np.int32),
      "masks": np.array([i[4] for i in instances], np.uint8).reshape(-1, mask_size, mask_size),
  }, counts, warnings


def _well_formed(entries, fields, path, what: str, counts) -> Iterator[dict]:
  """The entries `_malformed` finds nothing wrong with; the others logged and counted."""
  for i, entry in enumerate(entries):
    problem = _malformed(entry, fields)
    if problem:
      ident = entry.get("id", f"#{i}") if isinstance(entry, dict) else f"#{i}"
      logging.warning("%s: %s %s %s: skipped", path, what, ident, problem)
      counts["malformed_entry"] += 1
      continue
    yield entry


def _unknown_categories(path, anns) -> str | None:
  """The one-line error for annotations whose category is not a COCO-Stuff id, or None."""
  unknown = [a for a in anns if not categories.is_known(a["category_id"])]
  if not unknown:
    return None
  cids = sorted({a["category_id"] for a in unknown})
  return (f"{path}: unknown category_id in {len(unknown)} of {len(anns)} annotations (ids "
          f"{', '.join(map(str, cids[:5]))}{', ...' if len(cids) > 5 else ''}; first annotation "
          f"{unknown[0]['id']}): not COCO-Stuff's, a wrong annotation file or class set")


def _unique(entries, path, what: str, counts, key: str = "id") -> Iterator[dict]:
  """The entries whose `key` no earlier entry of this file has; the others counted as
  duplicates and logged."""
  seen, duplicates = set(), []
  for entry in entries:
    if entry[key] in seen:
      duplicates.append(entry[key])
      continue
    seen.add(entry[key])
    yield entry
  if duplicates:
    counts[f"duplicate_{what}"] += len(duplicates)
    logging.warning("%s: %d %s entries repeat an earlier %s: skipped (first: %s)", path,
                    len(duplicates), what, key, duplicates[:10])


def index(root, split: str, class_set: categories.ClassSet, *, mask_size: int,
          counts: collections.Counter, partial: set | None = None) -> list[Task]:
  """The images of `split` to decode, by id: the split's JSON files checked in one pass.

  Raises DataError for a file that is not COCO JSON or holds an unknown category id. Counts
  (see the module docstring) malformed entries, duplicate ids, orphan annotations, partial
  annotations (their ids added to `partial`) and missing image files (each one logged).
  """
  root = epath.Path(root)
  images, anns_by_image, ids_by_file = {}, collections.defaultdict(list), {}
  for kind in annotation_kinds(class_set):
    path = annotation_path(root, split, kind)
    logging.info("Checking %s", path)
    data = _load_json(path)
    anns = list(_unique(_well_formed(data["annotations"], _ANNOTATION_FIELDS, path,
                                     "annotation", counts), path, "annotation", counts))
    error = _unknown_categories(path, anns)
    if error:
      raise DataError(error)
    known = set()
    for image in _unique(_well_formed(data["images"], _IMAGE_FIELDS, path, "image entry",
                                      counts), path, "image", counts):
      images.setdefault(image["id"], image)
      known.add(image["id"])
    ids_by_file[path.name] = known
    for ann in anns:
      if ann["image_id"] not in known:
        counts["orphan_annotation"] += 1
        continue
      anns_by_image[ann["image_id"]].append((path.name, ann))
  if len(ids_by_file) > 1:
    everywhere = set.intersection(*ids_by_file.values())
    only_some = sorted(set(images) - everywhere)
    counts["partial_annotations"] += len(only_some)
    if partial is not None:
      partial.update(only_some)
    for name, ids in ids_by_file.items():
      missing = sorted(set(only_some) - ids)
      if missing:
        logging.warning("%s: %d images of the other annotation file are not listed here "
                        "(first ids: %s)", name, len(missing), missing[:10])
  return tasks_of(root / SPLIT_DIRS[split], images, anns_by_image, class_set, mask_size, counts)


def tasks_of(image_dir: epath.Path, images: dict[int, dict], anns: dict[int, Any], class_set,
             mask_size: int, counts: collections.Counter) -> list[Task]:
  """The tasks of `images` (by id) whose file exists, each with `anns[id]` (popped: the
  index is freed as the tasks are made); a missing file is counted and named."""
  tasks = []
  for image_id in sorted(images):
    path = image_dir / images[image_id]["file_name"]
    try:
      size = path.stat().length
    except OSError:
      logging.warning("%s: image %d has no file: skipped", path, image_id)
      counts["missing_image"] += 1
      continue
    tasks.append((image_id, images[image_id], str(path), size, anns.pop(image_id, []),
                  class_set, mask_size))
  return tasks


def read_examples(
    root,
    split: str,
    class_set: categories.ClassSet,
    *,
    mask_size: int,
    counts: collections.Counter,
    partial: set | None = None,
) -> Iterator[dict]:
  """Yields one example per usable image of `split` (train | validation), by image id.

  An example: image (RGB JPEG or PNG bytes: `_rgb_jpeg`), image_id, height, width, and per
  instance boxes [N, 4] float32 original pixels, classes [N] int32 training ids in [1, K],
  is_crowd [N] bool, areas [N] int32 (mask pixels), masks [N, Sm, Sm] uint8 in {0, 1}
  (the mask cropped to its box, resized). Bad input is skipped and counted in `counts`
  (see the module docstring); the ids of images with partial annotations are added to
  `partial`. Decodes in this process; `decode` is the parallel form.
  """
  tasks = index(root, split, class_set, mask_size=mask_size, counts=counts, partial=partial)
  yield from examples(tasks, counts)


def examples(tasks: list[Task], counts: collections.Counter, example=None) -> Iterator[dict]:
  """The examples of `tasks`, decoded in this process by `example` (default `_example`);
  their counts added to `counts`, their warnings logged."""
  for ex, image_counts, warnings in map(example or _example, tasks):
    counts.update(image_counts)
    for message in warnings:
      logging.warning("%s", message)
    if ex is not None:
      yield ex


def _packed_examples(example, tasks: list[Task]) -> list:
  """A worker's chunk: `example` of each task, masks bit-packed (8× less to send back)."""
  out = []
  for ex, counts, warnings in map(example, tasks):
    if ex is not None:
      ex["masks"] = pack_masks(ex["masks"])
    out.append((ex, counts, warnings))
  return out


def decode(tasks: list[Task], *, pool: mp_pool.Pool | None, max_pending_bytes: int,
           chunk_images: int = 8, example=None) -> Iterator[tuple]:
  """(example or None, counts, warnings) of each task, in order, masks packed (`pack_masks`).

  example: the module-level function decoding one task (default `_example`;
  `panoptic_reader.decode_task` for its tasks).

  With a pool, chunks of up to `chunk_images` consecutive images go to the workers, never
  more than `max_pending_bytes` of image files at once (at least one chunk) between being
  sent and the caller's next request for an example: memory stays bounded for any split.
  """
  example = example or _example
  chunks = [tasks[i:i + chunk_images] for i in range(0, len(tasks), chunk_images)]
  if pool is None:
    for chunk in chunks:
      yield from _packed_examples(example, chunk)
    return
  pending, pending_bytes, next_chunk = collections.deque(), 0, 0
  while pending or next_chunk < len(chunks):
    while next_chunk < len(chunks):
      size = sum(t[3] for t in chunks[next_chunk])
      if pending and pending_bytes + size > max_pending_bytes:
        break
      pending.append((size, pool.apply_async(_packed_examples, (example, chunks[next_chunk]))))
      pending_bytes += size
      next_chunk += 1
    size, result = pending.popleft()
    yield from result.get()
    pending_bytes -= size


def worker_pool(num_workers: int) -> mp_pool.Pool:
  """A pool for `decode`. Spawned, not forked: the caller may run TensorFlow's and JAX's
  threads. The workers start without the caller's main module, which spawn would import in
  each (main.py or prepare: TensorFlow and JAX, about 0.5 GiB per worker); they need only
  this module."""
  main = sys.modules["__main__"]
  sys.modules["__main__"] = types.ModuleType("__main__")  # Read by spawn as the pool starts.
  try:
    return multiprocessing.get_context("spawn").Pool(num_workers)
  finally:
    sys.modules["__main__"] = main
