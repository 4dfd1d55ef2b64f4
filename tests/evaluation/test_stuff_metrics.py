import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import stuff_metrics as sm

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "coco_samples"


def test_hand_made_confusion_and_metrics():
  gt = np.array([[1, 1, 1], [2, 2, 0]])
  pred = np.array([[1, 1, 2], [2, 0, 1]])  # (1, 2): GT unlabeled, never counted.
  conf = sm.confusion_matrix(gt, pred, 2)
  np.testing.assert_array_equal(conf, [[0, 0, 0], [0, 2, 1], [1, 0, 1]])
  m = sm.compute_metrics(conf)
  # TP (2, 1), posGt (3, 2), posPred (2, 2), 5 pixels.
  np.testing.assert_allclose(m["iou"], [2 / 3, 1 / 3])
  np.testing.assert_allclose(m["acc"], [2 / 3, 1 / 2])
  assert m["mIoU"] == pytest.approx(0.5)
  assert m["fwIoU"] == pytest.approx((2 / 3 * 3 + 1 / 3 * 2) / 5)
  assert m["mAcc"] == pytest.approx(7 / 12)
  assert m["pAcc"] == pytest.approx(3 / 5)


def test_unlabeled_pixels_never_count():
  gt = np.array([[0, 0], [1, 0]])
  a = sm.confusion_matrix(gt, np.array([[2, 1], [1, 2]]), 2)
  b = sm.confusion_matrix(gt, np.array([[0, 0], [1, 1]]), 2)
  np.testing.assert_array_equal(a, b)
  assert a.sum() == 1


def test_class_without_gt_is_nan_and_left_out():
  conf = np.array([[0, 0, 0], [0, 3, 1], [0, 0, 0]])
  m = sm.compute_metrics(conf)
  assert np.isnan(m["iou"][1]) and np.isnan(m["acc"][1])
  assert m["mIoU"] == pytest.approx(3 / 4)  # Predicted-only class 2 is not averaged.


def test_paint_highest_score_wins_in_any_order():
  masks = np.zeros((3, 4, 4), bool)
  masks[0, :2] = True
  masks[1, :, :2] = True
  masks[2, 3, 3] = True
  classes, scores = np.array([5, 6, 7]), np.array([0.3, 0.9, 0.5])
  expected = np.array([[6, 6, 5, 5], [6, 6, 5, 5], [6, 6, 9, 9], [6, 6, 9, 7]])
  for perm in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
    np.testing.assert_array_equal(
        sm.paint_instances(masks[perm], classes[perm], scores[perm], fill=9), expected)
  low_first = np.array([0.9, 0.3, 0.5])
  assert sm.paint_instances(masks, classes, low_first)[0, 0] == 5


def test_other_index_is_other_only_when_a_class():
  stuff = categories.get_class_set("stuff")
  assert sm.other_index(stuff) == 92
  assert stuff.coco_ids[91] == 183
  assert sm.other_index(categories.get_class_set("stuff_no_other")) == 0
  assert sm.other_index(categories.get_class_set("things_and_stuff")) == 0


def _official(gt_ids, res_ids, add_other):
  """Literal port of cocostuffeval.py `_accumulateConfusion` + `_computeMetrics` +
  `_getSupCatConfusion` (COCO ids, 183 x 183, index id - 1)."""
  cat_ids = list(range(92, 182 + add_other + 1))
  confusion = np.zeros((183, 183))
  for g_map, r_map in zip(gt_ids, res_ids):
    valid = np.isin(g_map, cat_ids)
    for g, d in zip(g_map[valid].astype(int), r_map[valid].astype(int)):
      confusion[g - 1, d - 1] += 1

  def metrics(c):
    tp, pos_pred, pos_gt = np.diagonal(c), c.sum(0), c.sum(1)
    valid = pos_gt > 0
    iou = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    return [np.mean(iou), np.sum(iou * (pos_gt / c.sum())[valid]),
            np.mean(tp[valid] / pos_gt[valid]), tp.sum() / c.sum()]

  supers = [s for _, _, s in categories.CATEGORIES[91:]]  # Categories 92..183.
  names = sorted(set(supers))
  sup = np.zeros((len(names), len(names)))
  for a, na in enumerate(names):
    for b, nb in enumerate(names):
      la = np.array([i for i, s in enumerate(supers) if s == na]) + 91
      lb = np.array([i for i, s in enumerate(supers) if s == nb]) + 91
      sup[a, b] = confusion[la][:, lb].sum()
  return metrics(confusion) + metrics(sup)


@pytest.mark.parametrize("add_other", [True, False])
def test_agrees_with_official_formulas_on_random_maps(add_other):
  rng = np.random.default_rng(int(add_other))
  labels = np.array([0] + list(range(92, 184)))
  gt_ids = [rng.choice(labels[:12].tolist() + [183, 183, 0], size=(9, 11)) for _ in range(3)]
  pred_hi = 184 if add_other else 183  # Official refuses a predicted 183 without other.
  res_ids = [np.where(rng.uniform(size=(9, 11)) < 0.6, g,
                      rng.choice([0] + list(range(92, pred_hi)), size=(9, 11)))
             for g in gt_ids]
  official = _official(gt_ids, res_ids, add_other)

  cs = categories.get_class_set("stuff")
  lut = np.zeros(184, np.int64)
  lut[list(cs.coco_ids)] = np.arange(1, cs.num_classes + 1)
  conf = 0
  for g, r in zip(gt_ids, res_ids):
    pred = lut[r]
    pred[r == 0] = sm.other_index(cs)
    conf = conf + sm.confusion_matrix(lut[g], pred, cs.num_classes)
  groups = sm.summarize(conf, cs)
  prefix = "stuff" if add_other else "stuff_no_other"
  ours = [groups[prefix][k] for k in ("mIoU", "fwIoU", "mAcc", "pAcc")]
  ours += [groups[f"{prefix}_supercat"][k] for k in ("mIoU", "fwIoU", "mAcc", "pAcc")]
  np.testing.assert_allclose(ours, official, rtol=1e-12)


