"""COCO detection metrics (`bbox`, `segm`) with pycocotools or faster-coco-eval.

Ground truth is a merge of COCO annotation files (the stuff JSON, plus the instances JSON
for `things_and_stuff`) filtered to a class set; predictions are COCO result dicts
(`image_id`, `category_id` = COCO id, `bbox` xywh in original pixels, `score`,
`segmentation` = compressed RLE with `counts` a str), so the written JSON can be scored by
any COCO tool. K classes, N detections, H × W the original image.

Two COCOeval implementations give the same numbers (tests/evaluation/test_coco_eval.py
compares them): `faster_coco_eval` (C++ matching and accumulation) and `pycocotools` (the
reference); `auto` is the first where it imports, else the second.
"""

import contextlib
import copy
import functools
import io
import json
from typing import Any, Sequence
import weakref

from absl import logging
from etils import epath
import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

# COCOeval.stats in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
BACKENDS = ("auto", "pycocotools", "faster_coco_eval")


@functools.cache
def _has_faster_coco_eval() -> bool:
  try:
    import faster_coco_eval  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def resolve_backend(backend: str) -> str:
  """One of `BACKENDS` → the implementation it names (`auto`: faster-coco-eval if installed)."""
  if backend not in BACKENDS:
    raise ValueError(f"backend {backend!r}: must be one of {BACKENDS}")
  if backend == "auto":
    return "faster_coco_eval" if _has_faster_coco_eval() else "pycocotools"
  return backend


@contextlib.contextmanager
def _stdout_to_log():
  """pycocotools prints progress; it goes to the log instead."""
  buf = io.StringIO()
  try:
    with contextlib.redirect_stdout(buf):
      yield
  finally:  # Also when pycocotools raises: its output tells why.
    if buf.getvalue().strip():
      logging.info("pycocotools:\n%s", buf.getvalue().rstrip())


def load_ground_truth(annotation_files: Sequence[str], class_set) -> coco_lib.COCO:
  """Merges COCO annotation files and keeps the annotations of `class_set`.

  Images are the union over the files (one id must have one size everywhere); categories
  are the class set's (COCO id, name, supercategory); annotations of other categories
  (e.g. `other` (183) for `stuff_no_other`) are dropped and the rest renumbered 1..n, since
  ids of different files may collide. Crowd annotations are kept: COCOeval ignores
  detections matched to them, and the label maps skip them.

  Args:
    annotation_files: paths of COCO-format JSON files.
    class_set: a `maskrcnn_jax.data.categories.ClassSet`.

  Returns:
    An indexed pycocotools `COCO`.
  """
  if not annotation_files:
    raise ValueError("annotation_files is empty: at least one COCO JSON file is needed")
  wanted = set(int(c) for c in class_set.coco_ids)
  images, annotations = {}, []
  for path in annotation_files:
    data = json.loads(epath.Path(path).read_text())
    for key in ("images", "annotations"):
      if key not in data:
        raise ValueError(f"{path}: not a COCO annotation file (no {key!r})")
    for image in data["images"]:
      known = images.setdefault(image["id"], image)
      if (known["height"], known["width"]) != (image["height"], image["width"]):
        raise ValueError(f"{path}: image {image['id']} is {image['height']}x{image['width']}"
                         f" here but {known['height']}x{known['width']} in an earlier file")
    annotations.extend(a for a in data["annotations"] if a["category_id"] in wanted)
  return ground_truth_of(list(images.values()), annotations, class_set)


def ground_truth_of(images: list[dict], annotations: list[dict], class_set) -> coco_lib.COCO:
  """An indexed `COCO` of images, annotations (`add_annotations`) and the class set's
  categories."""
  categories = [dict(id=int(c), name=n, supercategory=s) for c, n, s in
                zip(class_set.coco_ids, class_set.names, class_set.supercategories)]
  gt = coco_lib.COCO()
  gt.dataset = dict(images=images, annotations=[], categories=categories)
  with _stdout_to_log():
    gt.createIndex()
  add_annotations(gt, annotations)
  return gt


def add_annotations(coco_gt: coco_lib.COCO, annotations: list[dict]) -> None:
  """Adds annotations of `coco_gt`'s images to it and to its index, as `createIndex` would:
  copies, numbered on from its last id (1..n over all), `iscrowd` 0 where absent."""
  first = len(coco_gt.dataset["annotations"]) + 1
  for new_id, ann in enumerate(annotations, start=first):
    ann = dict(ann, id=new_id, iscrowd=ann.get("iscrowd", 0))
    coco_gt.dataset["annotations"].append(ann)
    coco_gt.anns[new_id] = ann
    coco_gt.imgToAnns[ann["image_id"]].append(ann)
    coco_gt.catToImgs[ann["category_id"]].append(ann["image_id"])


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
  """[N, H, W] bool → N compressed RLEs `{"size": [H, W], "counts": str}` (JSON-ready)."""
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f"masks must be [N, H, W], got {masks.shape}")
  masks = masks.astype(bool, copy=False).view(np.uint8)
  rles = []
  for mask in masks:  # Per mask: a cache-friendly 2-D transposing copy each.
    rle = mask_utils.encode(np.asfortranarray(mask[:, :, None]))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    rles.append(rle)
  return rles


