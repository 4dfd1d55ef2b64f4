import functools

import ml_collections
import numpy as np
import pytest

from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import sampler
import tiny_data


def _augmented(config, **kwargs):
  config = ml_collections.ConfigDict(config.to_dict())
  config.augment.update(hflip=True, scale_range=(0.75, 1.5), photometric=True)
  config.update(kwargs)
  return config


def test_shard_bounds():
  for n in range(12):
    for count in range(1, 5):
      parts = [sampler.shard_bounds(n, p, count) for p in range(count)]
      assert parts[0][0] == 0 and parts[-1][1] == n
      assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
      assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


def test_repeat_factors_by_hand():
  # Class 1 in 3 of 4 images, class 2 in 1: f = 0.75, 0.25; t = 0.5.
  factors = sampler.repeat_factors([[1], [1], [1, 2], [1]], 0.5)
  np.testing.assert_allclose(factors, [1, 1, np.sqrt(2), 1])
  assert sampler.repeat_factors([[1], []], 0.4).tolist() == [1.0, 1.0]  # sqrt(0.8) < 1.
  candidates = np.arange(4)
  counts = np.zeros(4)
  for epoch in range(400):
    order = sampler.epoch_order(candidates, factors, seed=0, epoch=epoch)
    counts += np.bincount(order, minlength=4)
    assert set(order.tolist()) == {0, 1, 2, 3}
  np.testing.assert_allclose(counts / 400, factors, atol=0.06)
  np.testing.assert_array_equal(sampler.epoch_order(candidates, factors, seed=0, epoch=3),
                                sampler.epoch_order(candidates, factors, seed=0, epoch=3))


def test_epochs_follow_each_other_reshuffled(config):
  ids = np.concatenate([b["image_id"] for b in tiny_data.take(
      pipeline.create_train_dataset(config, global_batch_size=3, seed=5), 6)])
  epochs = ids[:8], ids[8:16]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(1, 9))  # Batches span epochs.
  assert epochs[0].tolist() != epochs[1].tolist()


@pytest.mark.parametrize("class_balanced", [False, True])
@pytest.mark.slow
def test_global_batches_are_the_same_for_every_process_count(config, class_balanced):
  """Process p's batch k is slice p of global batch k: same images, same augmentation."""
  augmented = _augmented(config, class_balanced=class_balanced, repeat_threshold=0.5)
  make = functools.partial(pipeline.create_train_dataset, augmented, global_batch_size=4, seed=2)
  single = tiny_data.take(make(), 6)
  # Resumed at step 3 (12 images): inside the second epoch of 8.
  for count, start_step in ((1, 3), (2, 0), (4, 3)):
    parts = [tiny_data.take(make(start_step=start_step, process_index=p, process_count=count), 3)
             for p in range(count)]
    joined = [{k: np.concatenate([part[i][k] for part in parts]) for k in parts[0][i]}
              for i in range(3)]
    tiny_data.assert_batches_equal(single[start_step:start_step + 3], joined)
  with pytest.raises(ValueError, match="multiple of the 3 processes"):
    make(process_index=0, process_count=3)


def test_restore_resumes_the_same_sequence(config):
  augmented = _augmented(config, class_balanced=True, repeat_threshold=0.5)
  full = tiny_data.take(pipeline.create_train_dataset(augmented, global_batch_size=3, seed=1), 7)
  resumed = tiny_data.take(pipeline.create_train_dataset(augmented, global_batch_size=3, seed=1,
                                                         start_step=4), 3)
  tiny_data.assert_batches_equal(full[4:], resumed)


def test_deterministic_given_the_seed(config):
  augmented = _augmented(config)
  a = tiny_data.take(pipeline.create_train_dataset(augmented, global_batch_size=2, seed=7), 3)
  b = tiny_data.take(pipeline.create_train_dataset(augmented, global_batch_size=2, seed=7), 3)
  c = tiny_data.take(pipeline.create_train_dataset(augmented, global_batch_size=2, seed=8), 3)
  tiny_data.assert_batches_equal(a, b)
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_class_balanced_training_repeats_rare_images(config):
  balanced = ml_collections.ConfigDict(config.to_dict())
  balanced.update(class_balanced=True, repeat_threshold=0.9)
  ids = np.concatenate([b["image_id"] for b in tiny_data.take(
      pipeline.create_train_dataset(balanced, global_batch_size=8, seed=0), 10)])
  assert len(np.unique(ids)) == 8 and np.bincount(ids).max() > 10  # Some images repeated.
