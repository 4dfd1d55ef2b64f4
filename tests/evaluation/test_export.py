import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import export
from maskrcnn_jax.evaluation import stuff_metrics

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "coco_samples"
EXAMPLES = SAMPLES / "stuff_examples"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(),
                                   reason="shared/coco_samples beside the repo absent")


@needs_samples
def test_pngs_to_results_equal_the_official_conversion():
  ours = export.pngs_to_results(EXAMPLES / "results" / "segmentations" / "examples")
  official = json.loads((EXAMPLES / "results" / "stuff_examples_results.json").read_text())
  assert len(ours) == len(official)
  assert json.loads(json.dumps(ours)) == official


@needs_samples
def test_score_equals_the_official_golden_metrics():
  golden = json.loads((EXAMPLES / "results" / "golden_metrics_official_cocostuffeval.json")
                      .read_text())
  gt = coco_eval.load_ground_truth([str(EXAMPLES / "annotations" / "stuff_examples.json")],
                                   categories.get_class_set("stuff"))
  results = json.loads((EXAMPLES / "results" / "stuff_examples_results.json").read_text())
  groups = export.score(gt, results)
  ours = [groups[g][k] for g in ("stuff", "stuff_supercat") for k in export.STATS]
  np.testing.assert_allclose(ours, golden["stats"], rtol=1e-10)


@needs_samples
def test_written_png_reads_back_as_the_official_example(tmp_path):
  png = EXAMPLES / "results" / "segmentations" / "examples" / "000000000934.png"
  label = export.read_png(png)
  export.write_png(tmp_path / "000000000934.png", label)
  np.testing.assert_array_equal(export.read_png(tmp_path / "000000000934.png"), label)
  assert export.pngs_to_results(tmp_path) == export.label_map_to_results(label, 934)


@needs_samples
def test_cli_converts_and_scores(tmp_path):
  out = tmp_path / "results.json"
  run = subprocess.run(
      [sys.executable, "-m", "maskrcnn_jax.evaluation.export",
       f"--png_dir={EXAMPLES / 'results' / 'segmentations' / 'examples'}", f"--output={out}",
       f"--gt_json={EXAMPLES / 'annotations' / 'stuff_examples.json'}"],
      capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
  assert json.loads(out.read_text()) == json.loads(
      (EXAMPLES / "results" / "stuff_examples_results.json").read_text())
  assert "leaves: mIoU 0.240853, fwIoU 0.483030, mAcc 0.297808, pAcc 0.544966" in run.stdout
  assert "supercategories: mIoU 0.446757" in run.stdout


def test_results_keep_stuff_labels_only_and_round_trip():
  label = np.array([[0, 1, 92], [183, 92, 5]], np.uint8)
  results = export.label_map_to_results(label, 7)
  assert [r["category_id"] for r in results] == [92, 183]
  assert results[0]["segmentation"]["size"] == [2, 3]
  back = export.results_to_label_map(results, 2, 3)
  np.testing.assert_array_equal(back, [[0, 0, 92], [183, 92, 0]])
  everything = export.label_map_to_results(label, 7, stuff_start_id=1)
  np.testing.assert_array_equal(export.results_to_label_map(everything, 2, 3), label)


def test_overlapping_results_and_bad_input_raise(tmp_path):
  results = export.label_map_to_results(np.full((2, 2), 92, np.uint8), 3)
  results += export.label_map_to_results(np.full((2, 2), 93, np.uint8), 3)
  with pytest.raises(ValueError, match="image 3: category 93 overlaps"):
    export.results_to_label_map(results, 2, 2)
  with pytest.raises(ValueError, match="1x1"):
    export.results_to_label_map(results[:1], 1, 1)
  with pytest.raises(ValueError, match="RGB"):
    export.label_map_to_results(np.zeros((2, 2, 3), np.uint8), 3)
  with pytest.raises(ValueError, match="not a COCO image file name"):
    export.image_id_from_name("picture.png")
  assert export.image_id_from_name("COCO_val2014_000000000934.png") == 934
  with pytest.raises(FileNotFoundError):
    export.pngs_to_results(tmp_path)


def test_score_with_and_without_other(stuff_json):
  """The conftest GT scored with its own label maps: all metrics 1; `other` handling."""
  stuff = categories.get_class_set("stuff")
  gt = coco_eval.load_ground_truth([stuff_json], stuff)
  results = []
  for image_id in gt.getImgIds():
    label = export.to_coco_label_map(stuff_metrics.ground_truth_label_map(gt, image_id, stuff),
                                     stuff)
    results += export.label_map_to_results(label, image_id)
  groups = export.score(gt, results)
  assert [groups["stuff"][k] for k in export.STATS] == [1.0] * 4
  no_other_gt = coco_eval.load_ground_truth([stuff_json],
                                            categories.get_class_set("stuff_no_other"))
  with pytest.raises(ValueError, match="category 183 is not a class of 'stuff_no_other'"):
    export.score(no_other_gt, results, add_other=False)
  # Without the `other` results, its GT pixels are ignored: still perfect.
  no_other = [r for r in results if r["category_id"] != 183]
  groups = export.score(no_other_gt, no_other, add_other=False)
  assert [groups["stuff"][k] for k in export.STATS] == [1.0] * 4
  # With `other` a class, the unlabelled result pixels count as `other`: also perfect,
  # since `other` is exactly what the results left out.
  groups = export.score(gt, no_other)
  assert [groups["stuff"][k] for k in export.STATS] == [1.0] * 4
  with pytest.raises(ValueError, match="have no result"):
    export.score(gt, [r for r in results if r["image_id"] == 7])
