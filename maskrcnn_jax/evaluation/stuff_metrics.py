"""COCO-Stuff semantic metrics, defined as the official `cocostuffeval.py` (COCOStuffeval).

Label maps hold training ids: 0 = no label, 1..K the classes of a class set (for
`things_and_stuff` the thing classes are label-map classes too). A confusion matrix `C` is
[K + 1, K + 1], rows = ground truth, columns = prediction, index 0 = no label. Ground-truth
0 pixels (unlabeled) are never counted, so row 0 stays zero; column 0 holds labelled pixels
that no prediction covers, which count as misses of their true class.

How instance predictions become a label map (the official API has no rule for scored,
overlapping masks): masks thresholded at 0.5 are painted in ascending score order, so the
highest score wins each pixel. Pixels no mask covers get `other_index(class_set)`: the
`other` class (COCO id 183) when the class set has it — exactly what the official code
does with a result label 0 (it lands in column `0 - 1 = -1`, i.e. `other`) — and 0 (a miss)
otherwise, as the official evaluation without `other` (`addOther=False`) does.

Metrics of a confusion `C` over the classes c = 1..K (official `_computeMetrics`):
  TP_c = C[c, c],  posGt_c = Σ_j C[c, j],  posPred_c = Σ_i C[i, c],  valid = {c : posGt_c > 0}
  IoU_c = TP_c / (posGt_c + posPred_c − TP_c),   Acc_c = TP_c / posGt_c   (NaN if not valid)
  mIoU  = mean_{c ∈ valid} IoU_c                 mAcc  = mean_{c ∈ valid} Acc_c
  fwIoU = Σ_{c ∈ valid} IoU_c · posGt_c / ΣC     pAcc  = Σ_c TP_c / ΣC
Classes without GT pixels are left out even if predicted. Supercategory metrics apply the
same formulas to C summed over the blocks of each supercategory (sorted names, as official).
"""

from typing import Sequence

import numpy as np

from maskrcnn_jax.data import categories


def other_index(class_set) -> int:
  """Training id of `other` in `class_set`, 0 when the class set has none.

  Also the label of pixels no predicted mask covers (see the module doc).
  """
  ids = list(class_set.coco_ids)
  return ids.index(categories.OTHER_ID) + 1 if categories.OTHER_ID in ids else 0


def paint_instances(masks: np.ndarray, classes: np.ndarray, scores: np.ndarray, *,
                    fill: int = 0) -> np.ndarray:
  """Instance masks → label map; where masks overlap the highest score wins.

  Paints in ascending score order (stable: of equal scores the later detection wins).

  Args:
    masks: [N, H, W] bool.
    classes: [N] int training ids.
    scores: [N] float.
    fill: label of pixels no mask covers.

  Returns:
    [H, W] int32 label map.
  """
  masks = np.asarray(masks, bool)
  if masks.ndim != 3:
    raise ValueError(f"masks must be [N, H, W], got {masks.shape}")
  classes = np.asarray(classes).reshape(-1)
  scores = np.asarray(scores).reshape(-1)
  if not masks.shape[0] == len(classes) == len(scores):
    raise ValueError(f"masks {masks.shape}, classes {classes.shape}, scores {scores.shape} "
                     "disagree on N")
  return paint_crops([(0, 0, m) for m in masks], classes, scores, masks.shape[1:], fill=fill)


def paint_crops(crops: Sequence[tuple[int, int, np.ndarray]], classes: np.ndarray,
                scores: np.ndarray, shape: tuple[int, int], *, fill: int = 0) -> np.ndarray:
  """`paint_instances` of masks given as crops (`masks.paste_crops`).

  Args:
    crops: N (y0, x0, [h, w] bool): a mask's pixels [y0, y0 + h) × [x0, x0 + w), off
      outside.
    classes: [N] int training ids.
    scores: [N] float.
    shape: (H, W).
    fill: label of pixels no mask covers.

  Returns:
    [H, W] int32 label map, column-major in memory as the ground truth's
    (`ground_truth_label_map`).
  """
  out = np.full(shape, fill, np.int32, order="F")
  for i in np.argsort(scores, kind="stable"):  # Ascending: the best is painted last.
    y0, x0, crop = crops[i]
    out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]][crop] = classes[i]
  return out


