"""Panoptic merge, format and PQ; PQ perturbations of the real panopticapi samples by hand."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import panoptic

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "coco_samples"
ROOT = SAMPLES / "panoptic_val2017" / "annotations"
GT_JSON, GT_DIR = ROOT / "panoptic_val2017.json", ROOT / "panoptic_val2017"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(),
                                   reason="shared/coco_samples beside the repo absent")
# In the samples: image 142238 has 13 persons + 1 crowd (3153362), a sports ball (37,
# 175 px, 16757838), 184 tree (130,762 px, 2330219), 187 sky, 193 grass and 2,712 VOID
# pixels; 439180 has persons, 2 trucks (8), 11 horses (19) + 1 crowd, 125 gravel, 184, 187,
# 193. Categories seen: things 1, 8, 19, 37; stuff 125, 184, 187, 193 (N = 8).
BALL, TREE, CROWD, HORSE = 16757838, 2330219, 3153362, 16758454


@pytest.fixture
def gt():
  """(GT JSON, {image id: [H, W] segment ids}): a copy to perturb as a prediction."""
  data = json.loads(GT_JSON.read_text())
  maps = {a["image_id"]: panoptic.read_png(GT_DIR / a["file_name"])
          for a in data["annotations"]}
  return data, maps


def _segments(data, image_id):
  return next(a for a in data["annotations"] if a["image_id"] == image_id)["segments_info"]


def _pq(tmp_path, data, maps):
  """PQ of the (perturbed) prediction `data`, `maps` written to files, against the GT."""
  (tmp_path / "pred").mkdir(exist_ok=True)
  for ann in data["annotations"]:
    (tmp_path / "pred" / ann["file_name"]).write_bytes(
        panoptic.png_bytes(maps[ann["image_id"]]))
  (tmp_path / "pred.json").write_text(json.dumps(dict(annotations=data["annotations"])))
  return panoptic.pq_compute(GT_JSON, tmp_path / "pred.json", GT_DIR, tmp_path / "pred")


def _check(results, group, pq, sq, rq, n):
  got = results[group]
  assert (got["pq"], got["sq"], got["rq"], got["n"]) == (
      pytest.approx(pq, abs=1e-12), pytest.approx(sq, abs=1e-12),
      pytest.approx(rq, abs=1e-12), n), group


@needs_samples
def test_ground_truth_against_itself_is_perfect(tmp_path, gt):
  results = _pq(tmp_path, *gt)
  for group, n in (("All", 8), ("Things", 4), ("Stuff", 4)):
    _check(results, group, 1, 1, 1, n)
  # The crowd segment, predicted as a person segment, matches nothing yet is no FP.


@needs_samples
def test_removed_segment_is_a_false_negative(tmp_path, gt):
  data, maps = gt
  maps[142238][maps[142238] == BALL] = panoptic.VOID
  _segments(data, 142238)[:] = [s for s in _segments(data, 142238) if s["id"] != BALL]
  results = _pq(tmp_path, data, maps)
  assert results["per_class"][37] == dict(pq=0.0, sq=0.0, rq=0.0)  # TP 0, FN 1.
  _check(results, "All", 7 / 8, 7 / 8, 7 / 8, 8)
  _check(results, "Things", 3 / 4, 3 / 4, 3 / 4, 4)
  _check(results, "Stuff", 1, 1, 1, 4)


@needs_samples
def test_changed_class_is_a_false_negative_and_a_false_positive(tmp_path, gt):
  data, maps = gt
  next(s for s in _segments(data, 142238) if s["id"] == BALL)["category_id"] = 38  # kite
  results = _pq(tmp_path, data, maps)
  # 37: FN 1; 38: FP 1 and now counted (N 9): both PQ 0.
  _check(results, "All", 7 / 9, 7 / 9, 7 / 9, 9)
  _check(results, "Things", 3 / 5, 3 / 5, 3 / 5, 5)
  _check(results, "Stuff", 1, 1, 1, 4)


def _shrink(maps, image_id, segment_id, keep):
  """Keeps the first `keep` pixels (raster order) of a segment; the rest become VOID."""
  flat = maps[image_id].reshape(-1)
  flat[np.nonzero(flat == segment_id)[0][keep:]] = panoptic.VOID


@needs_samples
def test_segment_shrunk_below_half_is_unmatched(tmp_path, gt):
  data, maps = gt
  _shrink(maps, 439180, HORSE, 2181)  # IoU 2181 / 4363 = 0.49989 <= 0.5.
  results = _pq(tmp_path, data, maps)
  # Horse (19): 10 of 11 matched with IoU 1, one FN and one FP.
  assert results["per_class"][19] == pytest.approx(dict(pq=10 / 11, sq=1, rq=10 / 11))
  _check(results, "All", (7 + 10 / 11) / 8, 1, (7 + 10 / 11) / 8, 8)
  _check(results, "Things", (3 + 10 / 11) / 4, 1, (3 + 10 / 11) / 4, 4)


@needs_samples
def test_segment_shrunk_above_half_matches_with_its_iou(tmp_path, gt):
  data, maps = gt
  _shrink(maps, 439180, HORSE, 2182)  # IoU 2182 / 4363 = 0.50011 > 0.5.
  results = _pq(tmp_path, data, maps)
  sq = (10 + 2182 / 4363) / 11
  assert results["per_class"][19] == pytest.approx(dict(pq=sq, sq=sq, rq=1))
  _check(results, "Things", (3 + sq) / 4, (3 + sq) / 4, 1, 4)


@needs_samples
def test_predicted_pixels_on_void_are_left_out_of_the_union(tmp_path, gt):
  data, maps = gt
  maps[142238][maps[142238] == panoptic.VOID] = TREE  # All 2,712 VOID pixels.
  results = _pq(tmp_path, data, maps)
  _check(results, "All", 1, 1, 1, 8)  # IoU 130762 / (133474 + 130762 - 130762 - 2712) = 1.


def _new_segment(data, maps, image_id, pixels, category_id, segment_id=99):
  maps[image_id].reshape(-1)[pixels] = segment_id
  _segments(data, image_id).append(dict(id=segment_id, category_id=category_id, iscrowd=0))


@needs_samples
@pytest.mark.parametrize("stolen", [1000, 3000])
def test_segment_mostly_on_void_is_no_false_positive(tmp_path, gt, stolen):
  """An airplane over all VOID pixels and `stolen` pixels of the tree."""
  data, maps = gt
  flat = maps[142238].reshape(-1)
  pixels = np.concatenate([np.nonzero(flat == panoptic.VOID)[0],
                           np.nonzero(flat == TREE)[0][:stolen]])
  _new_segment(data, maps, 142238, pixels, 5)
  results = _pq(tmp_path, data, maps)
  # The tree of 142238 keeps IoU (130762 - stolen) / 130762 (union: the GT tree); the one
  # of 439180 IoU 1.
  tree = (1 + (130762 - stolen) / 130762) / 2
  assert results["per_class"][184] == pytest.approx(dict(pq=tree, sq=tree, rq=1))
  if stolen == 1000:  # 2712 / 3712 of it on VOID: ignored, airplane not counted.
    _check(results, "All", (7 + tree) / 8, (7 + tree) / 8, 1, 8)
  else:  # 2712 / 5712 <= 0.5: an FP of category 5 (N 9).
    _check(results, "All", (7 + tree) / 9, (7 + tree) / 9, 8 / 9, 9)
    _check(results, "Things", 4 / 5, 4 / 5, 4 / 5, 5)
  _check(results, "Stuff", (3 + tree) / 4, (3 + tree) / 4, 1, 4)


@needs_samples
@pytest.mark.parametrize("category_id", [1, 2])
def test_segment_on_crowd_is_no_false_positive_of_its_category(tmp_path, gt, category_id):
  """100 pixels of the person crowd region predicted as a person (1) or a bicycle (2)."""
  data, maps = gt
  _new_segment(data, maps, 142238, np.nonzero(maps[142238].reshape(-1) == CROWD)[0][:100],
               category_id)
  results = _pq(tmp_path, data, maps)
  if category_id == 1:
    _check(results, "All", 1, 1, 1, 8)
  else:  # Another category's crowd is no excuse: FP, bicycle counted with PQ 0.
    _check(results, "All", 8 / 9, 8 / 9, 8 / 9, 9)
    _check(results, "Things", 4 / 5, 4 / 5, 4 / 5, 5)


@needs_samples
def test_unpredicted_crowd_is_no_false_negative(tmp_path, gt):
  data, maps = gt
  maps[142238][maps[142238] == CROWD] = panoptic.VOID
  _segments(data, 142238)[:] = [s for s in _segments(data, 142238) if s["id"] != CROWD]
  _check(_pq(tmp_path, data, maps), "All", 1, 1, 1, 8)


@needs_samples
def test_inconsistent_predictions_raise(tmp_path, gt):
  data, maps = gt
  _segments(data, 142238).append(dict(id=77, category_id=1, iscrowd=0))
  with pytest.raises(ValueError, match=r"image 142238: segments \[77\] are in the JSON"):
    _pq(tmp_path, data, maps)
  data, maps = json.loads(GT_JSON.read_text()), gt[1]
  _segments(data, 142238)[:] = [s for s in _segments(data, 142238) if s["id"] != BALL]
  with pytest.raises(ValueError, match=f"segment {BALL} is in the PNG but not in the JSON"):
    _pq(tmp_path, data, maps)
  data = json.loads(GT_JSON.read_text())
  _segments(data, 142238)[0]["category_id"] = 183
  with pytest.raises(ValueError, match="unknown category_id 183"):
    _pq(tmp_path, data, maps)
  data = json.loads(GT_JSON.read_text())
  data["annotations"] = data["annotations"][:1]
  with pytest.raises(ValueError, match="no prediction for the image with id 439180"):
    _pq(tmp_path, data, maps)


@needs_samples
def test_cli_prints_the_table_and_writes_json(tmp_path):
  out = tmp_path / "pq.json"
  run = subprocess.run(
      [sys.executable, "-m", "maskrcnn_jax.evaluation.panoptic", f"--gt_json={GT_JSON}",
       f"--gt_dir={GT_DIR}", f"--pred_json={GT_JSON}", f"--pred_dir={GT_DIR}",
       f"--output={out}"], capture_output=True, text=True, check=True,
      cwd=Path(__file__).parents[2])
  assert run.stdout.splitlines() == [
      "          |    PQ     SQ     RQ     N",
      "--------------------------------------",
      "All       | 100.0  100.0  100.0     8",
      "Things    | 100.0  100.0  100.0     4",
      "Stuff     | 100.0  100.0  100.0     4"]
  written = json.loads(out.read_text())
  assert written["All"] == dict(pq=1.0, sq=1.0, rq=1.0, n=8)
  assert written["per_class"]["37"] == dict(pq=1.0, sq=1.0, rq=1.0)


def test_rgb_id_round_trip():
  ids = np.array([[0, 1, 255], [256, 65536 + 7, 256 ** 3 - 1]])
  rgb = panoptic.id_to_rgb(ids)
  np.testing.assert_array_equal(rgb[1, 1], [7, 0, 1])
  np.testing.assert_array_equal(panoptic.rgb_to_id(rgb), ids)
  with pytest.raises(ValueError, match="segment ids"):
    panoptic.id_to_rgb(np.array([256 ** 3]))


def test_combine_by_hand():
  cs = categories.get_class_set("things_and_stuff")
  t = cs.to_train_id
  masks = np.zeros((6, 4, 4), bool)
  masks[0, 0:2] = True      # person 0.9: rows 0-1.
  masks[1, 1:3] = True      # car 0.8: half on the person, so kept with row 2.
  masks[2, 0:3, 0] = True   # dog 0.7: all on earlier segments, dropped.
  masks[3, 3] = True        # cat 0.3: under the score threshold.
  masks[4, 2:4] = True      # sky 0.6: rows 2-3.
  masks[5, 3, :2] = True    # grass 0.9: on the sky, higher score.
  classes = np.array([t(1), t(3), t(18), t(17), t(157), t(124)])
  scores = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.9])
  pan, segments = panoptic.combine(masks, classes, scores, cs, stuff_area_threshold=2)
  np.testing.assert_array_equal(pan, [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 4, 4]])
  assert segments == [
      dict(id=1, category_id=1, area=8, bbox=[0, 0, 4, 2], iscrowd=0),
      dict(id=2, category_id=3, area=4, bbox=[0, 2, 4, 1], iscrowd=0),
      dict(id=3, category_id=124, area=2, bbox=[0, 3, 2, 1], iscrowd=0),
      dict(id=4, category_id=157, area=2, bbox=[2, 3, 2, 1], iscrowd=0)]
  pan, segments = panoptic.combine(masks, classes, scores, cs, stuff_area_threshold=3,
                                   overlap_threshold=0.4)
  # Car: 0.5 > 0.4 on the person, dropped; the sky gets row 2 (6 px), the grass 2 < 3 px.
  assert [(s["category_id"], s["area"]) for s in segments] == [(1, 8), (157, 6)]
  pan, segments = panoptic.combine(masks, classes, scores, cs, stuff_area_threshold=2,
                                   instances_score_threshold=0.2)
  assert [s["category_id"] for s in segments] == [1, 3, 17]  # The cat takes row 3.
  assert pan[3].tolist() == [3, 3, 3, 3]


def test_ground_truth_from_instances_and_stuff(stuff_json, instances_json):
  cs = categories.get_class_set("things_and_stuff")
  coco_gt = coco_eval.load_ground_truth([stuff_json, instances_json], cs)
  pan, segments = panoptic.ground_truth(coco_gt, 9, cs)
  # Crowd car first, then tree and road; `other` (183) is not in the class set: VOID.
  assert [(s["category_id"], s["iscrowd"], s["area"]) for s in segments] == [
      (3, 1, 50), (169, 0, 750), (149, 0, 600)]
  assert (pan == 0).sum() == 50 * 30 - 750 - 600 - 50
  pan, segments = panoptic.ground_truth(coco_gt, 7, cs)
  person = next(s for s in segments if s["category_id"] == 1)
  assert person["bbox"][:2] == [40, 0] and person["iscrowd"] == 0


def test_evaluator_reports_panoptic(stuff_json, instances_json, make_perfect_batch):
  cs = categories.get_class_set("things_and_stuff")
  batch, dets = make_perfect_batch(cs)
  thresholds = dict(stuff_area_threshold=1, overlap_threshold=0.5,
                    instances_score_threshold=0.5)
  ev = evaluator_lib.Evaluator([stuff_json, instances_json], cs, num_pictures=0,
                               panoptic=thresholds)
  ev.add(batch, dets)
  metrics = ev.result()
  # GT: road, sky, person (image 7), tree, road (image 9; the crowd car is ignored). The
  # detections are the stuff regions: the person is the one FN, every stuff segment a TP.
  pq = "panoptic_cocostuff/PQ"
  assert metrics[pq] == pytest.approx(3 / 4)
  assert metrics[f"{pq}_things"] == 0 and metrics[f"{pq}_stuff"] == 1


def test_panoptic_evaluator_files_recheck(tmp_path, stuff_json, instances_json,
                                          make_perfect_batch):
  cs = categories.get_class_set("things_and_stuff")
  batch, dets = make_perfect_batch(cs)
  scale = batch["image_info"][0, 2]  # The person of image 7 detected as well.
  dets["boxes"][0, 2] = np.array([40, 0, 60, 10], np.float32) * scale
  dets["scores"][0, 2], dets["classes"][0, 2] = 0.95, cs.to_train_id(1)
  dets["masks"][0, 2], dets["valid"][0, 2] = 1.0, True
  coco_gt = coco_eval.load_ground_truth([stuff_json, instances_json], cs)
  ev = panoptic.PanopticEvaluator(panoptic.CocoStuffGroundTruth(coco_gt, cs), cs,
                                  stuff_area_threshold=1, keep_files=True)
  for b, image_id in enumerate(batch["image_id"][:2]):
    ev.add(int(image_id), evaluator_lib.image_detections(dets, b, batch["image_info"][b]))
  metrics = ev.result()
  # The pasted rectangle equals the rasterised polygon: every segment a TP with IoU 1.
  assert all(metrics[f"panoptic_cocostuff/{k}{g}"] == 1 for k in ("PQ", "SQ", "RQ")
             for g in ("", "_things", "_stuff"))
  ev.write(tmp_path)
  recheck = panoptic.pq_compute(tmp_path / "panoptic_gt.json", tmp_path / "panoptic.json",
                                tmp_path / "panoptic_gt", tmp_path / "panoptic")
  assert panoptic.flat_metrics(recheck, "panoptic_cocostuff") == pytest.approx(metrics)


def test_no_panoptic_without_things(tmp_path, stuff_json, make_perfect_batch):
  cs = categories.get_class_set("stuff")
  batch, dets = make_perfect_batch(cs)
  dets["classes"][0, 0] = cs.to_train_id(157)  # The road of image 7 predicted as sky.
  ev = evaluator_lib.Evaluator([stuff_json], cs, num_pictures=0, official_export=True)
  ev.add(batch, dets)
  assert not any(k.startswith("panoptic") for k in ev.result())
  ev.write(str(tmp_path))
  assert not (tmp_path / "panoptic.json").exists()
  assert json.loads((tmp_path / "metrics.json").read_text())["stuff/mIoU"] < 1
  # The official results re-check the semantic metrics.
  from maskrcnn_jax.evaluation import export  # pylint: disable=g-import-not-at-top
  results = json.loads((tmp_path / "stuff_results.json").read_text())
  groups = export.score(coco_eval.load_ground_truth([stuff_json], cs), results)
  assert [groups["stuff"][k] for k in export.STATS] == pytest.approx(
      [ev.result()[f"stuff/{k}"] for k in export.STATS])
  assert export.pngs_to_results(tmp_path / "stuff_results") == results


@needs_samples
def test_compact_ids_count_as_panopticapi_ids(gt):
  """The direct count for small ids (maps made here) equals the sorted count of big ids."""
  data, maps = gt
  gt_map = maps[439180].copy()
  _shrink(maps, 439180, HORSE, 3000)
  segments = _segments(data, 439180)
  ids = np.array(sorted({s["id"] for s in segments} | {0}))
  compact = {i: k for k, i in enumerate(ids)}  # VOID stays 0.
  small = [dict(s, id=compact[s["id"]]) for s in segments]
  isthing = {c["id"]: c["isthing"] for c in data["categories"]}
  big = panoptic.pq_image(gt_map, segments, maps[439180], segments, isthing)
  ours = panoptic.pq_image(np.searchsorted(ids, gt_map), small,
                           np.searchsorted(ids, maps[439180]), small, isthing)
  assert ours.keys() == big.keys()
  for category, stats in big.items():
    np.testing.assert_array_equal(ours[category], stats)
  assert big[19].tolist() == pytest.approx([10 + 3000 / 4363, 11, 0, 0])
