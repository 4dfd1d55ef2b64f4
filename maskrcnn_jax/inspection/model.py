"""What the model does with a batch, step by step: anchors, RPN, RoI sampling, mask targets.

B images, S the padded side, N anchors (all levels), P proposals, M GT instances, R
sampled RoIs. Boxes are (x1, y1, x2, y2) in padded-image pixels. The model's internals
come from the model itself (`capture_intermediates` of the RPN and its head) and from the
functions it uses (`sampling.match`, `roi_heads.sample_rois`, `roi_heads.mask_targets`),
so the pictures show what training computes, not a re-implementation of it.
"""

import functools
from typing import Any

import jax
from matplotlib import figure as mfigure
import numpy as np

from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.inspection import data as data_lib
from maskrcnn_jax.models import roi_heads as roi_heads_lib
from maskrcnn_jax.models import rpn as rpn_lib
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import sampling

RECALL_IOUS = (0.5, 0.7)
LEVEL_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple")

# Jitted: run eagerly, each operation would compile its own small program per shape.
_decode = jax.jit(box_ops.decode, static_argnames=("weights", "clip"))
_box_iou = jax.jit(box_ops.box_iou)
_sample_rois = jax.jit(roi_heads_lib.sample_rois, static_argnames=(
    "num_samples", "positive_fraction", "fg_iou", "box_weights"))
_mask_targets = jax.jit(roi_heads_lib.mask_targets, static_argnames=("size",))


def _is_rpn(module, method_name: str) -> bool:
  return method_name == "__call__" and isinstance(module, (rpn_lib.RPN, rpn_lib.RPNHead))


@functools.partial(jax.jit, static_argnames=("model", "train"))
def forward(model, variables, batch: dict[str, jax.Array], rng: jax.Array, *,
            train: bool) -> dict[str, jax.Array]:
  """The RPN's head outputs and proposals (train: with the training top-k) of a batch.

  Returns `objectness` [B, N] logits, `deltas` [B, N, 4], `proposals` [B, P, 4],
  `proposal_scores` [B, P], `proposal_valid` [B, P]; without `train` also the
  detections (`boxes`, `scores`, `classes`, `masks`, `valid`, `num_detections`).
  """
  out, state = model.apply(variables, batch, train=train, rngs={"sampling": rng},
                           capture_intermediates=_is_rpn, mutable=["intermediates"])
  captured = state["intermediates"]["rpn"]
  (proposals, _), = captured["__call__"]
  (objectness, deltas), = captured["head"]["__call__"]
  result = {"objectness": objectness, "deltas": deltas, "proposals": proposals["boxes"],
            "proposal_scores": proposals["scores"], "proposal_valid": proposals["valid"]}
  if not train:
    result.update({k: v for k, v in out.items() if not k.startswith("proposal")})
  return result


def anchors(model, canvas: tuple[int, int]) -> list[np.ndarray]:
  """The model's anchors of an input canvas (height, width): per level P2..P6, [N_l, 4]."""
  return model.rpn.anchors(*canvas)


