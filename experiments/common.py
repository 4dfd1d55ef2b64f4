"""Shared by the experiment configs: the study's base and its CPU-sized sibling.

Every experiment config is `get_config(arg)`: with no argument it is the run on real
COCO-Stuff at the study's scale (`configs/default.py` plus the experiment's diff); with
`:cpu` (`--config experiments/lr_0005.py:cpu`) the same diff applies to a CPU-sized base:
`configs/demo.py` (ResNet-18, synthetic data) at 128² (the study's `square` resize scaled
down) with a shorter 3-stage schedule, a few minutes per run on 2 cores.
"""

import ml_collections

from configs import default
from configs import demo

SCALES = ("", "cpu")


def base(arg: str | None) -> ml_collections.ConfigDict:
  scale = arg or ""
  if scale not in SCALES:
    raise ValueError(f"experiment scale {scale!r}: use no argument (full scale) or ':cpu'")
  if scale == "":
    return default.get_config()
  config = demo.get_config()
  config.data.root = "/tmp/maskrcnn_jax_experiments/data"
  config.data.synthetic.image_size = 128
  # The study's `square` resize at 128 / 1024 of its size: 100 up, at most 128, canvas 128².
  config.data.resize, config.data.min_size, config.data.max_size = "square", (100,), 128
  config.model.anchor_sizes = (8, 16, 32, 64, 128)
  for stage, steps in zip(config.train.stages, (40, 60, 80)):
    stage.steps = steps
  config.train.checkpoint_every_steps = 60
  return config


def scale_learning_rates(config: ml_collections.ConfigDict, study_lr: float) -> None:
  """Sets the first stage's LR as if the study's 0.002 were `study_lr`; later stages follow.

  At CPU scale the base LRs differ from the study's, so the same ratio is applied.
  """
  factor = study_lr / 0.002
  for stage in config.train.stages:
    stage.lr = stage.lr * factor