def decode_masks(rles: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
  """N compressed RLEs → [N, H, W] bool."""
  if not rles:
    return np.zeros((0, height, width), bool)
  return np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool)


def to_coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray,
                    classes: np.ndarray, class_set, *,
                    masks: np.ndarray | None = None,
                    rles: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
  """One image's detections → COCO result dicts.

  Args:
    image_id: COCO image id.
    boxes: [N, 4] (x1, y1, x2, y2) in original-image pixels.
    scores: [N] float.
    classes: [N] int training ids in [1, K].
    class_set: the `ClassSet` mapping training id i + 1 to `coco_ids[i]`.
    masks: optional [N, H, W] bool, the binary masks in the original image.
    rles: optional instead of `masks`: their N compressed RLEs (`encode_masks`).

  Returns:
    N dicts with `image_id`, `category_id`, `bbox` [x, y, w, h], `score` and, with masks,
    `segmentation` (compressed RLE).
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  classes = np.asarray(classes).reshape(-1)
  if not len(boxes) == len(scores) == len(classes):
    raise ValueError(f"boxes {boxes.shape}, scores {scores.shape} and classes "
                     f"{classes.shape} disagree on N")
  if len(classes) and (classes.min() < 1 or classes.max() > class_set.num_classes):
    raise ValueError(f"classes must be training ids in [1, {class_set.num_classes}], got "
                     f"[{classes.min()}, {classes.max()}]")
  coco_ids = np.asarray(class_set.coco_ids)[classes - 1] if len(classes) else []
  xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
  # Scores unrounded, as detectron2 writes them: rounding makes ties in COCOeval's sort.
  results = [dict(image_id=int(image_id), category_id=int(c), bbox=b, score=s)
             for c, b, s in zip(coco_ids, np.round(xywh, 2).tolist(), scores.tolist())]
  if masks is not None:
    rles = encode_masks(masks)
  if rles is not None:
    if len(rles) != len(results):
      raise ValueError(f"masks has {len(rles)} entries for {len(results)} detections")
    for result, rle in zip(results, rles):
      result["segmentation"] = rle
  return results


def write_results(path: str, results: list[dict[str, Any]]) -> None:
  """Writes COCO results as a JSON list."""
  epath.Path(path).write_text(json.dumps(results))


def _empty_results(coco_gt: coco_lib.COCO) -> coco_lib.COCO:
  """A result set without detections (`COCO.loadRes` refuses an empty list)."""
  dt = coco_lib.COCO()
  dt.dataset = dict(images=coco_gt.dataset["images"], annotations=[],
                    categories=coco_gt.dataset["categories"])
  dt.createIndex()
  return dt


# pycocotools ground truth → (its annotation count, its faster-coco-eval copy), indexed
# again only when annotations were added (`add_annotations`).
_FASTER_GT = weakref.WeakKeyDictionary()


def _faster_ground_truth(coco_gt: coco_lib.COCO):
  import faster_coco_eval  # pylint: disable=g-import-not-at-top
  count = len(coco_gt.dataset["annotations"])
  if _FASTER_GT.get(coco_gt, (None,))[0] != count:
    gt = faster_coco_eval.COCO()
    gt.dataset = coco_gt.dataset
    gt.createIndex()
    _FASTER_GT[coco_gt] = (count, gt)
  return _FASTER_GT[coco_gt][1]


def _cocoeval(coco_gt: coco_lib.COCO, results: list[dict[str, Any]], iou_type: str,
              backend: str):
  """An unevaluated COCOeval object of `backend` for `results`."""
  if backend == "pycocotools":
    coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
    return cocoeval.COCOeval(coco_gt, coco_dt, iou_type)
  import faster_coco_eval  # pylint: disable=g-import-not-at-top
  gt = _faster_ground_truth(coco_gt)
  return faster_coco_eval.COCOeval_faster(gt, gt.loadRes(results), iou_type,
                                          print_function=logging.info)


def _checked(coco_gt: coco_lib.COCO, results: list[dict[str, Any]], iou_type: str,
             image_ids: Sequence[int]) -> tuple[list[dict[str, Any]], list[int]]:
  """(copies of `results` as COCOeval takes them, the sorted image ids); bad input raises."""
  if iou_type not in IOU_TYPES:
    raise ValueError(f"iou_type {iou_type!r}: must be one of {IOU_TYPES}")
  image_ids = sorted(set(int(i) for i in image_ids))
  missing = set(image_ids) - set(coco_gt.getImgIds())
  if missing:
    raise ValueError(f"{len(missing)} evaluated images are not in the ground truth, e.g. "
                     f"{sorted(missing)[:5]}")
  if iou_type == "segm" and any("segmentation" not in r for r in results):
    raise ValueError("segm evaluation needs a `segmentation` in every result")
  # Copies: loadRes adds `id`, `area`, … in place.
  dropped = ("bbox",) if iou_type == "segm" else ()
  return [{k: v for k, v in r.items() if k not in dropped} for r in results], image_ids


def _sorted_cat_ids(coco_gt: coco_lib.COCO) -> list[int]:
  return sorted(c["id"] for c in coco_gt.dataset["categories"])


def evaluate_images(coco_gt: coco_lib.COCO, results: list[dict[str, Any]], iou_type: str,
                    image_ids: Sequence[int]) -> dict[str, Any]:
  """pycocotools' per-image matching (`COCOeval.evaluate`) of `image_ids`, for `accumulate`.

  Matching is per image, so processes can match their own images: `accumulate` of the
  parts of disjoint image sets gives exactly `evaluate` of their union.

  Returns:
    `image_ids` (sorted) and `blocks`: COCOeval's per-image records, one list per
    (category, area range) over `image_ids`.
  """
  results, image_ids = _checked(coco_gt, results, iou_type, image_ids)
  with _stdout_to_log():
    ev = _cocoeval(coco_gt, results, iou_type, "pycocotools")
    ev.params.imgIds = image_ids
    ev.params.catIds = _sorted_cat_ids(coco_gt)
    ev.evaluate()
  n = len(image_ids)
  num_blocks = len(ev.params.catIds) * len(ev.params.areaRng)
  return dict(image_ids=image_ids,
              blocks=[list(ev.evalImgs[j * n:(j + 1) * n]) for j in range(num_blocks)])


def accumulate(coco_gt: coco_lib.COCO, parts: Sequence[dict[str, Any]], iou_type: str
               ) -> tuple[dict[str, float], np.ndarray]:
  """`evaluate` (pycocotools) from `evaluate_images` parts of disjoint image sets."""
  ids = [i for part in parts for i in part["image_ids"]]
  if len(set(ids)) != len(ids):
    raise ValueError("the parts share images: each image must be matched once")
  order = np.argsort(ids, kind="stable")
  eval_imgs = []
  for j in range(len(parts[0]["blocks"])):
    row = [e for part in parts for e in part["blocks"][j]]
    eval_imgs += [row[i] for i in order]
  with _stdout_to_log():
    ev = cocoeval.COCOeval(coco_gt, None, iou_type)
    ev.params.imgIds = sorted(ids)
    ev.params.catIds = _sorted_cat_ids(coco_gt)
    ev._paramsEval = copy.deepcopy(ev.params)  # pylint: disable=protected-access
    ev.evalImgs = eval_imgs
    ev.accumulate()
    ev.summarize()
  return _summary(ev, coco_gt)


def _summary(ev, coco_gt: coco_lib.COCO) -> tuple[dict[str, float], np.ndarray]:
  """(metrics, per-class AP) of an accumulated and summarized COCOeval (`evaluate`)."""
  cat_ids = [c["id"] for c in coco_gt.dataset["categories"]]
  # COCOeval's -1 (no GT in an area range) is undefined: NaN.
  metrics = {name: float(v) if v > -1 else float("nan")
             for name, v in zip(METRIC_NAMES, ev.stats[:len(METRIC_NAMES)])}
  # precision: [T iou, R recall, K cat, A area, M maxdets]; area "all", 100 detections.
  precision = ev.eval["precision"][:, :, :, 0, -1]
  per_sorted = np.full(len(cat_ids), np.nan)
  for k in range(len(cat_ids)):
    p = precision[:, :, k]
    if (p > -1).any():
      per_sorted[k] = float(np.mean(p[p > -1]))
  position = {c: k for k, c in enumerate(sorted(cat_ids))}
  return metrics, np.array([per_sorted[position[c]] for c in cat_ids])


def evaluate(coco_gt: coco_lib.COCO, results: list[dict[str, Any]], iou_type: str,
             image_ids: Sequence[int], *, backend: str = "pycocotools"
             ) -> tuple[dict[str, float], np.ndarray]:
  """COCOeval on the images `image_ids`.

  For `segm` the results' `bbox` is removed first, so that the small/medium/large split
  uses the mask area (as detectron2 does). Empty `results` give zeros (NaN where the
  images hold no GT, e.g. no small objects).

  Args:
    coco_gt: from `load_ground_truth` (its categories are the K classes).
    results: COCO result dicts (`to_coco_results`); `segmentation` needed for `segm`.
    iou_type: `bbox` or `segm`.
    image_ids: the evaluated images; each must be in `coco_gt`.
    backend: one of `BACKENDS`.

  Returns:
    (metrics, per_class_ap): the 12 numbers of `METRIC_NAMES`, and [K] AP@[.5:.95] per
    category in `coco_gt` category order, NaN for a category without GT in these images.
  """
  if resolve_backend(backend) == "pycocotools":
    return accumulate(coco_gt, [evaluate_images(coco_gt, results, iou_type, image_ids)],
                      iou_type)
  results, image_ids = _checked(coco_gt, results, iou_type, image_ids)
  with _stdout_to_log():
    ev = _cocoeval(coco_gt, results, iou_type, "faster_coco_eval")
    ev.params.imgIds = image_ids
    ev.params.catIds = _sorted_cat_ids(coco_gt)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return _summary(ev, coco_gt)
