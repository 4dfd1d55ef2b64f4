"""Serialized examples -> the per-image tensors of a batch (`pipeline` lists them), in TF.

Hc × Wc the canvas of `data.resize` (`images`; with `data.aspect_grouping`, the one of the
image's orientation), M `data.max_instances`, Sm `data.mask_size`.
Augmentation (hflip, photometric and scale jitter, and the shortest side when `data.min_size`
holds several) draws from stateless ops keyed by (seed, the example's key), so an image's
augmentation depends on nothing else. With scale jitter above 1 the resized image may be
larger than the canvas and a random Hc × Wc window of it is kept: boxes are clipped to it
and masks re-cropped to the clipped boxes, and padded pixel = original pixel × (resized /
original size, per axis) − window offset (training only).
"""

import itertools

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from maskrcnn_jax.data import build
from maskrcnn_jax.data import record_index
from maskrcnn_jax.data import images
from maskrcnn_jax.data import sampler

# Photometric jitter: brightness, contrast and saturation factors drawn from 1 ± this.
PHOTOMETRIC_DELTA = 0.2
_STREAM_CHUNK = 1024  # Stream entries handed to tf.data per Python call.


def unpack_masks(packed: tf.Tensor, mask_size: int) -> tf.Tensor:
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


def preprocess(ex, key, *, seed, data_config, train):
  """One parsed example -> the per-image tensors of a batch (`pipeline` lists them)."""
  augment, max_instances = data_config.augment, data_config.max_instances
  mask_size = data_config.mask_size
  image = images.decode_tf(ex["image"])
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  keep = tf.logical_not(ex["is_crowd"])
  boxes = tf.boolean_mask(ex["boxes"], keep)
  classes = tf.boolean_mask(ex["classes"], keep)
  areas = tf.cast(tf.boolean_mask(ex["areas"], keep), tf.float32)
  masks = unpack_masks(tf.boolean_mask(ex["masks"], keep), mask_size)
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
  min_size = (images.draw_min_size(data_config, tf.random.experimental.stateless_fold_in(
      seeds[2], 1)) if train and len(data_config.min_size) > 1 else None)
  scale = images.scale(height, width, data_config, min_size) * tf.cast(jitter, tf.float64)
  new_h, new_w = images.resized_size(height, width, scale)
  image = images.resize(image, new_h, new_w)
  if data_config.aspect_grouping:  # The canvas of the image's orientation.
    size = tf.where(sampler.is_portrait(height, width),
                    tf.constant(images.canvas(data_config, portrait=True)),
                    tf.constant(images.canvas(data_config)))
  else:
    size = tf.constant(images.canvas(data_config))
  room = tf.cast(tf.maximum(tf.stack([new_h, new_w]) - size, 0), tf.float32)
  offset = tf.cast(tf.floor(tf.random.stateless_uniform([2], seeds[3]) * (room + 1)), tf.int32)
  image = image[offset[0]:offset[0] + size[0], offset[1]:offset[1] + size[1]]
  valid_h = tf.minimum(new_h - offset[0], size[0])
  valid_w = tf.minimum(new_w - offset[1], size[1])
  image = images.to_canvas(image, tf.unstack(size) if data_config.aspect_grouping
                           else images.canvas(data_config))

  # Each axis scales by its own ratio, resized / original, as the image does.
  ratio = tf.cast(tf.stack([new_w, new_h]), tf.float32) / tf.stack([wf, hf])
  shift = tf.cast(tf.tile(offset[::-1], [2]), tf.float32)
  boxes = boxes * tf.tile(ratio, [2]) - shift
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
      "image_info": tf.stack([hf, wf, tf.cast(scale, tf.float32), tf.cast(valid_h, tf.float32),
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


def example_dataset(records: record_index.Records, features, stream, data_config, *, seed,
                    train, with_image_valid):
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
  parse = record_index.parse_fn(features)
  kwargs = dict(seed=seed, data_config=data_config, train=train)

  def read(index, *rest):
    serialized = record_index.read_record(paths[shard[index]], offset[index], length[index])
    return serialized.map(lambda s: (s,) + rest)

  @tf.autograph.experimental.do_not_convert  # Plain TF ops: tracing without autograph is faster.
  def load(serialized, key, *image_valid):
    out = preprocess(parse(serialized), key, **kwargs)
    if with_image_valid:
      out["image_valid"] = image_valid[0]
      out["valid"] = tf.logical_and(out["valid"], image_valid[0])
    return out

  # One element per inner dataset: a deterministic interleave keeps the stream order.
  parallel = data_config.read_parallelism
  ds = ds.interleave(read, cycle_length=parallel, block_length=1, num_parallel_calls=parallel,
                     deterministic=True)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def augmentation_examples(data_config: ml_collections.ConfigDict, *, index: int,
                          num_draws: int, seed: int) -> list[dict[str, np.ndarray]]:
  """Training image `index` without augmentation, then under `num_draws` augmentation draws.

  Each entry is a one-image batch in the training format; draw i uses augmentation key i
  (the training stream's keys differ, the distribution is the same). Needs the data
  built by `build.prepare`.
  """
  builder = build.built(data_config)
  records = record_index.load(builder, "train")
  if not 0 <= index < len(records):
    raise ValueError(f"image index {index} outside the {len(records)} training images")
  out = []
  for train, keys in ((False, [0]), (True, range(num_draws))):
    stream = lambda keys=keys: ((index, key) for key in keys)
    ds = example_dataset(records, builder.info.features, stream, data_config, seed=seed,
                         train=train, with_image_valid=False)
    out += [jax.tree.map(lambda x: x[None], ex) for ex in ds.as_numpy_iterator()]
  return out
