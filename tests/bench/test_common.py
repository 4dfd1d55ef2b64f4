import numpy as np

from bench import common
from configs import tiny
from maskrcnn_jax.training import train


def test_synthetic_batch_has_the_training_layout():
  data = tiny.get_config().data
  batch = common.synthetic_batch(2, data.image_size, 3, mask_size=data.mask_size,
                                 max_instances=data.max_instances, num_classes=5,
                                 full_masks=True)
  full = batch.pop("full_masks")
  zeros = train.dummy_batch(data, 2)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (v.shape, v.dtype) for k, v in zeros.items()}
  assert batch["valid"].sum(1).tolist() == [3, 3]
  assert batch["classes"][:, :3].min() >= 1 and batch["classes"].max() < 5
  x1, y1, x2, y2 = batch["boxes"][1, 2].astype(int)
  assert full.shape == (2, data.max_instances, data.image_size, data.image_size)
  assert full[1, 2].sum() == (x2 - x1) * (y2 - y1) == full[1, 2, y1:y2, x1:x2].sum()


def test_timed_returns_the_clock_difference():
  ticks = iter([np.array([1.0, 10.0]), np.array([3.5, 10.25])])
  out, seconds = common.timed(lambda a, b: a + b, 1, b=2, clock=lambda: next(ticks))
  assert out == 3
  np.testing.assert_array_equal(seconds, [2.5, 0.25])


def test_step_times_skips_the_warmup():
  calls = []
  median, best = common.step_times(lambda: calls.append(1), steps=3, warmup=2)
  assert len(calls) == 5 and 0 <= best <= median
