"""Proposal 2: augmentation (flip, scale jitter, colour) and class-balanced sampling, so
classes with few pixels are seen more often (repeat-factor sampling)."""

from experiments import common


def get_config(arg=None):
  config = common.base(arg)
  config.data.augment.hflip = True
  config.data.augment.scale_range = (0.8, 1.2)
  config.data.augment.photometric = True
  config.data.class_balanced = True
  config.data.repeat_threshold = 0.3 if arg == "cpu" else 0.001  # Few images at CPU scale.
  return config