def ground_truth_label_map(coco_gt, image_id: int, class_set) -> np.ndarray:
  """Ground-truth label map of one image from a `COCO` index (`coco_eval.load_ground_truth`).

  Non-crowd annotations of the class set are painted in annotation order (stuff
  annotations do not overlap; overlapping thing instances: the later one wins); crowd
  annotations are skipped, as official `cocoSegmentationToSegmentationMap`.

  Returns:
    [H, W] int32 training ids, 0 = unlabeled; in column-major memory, as pycocotools
    decodes the masks and as the evaluator flattens the map (`ravel(order="F")`, a view).
  """
  image = coco_gt.imgs[image_id]
  label = np.zeros((image["height"], image["width"]), np.int32, order="F")
  to_train = {int(c): i + 1 for i, c in enumerate(class_set.coco_ids)}
  for ann in coco_gt.imgToAnns[image_id]:
    if ann.get("iscrowd", 0) or ann["category_id"] not in to_train:
      continue
    label[coco_gt.annToMask(ann) > 0] = to_train[ann["category_id"]]
  return label


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
  """Pixel confusion of two label maps.

  Args:
    gt: [H, W] int ground-truth training ids, 0 = unlabeled (ignored); or any shape, e.g.
      flattened, the same as `pred`'s.
    pred: [H, W] int predicted training ids, 0 = no prediction.
    num_classes: K.

  Returns:
    [K + 1, K + 1] int64, C[g, p] = pixels with GT g > 0 and prediction p.
  """
  gt, pred = np.asarray(gt), np.asarray(pred)
  if gt.shape != pred.shape:
    raise ValueError(f"gt {gt.shape} and pred {pred.shape} label maps differ in shape")
  n = num_classes + 1
  for name, x in (("gt", gt), ("pred", pred)):
    if x.size and (x.min() < 0 or x.max() >= n):
      raise ValueError(f"{name} labels must be in [0, {num_classes}], got "
                       f"[{x.min()}, {x.max()}]")
  # All pixels, then row 0 (unlabeled GT) cleared: cheaper than selecting the labelled.
  confusion = np.bincount((gt.astype(np.int64) * n + pred).ravel(),
                          minlength=n * n).reshape(n, n)
  confusion[0] = 0
  return confusion


