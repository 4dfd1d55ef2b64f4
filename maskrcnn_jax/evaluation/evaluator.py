"""The evaluation entry point: batches of detections in, COCO + COCO-Stuff metrics out.

Used by `--mode=eval`, the periodic evaluation during training and `--mode=predict`
(`image_detections`, `detections_to_coco`, `draw_overlay`). Host side, numpy. B images per
batch, D detections, P proposals, K classes, H × W an original image.

Per image: valid detections are pasted into the original image (threshold
`mask_threshold`) and become COCO results (`bbox`, `segm` AP); all of them are painted into
a label map, highest score on top (`stuff_metrics`), for the confusion matrix. Detections
scoring at least `score_threshold` make the per-image precision/recall, the prediction
counts and the pictures. The pasting and the painting run on the device when the
detections carry `masks.paste_batch_device`'s output (`run_eval`), else here within each
box (`host_pasted_detections`); the results are the same.

Each process scores its own images; `state()` and `merge()` combine the processes'
evaluators into one (`run_eval`).

Consumers score the same images further: panoptic PQ (`panoptic.PanopticEvaluator`) for
class sets with things, the official results (`export.OfficialResults`) with
`official_export`, and any given.
"""

import json
from typing import Any, Sequence

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import export
from maskrcnn_jax.evaluation import masks as masks_lib
from maskrcnn_jax.evaluation import panoptic as panoptic_lib
from maskrcnn_jax.evaluation import panoptic_coco
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.evaluation import stuff_metrics

MATCH_IOU = 0.5  # Mask IoU at which a prediction and a GT instance of one class match.
STUFF_KEYS = ("mIoU", "fwIoU", "mAcc", "pAcc")
STUFF_GROUPS = ("stuff", "stuff_supercat", "stuff_no_other", "stuff_no_other_supercat")


def image_detections(detections: dict[str, np.ndarray], index: int, image_info, *,
                     mask_threshold: float = 0.5) -> dict[str, np.ndarray]:
  """One image's valid detections in original-image coordinates.

  Args:
    detections: the model's batch output: `boxes` [B, D, 4] padded-image pixels, `scores`
      [B, D], `classes` [B, D] training ids, `masks` [B, D, m, m] probabilities, `valid`
      [B, D].
    index: the image in the batch.
    image_info: [5] (orig_h, orig_w, scale, valid_h, valid_w) of that image.
    mask_threshold: probability at which a pasted mask pixel is on.

  Returns:
    `boxes` [N, 4] float32 original pixels (clipped), `scores` [N] float32, `classes` [N]
    int32, `masks` [N, H, W] bool; N = valid detections with finite box and score, the
    box non-empty in the original image (`masks.nonempty`, as detectron2).
  """
  dets, boxes, masks = _kept(detections, index, image_info)
  return dict(dets, masks=masks_lib.paste_masks(masks, boxes, image_info,
                                                threshold=mask_threshold))


