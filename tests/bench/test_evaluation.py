import os

import pytest

from bench import common
from bench import evaluation
from configs import tiny
from maskrcnn_jax import validation


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


def test_marginal_rate_and_the_eval_command():
  times = {"auto/16": [10.0, 12.0], "auto/208": [20.0, 20.0]}
  assert "auto: wall s 16: 10.0 12.0, 208: 20.0 20.0; marginal images/s 19.2 24.0" in (
      evaluation.marginal_summary(times, [16, 208]))
  command = evaluation.eval_command("configs/tiny.py", "/w", "/r", "/ckpt", num_images=16,
                                    image_size=128, num_detections=100, backend="auto")
  assert command[1:4] == ["main.py", "--config=configs/tiny.py", "--workdir=/w"]
  config = tiny.get_config()  # The overrides name fields of the config, with valid values.
  common.override(config, [a.removeprefix("--config.").split("=", 1) for a in command
                           if a.startswith("--config.")])
  validation.validate(config)
  assert (config.eval.num_images, config.model.roi_heads.detections_per_image) == (16, 100)
  assert config.model.roi_heads.score_threshold == 0 and not config.data.synthetic.enabled
