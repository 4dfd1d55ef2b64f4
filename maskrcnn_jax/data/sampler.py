"""Which record fills each batch slot, with which augmentation key: numpy, no TensorFlow.

Records are read by index (`record_index`), so the order is decided here before anything
is read: every epoch is a permutation of the training images (with repeat-factor sampling,
of their repeated list) seeded by (seed, epoch), and the epochs follow one another as one
global stream. Global batch k is positions [kG, (k + 1)G) of that stream (G the global
batch size, so a batch may span two epochs); with P processes, process p reads positions
[kG + pG/P, kG + (p + 1)G/P) of it. Augmentation draws from stateless ops keyed by (seed,
epoch, slot in the epoch). Global batch k therefore holds the same images with the same
augmentation for any process count, and a pipeline started at `start_step` yields exactly
the batches the uninterrupted one yields from that step (skipping reads nothing). Each
epoch is fully shuffled. Evaluation gives each process a contiguous part (`shard_bounds`).

With `data.aspect_grouping` (`grouped`), the same global stream is split by orientation
(`is_portrait` of the record index's sizes) into two buffers filled in stream order,
and global batch k is the k-th batch of G that either buffer completes (detectron2's
AspectRatioGroupedDataset): a function of the stream alone, so the properties above hold
with batches of one orientation each. Without grouping every record is in one group, and
global batch k is positions [kG, (k + 1)G) as above.
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


def is_portrait(height, width):
  """Whether an image of this (height, width) takes the portrait canvas (`images.canvas`):
  height > width. numpy or TF."""
  return height > width


def groups(records, aspect_grouping: bool) -> np.ndarray:
  """[R] int64: each record's group, 1 for a portrait image with `aspect_grouping`, else 0."""
  if not aspect_grouping:
    return np.zeros(len(records), np.int64)
  return is_portrait(records.height, records.width).astype(np.int64)


def grouped(epochs, record_groups: np.ndarray, size: int):
  """Batches of `size` stream entries of one group, in the order the stream completes them.

  epochs: iterable of (record indices [n], keys [n]) int64 arrays, the global stream in
  parts; record_groups: [R] group of each record. Each group's buffer takes its entries in
  stream order, and a batch leaves when a buffer holds `size`: batches are ordered by the
  stream position of their last entry. Entries left in a buffer when the stream ends are
  dropped. Yields (record indices [size], keys [size]).
  """
  held = {}  # group -> (stream positions, record indices, keys) not yet batched.
  first = 0  # Stream position of the part's first entry.
  for index, key in epochs:
    position = first + np.arange(len(index))
    first += len(index)
    done = []
    part_groups = record_groups[index]
    for g in np.unique(part_groups):
      take = part_groups == g
      empty = (np.zeros(0, np.int64),) * 3
      pos, rec, k = (np.concatenate([h, x[take]])
                     for h, x in zip(held.get(g, empty), (position, index, key)))
      n = len(pos) // size * size
      done += [(pos[i + size - 1], rec[i:i + size], k[i:i + size]) for i in range(0, n, size)]
      held[g] = pos[n:], rec[n:], k[n:]
    done.sort(key=lambda batch: batch[0])
    for _, rec, k in done:
      yield rec, k


def train_stream(records, *, seed, start_step, global_batch, class_balanced, threshold,
                 process_index, process_count, aspect_grouping=False):
  """Infinite (record index, augmentation key) of this process's slices of the global batches.

  records: the split's `record_index.Records`. Yields global batches start_step,
  start_step + 1, ...: of each, positions [pL, (p + 1)L) with L = global_batch /
  process_count (module docstring); with `aspect_grouping`, of one orientation each.
  """
  candidates = np.flatnonzero(records.num_instances > 0)
  if not len(candidates):
    raise ValueError("no training image has a non-crowd instance")
  factors = training_factors(records, threshold) if class_balanced else None
  local = global_batch // process_count

  def epochs():
    for epoch in itertools.count():
      order = epoch_order(candidates, factors, seed=seed, epoch=epoch)
      yield order, (epoch << _KEY_EPOCH_SHIFT) | np.arange(len(order), dtype=np.int64)

  batches = grouped(epochs(), groups(records, aspect_grouping), global_batch)
  begin = process_index * local
  for index, key in itertools.islice(batches, start_step, None):
    yield from zip(index[begin:begin + local], key[begin:begin + local])