def _kept(detections: dict[str, np.ndarray], index: int, image_info
          ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """One image's N kept detections (`image_detections`): (`boxes` original, `scores`,
  `classes`), their [N, 4] padded-image boxes and [N, m, m] mask probabilities."""
  boxes = np.asarray(detections["boxes"][index])
  scores = np.asarray(detections["scores"][index], np.float32)
  original = masks_lib.boxes_to_original(boxes, image_info)
  # Non-finite outputs (possible early in training) are dropped, not scored.
  valid = (np.asarray(detections["valid"][index], bool) & np.isfinite(boxes).all(-1)
           & np.isfinite(scores) & masks_lib.nonempty(original))
  dets = dict(boxes=original[valid], scores=scores[valid],
              classes=np.asarray(detections["classes"][index], np.int32)[valid])
  return dets, boxes[valid], np.asarray(detections["masks"][index])[valid]


def host_pasted_detections(detections: dict[str, np.ndarray], index: int, image_info, *,
                           mask_threshold: float = 0.5, fill: int = 0) -> dict[str, Any]:
  """`pasted_image_detections`, pasted on the host: masks pasted within their boxes only
  (`masks.paste_crops`), never as full-image arrays.

  Args:
    detections: the model's batch output (`image_detections`).
    index: the image in the batch.
    image_info: [5] (orig_h, orig_w, scale, valid_h, valid_w) of that image.
    mask_threshold: probability at which a pasted mask pixel is on.
    fill: label of pixels no mask covers.

  Returns:
    `boxes` [N, 4] float32 original pixels (clipped), `scores` [N] float32, `classes` [N]
    int32, `rles` N compressed RLEs (JSON-ready), `label` [H, W] int label map of all N.
  """
  dets, boxes, masks = _kept(detections, index, image_info)
  height, width = int(round(float(image_info[0]))), int(round(float(image_info[1])))
  crops = masks_lib.paste_crops(masks, boxes, image_info, threshold=mask_threshold)
  rles = _compressed([masks_lib.crop_rle(*c, height, width) for c in crops], height, width)
  label = stuff_metrics.paint_crops(crops, dets["classes"], dets["scores"], (height, width),
                                    fill=fill)
  return dict(dets, rles=rles, label=label)


def _compressed(runs: Sequence[Sequence[int]], height: int, width: int
                ) -> list[dict[str, Any]]:
  """Uncompressed RLE counts (lists or int arrays) → compressed RLEs with `counts` a str
  (JSON-ready)."""
  rles = mask_utils.frPyObjects([dict(size=[height, width], counts=r) for r in runs],
                                height, width) if runs else []
  for rle in rles:
    rle["counts"] = rle["counts"].decode("ascii")
  return list(rles)


def pasted_image_detections(detections: dict[str, np.ndarray], index: int, image_info, *,
                            mask_threshold: float = 0.5) -> dict[str, Any]:
  """One image's detections from the device's pasting (`masks.paste_batch_device`).

  Args:
    detections: the model's batch output plus `label` [B, F, F] ([x, y]), `rle_positions`
      [B, D, C], `rle_count` [B, D], `pasted_valid` [B, D].
    index: the image in the batch.
    image_info: [5] (orig_h, orig_w, scale, valid_h, valid_w) of that image.
    mask_threshold: the device's threshold (used where a mask overflowed C positions and
      is pasted here again).

  Returns:
    `boxes` [N, 4] float32 original pixels (clipped), `scores` [N] float32, `classes` [N]
    int32, `rles` N compressed RLEs (JSON-ready), `label` [H, W] int label map of all N,
    and `overflow`: how many masks were pasted on the host for lack of capacity.
  """
  height, width = int(round(float(image_info[0]))), int(round(float(image_info[1])))
  valid = np.asarray(detections["pasted_valid"][index], bool)
  positions = np.asarray(detections["rle_positions"][index])[valid]
  count = np.asarray(detections["rle_count"][index])[valid]
  boxes = np.asarray(detections["boxes"][index])[valid]
  over = np.flatnonzero(count > positions.shape[-1])
  runs = masks_lib.transitions_to_rle(positions, np.minimum(count, positions.shape[-1]),
                                      height, width)
  if len(over):  # Rare (very ragged masks): the host's paste, the same pixels.
    crops = masks_lib.paste_crops(np.asarray(detections["masks"][index])[valid][over],
                                  boxes[over], image_info, threshold=mask_threshold)
    for i, crop in zip(over, crops):
      runs[i] = masks_lib.crop_rle(*crop, height, width)
  return dict(boxes=masks_lib.boxes_to_original(boxes, image_info),
              scores=np.asarray(detections["scores"][index], np.float32)[valid],
              classes=np.asarray(detections["classes"][index], np.int32)[valid],
              rles=_compressed(runs, height, width),
              label=np.asarray(detections["label"][index])[:width, :height].T,
              overflow=len(over))


def detections_to_coco(image_id: int, image_dets: dict[str, Any], class_set
                       ) -> list[dict[str, Any]]:
  """Image detections → COCO result dicts (boxes xywh, COCO ids, RLE masks).

  `image_dets`: `image_detections` (with `masks`) or `pasted_image_detections` (`rles`).
  """
  return coco_eval.to_coco_results(image_id, image_dets["boxes"], image_dets["scores"],
                                   image_dets["classes"], class_set,
                                   masks=image_dets.get("masks"), rles=image_dets.get("rles"))


def select(image_dets: dict[str, np.ndarray], score_threshold: float
           ) -> dict[str, np.ndarray]:
  """The detections scoring at least `score_threshold`."""
  keep = image_dets["scores"] >= score_threshold
  return {k: v[keep] for k, v in image_dets.items()}


def original_image(image: np.ndarray, image_info) -> np.ndarray:
  """The padded model input [S, S, 3] uint8 → the image at its original size [H, W, 3]."""
  info = np.asarray(image_info)
  valid_h, valid_w = int(round(info[3])), int(round(info[4]))
  crop = Image.fromarray(np.asarray(image, np.uint8)[:valid_h, :valid_w])
  return np.asarray(crop.resize((int(round(info[1])), int(round(info[0]))),
                                Image.Resampling.BILINEAR))


def draw_overlay(image: np.ndarray, image_dets: dict[str, np.ndarray], class_set,
                 score_threshold: float) -> np.ndarray:
  """Detections drawn on their image (`--mode=predict`).

  Args:
    image: [H, W, 3] uint8 original image.
    image_dets: `image_detections` output for it.
    class_set: gives the class names.
    score_threshold: detections below it are not drawn.

  Returns:
    [H', W', 3] uint8 picture.
  """
  fig = pictures.image_figure(image, 1)
  pictures.draw_instances(fig.axes[0], image, select(image_dets, score_threshold),
                          class_set.names, pictures.class_colors(class_set.num_classes))
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def _per_image_pr(pred_classes: np.ndarray, pred_rles: list, gt_classes: np.ndarray,
                  gt_rles: list) -> tuple[float, float]:
  """(precision, recall) of one image.

  A GT instance (for stuff: the one annotation of a class) is recalled if a prediction of
  its class has mask IoU >= 0.5 with it; a prediction is correct if it so matches a GT
  instance (no one-to-one assignment). Precision is NaN without predictions, recall NaN
  without GT.
  """
  if not pred_rles or not gt_rles:
    return (float("nan") if not pred_rles else 0.0, float("nan") if not gt_rles else 0.0)
  iou = np.asarray(mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles)))
  hit = (iou >= MATCH_IOU) & (pred_classes[:, None] == gt_classes[None])
  return float(hit.any(1).mean()), float(hit.any(0).mean())


