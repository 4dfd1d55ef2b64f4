import os

import pytest

from bench import evaluation
from configs import tiny


def test_benchmark_runs_on_a_few_images(tmp_path):
  times = evaluation.run(num_images=5, height=30, width=40, num_detections=3, batch_size=2,
                         class_set_name="stuff_no_other", out_dir=str(tmp_path))
  assert {"gt", "before/paste", "before/add", "device", "after/add", "after/rle",
          "result/pycocotools", "result/faster_coco_eval", "write",
          "write/results"} <= set(times)
  assert all(t >= 0 for t in times.values())
  assert os.path.exists(tmp_path / "eval" / "metrics.json")
  assert "host images/s, 5000 images" in evaluation.summary(times, 5)


@pytest.mark.slow
def test_whole_eval_has_every_detection(tmp_path):
  config = tiny.get_config()
  config.eval.num_pictures = 0
  times = evaluation.whole_eval(config, str(tmp_path), num_images=2, height=30, width=40,
                                num_detections=8, batch_size=2)
  assert times["detections"] == 8  # Score threshold 0: every image has all of them.
  assert times["serial/whole"] >= times["serial/predict"] + times["serial/add"] > 0
  assert os.path.exists(tmp_path / "eval_run" / "eval" / "1" / "metrics.json")
  assert "images/s" in evaluation.eval_summary(times, 2)
