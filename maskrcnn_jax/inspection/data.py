"""Pictures and statistics of the input data: what the model is trained on.

A batch is the pipeline's (docs/design.md, "A batch"): S the padded side, M instances,
Sm the box-cropped mask side, K classes.
"""

from typing import Sequence

from matplotlib import figure as mfigure
from matplotlib import patches
import numpy as np

from maskrcnn_jax.evaluation import masks as masks_lib
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.evaluation import stuff_metrics

# COCO's object-size limits (sqrt of the area in pixels): small < 32 ≤ medium < 96 ≤ large.
COCO_SIZE_LIMITS = (32, 96)


def bar_figure(values: Sequence[float], labels: Sequence[str], *, title: str, ylabel: str,
               log: bool = False) -> np.ndarray:
  """Vertical bars, one per label ([N] values), as an [H, W, 3] uint8 picture."""
  values = np.nan_to_num(np.asarray(values, np.float64))
  fig = mfigure.Figure(figsize=(max(6.0, 0.14 * len(values) + 2), 4.0), dpi=110)
  ax = fig.subplots()
  ax.bar(np.arange(len(values)), values, color="tab:blue")
  ax.set_xticks(np.arange(len(values)), labels, rotation=90, fontsize=6)
  ax.set_xlim(-0.6, len(values) - 0.4)
  if log and (values > 0).any():
    ax.set_yscale("log")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def histogram_figure(values: np.ndarray, *, bins: int, title: str, xlabel: str,
                     lines: Sequence[float] = (), log: bool = False) -> np.ndarray:
  """A histogram of [N] values, with optional vertical reference `lines`."""
  fig = mfigure.Figure(figsize=(6.0, 4.0), dpi=110)
  ax = fig.subplots()
  values = np.asarray(values, np.float64).reshape(-1)
  ax.hist(values[np.isfinite(values)], bins=bins, color="tab:blue", log=log)
  for x in lines:
    ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("count")
  ax.set_title(title)
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def ground_truth(batch: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
  """One image's valid GT instances, masks pasted into the padded image.

  Returns `boxes` [N, 4] padded pixels, `classes` [N] training ids, `masks` [N, Hc, Wc] bool.
  """
  valid = np.asarray(batch["valid"][index], bool)
  boxes = np.asarray(batch["boxes"][index], np.float32)[valid]
  h, w = batch["image"].shape[1:3]
  frame = np.array([h, w, 1.0, h, w], np.float32)  # The padded image itself.
  masks = masks_lib.paste_masks(np.asarray(batch["masks"][index], np.float32)[valid], boxes,
                                frame, threshold=0.5)
  return dict(boxes=boxes, classes=np.asarray(batch["classes"][index], np.int32)[valid],
              masks=masks)


def draw_boxes(ax, boxes: np.ndarray, colors, *, labels: Sequence[str] = (),
               width: float = 1.0, style: str = "-") -> None:
  """Rectangles ([N, 4] x1, y1, x2, y2; colours [N, 3] in 0..1) with optional labels."""
  for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes).reshape(-1, 4)):
    ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                   edgecolor=colors[i], linewidth=width, linestyle=style))
    if i < len(labels):
      ax.text(x1, y1, labels[i], fontsize=6, color="white", va="bottom",
              bbox=dict(facecolor=colors[i], alpha=0.8, pad=1, linewidth=0))


def gt_picture(batch: dict[str, np.ndarray], index: int, class_set, *,
               title: str = "") -> np.ndarray:
  """The model's input image with its GT masks (coloured per class), boxes and names.

  Shows the padded Hc × Wc input as the model sees it (augmented in training), the
  padding included.
  """
  gt = ground_truth(batch, index)
  image = np.asarray(batch["image"][index])
  colors = pictures.class_colors(class_set.num_classes)
  order = np.argsort([-m.sum() for m in gt["masks"]], kind="stable")  # Small on top.
  label = stuff_metrics.paint_instances(gt["masks"][order], gt["classes"][order],
                                        np.arange(len(order), dtype=np.float32))
  fig = pictures.image_figure(image, 1)
  ax = fig.axes[0]
  ax.imshow(pictures.blend(image, label, colors))
  draw_boxes(ax, gt["boxes"], colors[gt["classes"]] / 255,
             labels=[class_set.names[c - 1] for c in gt["classes"]])
  truncated = int(np.asarray(batch["num_truncated"][index])) if "num_truncated" in batch else 0
  ax.set_title(title or f"image {int(batch['image_id'][index])}: {len(gt['classes'])} "
               f"instances ({class_set.name})" + (f", {truncated} truncated" if truncated else ""))
  ax.axis("off")
  fig.tight_layout()
  return pictures.figure_to_array(fig)