class Evaluator:
  """Accumulates detections of evaluation batches; `result()` scores, `write()` saves."""

  def __init__(self, annotation_files: Sequence[str], class_set, *,
               mask_threshold: float = 0.5, num_pictures: int = 8,
               score_threshold: float = 0.5, num_proposals: int = 50,
               coco_backend: str = "auto", consumers: Sequence[Any] = (),
               panoptic: dict[str, Any] | None = None, official_export: bool = False,
               draw: bool = True):
    """Loads the ground truth (COCO panoptic's image by image, as `add` reaches them).

    Args:
      annotation_files: COCO JSONs (stuff; plus instances for `things_and_stuff`), or
        for `panoptic` the COCO panoptic JSON (`panoptic_coco.GroundTruth`).
      class_set: the model's `ClassSet`.
      mask_threshold: probability at which a pasted mask pixel is on.
      num_pictures: images kept for collages and proposal pictures.
      score_threshold: minimum score of the detections counted in per-image
        precision/recall and prediction counts, and drawn in pictures.
      num_proposals: top proposals drawn per picture.
      coco_backend: `coco_eval.BACKENDS`, the COCOeval implementation (`auto` is
        resolved here: `coco_backend` gives the one used).
      consumers: further scorers of the same detections: each gets
        `add_image(image_id, image_dets)` per image, where image_dets has `boxes` [N, 4]
        original pixels, `scores` [N], `classes` [N] training ids, `rles` (N compressed
        RLEs of the pasted masks) and `label` [H, W] (the painted label map); `reset()`,
        `state()` (picklable) and `merge(states)` as the evaluator's own; `result()`
        (metrics added to `result()`) and `write(out_dir)` (its files).
      panoptic: `panoptic.combine` thresholds; used when the class set has things.
      official_export: `write` also writes COCO-Stuff's official results (`export`; not
        for `panoptic`) and, with things, the COCO panoptic predictions and ground truth.
      draw: `write` draws `pictures()` and the loss curves (seconds at 92 classes).
    """
    self.class_set = class_set
    self.mask_threshold = mask_threshold
    self.num_pictures = num_pictures
    self.draw = draw
    self.score_threshold = score_threshold
    self.num_proposals = num_proposals
    # COCO panoptic: its own PNGs are the PQ ground truth, loaded image by image as the
    # images are added (`panoptic_coco`); COCO-Stuff's JSONs are loaded whole here.
    self._lazy_gt = None
    if class_set.name == "panoptic":
      panoptic_gt = self._lazy_gt = panoptic_coco.GroundTruth(annotation_files, class_set)
      self.coco_gt = panoptic_gt.coco
    else:
      self.coco_gt = coco_eval.load_ground_truth(annotation_files, class_set)
      panoptic_gt = panoptic_lib.CocoStuffGroundTruth(self.coco_gt, class_set)
    self.consumers = tuple(consumers)
    if panoptic_lib.has_things(class_set):
      self.consumers += (panoptic_lib.PanopticEvaluator(
          panoptic_gt, class_set, keep_files=official_export, **(panoptic or {})),)
    if official_export and class_set.name != "panoptic":  # Its ids are not COCO-Stuff's.
      self.consumers += (export.OfficialResults(class_set),)
    self._gt_runs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._to_train = {int(c): i + 1 for i, c in enumerate(class_set.coco_ids)}
    self._fill = stuff_metrics.other_index(class_set)
    self.reset()
    self.coco_backend = coco_backend

  def reset(self) -> None:
    """Forgets the added images (the ground truth stays loaded)."""
    k = self.class_set.num_classes
    self._results: list[dict[str, Any]] = []
    self._image_ids: list[int] = []
    self._seen: set[int] = set()
    self._confusion = np.zeros((k + 1, k + 1), np.int64)
    self._pred_counts = np.zeros(k, np.int64)
    self._gt_counts = np.zeros(k, np.int64)
    self._per_image: list[dict[str, Any]] = []
    self._pictures: list[dict[str, Any]] = []
    self._scores: dict[str, Any] | None = None
    self._overflow = 0
    # Per merged process, `coco_eval.evaluate_images` of its images (pycocotools).
    self._coco_parts: list[dict[str, Any] | None] | None = None
    for consumer in self.consumers:
      consumer.reset()

  @property
  def num_images(self) -> int:
    return len(self._image_ids)

  @property
  def coco_backend(self) -> str:
    """The COCOeval implementation: `pycocotools` or `faster_coco_eval`; settable (also
    to `auto`)."""
    return self._coco_backend

  @coco_backend.setter
  def coco_backend(self, backend: str) -> None:
    self._coco_backend, self._scores = coco_eval.resolve_backend(backend), None

  @property
  def fill(self) -> int:
    """The label of pixels no predicted mask covers (`stuff_metrics.other_index`)."""
    return self._fill

  def frame_size(self) -> int:
    """The side of the device's pasting frame: fits every ground-truth image."""
    images = list(self.coco_gt.imgs.values())
    return masks_lib.frame_size([i["height"] for i in images], [i["width"] for i in images])

  def add(self, batch: dict[str, np.ndarray], detections: dict[str, np.ndarray]) -> None:
    """Adds one batch; padding images (`image_valid` false) are skipped.

    Args:
      batch: `image_id` [B], `image_info` [B, 5], `image_valid` [B] bool (absent: all
        valid) and `image` [B, Hc, Wc, 3] uint8 (read only for the kept pictures).
      detections: the model's output (`boxes`, `scores`, `classes`, `masks`, `valid`, and
        optionally `proposals` [B, P, 4], `proposal_scores` [B, P], `proposal_valid`
        [B, P]), with `masks.paste_batch_device`'s keys when pasted on the device.
    """
    ids = np.asarray(batch["image_id"]).reshape(-1)
    infos = np.asarray(batch["image_info"])
    image_valid = np.asarray(batch.get("image_valid", np.ones(len(ids), bool)), bool)
    if self._coco_parts is not None:
      raise ValueError("add() after merge(): the merged scores are final")
    on_device = "rle_positions" in detections
    for b in np.nonzero(image_valid)[0]:
      image_id = int(ids[b])
      if image_id not in self.coco_gt.imgs:
        raise ValueError(f"image {image_id} is not in the ground truth")
      if image_id in self._seen:
        raise ValueError(f"image {image_id} was evaluated twice")
      info = infos[b]
      gt_image = self.coco_gt.imgs[image_id]
      if (int(round(info[0])), int(round(info[1]))) != (gt_image["height"], gt_image["width"]):
        raise ValueError(f"image {image_id}: image_info size {info[:2].tolist()} differs "
                         f"from the ground truth {gt_image['height']}x{gt_image['width']}")
      if self._lazy_gt is not None:
        self._lazy_gt.load([image_id])
      if on_device:
        dets = pasted_image_detections(detections, b, info, mask_threshold=self.mask_threshold)
        self._overflow += dets.pop("overflow")
      else:
        dets = host_pasted_detections(detections, b, info, mask_threshold=self.mask_threshold,
                                      fill=self._fill)
      self._add_image(image_id, dets)
      for consumer in self.consumers:
        consumer.add_image(image_id, dets)
      if len(self._pictures) < self.num_pictures:
        self._keep_picture(image_id, batch, detections, b, dets)
    self._scores = None

  def _add_image(self, image_id: int, dets: dict[str, Any]) -> None:
    results = detections_to_coco(image_id, dets, self.class_set)
    self._results.extend(results)
    self._image_ids.append(image_id)
    self._seen.add(image_id)
    self._confusion += stuff_metrics.confusion_matrix(
        self.ground_truth_flat(image_id), dets["label"].ravel(order="F"),
        self.class_set.num_classes)
    gt_anns = [a for a in self.coco_gt.imgToAnns[image_id] if not a.get("iscrowd", 0)]
    gt_classes = np.array([self._to_train[a["category_id"]] for a in gt_anns], np.int32)
    np.add.at(self._gt_counts, gt_classes - 1, 1)
    keep = dets["scores"] >= self.score_threshold
    np.add.at(self._pred_counts, dets["classes"][keep] - 1, 1)
    precision, recall = _per_image_pr(
        dets["classes"][keep], [r for r, k in zip(dets["rles"], keep) if k],
        gt_classes, [self.coco_gt.annToRLE(a) for a in gt_anns])
    self._per_image.append(dict(image_id=image_id, num_gt=len(gt_anns),
                                num_pred=int(keep.sum()), precision=precision, recall=recall))

  def ground_truth_flat(self, image_id: int) -> np.ndarray:
    """The image's GT label map flattened column-major ([H · W]).

    Kept between evaluations as runs (label, length), a few thousand per image, instead
    of decoding the annotations each time.
    """
    if image_id not in self._gt_runs:
      flat = stuff_metrics.ground_truth_label_map(self.coco_gt, image_id, self.class_set
                                                  ).ravel(order="F")
      starts = np.flatnonzero(np.diff(flat, prepend=-1))
      self._gt_runs[image_id] = (flat[starts].astype(np.int16),
                                 np.diff(np.append(starts, len(flat))).astype(np.int32))
      return flat
    return np.repeat(*self._gt_runs[image_id])

  def _keep_picture(self, image_id, batch, detections, b, dets) -> None:
    info = np.asarray(batch["image_info"][b])
    shown = select({k: dets[k] for k in ("boxes", "scores", "classes")}, self.score_threshold)
    keep = dets["scores"] >= self.score_threshold
    shown["masks"] = coco_eval.decode_masks([r for r, k in zip(dets["rles"], keep) if k],
                                            *dets["label"].shape)
    picture = dict(image_id=image_id, image=original_image(np.asarray(batch["image"][b]), info),
                   predictions=shown)
    if "proposals" in detections:
      valid = np.asarray(detections["proposal_valid"][b], bool)
      picture["proposals"] = masks_lib.boxes_to_original(
          np.asarray(detections["proposals"][b])[valid], info)
      picture["proposal_scores"] = np.asarray(detections["proposal_scores"][b])[valid]
    self._pictures.append(picture)

  def state(self) -> dict[str, Any]:
    """This evaluator's accumulated scores, for `merge` in another process (picklable).

    With pycocotools the COCO matching of this evaluator's images is done here
    (`coco_eval.evaluate_images`), so that processes share that work. The pictures stay
    here: the process that writes draws its own images. A ground truth loaded per image
    (COCO panoptic's) sends these images' annotations along: the merging process need not
    decode their PNGs.
    """
    return dict(results=self._results, image_ids=self._image_ids,
                confusion=self._confusion, pred_counts=self._pred_counts,
                gt_counts=self._gt_counts, per_image=self._per_image,
                overflow=self._overflow, coco_parts=self._own_coco_parts(),
                consumers=[c.state() for c in self.consumers],
                ground_truth=None if self._lazy_gt is None else
                self._lazy_gt.state(self._image_ids))

  def _own_coco_parts(self) -> dict[str, dict[str, Any]] | None:
    if self._coco_backend != "pycocotools":
      return None
    return {t: coco_eval.evaluate_images(self.coco_gt, self._results, t, self._image_ids)
            for t in coco_eval.IOU_TYPES}

  def merge(self, states: Sequence[dict[str, Any]]) -> None:
    """Adds other evaluators' `state()`s (other processes' images) to this one."""
    if self._coco_parts is None:
      self._coco_parts = [self._own_coco_parts()]
    for st in states:
      repeated = self._seen.intersection(st["image_ids"])
      if repeated:
        raise ValueError(f"{len(repeated)} images were evaluated twice, e.g. "
                         f"{sorted(repeated)[:5]}")
      self._results.extend(st["results"])
      self._image_ids.extend(st["image_ids"])
      self._seen.update(st["image_ids"])
      self._confusion += st["confusion"]
      self._pred_counts += st["pred_counts"]
      self._gt_counts += st["gt_counts"]
      self._per_image.extend(st["per_image"])
      self._overflow += st["overflow"]
      self._coco_parts.append(st["coco_parts"])
      if self._lazy_gt is not None:  # Their images' ground truth, for COCOeval of all here.
        self._lazy_gt.merge(st["ground_truth"])
      for consumer, consumer_state in zip(self.consumers, st["consumers"], strict=True):
        consumer.merge([consumer_state])
    self._scores = None

  def _compute(self) -> dict[str, Any]:
    if not self._image_ids:
      raise ValueError("no images were added to the evaluator")
    if self._scores is None:
      if self._overflow:
        logging.info("%d masks had more value changes than the device kept and were pasted "
                     "on the host.", self._overflow)
      parts = self._coco_parts
      if self._coco_backend == "pycocotools" and parts is not None and all(parts):
        coco = {t: coco_eval.accumulate(self.coco_gt, [p[t] for p in parts], t)
                for t in coco_eval.IOU_TYPES}
      else:  # One process, or faster_coco_eval (all on this process: it is fast).
        coco = {t: coco_eval.evaluate(self.coco_gt, self._results, t, self._image_ids,
                                      backend=self._coco_backend)
                for t in coco_eval.IOU_TYPES}
      stuff = stuff_metrics.summarize(self._confusion, self.class_set)
      self._scores = dict(coco=coco, stuff=stuff)
    return self._scores

  def result(self) -> dict[str, float]:
    """The metrics of all added images, flat.

    Keys: `{bbox,segm}/{AP,AP50,...,ARl}` (`coco_eval.METRIC_NAMES`),
    `{stuff,stuff_supercat,stuff_no_other,stuff_no_other_supercat}/{mIoU,fwIoU,mAcc,pAcc}`,
    `per_image/{precision,recall}` (means over the images where defined), `num_images`,
    `num_gt_images` (the images in the ground truth) and the consumers' metrics (with
    things: `{panoptic_cocostuff,panoptic_coco}/{PQ,SQ,RQ}[_things|_stuff]`, PQ against the
    COCO-Stuff-derived or, for `panoptic`, the official ground truth). NaN where
    undefined.
    """
    scores = self._compute()
    out = {}
    for iou_type, (metrics, _) in scores["coco"].items():
      out.update({f"{iou_type}/{k}": v for k, v in metrics.items()})
    for group in STUFF_GROUPS:
      out.update({f"{group}/{k}": scores["stuff"][group][k] for k in STUFF_KEYS})
    for key in ("precision", "recall"):
      values = np.array([r[key] for r in self._per_image], np.float64)
      out[f"per_image/{key}"] = (float(np.nanmean(values)) if (~np.isnan(values)).any()
                                 else float("nan"))
    out["num_images"] = float(len(self._image_ids))
    out["num_gt_images"] = float(len(self.coco_gt.imgs))
    for consumer in self.consumers:
      out.update(consumer.result())
    return out

  def per_class(self) -> list[dict[str, Any]]:
    """One row per class.

    Columns: ids, name, supercategory, bbox/segm AP, IoU and accuracy (with and without
    `other`), GT pixels, pixels predicted as the class where the GT is labelled, GT
    instances and predictions scoring at least `score_threshold`.
    """
    scores = self._compute()
    stuff = scores["stuff"]
    other = stuff_metrics.other_index(self.class_set)
    nan = float("nan")
    rows = []
    for i, (coco_id, name, sup) in enumerate(zip(
        self.class_set.coco_ids, self.class_set.names, self.class_set.supercategories)):
      j = i - 1 if other and i + 1 > other else i  # Index among the classes but `other`.
      is_other = i + 1 == other
      rows.append(dict(
          train_id=i + 1, coco_id=int(coco_id), name=name, supercategory=sup,
          bbox_AP=scores["coco"]["bbox"][1][i], segm_AP=scores["coco"]["segm"][1][i],
          IoU=stuff["stuff"]["iou"][i], acc=stuff["stuff"]["acc"][i],
          IoU_no_other=nan if is_other else stuff["stuff_no_other"]["iou"][j],
          acc_no_other=nan if is_other else stuff["stuff_no_other"]["acc"][j],
          gt_pixels=int(self._confusion[i + 1].sum()),
          pred_pixels=int(self._confusion[:, i + 1].sum()),
          gt_instances=int(self._gt_counts[i]), predictions=int(self._pred_counts[i])))
    return rows

  def per_supercategory(self) -> list[dict[str, Any]]:
    """One row per supercategory: IoU and accuracy (with `other` when a class)."""
    group = self._compute()["stuff"]["stuff_supercat"]
    return [dict(supercategory=n, IoU=iou, acc=acc)
            for n, iou, acc in zip(group["names"], group["iou"], group["acc"])]

  def pictures(self) -> dict[str, np.ndarray]:
    """{name: [H, W, 3] uint8} pictures.

    The confusion matrices (all classes; only the classes with GT or predicted pixels;
    supercategories), prediction counts, per-image precision/recall, and per kept image a
    collage and a proposal picture.
    """
    names = list(self.class_set.names)
    sup_conf, sup_names = stuff_metrics.supercategory_confusion(
        self._confusion, self.class_set.supercategories)
    used_conf, used_names = stuff_metrics.used_classes_confusion(self._confusion, names)
    out = {
        "confusion": pictures.confusion_figure(self._confusion, names),
        "confusion_compressed": pictures.confusion_figure(
            used_conf, used_names,
            title=f"confusion of the {len(used_names)} classes with GT or predicted pixels"
                  " (rows normalised)"),
        "confusion_supercat": pictures.confusion_figure(
            sup_conf, sup_names, title="supercategory confusion (rows normalised)"),
        "prediction_counts": pictures.prediction_counts_figure(
            self._pred_counts, self._gt_counts, names,
            title=f"GT instances and predictions (score >= {self.score_threshold}) per class"),
        "precision_recall": pictures.precision_recall_figure(
            np.array([r["precision"] for r in self._per_image]),
            np.array([r["recall"] for r in self._per_image])),
    }
    for p in self._pictures:
      gt_label = stuff_metrics.ground_truth_label_map(self.coco_gt, p["image_id"],
                                                      self.class_set)
      out[f"collage_{p['image_id']}"] = pictures.collage(
          p["image"], gt_label, p["predictions"], names, title=f"image {p['image_id']}")
      if "proposals" in p:
        out[f"proposals_{p['image_id']}"] = pictures.proposals_picture(
            p["image"], p["proposals"], p["proposal_scores"], top_n=self.num_proposals,
            title=f"image {p['image_id']}: top {self.num_proposals} proposals")
    return out

  def write(self, out_dir: epath.PathLike, *, writer=None, step: int = 0,
            log_dir: str | None = None) -> dict[str, float]:
    """Writes the metrics, tables, COCO results and pictures into `out_dir`.

    Files: metrics.json, coco_results.json (scorable by any COCO tool), per_class.csv,
    per_supercategory.csv, per_image.csv, confusion.csv, with `draw` `pictures()` as PNG,
    and the consumers' files: with `official_export` stuff_results.json + stuff_results/
    (`export.write_results`) and, with things, panoptic{,_gt}.json + panoptic{,_gt}/
    (`PanopticEvaluator.write`).

    Args:
      out_dir: created if missing.
      writer: optional clu `metric_writers` writer: gets the scalars of `result()` and
        the pictures (as `eval/<name>`) at `step`.
      step: the training step of the evaluated parameters.
      log_dir: a run's TensorBoard folder: adds `loss_curves.png` from its event files.

    Returns:
      `result()`.
    """
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = self.result()
    (out_dir / "metrics.json").write_text(json.dumps(  # NaN → null: strict JSON.
        {k: None if np.isnan(v) else v for k, v in dict(metrics, step=step).items()},
        indent=2))
    coco_eval.write_results(str(out_dir / "coco_results.json"), self._results)
    pictures.write_csv(str(out_dir / "per_class.csv"), self.per_class())
    pictures.write_csv(str(out_dir / "per_supercategory.csv"),
                       self.per_supercategory())
    pictures.write_csv(str(out_dir / "per_image.csv"), self._per_image)
    header = ["(none)"] + list(self.class_set.names)
    pictures.write_csv(str(out_dir / "confusion.csv"), [
        dict(ground_truth=header[g], **dict(zip(header, map(int, row))))
        for g, row in enumerate(self._confusion) if g])
    for consumer in self.consumers:
      consumer.write(out_dir)
    images = self.pictures() if self.draw else {}
    if log_dir and self.draw:
      try:
        images["loss_curves"] = pictures.loss_curves(log_dir)
      except ValueError as e:  # No losses logged yet: the metrics still matter.
        logging.warning("No loss curves: %s", e)
    for name, image in images.items():
      pictures.save_png(str(out_dir / f"{name}.png"), image)
    if writer is not None:
      writer.write_scalars(step, metrics)
      writer.write_images(step, {f"eval/{k}": v[None] for k, v in images.items()})
      writer.flush()
    logging.info("Evaluation of %d images written to %s: %s", self.num_images, out_dir,
                 ", ".join(f"{k} {metrics[k]:.4f}" for k in
                           ("segm/AP", "bbox/AP", "stuff/mIoU", "stuff_no_other/mIoU")))
    return metrics
