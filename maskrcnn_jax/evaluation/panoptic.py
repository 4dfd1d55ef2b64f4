"""Panoptic segmentation: detections merged into segments, the COCO panoptic format, PQ.

A panoptic map is [H, W] int segment ids, 0 = VOID; a segment's `segments_info` entry
holds `id`, `category_id` (COCO id), `area`, `bbox` [x, y, w, h] and `iscrowd`. On disk
(COCO panoptic format) a map is an RGB PNG with id = R + 256·G + 256²·B, and a JSON holds
per image `{image_id, file_name, segments_info}`.

Merging (`combine`, as detectron2's `combine_semantic_and_instance_outputs`): thing
detections by descending score, from `instances_score_threshold` up; one whose mask has
more than `overlap_threshold` of its area on earlier segments is dropped, else it takes its
free pixels. Stuff detections are painted into a semantic map in ascending score (as for
the semantic metrics); each stuff class's free pixels become one segment if at least
`stuff_area_threshold` of them remain.

Two ground truths, named in the metrics: COCO panoptic's own PNGs and `segments_info`
(class set `panoptic`, `panoptic_coco.GroundTruth`, metrics `panoptic_coco/...`: the
benchmark published PQ uses), or a map derived from the COCO-Stuff and instances
annotations of the other class sets with things (`ground_truth`, `panoptic_cocostuff/...`).

PQ, SQ, RQ are exactly panopticapi's `pq_compute` (panopticapi/evaluation.py): a GT and a
predicted segment of one category match when IoU > 0.5, with the predicted pixels on VOID
left out of the union; crowd GT segments are never matched nor FN; an unmatched predicted
segment is no FP when more than half of it lies on VOID or on its category's crowd region.
Per category c: PQ_c = Σ IoU / (TP + FP/2 + FN/2), SQ_c = Σ IoU / TP, RQ_c = TP / (TP +
FP/2 + FN/2); PQ is the mean over the categories with TP + FP + FN > 0 (all, things,
stuff); NaN where there are none (panopticapi divides by zero).

CLI: `python -m maskrcnn_jax.evaluation.panoptic --gt_json J --gt_dir D --pred_json PJ
--pred_dir PD [--output metrics.json]` prints panopticapi's table and writes the results.
"""

import collections
import io
import json
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_jax.data import categories as categories_lib
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import stuff_metrics

VOID = 0
OFFSET = 256 ** 3  # Above every id an RGB PNG can hold.
MATCH_IOU = 0.5
GROUPS = (("All", None), ("Things", True), ("Stuff", False))

