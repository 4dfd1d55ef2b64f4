"""The study: R101-FPN, stuff + other, 128 RoIs, heads → 4+ → 3+ at 0.002 / 10 per stage."""

from experiments import common


def get_config(arg=None):
  return common.base(arg)
