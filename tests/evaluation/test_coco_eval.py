import json
import pathlib

import numpy as np
from pycocotools import mask as mask_utils
import pytest

from bench import fakes
from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval


def test_load_ground_truth_filters_to_class_set(stuff_json, instances_json):
  stuff = coco_eval.load_ground_truth([stuff_json], categories.get_class_set("stuff"))
  assert len(stuff.anns) == 6
  no_other = coco_eval.load_ground_truth([stuff_json],
                                         categories.get_class_set("stuff_no_other"))
  assert len(no_other.anns) == 4  # The two `other` (183) annotations dropped.
  assert 183 not in no_other.cats and len(no_other.cats) == 91
  both = coco_eval.load_ground_truth([stuff_json, instances_json],
                                     categories.get_class_set("things_and_stuff"))
  assert sorted(a["category_id"] for a in both.anns.values()) == [1, 3, 149, 149, 157, 169]
  assert sorted(both.anns) == list(range(1, 7))  # Renumbered: ids of files may collide.
  assert sorted(both.imgs) == [7, 9]


def test_load_ground_truth_rejects_conflicting_image_sizes(tmp_path, stuff_json):
  data = json.loads(open(stuff_json).read())
  data["images"][0]["height"] += 1
  other = tmp_path / "other.json"
  other.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="image 7"):
    coco_eval.load_ground_truth([stuff_json, str(other)], categories.get_class_set("stuff"))


def test_results_are_json_ready_coco(tmp_path):
  cs = categories.get_class_set("stuff")
  mask = np.zeros((1, 10, 12), bool)
  mask[0, 2:5, 3:9] = True
  score = np.float32(0.123456789)
  results = coco_eval.to_coco_results(7, np.array([[3, 2, 9, 5]]), np.array([score]),
                                      np.array([92]), cs, masks=mask)
  assert results[0]["category_id"] == 183 and results[0]["bbox"] == [3, 2, 6, 3]
  assert results[0]["score"] == float(score)  # Not rounded: no ties in COCOeval's sort.
  assert isinstance(results[0]["segmentation"]["counts"], str)
  path = tmp_path / "r.json"
  coco_eval.write_results(str(path), results)
  back = json.loads(path.read_text())[0]["segmentation"]
  back["counts"] = back["counts"].encode()
  np.testing.assert_array_equal(mask_utils.decode(back), mask[0])
  with pytest.raises(ValueError, match="training ids"):
    coco_eval.to_coco_results(7, np.zeros((1, 4)), np.ones(1), np.array([93]), cs)


def _gt_results(gt, score=1.0):
  """A result per non-crowd GT annotation, equal to it."""
  results = []
  for ann in gt.anns.values():
    if ann["iscrowd"]:
      continue
    rle = gt.annToRLE(ann)
    rle = dict(size=rle["size"], counts=rle["counts"].decode()
               if isinstance(rle["counts"], bytes) else rle["counts"])
    results.append(dict(image_id=ann["image_id"], category_id=ann["category_id"],
                        bbox=list(ann["bbox"]), score=score, segmentation=rle))
  return results


def test_perfect_results_give_ap_one(stuff_json):
  cs = categories.get_class_set("stuff")
  gt = coco_eval.load_ground_truth([stuff_json], cs)
  for iou_type in coco_eval.IOU_TYPES:
    metrics, per_class = coco_eval.evaluate(gt, _gt_results(gt), iou_type, [7, 9])
    assert set(metrics) == set(coco_eval.METRIC_NAMES)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
    with_gt = [cs.to_train_id(c) - 1 for c in (149, 157, 169, 183)]
    np.testing.assert_allclose(per_class[with_gt], 1.0)
    assert np.isnan(np.delete(per_class, with_gt)).all()


def test_empty_results_give_zeros(stuff_json):
  gt = coco_eval.load_ground_truth([stuff_json], categories.get_class_set("stuff"))
  metrics, per_class = coco_eval.evaluate(gt, [], "segm", [7, 9])
  assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0
  assert np.nansum(per_class) == 0.0 and (~np.isnan(per_class)).sum() == 4


def test_evaluate_only_on_given_images(stuff_json):
  gt = coco_eval.load_ground_truth([stuff_json], categories.get_class_set("stuff"))
  only7 = [r for r in _gt_results(gt) if r["image_id"] == 7]
  metrics, _ = coco_eval.evaluate(gt, only7, "bbox", [7])
  assert metrics["AP"] == pytest.approx(1.0)
  metrics, _ = coco_eval.evaluate(gt, only7, "bbox", [7, 9])
  assert metrics["AP"] < 1.0
  with pytest.raises(ValueError, match="not in the ground truth"):
    coco_eval.evaluate(gt, only7, "bbox", [7, 8])