# {category id: [Σ IoU of matches, TP, FP, FN]}.
Stats = dict[int, np.ndarray]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] uint8 → [H, W] int64 segment ids (R + 256·G + 256²·B)."""
  rgb = np.asarray(rgb, np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
  """[H, W] segment ids in [0, 256³) → [H, W, 3] uint8."""
  ids = np.asarray(ids, np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
    raise ValueError(f"segment ids must be in [0, {OFFSET}), got [{ids.min()}, {ids.max()}]")
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_png(path) -> np.ndarray:
  """A COCO panoptic PNG → [H, W] int64 segment ids."""
  with epath.Path(path).open("rb") as f:
    image = Image.open(f)
    image.load()
  if image.mode != "RGB":
    raise ValueError(f"{path}: mode {image.mode!r}; a panoptic PNG is RGB (id = R + 256 G + "
                     "256^2 B)")
  return rgb_to_id(np.asarray(image))


def png_bytes(pan: np.ndarray) -> bytes:
  """[H, W] segment ids → the bytes of their COCO panoptic PNG."""
  buf = io.BytesIO()
  Image.fromarray(id_to_rgb(pan)).save(buf, format="PNG")
  return buf.getvalue()


def segments_info(pan: np.ndarray, category_ids: Sequence[int],
                  iscrowd: Sequence[int] | None = None) -> list[dict[str, Any]]:
  """`segments_info` of the segments 1..n of a panoptic map, the empty ones left out.

  Args:
    pan: [H, W] int segment ids in [0, n].
    category_ids: [n] category of segment i at index i − 1.
    iscrowd: [n] crowd flags (default all 0).

  Returns:
    Per non-empty segment, ascending: `id`, `category_id`, `area` and `bbox` [x, y, w, h]
    (the extent of its pixels, as panopticapi's converters compute it), `iscrowd`.
  """
  n = len(category_ids)
  height, width = pan.shape
  pan = np.asarray(pan, np.int64)
  area = np.bincount(pan.ravel(), minlength=n + 1)
  # Per segment, the rows and columns it occupies: one counting pass each.
  rows = np.bincount((pan * height + np.arange(height)[:, None]).ravel(),
                     minlength=(n + 1) * height).reshape(n + 1, height) > 0
  cols = np.bincount((pan * width + np.arange(width)[None]).ravel(),
                     minlength=(n + 1) * width).reshape(n + 1, width) > 0
  iscrowd = [0] * n if iscrowd is None else iscrowd
  out = []
  for i in np.flatnonzero(area[1:]) + 1:
    y0, y1 = rows[i].argmax(), height - rows[i, ::-1].argmax()
    x0, x1 = cols[i].argmax(), width - cols[i, ::-1].argmax()
    out.append(dict(id=int(i), category_id=int(category_ids[i - 1]), area=int(area[i]),
                    bbox=[int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                    iscrowd=int(iscrowd[i - 1])))
  return out


def is_thing_lut(class_set) -> np.ndarray:
  """[K + 1] bool: whether training id i is a thing class (index 0, background, False)."""
  return np.array([False] + [c < categories_lib.FIRST_STUFF_ID for c in class_set.coco_ids])


def has_things(class_set) -> bool:
  return bool(is_thing_lut(class_set).any())


def combine(masks: np.ndarray, classes: np.ndarray, scores: np.ndarray, class_set, *,
            overlap_threshold: float = 0.5, stuff_area_threshold: int = 4096,
            instances_score_threshold: float = 0.5
            ) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """One image's detections → panoptic map and segments (rule in the module doc).

  Args:
    masks: [N, H, W] bool, in the original image.
    classes: [N] training ids in [1, K] of `class_set`.
    scores: [N] float.
    class_set: tells things (COCO id < 92) from stuff.
    overlap_threshold: most of a thing mask that may lie on earlier segments.
    stuff_area_threshold: fewest free pixels of a stuff segment.
    instances_score_threshold: lowest score of a thing segment.

  Returns:
    ([H, W] int32 segment ids 1..n, 0 = VOID; n `segments_info` dicts with COCO ids,
    things first in descending score, then stuff by ascending class).
  """
  masks = np.asarray(masks, bool)
  classes = np.asarray(classes).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if masks.ndim != 3 or not masks.shape[0] == len(classes) == len(scores):
    raise ValueError(f"masks {masks.shape}, classes {classes.shape} and scores "
                     f"{scores.shape} must be [N, H, W], [N], [N]")
  thing = is_thing_lut(class_set)[classes]
  pan = np.zeros(masks.shape[1:], np.int32)
  labels = []  # Training id of segment i at i − 1.
  order = np.flatnonzero(thing)[np.argsort(-scores[thing], kind="stable")]
  order = order[scores[order] >= instances_score_threshold]
  for i in order:
    r = np.flatnonzero(masks[i].any(1))
    if not len(r):
      continue
    c = np.flatnonzero(masks[i].any(0))  # Work inside the mask's extent only.
    extent = slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1)
    mask, region = masks[i][extent], pan[extent]
    free = mask & (region == 0)
    if (mask.sum() - free.sum()) / mask.sum() > overlap_threshold:
      continue
    labels.append(classes[i])
    region[free] = len(labels)
  semantic = stuff_metrics.paint_instances(masks[~thing], classes[~thing], scores[~thing])
  free = pan == 0
  area = np.bincount(semantic[free], minlength=class_set.num_classes + 1)
  area[0] = 0
  kept = np.flatnonzero(area >= max(stuff_area_threshold, 1))
  new_id = np.zeros(class_set.num_classes + 1, np.int32)
  new_id[kept] = len(labels) + 1 + np.arange(len(kept))
  pan[free] = new_id[semantic[free]]
  labels += kept.tolist()
  return pan, segments_info(pan, [class_set.to_coco_id(c) for c in labels])


def ground_truth(coco_gt, image_id: int, class_set) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """A COCO ground truth (`coco_eval.load_ground_truth`) as one image's panoptic map.

  Each annotation of the class set is a segment (a thing instance, a stuff class): crowd
  ones painted first, then the others in annotation order, a later one winning where
  they overlap. Segments left without pixels are dropped; unannotated pixels are VOID.

  Returns:
    ([H, W] int32 segment ids, `segments_info` with the painted areas).
  """
  image = coco_gt.imgs[image_id]
  anns = [a for a in coco_gt.imgToAnns[image_id] if class_set.contains(a["category_id"])]
  anns.sort(key=lambda a: not a.get("iscrowd", 0))  # Stable: crowd first, order kept.
  pan = np.zeros((image["height"], image["width"]), np.int32)
  for i, ann in enumerate(anns, start=1):
    rle = coco_gt.annToRLE(ann)
    x, y, w, h = mask_utils.toBbox(rle)  # Paint inside the mask's box only.
    extent = (slice(int(y), int(y + h)), slice(int(x), int(x + w)))
    region = pan[extent]
    region[mask_utils.decode(rle)[extent] > 0] = i
  return pan, segments_info(pan, [a["category_id"] for a in anns],
                            [a.get("iscrowd", 0) for a in anns])


def _intersections(gt: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], int]:
  """{(GT id, predicted id): pixels} of two [H, W] id maps (ids >= 0)."""
  gt_max, pred_max = int(gt.max(initial=0)), int(pred.max(initial=0))
  if (gt_max + 1) * (pred_max + 1) <= 1 << 22:  # Small ids (made here): count directly.
    counts = np.bincount((gt * (pred_max + 1) + pred).ravel())
    pairs = np.flatnonzero(counts)
    return {(int(v // (pred_max + 1)), int(v % (pred_max + 1))): int(counts[v])
            for v in pairs}
  pairs, counts = np.unique(gt * OFFSET + pred, return_counts=True)
  return {(int(v // OFFSET), int(v % OFFSET)): int(c) for v, c in zip(pairs, counts)}


def pq_image(gt: np.ndarray, gt_segments: Sequence[dict], pred: np.ndarray,
             pred_segments: Sequence[dict], category_ids, *, image_id: Any = None) -> Stats:
  """One image's PQ statistics, as panopticapi's `pq_compute_single_core`.

  Args:
    gt: [H, W] GT segment ids.
    gt_segments: GT `segments_info` (`id`, `category_id`, `iscrowd`, `area`; the union
      uses these areas, as panopticapi).
    pred: [H, W] predicted segment ids.
    pred_segments: predicted `segments_info` (`id`, `category_id`; areas are counted).
    category_ids: the known categories; a predicted other one raises.
    image_id: named in errors.

  Returns:
    {category id: [Σ IoU, TP, FP, FN]} of the categories seen.
  """
  gt, pred = np.asarray(gt, np.int64), np.asarray(pred, np.int64)
  if gt.shape != pred.shape:
    raise ValueError(f"image {image_id}: GT {gt.shape} and prediction {pred.shape} differ")
  inter = _intersections(gt, pred)  # {(GT id, predicted id): pixels}.
  pred_area = collections.Counter()
  for (_, p), n in inter.items():
    pred_area[p] += n
  gt_segs = {s["id"]: s for s in gt_segments}
  pred_segs = {s["id"]: dict(s) for s in pred_segments}
  unseen = set(pred_segs)
  for label, count in sorted(pred_area.items()):
    if label not in pred_segs:
      if label == VOID:
        continue
      raise ValueError(f"image {image_id}: segment {label} is in the PNG but not in the JSON")
    pred_segs[label]["area"] = count
    unseen.discard(label)
    if pred_segs[label]["category_id"] not in category_ids:
      raise ValueError(f"image {image_id}: segment {label} has unknown category_id "
                       f"{pred_segs[label]['category_id']}")
  if unseen:
    raise ValueError(f"image {image_id}: segments {sorted(unseen)} are in the JSON but not "
                     "in the PNG")
  stats: Stats = collections.defaultdict(lambda: np.zeros(4))
  gt_matched, pred_matched = set(), set()
  for (g, p), n in inter.items():
    if g not in gt_segs or p not in pred_segs or gt_segs[g]["iscrowd"] == 1:
      continue
    category = gt_segs[g]["category_id"]
    if category != pred_segs[p]["category_id"]:
      continue
    union = pred_segs[p]["area"] + gt_segs[g]["area"] - n - inter.get((VOID, p), 0)
    iou = n / union
    if iou > MATCH_IOU:
      stats[category] += (iou, 1, 0, 0)
      gt_matched.add(g)
      pred_matched.add(p)
  crowd = {}  # Category → its (last) crowd segment.
  for g, seg in gt_segs.items():
    if g in gt_matched:
      continue
    if seg["iscrowd"] == 1:
      crowd[seg["category_id"]] = g
      continue
    stats[seg["category_id"]] += (0, 0, 0, 1)
  for p, seg in pred_segs.items():
    if p in pred_matched:
      continue
    ignored = inter.get((VOID, p), 0)
    if seg["category_id"] in crowd:
      ignored += inter.get((crowd[seg["category_id"]], p), 0)
    if ignored / seg["area"] > 0.5:
      continue
    stats[seg["category_id"]] += (0, 0, 1, 0)
  return dict(stats)


def add_stats(total: Stats, stats: Stats) -> Stats:
  """`total` plus `stats`, in place; returns `total`."""
  for category, s in stats.items():
    total[category] = total.get(category, np.zeros(4)) + s
  return total


def pq_average(stats: Stats, isthing: dict[int, bool], group: bool | None
               ) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
  """Mean PQ/SQ/RQ over the categories of a group, as panopticapi's `pq_average`.

  Args:
    stats: summed `pq_image` statistics.
    isthing: {category id: is a thing} of every category.
    group: True things, False stuff, None all.

  Returns:
    ({pq, sq, rq, n}, {category id: {pq, sq, rq}}); a category without TP, FP and FN
    gets zeros and is not averaged; means are NaN when no category is.
  """
  per_class, sums, n = {}, np.zeros(3), 0
  for category, thing in isthing.items():
    if group is not None and thing != group:
      continue
    iou, tp, fp, fn = stats.get(category, np.zeros(4))
    if tp + fp + fn == 0:
      per_class[category] = dict(pq=0.0, sq=0.0, rq=0.0)
      continue
    n += 1
    values = (iou / (tp + 0.5 * fp + 0.5 * fn), iou / tp if tp else 0.0,
              tp / (tp + 0.5 * fp + 0.5 * fn))
    per_class[category] = dict(zip(("pq", "sq", "rq"), map(float, values)))
    sums += values
  means = sums / n if n else np.full(3, np.nan)
  return dict(pq=float(means[0]), sq=float(means[1]), rq=float(means[2]), n=n), per_class


def summarize(stats: Stats, isthing: dict[int, bool]) -> dict[str, Any]:
  """{All, Things, Stuff: {pq, sq, rq, n}, per_class: {id: {pq, sq, rq}}}, as `pq_compute`."""
  results = {}
  for name, group in GROUPS:
    results[name], per_class = pq_average(stats, isthing, group)
    if group is None:
      results["per_class"] = per_class
  return results


def format_table(results: dict[str, Any]) -> str:
  """The table panopticapi prints (percentages)."""
  lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"),
           "-" * (10 + 7 * 4)]
  for name, _ in GROUPS:
    r = results[name]
    lines.append("{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
        name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["n"]))
  return "\n".join(lines)


def flat_metrics(results: dict[str, Any], prefix: str) -> dict[str, float]:
  """`summarize` output → `{prefix}/{PQ,SQ,RQ}` and `{prefix}/{PQ,SQ,RQ}_{things,stuff}`."""
  out = {}
  for name, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
    for key in ("pq", "sq", "rq"):
      out[f"{prefix}/{key.upper()}{suffix}"] = results[name][key]
  return out


def pq_compute(gt_json, pred_json, gt_dir, pred_dir) -> dict[str, Any]:
  """PQ of COCO panoptic predictions on files, as panopticapi's `pq_compute`.

  Args:
    gt_json: COCO panoptic GT JSON (`annotations`, `categories` with `isthing`).
    pred_json: predictions JSON (`annotations`); every GT image needs one.
    gt_dir: folder of the GT PNGs (`file_name` of each annotation).
    pred_dir: folder of the predicted PNGs.

  Returns:
    `summarize` output.
  """
  gt = json.loads(epath.Path(gt_json).read_text())
  pred = json.loads(epath.Path(pred_json).read_text())
  for path, data, keys in ((gt_json, gt, ("annotations", "categories")),
                           (pred_json, pred, ("annotations",))):
    for key in keys:
      if key not in data:
        raise ValueError(f"{path}: not a COCO panoptic JSON (no {key!r})")
  isthing = {c["id"]: c["isthing"] == 1 for c in gt["categories"]}
  pred_anns = {a["image_id"]: a for a in pred["annotations"]}
  stats: Stats = {}
  for gt_ann in gt["annotations"]:
    image_id = gt_ann["image_id"]
    if image_id not in pred_anns:
      raise ValueError(f"{pred_json}: no prediction for the image with id {image_id}")
    pred_ann = pred_anns[image_id]
    add_stats(stats, pq_image(
        read_png(epath.Path(gt_dir) / gt_ann["file_name"]), gt_ann["segments_info"],
        read_png(epath.Path(pred_dir) / pred_ann["file_name"]), pred_ann["segments_info"],
        isthing, image_id=image_id))
  return summarize(stats, isthing)


def coco_categories(class_set) -> list[dict[str, Any]]:
  """The `categories` of a COCO panoptic JSON for a class set (with `isthing`)."""
  return [dict(c, isthing=int(c["id"] < categories_lib.FIRST_STUFF_ID))
          for c in categories_lib.coco_json_categories(class_set.coco_ids)]


class CocoStuffGroundTruth:
  """Panoptic ground truth derived from COCO-Stuff + instances (`ground_truth`)."""

  prefix = "panoptic_cocostuff"  # Metric names: not the official COCO panoptic GT.

  def __init__(self, coco_gt, class_set):
    self.coco, self.class_set = coco_gt, class_set

  def __call__(self, image_id: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    return ground_truth(self.coco, image_id, self.class_set)


class PanopticEvaluator:
  """Panoptic predictions and PQ of images against a panoptic ground truth.

  The ground truth is `CocoStuffGroundTruth` (metrics `panoptic_cocostuff/...`) or COCO
  panoptic's own (`panoptic_coco.GroundTruth`, `panoptic_coco/...`); predictions are
  `combine`d from the detections. With `keep_files`, `write` saves both in the COCO
  panoptic format, so that panopticapi (or this module's CLI) can re-check the numbers. A
  consumer of `evaluator.Evaluator` (`add_image`, `reset`, `state`, `merge`, `result`,
  `write`).
  """

  def __init__(self, gt, class_set, *, overlap_threshold: float = 0.5,
               stuff_area_threshold: int = 4096, instances_score_threshold: float = 0.5,
               keep_files: bool = False):
    """gt: image id → ([H, W] segment ids, `segments_info`), with `coco` (the images) and
    `prefix` (the metric names)."""
    self.gt = gt
    self.class_set = class_set
    self.thresholds = dict(overlap_threshold=overlap_threshold,
                           stuff_area_threshold=stuff_area_threshold,
                           instances_score_threshold=instances_score_threshold)
    self.isthing = {c["id"]: bool(c["isthing"]) for c in coco_categories(class_set)}
    self.keep_files = keep_files
    self.reset()

  def reset(self) -> None:
    """Forgets the added images."""
    self.stats: Stats = {}
    self._predictions: list[tuple[dict[str, Any], bytes]] = []  # (annotation, PNG bytes).

  def add(self, image_id: int, dets: dict[str, np.ndarray]) -> None:
    """One image's detections (`evaluator.image_detections`: `masks`, `classes`, `scores`)."""
    pan, segments = combine(dets["masks"], dets["classes"], dets["scores"], self.class_set,
                            **self.thresholds)
    gt, gt_segments = self.gt(image_id)
    add_stats(self.stats, pq_image(gt, gt_segments, pan, segments, self.isthing,
                                   image_id=image_id))
    if self.keep_files:
      self._predictions.append((dict(image_id=int(image_id), file_name=f"{image_id:012d}.png",
                                     segments_info=segments), png_bytes(pan)))

  def add_image(self, image_id: int, image_dets: dict[str, Any]) -> None:
    """`add` of an `Evaluator`'s image: `rles` (decoded here), `label` [H, W], ..."""
    masks = coco_eval.decode_masks(image_dets["rles"], *image_dets["label"].shape)
    self.add(image_id, dict(image_dets, masks=masks))

  def state(self) -> dict[str, Any]:
    """The summable statistics (and kept files) of the images added, for `merge`."""
    return dict(stats=self.stats, predictions=self._predictions)

  def merge(self, states: Sequence[dict[str, Any]]) -> None:
    """Adds other `PanopticEvaluator`s' `state()`s (other images)."""
    for st in states:
      add_stats(self.stats, st["stats"])
      self._predictions.extend(st["predictions"])

  def result(self) -> dict[str, float]:
    """`flat_metrics` of the images added."""
    return flat_metrics(summarize(self.stats, self.isthing), self.gt.prefix)

  def write(self, out_dir) -> None:
    """Writes panoptic.json + panoptic/ (predictions), panoptic_gt.json + panoptic_gt/.

    Nothing without `keep_files`.
    """
    if not self.keep_files:
      return
    out_dir = epath.Path(out_dir)
    gt_anns = []
    for name in ("panoptic", "panoptic_gt"):
      (out_dir / name).mkdir(parents=True, exist_ok=True)
    for ann, png in self._predictions:
      (out_dir / "panoptic" / ann["file_name"]).write_bytes(png)
      gt, segments = self.gt(ann["image_id"])
      (out_dir / "panoptic_gt" / ann["file_name"]).write_bytes(png_bytes(gt))
      gt_anns.append(dict(ann, segments_info=segments))
    images = [self.gt.coco.imgs[a["image_id"]] for a, _ in self._predictions]
    for name, anns in (("panoptic", [a for a, _ in self._predictions]),
                       ("panoptic_gt", gt_anns)):
      (out_dir / f"{name}.json").write_text(json.dumps(
          dict(images=images, annotations=anns, categories=coco_categories(self.class_set))))


def main(argv):
  del argv
  f = flags.FLAGS
  results = pq_compute(f.gt_json, f.pred_json, f.gt_dir, f.pred_dir)
  print(format_table(results))
  if f.output:
    nan_to_none = lambda v: None if isinstance(v, float) and np.isnan(v) else v
    epath.Path(f.output).write_text(json.dumps(
        {k: ({c: {m: nan_to_none(x) for m, x in r.items()} for c, r in v.items()}
             if k == "per_class" else {m: nan_to_none(x) for m, x in v.items()})
         for k, v in results.items()}, indent=2))


if __name__ == "__main__":  # Flags defined here only: the evaluator imports this module.
  flags.DEFINE_string("gt_json", None, "COCO panoptic ground-truth JSON.")
  flags.DEFINE_string("gt_dir", None, "Folder of the ground-truth PNGs.")
  flags.DEFINE_string("pred_json", None, "Predictions JSON.")
  flags.DEFINE_string("pred_dir", None, "Folder of the predicted PNGs.")
  flags.DEFINE_string("output", None, "Optional JSON file for the results.")
  flags.mark_flags_as_required(["gt_json", "gt_dir", "pred_json", "pred_dir"])
  app.run(main)
