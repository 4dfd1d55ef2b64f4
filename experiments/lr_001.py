"""The study's LR sweep: first-stage LR 0.01 (the study saw it diverge)."""

from experiments import common


def get_config(arg=None):
  config = common.base(arg)
  common.scale_learning_rates(config, 0.01)
  return config