def anchors_picture(image: np.ndarray, level_anchors: list[np.ndarray],
                    num_per_level: int) -> np.ndarray:
  """The anchors of every level at the image centre (all aspect ratios), one colour a level.

  image: [S, S, 3] uint8. level_anchors: per level [N_l, 4]; num_per_level anchors per
  location (the aspect ratios).
  """
  fig = pictures.image_figure(image, 1)
  ax = fig.axes[0]
  ax.imshow(image)
  centre = np.array(image.shape[:2][::-1], np.float32) / 2
  for level, (a, color) in enumerate(zip(level_anchors, LEVEL_COLORS)):
    cells = a.reshape(-1, num_per_level, 4)
    mid = (cells[:, :, :2] + cells[:, :, 2:]).mean(1) / 2
    cell = cells[np.argmin(np.abs(mid - centre).sum(-1))]
    data_lib.draw_boxes(ax, cell, [color] * len(cell),
                        labels=[f"P{level + 2}: {len(cells)} locations"] + [""] * (len(cell) - 1),
                        width=1.2)
  ax.set_title(f"anchors at the centre, per level ({num_per_level} aspect ratios each)")
  ax.axis("off")
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def anchor_labels(model, all_anchors: np.ndarray, gt_boxes: np.ndarray,
                  gt_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The RPN's anchor labels of one image, as its loss assigns them.

  Args:
    all_anchors: [N, 4]. gt_boxes: [M, 4]. gt_valid: [M] bool.

  Returns:
    matched [N] GT index and labels [N] in {1 foreground, 0 background, -1 ignored}.
  """
  matched, labels = _match_anchors(all_anchors, gt_boxes, gt_valid, fg_iou=model.rpn.fg_iou,
                                   bg_iou=model.rpn.bg_iou)
  return np.asarray(matched), np.asarray(labels)


@functools.partial(jax.jit, static_argnames=("fg_iou", "bg_iou"))
def _match_anchors(all_anchors, gt_boxes, gt_valid, *, fg_iou, bg_iou):
  return sampling.match(box_ops.box_iou(gt_boxes, all_anchors), high_threshold=fg_iou,
                        low_threshold=bg_iou, allow_low_quality_matches=True, valid_gt=gt_valid)


def rpn_targets_picture(image: np.ndarray, all_anchors: np.ndarray, labels: np.ndarray,
                        deltas: np.ndarray, gt_boxes: np.ndarray, *, max_boxes: int = 40,
                        seed: int = 0) -> np.ndarray:
  """Positive anchors (green), the same refined by the RPN's deltas (yellow, dashed),
  some negative anchors (red) and the GT (white).

  Args:
    image: [S, S, 3]. all_anchors: [N, 4]. labels: [N] from `anchor_labels`.
    deltas: [N, 4] the RPN's predicted deltas. gt_boxes: [M', 4] valid GT.
  """
  rng = np.random.default_rng(seed)
  positive = np.flatnonzero(labels == sampling.FOREGROUND)
  negative = np.flatnonzero(labels == sampling.BACKGROUND)
  positive = rng.permutation(positive)[:max_boxes]
  negative = rng.permutation(negative)[:max_boxes // 2]
  refined = np.asarray(_decode(deltas, all_anchors))[positive]  # All: one shape to compile.
  fig = pictures.image_figure(image, 1)
  ax = fig.axes[0]
  ax.imshow(image)
  data_lib.draw_boxes(ax, all_anchors[negative], ["tab:red"] * len(negative), width=0.5)
  data_lib.draw_boxes(ax, all_anchors[positive], ["lime"] * len(positive), width=0.8)
  data_lib.draw_boxes(ax, refined, ["yellow"] * len(refined), width=0.8, style="--")
  data_lib.draw_boxes(ax, gt_boxes, ["white"] * len(gt_boxes), width=1.5)
  ax.set_title(f"RPN targets: {int((labels == 1).sum())} positive, {int((labels == 0).sum())} "
               f"negative, {int((labels == -1).sum())} ignored anchors (drawn: "
               f"{len(positive)} / {len(negative)})", fontsize=8)
  ax.axis("off")
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def pre_nms_proposals(all_anchors: np.ndarray, objectness: np.ndarray, deltas: np.ndarray,
                      image_hw: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
  """The `top_n` anchors by objectness over all levels, refined and clipped (before NMS).

  Returns boxes [top_n, 4] and sigmoid scores [top_n].
  """
  top = np.argsort(-objectness, kind="stable")[:top_n]
  boxes, scores = _refine(deltas[top], all_anchors[top], objectness[top], image_hw)
  return np.asarray(boxes), np.asarray(scores)


@jax.jit
def _refine(deltas, anchors, objectness, image_hw):
  boxes = box_ops.clip_boxes(box_ops.decode(deltas, anchors), image_hw[0], image_hw[1])
  return boxes, jax.nn.sigmoid(objectness)


class ProposalRecall:
  """Recall of valid GT boxes by the proposals, at `RECALL_IOUS`, over images."""

  def __init__(self):
    self.num_gt = 0
    self.hits = np.zeros(len(RECALL_IOUS), np.int64)

  def add(self, gt_boxes: np.ndarray, proposals: np.ndarray) -> None:
    """gt_boxes: [M', 4] valid GT; proposals: [P', 4] valid proposals of one image."""
    self.num_gt += len(gt_boxes)
    if not len(gt_boxes) or not len(proposals):
      return
    best = np.asarray(_box_iou(gt_boxes, proposals)).max(1)
    self.hits += (best[None] >= np.asarray(RECALL_IOUS)[:, None]).sum(1)

  def result(self) -> dict[str, float]:
    return {f"recall@{t}": float(h / self.num_gt) if self.num_gt else float("nan")
            for t, h in zip(RECALL_IOUS, self.hits)}


def sample_rois(model, proposals: dict[str, np.ndarray], batch: dict[str, np.ndarray],
                index: int, rng: jax.Array) -> dict[str, np.ndarray]:
  """The RoI heads' training sample of image `index` (`roi_heads.sample_rois`).

  proposals: training-mode `proposals` [B, P, 4] and `proposal_valid` [B, P].
  Returns `sample_rois`' output as numpy: rois [R, 4], classes, targets, matched,
  positive, valid.
  """
  h = model.roi_heads
  sample = _sample_rois(
      proposals["proposals"][index], proposals["proposal_valid"][index],
      np.asarray(batch["boxes"][index], np.float32), batch["classes"][index],
      batch["valid"][index], rng, num_samples=h.rois_per_image,
      positive_fraction=h.positive_fraction, fg_iou=h.fg_iou, box_weights=tuple(h.box_weights))
  return jax.tree.map(np.asarray, sample)


def rois_picture(image: np.ndarray, sample: dict[str, np.ndarray], gt_boxes: np.ndarray,
                 class_set, box_weights) -> np.ndarray:
  """Sampled RoIs: positives coloured by their target class with the box their target
  deltas reach (dashed, = the matched GT), background RoIs thin grey, the GT white.
  """
  colors = pictures.class_colors(class_set.num_classes) / 255
  positive, valid = sample["positive"], sample["valid"]
  background = valid & ~positive
  reached = np.asarray(_decode(sample["targets"], sample["rois"], tuple(box_weights)))[positive]
  classes = sample["classes"][positive]
  fig = pictures.image_figure(image, 1)
  ax = fig.axes[0]
  ax.imshow(image)
  data_lib.draw_boxes(ax, sample["rois"][background], [(0.6, 0.6, 0.6)] * int(background.sum()),
                      width=0.4)
  data_lib.draw_boxes(ax, gt_boxes, ["white"] * len(gt_boxes), width=1.5)
  data_lib.draw_boxes(ax, sample["rois"][positive], colors[classes], width=0.8,
                      labels=[class_set.names[c - 1] for c in classes])
  data_lib.draw_boxes(ax, reached, colors[classes], width=0.8, style="--")
  ax.set_title(f"sampled RoIs: {int(positive.sum())} positive, {int(background.sum())} "
               f"background of {len(valid)} slots", fontsize=8)
  ax.axis("off")
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def mask_targets(sample: dict[str, np.ndarray], batch: dict[str, np.ndarray],
                 index: int, max_rois: int) -> dict[str, np.ndarray]:
  """The mask targets of the first `max_rois` positive RoIs (`roi_heads.mask_targets`).

  Returns `gt` [n, Sm, Sm] the matched GT's box-cropped mask, `target` [n, 28, 28] the
  RoI's target, `classes` [n].
  """
  positive = np.flatnonzero(sample["positive"])[:max_rois]
  matched = sample["matched"][positive]
  gt_masks = np.asarray(batch["masks"][index])[matched]
  gt_boxes = np.asarray(batch["boxes"][index], np.float32)[matched]
  target = _mask_targets(gt_masks, gt_boxes, sample["rois"][positive])
  return {"gt": gt_masks, "target": np.asarray(target), "classes": sample["classes"][positive]}


def mask_targets_picture(targets: dict[str, np.ndarray], class_set) -> np.ndarray:
  """Pairs of panels per positive RoI: its GT's box crop | the RoI's 28 × 28 target."""
  n = max(len(targets["classes"]), 1)
  fig = mfigure.Figure(figsize=(2.4 * n, 2.8), dpi=110)
  axes = fig.subplots(2, n, squeeze=False)
  for i in range(n):
    for row, key in enumerate(("gt", "target")):
      ax = axes[row, i]
      ax.axis("off")
      if i >= len(targets["classes"]):
        continue
      ax.imshow(targets[key][i], cmap="gray", vmin=0, vmax=1)
      name = class_set.names[targets["classes"][i] - 1]
      ax.set_title(f"{name}: GT crop" if row == 0 else "target", fontsize=7)
  fig.suptitle("mask targets of positive RoIs (top: the GT mask in its box; bottom: the "
               "RoI's target)", fontsize=8)
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def per_class_ap_picture(rows: list[dict[str, Any]], iou_type: str) -> np.ndarray:
  """Per-class AP bars from `Evaluator.per_class()` rows (`bbox_AP` / `segm_AP`)."""
  values = [r[f"{iou_type}_AP"] for r in rows]
  mean = np.nanmean(values) if np.isfinite(values).any() else float("nan")
  return data_lib.bar_figure(values, [r["name"] for r in rows], ylabel="AP",
                             title=f"{iou_type} AP per class (mean {mean:.3f}; classes "
                                   "without GT count 0 here)")
