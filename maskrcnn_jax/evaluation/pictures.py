"""Evaluation pictures (matplotlib Agg, no pyplot, no global style) and tables.

Every picture function returns a uint8 [H, W, 3] RGB array; `save_png` writes one. K
classes (training ids 1..K, 0 = none), H × W an image.
"""

import csv
import io
from typing import Any, Sequence

from etils import epath
from matplotlib import cm
from matplotlib import colors as mcolors
from matplotlib import figure as mfigure
from matplotlib import patches
from matplotlib.backends import backend_agg
import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from maskrcnn_jax.evaluation import stuff_metrics


def figure_to_array(fig: mfigure.Figure) -> np.ndarray:
  """Renders a figure → [H, W, 3] uint8."""
  canvas = backend_agg.FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a [H, W, 3] uint8 array as PNG (any epath: local, gs://)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  epath.Path(path).write_bytes(buffer.getvalue())


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """Writes dict rows (same keys) as CSV with a header (any epath: local, gs://)."""
  text = io.StringIO(newline="")
  if rows:
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  epath.Path(path).write_text(text.getvalue())


def class_colors(num_classes: int) -> np.ndarray:
  """[K + 1, 3] uint8 distinct colours per training id (index 0 black), fixed per id."""
  rng = np.random.default_rng(0)
  hsv = np.stack([(np.arange(num_classes + 1) * 0.618034) % 1.0,
                  rng.uniform(0.55, 1.0, num_classes + 1),
                  rng.uniform(0.7, 1.0, num_classes + 1)], axis=1)
  out = (mcolors.hsv_to_rgb(hsv) * 255).astype(np.uint8)
  out[0] = 0
  return out


def confusion_figure(confusion: np.ndarray, names: Sequence[str], *, title: str = "",
                     log: bool = True) -> np.ndarray:
  """Row-normalised confusion heatmap: rows GT classes 1..K, columns `(none)`, 1..K.

  Args:
    confusion: [K + 1, K + 1] counts (index 0 = no label; row 0 is not drawn).
    names: [K] class names of training ids 1..K.
    title: figure title.
    log: logarithmic colour scale (rare confusions stay visible next to the diagonal).

  Returns:
    [H, W, 3] uint8; 18 px per class, names on both axes in one font size at any K (the
    picture grows with K).
  """
  confusion = np.asarray(confusion, np.float64)
  k = len(names)
  if confusion.shape != (k + 1, k + 1):
    raise ValueError(f"confusion {confusion.shape} does not fit {k} names")
  rows = confusion[1:]
  frac = rows / np.maximum(rows.sum(1, keepdims=True), 1)
  font = 8  # 12 px tall in a 17.6 px row.
  # Fixed margins sized to the longest name (tight_layout is slow with ~200 tick labels).
  side = max(4.0, 0.16 * (k + 1))
  margin = max(len(n) for n in ["(none)", *names]) * font * 0.6 / 72 + 0.5
  width, height = margin + side + 1.3, margin + side + 0.5
  fig = mfigure.Figure(figsize=(width, height), dpi=110)
  ax = fig.add_axes((margin / width, margin / height, side / width, side / height))
  cax = fig.add_axes(((margin + side + 0.15) / width, margin / height, 0.2 / width,
                      side / height))
  norm = mcolors.LogNorm(vmin=1e-4, vmax=1.0) if log else mcolors.Normalize(0.0, 1.0)
  shown = np.ma.masked_where(frac <= 0, frac)
  im = ax.imshow(shown, norm=norm, cmap="viridis", interpolation="nearest", aspect="auto")
  ax.set_xticks(range(k + 1), ["(none)"] + list(names), rotation=90, fontsize=font)
  ax.set_yticks(range(k), list(names), fontsize=font)
  ax.set_xlabel("prediction")
  ax.set_ylabel("ground truth")
  ax.set_facecolor("white")
  ax.set_title(title or "confusion (rows normalised)")
  fig.colorbar(im, cax=cax, label="fraction of GT pixels")
  return figure_to_array(fig)


def prediction_counts_figure(pred_counts: np.ndarray, gt_counts: np.ndarray,
                             names: Sequence[str], *, title: str = "") -> np.ndarray:
  """Bars of predictions per class beside ground-truth instances per class (log scale).

  Args:
    pred_counts: [K] predictions per class.
    gt_counts: [K] ground-truth instances per class.
    names: [K] class names.
  """
  k = len(names)
  if np.shape(pred_counts) != (k,) or np.shape(gt_counts) != (k,):
    raise ValueError(f"counts {np.shape(pred_counts)}, {np.shape(gt_counts)} must be [{k}]")
  fig = mfigure.Figure(figsize=(max(8.0, 0.16 * k + 2), 5), dpi=110)
  ax = fig.add_subplot()
  x = np.arange(k)
  ax.bar(x - 0.2, np.asarray(gt_counts) + 0.0, width=0.4, label="ground truth", color="C0")
  ax.bar(x + 0.2, np.asarray(pred_counts) + 0.0, width=0.4, label="predictions", color="C1")
  ax.set_yscale("symlog", linthresh=1)
  ax.set_xticks(x, list(names), rotation=90, fontsize=8 if k <= 30 else 5)
  ax.set_xlim(-1, k)
  ax.set_ylabel("count")
  ax.legend()
  ax.set_title(title or "instances per class")
  fig.tight_layout()
  return figure_to_array(fig)


def precision_recall_figure(precision: np.ndarray, recall: np.ndarray, *,
                            title: str = "") -> np.ndarray:
  """Per-image precision vs recall (scatter) and their histograms; NaNs left out.

  Args:
    precision: [N] per-image precision (NaN: no prediction).
    recall: [N] per-image recall (NaN: no ground truth).
  """
  precision, recall = np.asarray(precision, float), np.asarray(recall, float)
  fig = mfigure.Figure(figsize=(10, 4.5), dpi=110)
  ax1, ax2 = fig.subplots(1, 2)
  both = ~np.isnan(precision) & ~np.isnan(recall)
  ax1.scatter(recall[both], precision[both], s=12, alpha=0.6)
  ax1.set_xlim(-0.05, 1.05)
  ax1.set_ylim(-0.05, 1.05)
  ax1.set_xlabel("recall")
  ax1.set_ylabel("precision")
  ax1.set_title(f"per image ({both.sum()} of {len(precision)} with both)")
  bins = np.linspace(0, 1, 11)
  ax2.hist([precision[~np.isnan(precision)], recall[~np.isnan(recall)]], bins=bins,
           label=["precision", "recall"])
  ax2.set_xlabel("value")
  ax2.set_ylabel("images")
  ax2.legend()
  fig.suptitle(title or "per-image precision and recall (mask IoU >= 0.5)")
  fig.tight_layout()
  return figure_to_array(fig)


def proposals_picture(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, *,
                      top_n: int = 50, title: str = "") -> np.ndarray:
  """The `top_n` highest-scoring region proposals drawn on an image.

  Args:
    image: [H, W, 3] uint8.
    boxes: [P, 4] (x1, y1, x2, y2) in the image's pixels (valid proposals only).
    scores: [P] objectness.
  """
  boxes, scores = np.asarray(boxes).reshape(-1, 4), np.asarray(scores).reshape(-1)
  order = np.argsort(-scores, kind="stable")[:top_n]
  fig = image_figure(image, 1)
  ax = fig.axes[0]
  ax.imshow(image)
  score_colors = cm.ScalarMappable(norm=mcolors.Normalize(0, 1), cmap="plasma")
  fig.colorbar(score_colors, ax=ax, fraction=0.04, pad=0.01, label="objectness")
  for i in order[::-1]:  # The best drawn last, on top.
    ax.add_patch(_rectangle(*boxes[i], score_colors.to_rgba(float(scores[i])), 0.8))
  ax.set_title(title or f"top {len(order)} proposals")
  ax.axis("off")
  fig.tight_layout()
  return figure_to_array(fig)


def _rectangle(x1, y1, x2, y2, color, width):
  return patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                           linewidth=width)


