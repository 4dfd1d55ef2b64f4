"""Which record fills each batch slot, with which augmentation key: numpy, no TensorFlow.

Records are read by index (`record_index`), so the order is decided here before anything
is read: every epoch is a permutation of the training images (with repeat-factor sampling,
of their repeated list) seeded by (seed, epoch), and the epochs follow one another as one
global stream. Global batch k is positions [kG, (k + 1)G) of that stream (G the global
batch size, so a batch may span two epochs); with P processes, process p reads positions
[kG + pG/P, kG + (p + 1)G/P) of it. Augmentation draws from stateless ops keyed by (seed,
epoch, slot in the epoch). Global batch k therefore holds the same images with the same
augmentation for any process count, and a pipeline started at `start_step` yields exactly
the batches the uninterrupted one yields from that step (skipping costs nothing). Each
epoch is fully shuffled. Evaluation gives each process a contiguous part (`shard_bounds`).
"""

import itertools
import math

import numpy as np

_KEY_EPOCH_SHIFT = 32  # Augmentation key = epoch << 32 | slot in the epoch.


def repeat_factors(image_classes: list[np.ndarray], threshold: float) -> np.ndarray:
  """LVIS repeat factors: r_c = max(1, sqrt(t / f_c)), r_i = max over the image's classes.

  image_classes: per image, the class ids present. f_c is the fraction of images holding
  class c. Returns [num_images] float64; images without classes get 1.
  """
  num_images = len(image_classes)
  counts = {}
  for classes in image_classes:
    for c in set(np.asarray(classes).tolist()):
      counts[c] = counts.get(c, 0) + 1
  class_factor = {c: max(1.0, math.sqrt(threshold / (n / num_images))) for c, n in counts.items()}
  return np.array([max([class_factor[c] for c in set(np.asarray(cl).tolist())], default=1.0)
                   for cl in image_classes])


def training_factors(records, threshold: float) -> np.ndarray:
  """The repeat factors training samples with: [C] for the C records holding a non-crowd
  instance (`records`: a split's `record_index.Records`), in record order."""
  candidates = np.flatnonzero(records.num_instances > 0)
  return repeat_factors([records.image_classes(i) for i in candidates], threshold)


def epoch_order(candidates: np.ndarray, factors: np.ndarray | None, *, seed: int,
                epoch: int) -> np.ndarray:
  """One epoch's global order of record indices, a function of (seed, epoch) only.

  factors: None, or [len(candidates)] repeat factors, rounded stochastically per epoch
  (detectron2 RepeatFactorTrainingSampler).
  """
  rng = np.random.default_rng([seed, epoch])
  if factors is not None:
    whole = np.floor(factors)
    reps = (whole + (rng.random(len(factors)) < factors - whole)).astype(np.int64)
    candidates = np.repeat(candidates, reps)
  return rng.permutation(candidates)


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of process `process_index`'s part of n items: disjoint, covering, sizes ±1."""
  base, extra = divmod(n, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def train_stream(records, *, seed, start_step, global_batch, class_balanced, threshold,
                 process_index, process_count):
  """Infinite (record index, augmentation key) of this process's slices of the global batches.

  records: the split's `record_index.Records`. Yields global batches start_step,
  start_step + 1, ...: of each, positions [pL, (p + 1)L) with L = global_batch /
  process_count (module docstring).
  """
  candidates = np.flatnonzero(records.num_instances > 0)
  if not len(candidates):
    raise ValueError("no training image has a non-crowd instance")
  factors = training_factors(records, threshold) if class_balanced else None
  local = global_batch // process_count
  epoch, first = 0, 0  # `first`: global position of the epoch's slot 0.
  order = epoch_order(candidates, factors, seed=seed, epoch=epoch)
  for step in itertools.count(start_step):
    begin = step * global_batch + process_index * local
    for position in range(begin, begin + local):
      while position >= first + len(order):
        first += len(order)
        epoch += 1
        order = epoch_order(candidates, factors, seed=seed, epoch=epoch)
      slot = position - first
      yield order[slot], (epoch << _KEY_EPOCH_SHIFT) | slot
