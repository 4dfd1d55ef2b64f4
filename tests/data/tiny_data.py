"""What the data tests share: the small data config of the synthetic root, and batch checks."""

from configs import default
import ml_collections
import numpy as np

S, M, SM = 64, 6, 16


def config(root, **augment) -> ml_collections.ConfigDict:
  config = default.get_config().data
  config.root = str(root)
  config.resize = "longest"
  config.image_size, config.max_instances, config.mask_size = S, M, SM
  config.build_workers = 1  # A few images: a worker pool would only add its start-up.
  config.augment.update(augment)
  return config


def take(ds, n):
  return [b for b, _ in zip(ds.as_numpy_iterator(), range(n))]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
