"""Proposal 1: drop the catch-all `other` class (its pixels are ignored, its masks removed)."""

from experiments import common


def get_config(arg=None):
  config = common.base(arg)
  config.data.class_set = "stuff_no_other"
  return config
