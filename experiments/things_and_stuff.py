"""Proposal 3: things and stuff together (80 + 91 = 171 classes, panoptic direction)."""

from experiments import common


def get_config(arg=None):
  config = common.base(arg)
  config.data.class_set = "things_and_stuff"
  return config