def image_figure(image: np.ndarray, panels: int) -> mfigure.Figure:
  """A figure of `panels` side-by-side axes sized for `image` ([H, W, 3])."""
  h, w = image.shape[:2]
  width = 5.0 * panels
  fig = mfigure.Figure(figsize=(width + 0.6, 5.0 * h / w + 0.7), dpi=110)
  fig.subplots(1, panels, squeeze=False)
  return fig


def blend(image: np.ndarray, label: np.ndarray, colors: np.ndarray,
          alpha: float = 0.55) -> np.ndarray:
  """Colours the labelled pixels (label > 0) of an image: [H, W, 3], [H, W] → [H, W, 3]."""
  out = image.astype(np.float32)
  on = label > 0
  out[on] = (1 - alpha) * out[on] + alpha * colors[label[on]]
  return out.astype(np.uint8)


def _label_names(ax, label: np.ndarray, names: Sequence[str], colors: np.ndarray):
  """Writes each class name at a pixel of its region (the middle one in raster order)."""
  for c in np.unique(label):
    if c == 0:
      continue
    ys, xs = np.nonzero(label == c)
    mid = len(ys) // 2
    _text(ax, xs[mid], ys[mid], names[c - 1], colors[c])


def _text(ax, x, y, text, color):
  ax.text(x, y, text, fontsize=6, color="white", va="center",
          bbox=dict(facecolor=np.asarray(color) / 255, alpha=0.8, pad=1, linewidth=0))


