"""tf.data input pipelines: COCO-Stuff TFRecords -> fixed-shape batches (docs/design.md).

B images per batch (G / P: the global batch over the processes), S `data.image_size`,
M `data.max_instances`, Sm `data.mask_size`. A batch:

  image          [B, S, S, 3] uint8   longest side resized to S × jitter, zero-padded bottom/right
  image_id       [B] int32
  image_info     [B, 5] float32       (orig_h, orig_w, scale, valid_h, valid_w)
  boxes          [B, M, 4] float32    (x1, y1, x2, y2) in padded-image pixels
  classes        [B, M] int32         training ids in [1, K], 0 where padded
  masks          [B, M, Sm, Sm] uint8 box-cropped binary masks
  valid          [B, M] bool          non-crowd instances, largest first (crowd regions dropped)
  num_truncated  [B] int32            instances dropped past M
  image_valid    [B] bool             evaluation only: false for the padding of the last batch

Order and restore. Records are read by index (byte offsets of the TFRecords, indexed once),
so the order is decided in numpy before anything is read: every epoch is a permutation of
the training images (with repeat-factor sampling, of their repeated list) seeded by
(seed, epoch), and the epochs follow one another as one global stream. Global batch k is
positions [kG, (k + 1)G) of that stream (G the global batch size, so a batch may span two
epochs); with P processes, process p reads positions [kG + pG/P, kG + (p + 1)G/P) of it.
Augmentation draws from stateless ops keyed by (seed, epoch, slot in the epoch). Global
batch k therefore holds the same images with the same augmentation for any process count,
and a pipeline started at `start_step` yields exactly the batches the uninterrupted one
yields from that step (skipping costs nothing). Each epoch is fully shuffled.

Training skips images without a non-crowd instance (as detectron2 does) and, unless
`data.allow_partial_annotations`, images listed in only one of the stuff and instances
files (things_and_stuff: their other pixels would train as background); evaluation keeps
every image. With scale jitter above 1 the resized image is larger than S and a random S×S
window of it is kept: boxes are clipped to it and masks re-cropped to the clipped boxes,
and padded pixel = original pixel × scale − window offset (training only).
"""

import dataclasses
import io
import itertools
import math
import struct

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow as tf
import tensorflow_datasets as tfds

from maskrcnn_jax.data import builder as builder_lib
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import synthetic

AUTOTUNE = tf.data.AUTOTUNE
# Photometric jitter: brightness, contrast and saturation factors drawn from 1 ± this.
PHOTOMETRIC_DELTA = 0.2
_KEY_EPOCH_SHIFT = 32  # Augmentation key = epoch << 32 | slot in the epoch.
_STREAM_CHUNK = 1024  # Stream entries handed to tf.data per Python call.


def data_dir(data_config: ml_collections.ConfigDict) -> str:
  """Where the TFRecords live: `data.tfds_data_dir` (any epath: local, gs://), or ROOT/tfds."""
  return data_config.tfds_data_dir or str(epath.Path(data_config.root) / "tfds")


def _builder(data_config) -> builder_lib.MaskrcnnCocoStuff:
  return builder_lib.make_builder(data_dir(data_config), class_set=data_config.class_set,
                                  mask_size=data_config.mask_size)


def _built(data_config) -> builder_lib.MaskrcnnCocoStuff:
  builder = _builder(data_config)
  if not builder.is_prepared():
    raise FileNotFoundError(f"no TFRecords at {builder.data_dir}: call prepare(config.data) first")
  return builder


def _needs_synthetic(root: epath.Path) -> bool:
  return not root.exists() or not any(p.name != "tfds" for p in root.iterdir())


