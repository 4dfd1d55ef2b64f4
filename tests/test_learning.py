"""Regression: the tiny model learns the synthetic set (mIoU far above an untrained model's)."""

import json

import pytest

from configs import default
from configs import tiny
from maskrcnn_jax.training import train

THRESHOLD = 0.12  # stuff mIoU without `other`: untrained 0.0, 300 steps 0.254 (0.29 before
# the references' resize; after 200 steps 0.11-0.2: float rounding moves it), so 0.13 below.


@pytest.mark.optimized
@pytest.mark.slow(seconds=160)
def test_tiny_model_learns_synthetic_stuff(tmp_path):
  config = tiny.get_config()
  config.data.root = str(tmp_path / "data")
  config.data.synthetic.num_train = 32
  config.data.synthetic.num_val = 8
  config.data.eval_batch_size = 4
  config.train.global_batch_size = 4
  # Untrained: the evaluation after a first stage of one step, whose (warm-up) lr is 0.02e-3.
  # One run: its traces, compiles and input pipeline serve both evaluations.
  config.train.stages = [default.stage("untrained", "all", steps=1, lr=0.02),
                         default.stage("all", "all", steps=299, lr=0.02)]
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 300
  workdir = tmp_path / "run"
  trained = train.train_and_evaluate(config, str(workdir))
  before = json.loads((workdir / "eval" / "1" / "metrics.json").read_text())
  before = before["stuff_no_other/mIoU"]
  after = trained["metrics"]["stuff_no_other/mIoU"]
  assert before < THRESHOLD < after, (before, after)