def compute_metrics(confusion: np.ndarray) -> dict[str, float | np.ndarray]:
  """The official metrics of a [K + 1, K + 1] confusion (formulas in the module doc).

  Returns:
    `mIoU`, `fwIoU`, `mAcc`, `pAcc` floats (NaN without GT pixels) and `iou`, `acc`: [K]
    float64 per class (training id c at index c − 1), NaN for classes without GT.
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"confusion must be square [K + 1, K + 1], got {confusion.shape}")
  if confusion[0].any():
    raise ValueError("confusion row 0 (unlabeled ground truth) must be empty")
  tp = np.diag(confusion)[1:]
  pos_gt = confusion.sum(1)[1:]
  pos_pred = confusion.sum(0)[1:]
  valid = pos_gt > 0
  total = confusion.sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(valid, tp / (pos_gt + pos_pred - tp), np.nan)
    acc = np.where(valid, tp / pos_gt, np.nan)
  if not valid.any():
    nan = float("nan")
    return dict(mIoU=nan, fwIoU=nan, mAcc=nan, pAcc=nan, iou=iou, acc=acc)
  return dict(mIoU=float(np.mean(iou[valid])),
              fwIoU=float(np.sum(iou[valid] * pos_gt[valid]) / total),
              mAcc=float(np.mean(acc[valid])),
              pAcc=float(tp.sum() / total),
              iou=iou, acc=acc)


def supercategory_confusion(confusion: np.ndarray, supercategories: Sequence[str]
                            ) -> tuple[np.ndarray, list[str]]:
  """Sums a [K + 1, K + 1] confusion over supercategory blocks (official `_getSupCatConfusion`).

  Args:
    confusion: [K + 1, K + 1].
    supercategories: [K] supercategory of training id c at index c − 1.

  Returns:
    ([S + 1, S + 1] confusion with index 0 = no label, the S sorted supercategory names).
  """
  if len(supercategories) != confusion.shape[0] - 1:
    raise ValueError(f"{len(supercategories)} supercategories for a confusion of "
                     f"{confusion.shape[0] - 1} classes")
  names = sorted(set(supercategories))
  group = np.array([0] + [names.index(s) + 1 for s in supercategories])
  onehot = np.eye(len(names) + 1, dtype=confusion.dtype)[group]  # [K + 1, S + 1]
  return onehot.T @ confusion @ onehot, names


def used_classes_confusion(confusion: np.ndarray, names: Sequence[str]
                           ) -> tuple[np.ndarray, list[str]]:
  """The confusion of the classes with at least one GT or predicted pixel (the rest are
  all-zero rows and columns: row-normalised values are unchanged).

  Args:
    confusion: [K + 1, K + 1], index 0 = no label.
    names: [K] class names of training ids 1..K.

  Returns:
    ([U + 1, U + 1] confusion with index 0 = no label, the U names kept, in id order).
  """
  if len(names) != confusion.shape[0] - 1:
    raise ValueError(f"{len(names)} names for a confusion of {confusion.shape[0] - 1} classes")
  used = np.flatnonzero(confusion[1:].sum(1) + confusion[:, 1:].sum(0)) + 1
  index = np.concatenate([[0], used])
  return confusion[np.ix_(index, index)], [names[i - 1] for i in used]


def drop_class(confusion: np.ndarray, index: int) -> np.ndarray:
  """The confusion without class `index` (official `addOther=False` for `other`).

  Its GT pixels are ignored (row removed); pixels predicted as it count as misses
  (column moved into column 0, "no prediction").

  Args:
    confusion: [K + 1, K + 1].
    index: training id in [1, K].

  Returns:
    [K, K] confusion over the remaining classes, in order.
  """
  if not 1 <= index < confusion.shape[0]:
    raise ValueError(f"class index {index} outside [1, {confusion.shape[0] - 1}]")
  out = confusion.copy()
  out[:, 0] += out[:, index]
  out = np.delete(np.delete(out, index, axis=0), index, axis=1)
  return out


def summarize(confusion: np.ndarray, class_set) -> dict[str, dict]:
  """All semantic metric groups of an accumulated [K + 1, K + 1] confusion.

  Groups: `stuff` (leaf classes of the class set), `stuff_supercat` (its supercategories),
  `stuff_no_other` and `stuff_no_other_supercat` (the same without `other`, official
  `addOther=False`; equal to the first two when the class set has no `other`, so runs of
  different class sets compare on one key).

  Returns:
    {group: `compute_metrics` dict plus `names` ([K'] class or supercategory names)}.
  """
  names, supers = list(class_set.names), list(class_set.supercategories)
  groups = {}
  other = other_index(class_set)
  variants = [("stuff", confusion, names, supers)]
  if other:
    keep = [i for i in range(len(names)) if i != other - 1]
    variants.append(("stuff_no_other", drop_class(confusion, other),
                     [names[i] for i in keep], [supers[i] for i in keep]))
  for group, conf, leaf_names, leaf_supers in variants:
    groups[group] = dict(compute_metrics(conf), names=leaf_names)
    super_conf, super_names = supercategory_confusion(conf, leaf_supers)
    groups[f"{group}_supercat"] = dict(compute_metrics(super_conf), names=super_names)
  if not other:
    groups["stuff_no_other"] = groups["stuff"]
    groups["stuff_no_other_supercat"] = groups["stuff_supercat"]
  return groups