def prepare(data_config: ml_collections.ConfigDict, *,
            num_workers: int = 1) -> builder_lib.MaskrcnnCocoStuff:
  """Makes sure the TFRecords of `data_config` exist; returns their (built) builder.

  Writes the synthetic set to ROOT first when `data.synthetic.enabled` and ROOT is missing
  or empty. Idempotent: fast when already built. With several processes, process 0 does
  the work and the others wait for it, so the data directory must be shared. num_workers:
  processes decoding the images of a build. Warns about images holding more than
  `data.max_instances` instances (training keeps the largest; batches count the rest in
  `num_truncated`).
  """
  if not data_config.root:
    raise ValueError("config.data.root is empty: set it to the COCO-Stuff root")
  root = epath.Path(data_config.root)
  builder = _builder(data_config)
  if jax.process_index() == 0:
    syn = data_config.synthetic
    if syn.enabled and _needs_synthetic(root):
      logging.info("Writing the synthetic set to %s", root)
      synthetic.write_synthetic(root, num_train=syn.num_train, num_val=syn.num_val,
                                image_size=syn.image_size, seed=syn.seed,
                                num_stuff_classes=syn.num_stuff_classes)
    if not root.is_dir():
      raise FileNotFoundError(f"data root {root} does not exist (and data.synthetic is off)")
    builder = builder_lib.build(root, data_dir(data_config), class_set=data_config.class_set,
                                mask_size=data_config.mask_size, num_workers=num_workers)
    for split in builder.info.splits:
      _warn_over_cap(_records(builder, split), split, data_config.max_instances)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("maskrcnn_jax.data.prepare")
    builder = _builder(data_config)
  return builder


def _warn_over_cap(records: "Records", split: str, max_instances: int) -> None:
  over = records.num_instances > max_instances
  if over.any():
    logging.warning(
        "%s: %d of %d images hold more than data.max_instances = %d instances (up to %d); "
        "the smallest past the cap are dropped and counted in num_truncated (first ids: %s)",
        split, over.sum(), len(records), max_instances, records.num_instances.max(),
        records.image_id[over][:10].tolist())


def annotation_files(data_config: ml_collections.ConfigDict, split: str) -> list[str]:
  """The GT JSON files evaluation scores against: stuff, plus instances with things."""
  class_set = categories.get_class_set(data_config.class_set)
  return [str(coco_reader.annotation_path(data_config.root, split, kind))
          for kind in coco_reader.annotation_kinds(class_set)]


# ------------------------------------------------------------------ record index


@dataclasses.dataclass(frozen=True)
class Records:
  """Where each example of a split lies, and what training needs to know about it.

  paths: the split's TFRecord files. For R records: image_id [R] int64, shard [R] int32
  (index into paths), offset [R] int64 and length [R] int64 of the serialized example,
  num_instances [R] int32 (non-crowd), and class_sets: the training ids present, as a flat
  class_ids array split at class_splits [R + 1].
  """

  paths: tuple[str, ...]
  image_id: np.ndarray
  shard: np.ndarray
  offset: np.ndarray
  length: np.ndarray
  num_instances: np.ndarray
  class_ids: np.ndarray
  class_splits: np.ndarray

  def __len__(self):
    return len(self.shard)

  def image_classes(self, i: int) -> np.ndarray:
    return self.class_ids[self.class_splits[i]:self.class_splits[i + 1]]


def _scan_offsets(path: str) -> tuple[list[int], list[int]]:
  """(data offsets, data lengths) of the records of a TFRecord file, reading headers only."""
  offsets, lengths = [], []
  with tf.io.gfile.GFile(path, "rb") as f:
    size, pos = f.size(), 0
    while pos < size:
      f.seek(pos)
      (length,) = struct.unpack("<Q", f.read(8))
      offsets.append(pos + 12)  # uint64 length, uint32 crc, data, uint32 crc.
      lengths.append(length)
      pos += 12 + length + 4
  return offsets, lengths


def _parse_fn(features: tfds.features.FeaturesDict):
  return lambda serialized: features.deserialize_example(
      serialized, decoders={"image": tfds.decode.SkipDecoding()})


def _index_records(builder, split: str) -> Records:
  paths = tuple(str(p) for p in builder.info.splits[split].filepaths)
  shard, offset, length = [], [], []
  for i, path in enumerate(paths):
    o, n = _scan_offsets(path)
    shard += [i] * len(o)
    offset += o
    length += n
  parse = _parse_fn(builder.info.features)
  ds = tf.data.TFRecordDataset(list(paths)).map(
      lambda s: {k: v for k, v in parse(s).items() if k in ("image_id", "classes", "is_crowd")},
      num_parallel_calls=AUTOTUNE)
  image_ids, num_instances, class_ids, splits = [], [], [], [0]
  for ex in ds.as_numpy_iterator():
    image_ids.append(ex["image_id"])
    keep = ex["classes"][~ex["is_crowd"]]
    num_instances.append(len(keep))
    class_ids += sorted(set(keep.tolist()))
    splits.append(len(class_ids))
  if len(num_instances) != len(shard):
    raise ValueError(f"{split}: {len(shard)} record headers but {len(num_instances)} examples")
  return Records(paths=paths, image_id=np.array(image_ids, np.int64),
                 shard=np.array(shard, np.int32), offset=np.array(offset, np.int64),
                 length=np.array(length, np.int64),
                 num_instances=np.array(num_instances, np.int32),
                 class_ids=np.array(class_ids, np.int32), class_splits=np.array(splits, np.int64))


