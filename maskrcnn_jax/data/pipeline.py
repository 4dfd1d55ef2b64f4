"""tf.data input pipelines: COCO-Stuff TFRecords -> fixed-shape batches (docs/design.md).

B images per batch (G / P: the global batch over the processes), Hc × Wc the canvas of
`data.resize` (`images`), M `data.max_instances`, Sm `data.mask_size`. A batch:

  image          [B, Hc, Wc, 3] uint8 resized by `data.resize` × jitter, zero-padded bottom/right
                 (with `data.aspect_grouping`: the batch's orientation's canvas, Hl × Wl or
                 Wl × Hl, so the static shape leaves Hc and Wc unknown)
  image_id       [B] int32
  image_info     [B, 5] float32       (orig_h, orig_w, scale, valid_h, valid_w)
  boxes          [B, M, 4] float32    (x1, y1, x2, y2) in padded-image pixels
  classes        [B, M] int32         training ids in [1, K], 0 where padded
  masks          [B, M, Sm, Sm] uint8 box-cropped binary masks
  valid          [B, M] bool          non-crowd instances, largest first (crowd regions dropped)
  num_truncated  [B] int32            instances dropped past M
  image_valid    [B] bool             evaluation only: false for the padding of the last batch

The training order, its split over processes and restarts are `sampler`'s, and so is the
grouping by orientation (`data.aspect_grouping`): every batch below then holds one
orientation, training and validation losses read the same global batches for any process
count, and evaluation keeps each process's part and pads each orientation's last batch. The
per-image tensors and their augmentation are `preprocess`'s. Training skips images without a
non-crowd instance (as detectron2 does) and, unless `data.allow_partial_annotations`, images
listed in only one of the stuff and instances files (things_and_stuff: their other pixels
would train as background); evaluation keeps every image.
"""

import dataclasses
import itertools
import math

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from maskrcnn_jax.data import build
from maskrcnn_jax.data import preprocess
from maskrcnn_jax.data import record_index
from maskrcnn_jax.data import sampler


def _process(process_index, process_count):
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  return process_index, process_count


def create_train_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
  """Infinite, shuffled, augmented training batches: this process's slice of each global batch.

  Batches hold global_batch_size / process_count images; global batch k is the same for
  any process count (`sampler`). Needs the data built by `build.prepare` (which every
  process calls first).

  start_step: global batches consumed already; the result continues the sequence from
  there exactly.
  """
  process_index, process_count = _process(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not a positive multiple of the "
                     f"{process_count} processes")
  builder = build.built(data_config)
  records = training_records(data_config, builder)
  stream = lambda: sampler.train_stream(
      records, seed=seed, start_step=start_step, global_batch=global_batch_size,
      class_balanced=data_config.class_balanced, threshold=data_config.repeat_threshold,
      process_index=process_index, process_count=process_count,
      aspect_grouping=data_config.aspect_grouping)
  ds = preprocess.example_dataset(records, builder.info.features, stream, data_config,
                                  seed=seed, train=True, with_image_valid=False)
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True,
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def training_records(data_config: ml_collections.ConfigDict, builder) -> record_index.Records:
  """The train split's record index as training samples it: unless
  `data.allow_partial_annotations`, images with partial annotations count no instance."""
  records = record_index.load(builder, "train")
  partial = np.isin(records.image_id, builder.info.metadata.get("partial/train", []))
  if partial.any() and not data_config.allow_partial_annotations:
    logging.warning("training leaves out %d images with partial annotations "
                    "(data.allow_partial_annotations is off)", partial.sum())
    records = dataclasses.replace(records, num_instances=np.where(partial, 0,
                                                                  records.num_instances))
  return records


def create_loss_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    num_batches: int,
    split: str = "validation",
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
  """This process's slices of the first `num_batches` full global batches of `split`.

  Global batch k is images [kG, (k + 1)G) in image-id order (with `data.aspect_grouping`,
  the k-th batch of one orientation that this order completes: `sampler.grouped`); process p
  reads its slice [pL, (p + 1)L) of it, L = G / P, as training reads its global stream: each
  batch holds the same images in the same order for any process count (validation losses).
  Fewer batches where the split has fewer full ones. The evaluation format, every image
  valid, without augmentation.
  """
  process_index, process_count = _process(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not a positive multiple of the "
                     f"{process_count} processes")
  builder = build.built(data_config)
  records = record_index.load(builder, split)
  order = np.arange(len(records), dtype=np.int64)
  batches = list(itertools.islice(sampler.grouped(
      [(order, np.zeros_like(order))], sampler.groups(records, data_config.aspect_grouping),
      global_batch_size), num_batches))
  local = global_batch_size // process_count
  begin = process_index * local

  def stream():
    for index, _ in batches:
      for i in index[begin:begin + local]:
        yield i, 0, True

  ds = preprocess.example_dataset(records, builder.info.features, stream, data_config,
                                  seed=0, train=False, with_image_valid=True)
  ds = ds.batch(local, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def create_eval_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    split: str = "validation",
    num_images: int = -1,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
  """Every image of `split` (its first `num_images`; -1: all) once, in image-id order.

  Each process gets a contiguous part and the same number of batches; the last batches
  are padded with `image_valid = False` images (and `valid` all false). With
  `data.aspect_grouping` a part's landscape images come first, then its portrait ones, each
  orientation in as many batches as the largest part needs (padded with that orientation's
  first image), so that every process runs the same canvas at each step. Needs the data
  built by `build.prepare`.
  """
  process_index, process_count = _process(process_index, process_count)
  builder = build.built(data_config)
  records = record_index.load(builder, split)
  total = len(records) if num_images < 0 else min(num_images, len(records))
  if total == 0:
    raise ValueError(f"split {split!r} has no images to evaluate")
  record_groups = sampler.groups(records, data_config.aspect_grouping)[:total]
  parts = [sampler.shard_bounds(total, p, process_count) for p in range(process_count)]
  start, end = parts[process_index]
  slots = []  # (record index, image_valid) of this process's batches, batch after batch.
  for g in np.unique(record_groups):
    num_batches = max(math.ceil(np.sum(record_groups[s:e] == g) / batch_size) for s, e in parts)
    mine = start + np.flatnonzero(record_groups[start:end] == g)
    pad = np.flatnonzero(record_groups == g)[0]
    slots += [(i, True) for i in mine] + [(pad, False)] * (num_batches * batch_size - len(mine))

  def stream():
    for index, valid in slots:
      yield index, 0, valid

  ds = preprocess.example_dataset(records, builder.info.features, stream, data_config,
                                  seed=0, train=False, with_image_valid=True)
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)