def test_drop_class_moves_predictions_to_misses():
  conf = np.array([[0, 0, 0, 0], [1, 5, 2, 3], [0, 1, 4, 0], [2, 1, 1, 6]])
  np.testing.assert_array_equal(sm.drop_class(conf, 3),
                                [[0, 0, 0], [4, 5, 2], [0, 1, 4]])


def test_supercategory_confusion_sums_blocks():
  conf = np.arange(16).reshape(4, 4)
  conf[0] = 0
  sup, names = sm.supercategory_confusion(conf, ["b", "a", "b"])
  assert names == ["a", "b"]
  # Rows/columns: none, a (train id 2), b (train ids 1 and 3).
  np.testing.assert_array_equal(sup, [[0, 0, 0], [8, 10, 9 + 11], [4 + 12, 6 + 14,
                                                                5 + 7 + 13 + 15]])


def test_used_classes_confusion_keeps_classes_with_gt_or_predicted_pixels():
  conf = np.zeros((5, 5), np.int64)
  conf[0, 3] = 2  # Class 3 predicted on unlabelled pixels only: kept.
  conf[1, 0] = 5  # Class 1: GT, never predicted: kept. Classes 2 and 4: no pixel.
  conf[1, 1] = 7
  used, names = sm.used_classes_confusion(conf, ["a", "b", "c", "d"])
  assert names == ["a", "c"]
  np.testing.assert_array_equal(used, [[0, 0, 2], [5, 7, 0], [0, 0, 0]])
  with pytest.raises(ValueError, match="3 names"):
    sm.used_classes_confusion(conf, ["a", "b", "c"])


def test_ground_truth_label_maps_per_class_set(stuff_json, instances_json):
  things = categories.get_class_set("things_and_stuff")
  gt = coco_eval.load_ground_truth([stuff_json, instances_json], things)
  label = sm.ground_truth_label_map(gt, 7, things)
  assert (label[0:10, 40:60] == things.to_train_id(1)).all()  # The person.
  assert (label[10:20, 40:60] == 0).all()  # `other` is not a class here.
  assert (label[20:40] == things.to_train_id(149)).all()
  label9 = sm.ground_truth_label_map(gt, 9, things)
  assert (label9[25:30, 5:15] == 0).all()  # Crowd car skipped, `other` dropped.

  stuff = categories.get_class_set("stuff")
  label = sm.ground_truth_label_map(coco_eval.load_ground_truth([stuff_json], stuff), 7,
                                    stuff)
  assert (label[0:20, 40:60] == stuff.to_train_id(183)).all()
  assert (label[12:20, 0:40] == 0).all()


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared/coco_samples beside the repo absent")
def test_official_golden_metrics_on_real_samples():
  root = SAMPLES / "stuff_examples"
  golden = json.loads((root / "results" / "golden_metrics_official_cocostuffeval.json")
                      .read_text())
  cs = categories.get_class_set("stuff")
  gt = coco_eval.load_ground_truth([str(root / "annotations" / "stuff_examples.json")], cs)
  lut = np.zeros(256, np.int32)
  lut[list(cs.coco_ids)] = np.arange(1, cs.num_classes + 1)
  conf = 0
  for image_id in gt.getImgIds():
    png = root / "results" / "segmentations" / "examples" / f"{image_id:012d}.png"
    pred = np.asarray(Image.open(png))
    conf = conf + sm.confusion_matrix(sm.ground_truth_label_map(gt, image_id, cs),
                                      lut[pred], cs.num_classes)
  assert conf.sum() == golden["confusion_total_pixels"]
  assert np.trace(conf) == golden["confusion_trace"]
  groups = sm.summarize(conf, cs)
  ours = [groups[g][k] for g in ("stuff", "stuff_supercat")
          for k in ("mIoU", "fwIoU", "mAcc", "pAcc")]
  np.testing.assert_allclose(ours, golden["stats"], rtol=1e-10)
  for coco_id, iou in golden["per_class_iou"].items():
    train_id = cs.to_train_id(int(coco_id))
    assert groups["stuff"]["iou"][train_id - 1] == pytest.approx(iou, rel=1e-10)
    assert groups["stuff"]["acc"][train_id - 1] == pytest.approx(
        golden["per_class_acc"][coco_id], rel=1e-10)
  assert int((~np.isnan(groups["stuff"]["iou"])).sum()) == len(golden["per_class_iou"])
  assert groups["stuff_supercat"]["names"] == golden["supercats_sorted"]
  expected = np.array([np.nan if v is None else v for v in golden["per_supercat_iou"]])
  np.testing.assert_allclose(groups["stuff_supercat"]["iou"], expected, rtol=1e-10)


def test_paint_equal_scores_later_detection_wins():
  masks = np.ones((2, 1, 2), bool)
  out = sm.paint_instances(masks, np.array([3, 4]), np.array([0.5, 0.5]))
  np.testing.assert_array_equal(out, [[4, 4]])