class Statistics:
  """Accumulates per-class instance counts, image counts and instance sizes over batches."""

  def __init__(self, class_set):
    self.class_set = class_set
    self.instances = np.zeros(class_set.num_classes, np.int64)
    self.images_with = np.zeros(class_set.num_classes, np.int64)
    self.sizes: list[np.ndarray] = []
    self.image_classes: list[np.ndarray] = []
    self.num_truncated = 0

  def add(self, batch: dict[str, np.ndarray]) -> None:
    """Adds the valid images of a batch (`image_valid`, when present, flags padding)."""
    image_valid = np.asarray(batch.get("image_valid", np.ones(len(batch["image_id"]), bool)))
    for b in np.flatnonzero(image_valid):
      valid = np.asarray(batch["valid"][b], bool)
      classes = np.asarray(batch["classes"][b])[valid]
      np.add.at(self.instances, classes - 1, 1)
      present = np.unique(classes)
      self.images_with[present - 1] += 1
      self.image_classes.append(present)
      # Instance size in original pixels: the mask's share of its box times the box area.
      boxes = np.asarray(batch["boxes"][b], np.float64)[valid]
      fill = np.asarray(batch["masks"][b], np.float64)[valid].mean((1, 2))
      scale = float(batch["image_info"][b][2])
      area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * fill / scale**2
      self.sizes.append(np.sqrt(np.maximum(area, 0.0)))
      self.num_truncated += int(np.asarray(batch["num_truncated"][b]))

  @property
  def num_images(self) -> int:
    return len(self.image_classes)

  def pictures(self, *, factors: np.ndarray, repeat_threshold: float) -> dict[str, np.ndarray]:
    """Class histogram, instance-size histogram and the repeat factors (LVIS) `factors`:
    those of the whole split (`sampler.training_factors`)."""
    names = list(self.class_set.names)
    sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0)
    small, large = COCO_SIZE_LIMITS
    return {
        "class_histogram": bar_figure(
            self.instances, names, log=True, ylabel="instances",
            title=f"instances per class over {self.num_images} images"),
        "image_histogram": bar_figure(
            self.images_with, names, log=True, ylabel="images",
            title=f"images holding each class ({self.num_images} images)"),
        "instance_sizes": histogram_figure(
            sizes, bins=50, lines=COCO_SIZE_LIMITS, xlabel="sqrt(mask area) in original pixels",
            title=f"{len(sizes)} instances: {np.mean(sizes < small):.0%} small, "
                  f"{np.mean(sizes >= large):.0%} large (COCO limits dashed)"),
        "repeat_factors": histogram_figure(
            factors, bins=30, log=True, xlabel="repeat factor",
            title=f"repeat factors of the {len(factors)} training images at threshold "
                  f"{repeat_threshold}: {np.mean(factors > 1):.0%} repeated, mean "
                  f"{factors.mean():.2f}"),
    }

  def table(self) -> list[dict]:
    """One row per class: instances, images holding it, its image fraction f_c."""
    n = max(self.num_images, 1)
    return [dict(train_id=i + 1, coco_id=int(c), name=name, instances=int(self.instances[i]),
                 images=int(self.images_with[i]), image_fraction=self.images_with[i] / n)
            for i, (c, name) in enumerate(zip(self.class_set.coco_ids, self.class_set.names))]


def augmentation_picture(plain: dict[str, np.ndarray], augmented: Sequence[dict[str, np.ndarray]],
                         class_set, *, title: str) -> np.ndarray:
  """One image without augmentation, then the same image under several augmentation draws.

  plain, augmented: batches of one image each (the pipeline's format).
  """
  images = [plain] + list(augmented)
  colors = pictures.class_colors(class_set.num_classes)
  fig = pictures.image_figure(plain["image"][0], len(images))
  for i, (ax, batch) in enumerate(zip(fig.axes, images)):
    gt = ground_truth(batch, 0)
    label = stuff_metrics.paint_instances(gt["masks"], gt["classes"],
                                          np.zeros(len(gt["classes"]), np.float32))
    ax.imshow(pictures.blend(np.asarray(batch["image"][0]), label, colors, alpha=0.35))
    draw_boxes(ax, gt["boxes"], colors[gt["classes"]] / 255)
    info = np.asarray(batch["image_info"][0])
    ax.set_title("no augmentation" if i == 0 else f"draw {i}: scale {info[2]:.3f}", fontsize=8)
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  return pictures.figure_to_array(fig)