def _records(builder, split: str) -> Records:
  """The split's record index, cached as records_<split>.npz beside the TFRecords."""
  cache = epath.Path(builder.data_dir) / f"records_{split}.npz"
  if cache.exists():
    with np.load(io.BytesIO(cache.read_bytes())) as z:
      arrays = {k: z[k] for k in z.files}
    fields = {f.name for f in dataclasses.fields(Records)} - {"paths"}
    if set(arrays) == fields and len(arrays["shard"]) == builder.info.splits[split].num_examples:
      paths = tuple(str(p) for p in builder.info.splits[split].filepaths)
      return Records(paths=paths, **arrays)
  records = _index_records(builder, split)
  arrays = {f.name: getattr(records, f.name) for f in dataclasses.fields(Records)
            if f.name != "paths"}
  try:
    buffer = io.BytesIO()  # Written whole: object stores cannot seek in a file being written.
    np.savez(buffer, **arrays)
    tmp = cache.with_suffix(".tmp.npz")
    tmp.write_bytes(buffer.getvalue())
    tmp.rename(cache)
  except (OSError, tf.errors.OpError) as e:
    logging.warning("cannot cache the record index at %s: %s", cache, e)
  return records


# ------------------------------------------------------------------ order (numpy)


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


def _train_stream(records: Records, *, seed, start_step, global_batch, class_balanced, threshold,
                  process_index, process_count):
  """Infinite (record index, augmentation key) of this process's slices of the global batches.

  Yields global batches start_step, start_step + 1, ...: of each, positions [pL, (p + 1)L)
  with L = global_batch / process_count (module docstring).
  """
  candidates = np.flatnonzero(records.num_instances > 0)
  if not len(candidates):
    raise ValueError("no training image has a non-crowd instance")
  factors = None
  if class_balanced:
    factors = repeat_factors([records.image_classes(i) for i in candidates], threshold)
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


# ------------------------------------------------------------------ per example (TF)


def _unpack_masks(packed: tf.Tensor, mask_size: int) -> tf.Tensor:
  """[N, ceil(Sm² / 8)] uint8 bits -> [N, Sm, Sm] uint8 in {0, 1}."""
  shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.uint8)
  bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[..., None], shifts), 1)
  bits = tf.reshape(bits, [tf.shape(packed)[0], -1])[:, :mask_size * mask_size]
  return tf.reshape(bits, [-1, mask_size, mask_size])