def test_crowd_matches_are_ignored(stuff_json, instances_json):
  cs = categories.get_class_set("things_and_stuff")
  gt = coco_eval.load_ground_truth([stuff_json, instances_json], cs)
  results = _gt_results(gt)
  crowd_hit = dict(image_id=9, category_id=3, bbox=[5, 25, 10, 5], score=0.5)
  metrics, per_class = coco_eval.evaluate(gt, results + [crowd_hit], "bbox", [7, 9])
  assert metrics["AP"] == pytest.approx(1.0)  # The detection on the crowd is no error.
  assert np.isnan(per_class[cs.to_train_id(3) - 1])  # Only crowd GT: not averaged.


def test_evaluate_leaves_results_unchanged(stuff_json):
  gt = coco_eval.load_ground_truth([stuff_json], categories.get_class_set("stuff"))
  results = _gt_results(gt)
  before = json.dumps(results)
  for iou_type in coco_eval.IOU_TYPES:
    coco_eval.evaluate(gt, results, iou_type, [7, 9])
  assert json.dumps(results) == before


SAMPLES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "coco_samples"


def _shifted_results(gt, rng, copies=3, shift=8):
  """Per GT annotation, `copies` shifted masks, some with a wrong class, random scores."""
  cat_ids = gt.getCatIds()
  results = []
  for ann in gt.anns.values():
    mask = gt.annToMask(ann)
    for _ in range(copies):
      moved = np.roll(mask, tuple(rng.integers(-shift, shift + 1, 2)), (0, 1))
      if not moved.any():
        continue
      rle = mask_utils.encode(np.asfortranarray(moved))
      rle["counts"] = rle["counts"].decode()
      category = ann["category_id"] if rng.uniform() < 0.7 else int(rng.choice(cat_ids))
      results.append(dict(image_id=ann["image_id"], category_id=category,
                          bbox=[float(v) for v in mask_utils.toBbox(rle)],
                          score=round(float(rng.uniform()), 5), segmentation=rle))
  return results


def _ground_truths(tmp_path):
  """(name, GT, results): the synthetic set, and the real samples when present."""
  rng = np.random.default_rng(0)
  stuff = categories.get_class_set("stuff")
  fakes.fake_ground_truth(str(tmp_path / "gt.json"), 12, 60, 80, stuff, rng)
  gt = coco_eval.load_ground_truth([str(tmp_path / "gt.json")], stuff)
  out = [("synthetic", gt, _shifted_results(gt, rng))]
  if SAMPLES.is_dir():
    root = SAMPLES / "stuff_examples"
    gt = coco_eval.load_ground_truth([str(root / "annotations" / "stuff_examples.json")], stuff)
    results = json.loads((root / "results" / "stuff_examples_results.json").read_text())
    for r in results:  # Official example label maps: scores and boxes added.
      r["score"] = round(float(rng.uniform(0.1, 1)), 5)
      r["bbox"] = [float(v) for v in mask_utils.toBbox(r["segmentation"])]
    out.append(("stuff_examples", gt, results + _shifted_results(gt, rng, copies=1)))
    things = SAMPLES / "panoptic_val2017" / "annotations" / "instances_val2017_from_panoptic.json"
    gt = coco_eval.load_ground_truth([str(things)], categories.get_class_set("things_and_stuff"))
    out.append(("panoptic_instances", gt, _shifted_results(gt, rng, copies=2, shift=5)))
  return out


def test_backends_agree(tmp_path):
  """faster-coco-eval = pycocotools up to float rounding (measured: at most 1 ulp)."""
  for name, gt, results in _ground_truths(tmp_path):
    for iou_type in coco_eval.IOU_TYPES:
      ref, ref_per_class = coco_eval.evaluate(gt, results, iou_type, list(gt.imgs))
      got, got_per_class = coco_eval.evaluate(gt, results, iou_type, list(gt.imgs),
                                              backend="faster_coco_eval")
      assert ref["AP"] > 0.01, (name, iou_type)
      for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12, rel=0, nan_ok=True), (name, iou_type, k)
      np.testing.assert_allclose(got_per_class, ref_per_class, atol=1e-12, rtol=0)
  with pytest.raises(ValueError, match="backend"):
    coco_eval.evaluate(gt, results, "bbox", list(gt.imgs), backend="fast")


def test_parts_of_disjoint_images_accumulate_exactly(tmp_path):
  _, gt, results = _ground_truths(tmp_path)[0]
  ids = sorted(gt.imgs)
  halves = ([i for i in ids if i % 3 == 0], [i for i in ids if i % 3])  # Interleaved.
  for iou_type in coco_eval.IOU_TYPES:
    whole = coco_eval.evaluate(gt, results, iou_type, ids)
    parts = [coco_eval.evaluate_images(gt, [r for r in results if r["image_id"] in h],
                                       iou_type, h) for h in halves]
    merged = coco_eval.accumulate(gt, parts[::-1], iou_type)
    assert merged[0] == pytest.approx(whole[0], rel=0, abs=0, nan_ok=True)  # Exact.
    np.testing.assert_array_equal(merged[1], whole[1])
    with pytest.raises(ValueError, match="share images"):
      coco_eval.accumulate(gt, [parts[0], parts[0]], iou_type)