def draw_instances(ax, image: np.ndarray, predictions: dict[str, np.ndarray],
                   names: Sequence[str], colors: np.ndarray) -> None:
  """Masks coloured per class, boxes, `name score` labels on an axis."""
  label = stuff_metrics.paint_instances(predictions["masks"], predictions["classes"],
                                        predictions["scores"])
  ax.imshow(blend(image, label, colors))
  for box, c, s in zip(predictions["boxes"], predictions["classes"], predictions["scores"]):
    ax.add_patch(_rectangle(*box, np.asarray(colors[c]) / 255, 1.0))
    _text(ax, box[0], box[1], f"{names[c - 1]} {s:.2f}", colors[c])
  ax.axis("off")


def collage(image: np.ndarray, gt_label: np.ndarray, predictions: dict[str, np.ndarray],
            names: Sequence[str], *, title: str = "") -> np.ndarray:
  """Image | ground truth | prediction, masks coloured per class with class names.

  Args:
    image: [H, W, 3] uint8 original image.
    gt_label: [H, W] int ground-truth label map (training ids, 0 unlabeled).
    predictions: `boxes` [N, 4] original pixels, `classes` [N] training ids, `scores` [N],
      `masks` [N, H, W] bool.
    names: [K] class names.
  """
  colors = class_colors(len(names))
  fig = image_figure(image, 3)
  ax_image, ax_gt, ax_pred = fig.axes
  ax_image.imshow(image)
  ax_image.set_title("image")
  ax_image.axis("off")
  ax_gt.imshow(blend(image, gt_label, colors))
  _label_names(ax_gt, gt_label, names, colors)
  ax_gt.set_title("ground truth")
  ax_gt.axis("off")
  draw_instances(ax_pred, image, predictions, names, colors)
  ax_pred.set_title(f"prediction ({len(predictions['classes'])})")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return figure_to_array(fig)


def read_scalars(log_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Scalars of the TensorBoard event files in `log_dir` (not recursive).

  Reads both TF2 summaries (tensors, as clu's writer stores them) and TF1 `simple_value`s.

  Returns:
    {tag: ([T] steps, [T] values)} sorted by step.
  """
  acc = event_accumulator.EventAccumulator(
      log_dir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0,
                              event_accumulator.IMAGES: 1, event_accumulator.HISTOGRAMS: 1})
  acc.Reload()
  series = {}
  tags = acc.Tags()
  for tag in tags.get("scalars", []):
    events = acc.Scalars(tag)
    series[tag] = ([e.step for e in events], [e.value for e in events])
  for tag in tags.get("tensors", []):
    events = acc.Tensors(tag)
    values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
    if values and all(v.size == 1 and v.dtype.kind in "fiub" for v in values):
      series[tag] = ([e.step for e in events], [float(v.reshape(())) for v in values])
  out = {}
  for tag, (steps, values) in series.items():
    order = np.argsort(steps, kind="stable")
    out[tag] = (np.asarray(steps)[order], np.asarray(values, np.float64)[order])
  return out


def stage_boundaries(stage_steps: np.ndarray, stage_values: np.ndarray) -> list[float]:
  """Steps where the logged stage index changes: the last step logged in the old stage."""
  change = np.nonzero(np.diff(stage_values) != 0)[0]
  return [float(stage_steps[i]) for i in change]


def loss_curves(log_dir: str, *, prefix: str = "train/", compare: str = "val/"
                ) -> np.ndarray:
  """Each `{prefix}*_loss` curve of a run, stage boundaries from `{prefix}stage` marked.

  Args:
    log_dir: the folder holding the run's TensorBoard event files (the workdir).
    prefix: tag prefix of the training scalars.
    compare: a tag prefix drawn on the same axes when `{compare}<loss>` exists (validation).

  Returns:
    [H, W, 3] uint8 (one panel per loss).
  """
  scalars = read_scalars(log_dir)
  losses = sorted((t for t in scalars if t.startswith(prefix) and t.endswith("loss")),
                  key=lambda t: (t != f"{prefix}total_loss", t))  # The total first.
  if not losses:
    raise ValueError(f"no {prefix}*loss scalars in the event files of {log_dir}")
  bounds = []
  if f"{prefix}stage" in scalars:
    bounds = stage_boundaries(*scalars[f"{prefix}stage"])
  cols = min(3, len(losses))
  rows = -(-len(losses) // cols)
  fig = mfigure.Figure(figsize=(5 * cols, 3.4 * rows), dpi=100)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, tag in zip(axes, losses):
    name = tag[len(prefix):]
    ax.plot(*scalars[tag], label=prefix.rstrip("/"), lw=1)
    if f"{compare}{name}" in scalars:
      ax.plot(*scalars[f"{compare}{name}"], "o-", ms=3, label=compare.rstrip("/"), lw=1)
    for b in bounds:
      ax.axvline(b, color="gray", ls="--", lw=0.8)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  for ax in axes[len(losses):]:
    ax.axis("off")
  fig.suptitle("losses per step (dashed: stage boundaries)")
  fig.tight_layout()
  return figure_to_array(fig)