def _photometric(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation factors in 1 ± PHOTOMETRIC_DELTA; float32 in and out.

  brightness b: x -> b x; contrast c: y -> mean(y) + c (y - mean(y)); saturation s:
  z -> gray(z) + s (z - gray(z)). Gray is linear with weights summing to 1, so the
  three fold into one pass: s b c x + (1 - s) b c gray(x) + b (1 - c) mean(x).
  """
  b, c, s = tf.unstack(
      tf.random.stateless_uniform([3], seed, 1 - PHOTOMETRIC_DELTA, 1 + PHOTOMETRIC_DELTA))
  gray = tf.tensordot(image, tf.constant([0.299, 0.587, 0.114]), 1)[..., None]
  return s * b * c * image + (1 - s) * b * c * gray + b * (1 - c) * tf.reduce_mean(image)


def _recrop_masks(masks, boxes, clipped):
  """Masks cropped to `boxes` -> the same masks cropped to `clipped` (inside boxes).

  masks [N, Sm, Sm] uint8, boxes/clipped [N, 4] -> [N, Sm, Sm] uint8. Output pixel j of
  the clipped box samples the source mask (bilinear) at its centre.
  """
  sm = masks.shape[-1]
  size = tf.maximum(boxes[:, 2:] - boxes[:, :2], 1e-6)  # (w, h)
  lo = (clipped[:, :2] - boxes[:, :2]) / size * sm  # Source pixel units, (x, y).
  hi = (clipped[:, 2:] - boxes[:, :2]) / size * sm
  step = (hi - lo) / sm
  first = tf.clip_by_value(lo + 0.5 * step - 0.5, 0.0, sm - 1.0)
  last = tf.clip_by_value(lo + (sm - 0.5) * step - 0.5, 0.0, sm - 1.0)
  norm = tf.concat([first[:, ::-1], last[:, ::-1]], -1) / max(sm - 1, 1)  # (y1, x1, y2, x2).
  out = tf.image.crop_and_resize(tf.cast(masks[..., None], tf.float32), norm,
                                 tf.range(tf.shape(masks)[0]), [sm, sm])
  return tf.cast(out[..., 0] >= 0.5, tf.uint8)


def _preprocess(ex, key, *, seed, image_size, max_instances, mask_size, augment, train):
  """One parsed example -> the per-image tensors of a batch (see the module docstring)."""
  image = tf.io.decode_jpeg(ex["image"], channels=3)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  keep = tf.logical_not(ex["is_crowd"])
  boxes = tf.boolean_mask(ex["boxes"], keep)
  classes = tf.boolean_mask(ex["classes"], keep)
  areas = tf.cast(tf.boolean_mask(ex["areas"], keep), tf.float32)
  masks = _unpack_masks(tf.boolean_mask(ex["masks"], keep), mask_size)
  seeds = tf.random.experimental.stateless_split(
      tf.stack([tf.constant(seed, tf.int64), key]), num=4)

  if train and augment.hflip:
    flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    flipped = tf.stack([wf - boxes[:, 2], boxes[:, 1], wf - boxes[:, 0], boxes[:, 3]], -1)
    boxes = tf.where(flip, flipped, boxes)
    masks = tf.cond(flip, lambda: tf.reverse(masks, [2]), lambda: masks)
  image = tf.cast(image, tf.float32)
  if train and augment.photometric:
    image = _photometric(image, seeds[1])

  lo, hi = augment.scale_range if train else (1.0, 1.0)
  jitter = tf.random.stateless_uniform([], seeds[2], lo, hi) if hi > lo else tf.constant(lo)
  scale = image_size * jitter / tf.maximum(hf, wf)
  new_h = tf.maximum(tf.cast(tf.round(hf * scale), tf.int32), 1)
  new_w = tf.maximum(tf.cast(tf.round(wf * scale), tf.int32), 1)
  image = tf.image.resize(image, [new_h, new_w], method="bilinear")
  room = tf.cast(tf.maximum(tf.stack([new_h, new_w]) - image_size, 0), tf.float32)
  offset = tf.cast(tf.floor(tf.random.stateless_uniform([2], seeds[3]) * (room + 1)), tf.int32)
  image = image[offset[0]:offset[0] + image_size, offset[1]:offset[1] + image_size]
  valid_h = tf.minimum(new_h - offset[0], image_size)
  valid_w = tf.minimum(new_w - offset[1], image_size)
  image = tf.saturate_cast(image + 0.5, tf.uint8)  # Rounds: the values are clamped first.
  image = tf.image.pad_to_bounding_box(image, 0, 0, image_size, image_size)

  shift = tf.cast(tf.tile(offset[::-1], [2]), tf.float32)
  boxes = boxes * scale - shift
  limit = tf.cast(tf.stack([valid_w, valid_h, valid_w, valid_h]), tf.float32)
  clipped = tf.clip_by_value(boxes, 0.0, limit)
  inside = tf.reduce_all(clipped[:, 2:] - clipped[:, :2] > 1e-5, -1)
  # Rounding the resized size may clip a box by under half a pixel: no re-crop for that.
  cut = tf.reduce_any(tf.abs(clipped - boxes) > 0.5, -1)
  masks = tf.where(cut[:, None, None], _recrop_masks(masks, boxes, clipped), masks)
  box_area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  areas = areas * box_area(clipped) / tf.maximum(box_area(boxes), 1e-6)

  # Largest first, truncated to M; padding rows score -1.
  pad = [[0, max_instances]]
  score = tf.pad(tf.where(inside, areas, -1.0), pad, constant_values=-1.0)
  order = tf.argsort(score, direction="DESCENDING", stable=True)[:max_instances]
  valid = tf.gather(score, order) >= 0
  num_valid = tf.reduce_sum(tf.cast(inside, tf.int32))
  out = {
      "image": image,
      "image_id": tf.cast(ex["image_id"], tf.int32),
      "image_info": tf.stack([hf, wf, scale, tf.cast(valid_h, tf.float32),
                              tf.cast(valid_w, tf.float32)]),
      "boxes": tf.gather(tf.pad(clipped, pad + [[0, 0]]), order),
      "classes": tf.gather(tf.pad(classes, pad), order),
      "masks": tf.gather(tf.pad(masks, pad + [[0, 0], [0, 0]]), order),
      "valid": valid,
      "num_truncated": tf.maximum(num_valid - max_instances, 0),
  }
  zero_invalid = lambda x: tf.where(tf.reshape(valid, [-1] + [1] * (x.shape.rank - 1)), x,
                                    tf.zeros_like(x))
  for k in ("boxes", "classes", "masks"):
    out[k] = zero_invalid(out[k])
  out["image"].set_shape([image_size, image_size, 3])
  out["boxes"].set_shape([max_instances, 4])
  out["classes"].set_shape([max_instances])
  out["masks"].set_shape([max_instances, mask_size, mask_size])
  out["valid"].set_shape([max_instances])
  return out


def _chunks(stream, size: int = _STREAM_CHUNK):
  """A generator of tuples -> one of tuples of [<= size] arrays: a Python step per chunk."""
  it = stream()
  while chunk := list(itertools.islice(it, size)):
    yield tuple(np.array(column) for column in zip(*chunk))


def _read_record(path, offset, length):
  """The one serialized example at data offset `offset` of a TFRecord file: a 1-element dataset.

  TFRecordDatasetV2 starts at the record's header (byte_offsets) and reads it whole in one
  buffer of its framed size (12-byte header, data, 4-byte CRC), checking both CRCs;
  `take(1)` stops before the next record. Any tf.io.gfile filesystem (gs://, ...) works.
  """
  variant = tf.raw_ops.TFRecordDatasetV2(
      filenames=path, compression_type="", buffer_size=length + 16, byte_offsets=offset - 12)
  return tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.string)).take(1)


def _example_dataset(records: Records, features, stream, data_config, *, seed, train,
                     with_image_valid):
  """(record index, key[, image_valid]) stream -> per-image tensors, in stream order.

  The records are read natively by tf.data, `data.read_parallelism` at a time (they overlap
  the latency of a remote filesystem); no Python runs per example.
  """
  signature = (tf.TensorSpec([None], tf.int64),) * 2 + ((tf.TensorSpec([None], tf.bool),)
                                                         if with_image_valid else ())
  ds = tf.data.Dataset.from_generator(lambda: _chunks(stream),
                                      output_signature=signature).unbatch()
  paths = tf.constant(records.paths)
  shard = tf.constant(records.shard, tf.int64)
  offset = tf.constant(records.offset)
  length = tf.constant(records.length)
  parse = _parse_fn(features)
  kwargs = dict(seed=seed, image_size=data_config.image_size,
                max_instances=data_config.max_instances, mask_size=data_config.mask_size,
                augment=data_config.augment, train=train)

  def read(index, *rest):
    serialized = _read_record(paths[shard[index]], offset[index], length[index])
    return serialized.map(lambda s: (s,) + rest)

  @tf.autograph.experimental.do_not_convert  # Plain TF ops: tracing without autograph is faster.
  def load(serialized, key, *image_valid):
    out = _preprocess(parse(serialized), key, **kwargs)
    if with_image_valid:
      out["image_valid"] = image_valid[0]
      out["valid"] = tf.logical_and(out["valid"], image_valid[0])
    return out

  # One element per inner dataset: a deterministic interleave keeps the stream order.
  parallel = data_config.read_parallelism
  ds = ds.interleave(read, cycle_length=parallel, block_length=1, num_parallel_calls=parallel,
                     deterministic=True)
  ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


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
  any process count (module docstring). Needs the data built by `prepare` (which every
  process calls first).

  start_step: global batches consumed already; the result continues the sequence from
  there exactly.
  """
  process_index, process_count = _process(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} is not a positive multiple of the "
                     f"{process_count} processes")
  builder = _built(data_config)
  records = _records(builder, "train")
  partial = np.isin(records.image_id, builder.info.metadata.get("partial/train", []))
  if partial.any() and not data_config.allow_partial_annotations:
    logging.warning("training leaves out %d images with partial annotations "
                    "(data.allow_partial_annotations is off)", partial.sum())
    records = dataclasses.replace(records, num_instances=np.where(partial, 0,
                                                                  records.num_instances))
  stream = lambda: _train_stream(
      records, seed=seed, start_step=start_step, global_batch=global_batch_size,
      class_balanced=data_config.class_balanced, threshold=data_config.repeat_threshold,
      process_index=process_index, process_count=process_count)
  ds = _example_dataset(records, builder.info.features, stream, data_config, seed=seed,
                        train=True, with_image_valid=False)
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True,
                num_parallel_calls=AUTOTUNE, deterministic=True)
  return ds.prefetch(AUTOTUNE)


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
  are padded with `image_valid = False` images (and `valid` all false). Needs the data
  built by `prepare`.
  """
  process_index, process_count = _process(process_index, process_count)
  builder = _built(data_config)
  records = _records(builder, split)
  total = len(records) if num_images < 0 else min(num_images, len(records))
  if total == 0:
    raise ValueError(f"split {split!r} has no images to evaluate")
  start, end = shard_bounds(total, process_index, process_count)
  num_batches = math.ceil(math.ceil(total / process_count) / batch_size)

  def stream():
    for slot in range(num_batches * batch_size):
      if start + slot < end:
        yield start + slot, 0, True
      else:
        yield 0, 0, False

  ds = _example_dataset(records, builder.info.features, stream, data_config, seed=0,
                        train=False, with_image_valid=True)
  ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=True)
  return ds.prefetch(AUTOTUNE)


def load_images(paths: list[str], data_config: ml_collections.ConfigDict, *,
                batch_size: int) -> dict:
  """Image files (JPEG, PNG, any mode; EXIF orientation applied) -> one evaluation-style
  batch for prediction.

  Returns image [B, S, S, 3] uint8, image_id [B] int32 (position in `paths`), image_info
  [B, 5] float32, image_valid [B] bool (false past len(paths)), and `original`: a list of
  the len(paths) decoded [H, W, 3] uint8 images (not an array: sizes differ).
  """
  if not 0 < len(paths) <= batch_size:
    raise ValueError(f"need 1 to {batch_size} paths, got {len(paths)}")
  size = data_config.image_size
  out = {"image": np.zeros((batch_size, size, size, 3), np.uint8),
         "image_id": np.zeros((batch_size,), np.int32),
         "image_info": np.zeros((batch_size, 5), np.float32),
         "image_valid": np.zeros((batch_size,), bool), "original": []}
  for i, path in enumerate(paths):
    with Image.open(io.BytesIO(epath.Path(path).read_bytes())) as image:
      original = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))  # As viewers show it.
    height, width = original.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = max(round(height * scale), 1), max(round(width * scale), 1)
    resized = tf.image.resize(original, [new_h, new_w], method="bilinear")
    out["image"][i, :new_h, :new_w] = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
    out["image_id"][i] = i
    out["image_info"][i] = (height, width, scale, new_h, new_w)
    out["image_valid"][i] = True
    out["original"].append(original)
  return out


def augmentation_examples(data_config: ml_collections.ConfigDict, *, index: int,
                          num_draws: int, seed: int) -> list[dict[str, np.ndarray]]:
  """Training image `index` without augmentation, then under `num_draws` augmentation draws.

  Each entry is a one-image batch in the training format; draw i uses augmentation key i
  (the training stream's keys differ, the distribution is the same). Needs `prepare`.
  """
  builder = _built(data_config)
  records = _records(builder, "train")
  if not 0 <= index < len(records):
    raise ValueError(f"image index {index} outside the {len(records)} training images")
  out = []
  for train, keys in ((False, [0]), (True, range(num_draws))):
    stream = lambda keys=keys: ((index, key) for key in keys)
    ds = _example_dataset(records, builder.info.features, stream, data_config, seed=seed,
                          train=train, with_image_valid=False)
    out += [jax.tree.map(lambda x: x[None], ex) for ex in ds.as_numpy_iterator()]
  return out
