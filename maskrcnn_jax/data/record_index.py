"""The record index of a split: where each serialized example lies in its TFRecord files.

The byte offsets of the records are scanned once and cached beside the TFRecords with
what training needs to know per image (instance count, classes present, size), so the input
order is decided in numpy before anything is read (`sampler`) and each record is then
read alone (`read_record`), from any tf.io.gfile filesystem.
"""

import dataclasses
import io

from absl import logging
from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Bytes per read of the index's one pass over a split: a few ranged requests per shard, on
# any GCS block size (`gcs`).
_SCAN_BUFFER = 64 << 20


@dataclasses.dataclass(frozen=True)
class Records:
  """Where each example of a split lies, and what training needs to know about it.

  paths: the split's TFRecord files. For R records: image_id [R] int64, shard [R] int32
  (index into paths), offset [R] int64 and length [R] int64 of the serialized example,
  num_instances [R] int32 (non-crowd), class_sets: the training ids present, as a flat
  class_ids array split at class_splits [R + 1], and height, width [R] int32: the stored
  image's size (EXIF orientation applied), which fixes its canvas (`sampler.is_portrait`).
  A cache without one of these fields is rebuilt (`load`).
  """

  paths: tuple[str, ...]
  image_id: np.ndarray
  shard: np.ndarray
  offset: np.ndarray
  length: np.ndarray
  num_instances: np.ndarray
  class_ids: np.ndarray
  class_splits: np.ndarray
  height: np.ndarray
  width: np.ndarray

  def __len__(self):
    return len(self.shard)

  def image_classes(self, i: int) -> np.ndarray:
    return self.class_ids[self.class_splits[i]:self.class_splits[i + 1]]


def parse_fn(features: tfds.features.FeaturesDict):
  """Serialized example -> its feature dict; the image stays JPEG bytes (`preprocess` decodes)."""
  return lambda serialized: features.deserialize_example(
      serialized, decoders={"image": tfds.decode.SkipDecoding()})


def _index_records(builder, split: str) -> Records:
  """One sequential pass over the split's records, `_SCAN_BUFFER` bytes per read."""
  info = builder.info.splits[split]
  paths = tuple(str(p) for p in info.filepaths)
  parse = parse_fn(builder.info.features)
  keys = ("image_id", "classes", "is_crowd", "height", "width")
  ds = tf.data.TFRecordDataset(list(paths), buffer_size=_SCAN_BUFFER).map(
      lambda s: dict({k: v for k, v in parse(s).items() if k in keys},
                     length=tf.strings.length(s)),
      num_parallel_calls=tf.data.AUTOTUNE)
  image_ids, length, num_instances, class_ids, splits, sizes = [], [], [], [], [0], []
  for ex in ds.as_numpy_iterator():
    image_ids.append(ex["image_id"])
    length.append(ex["length"])
    sizes.append((ex["height"], ex["width"]))
    keep = ex["classes"][~ex["is_crowd"]]
    num_instances.append(len(keep))
    class_ids += sorted(set(keep.tolist()))
    splits.append(len(class_ids))
  counts = list(info.shard_lengths)
  if len(counts) != len(paths) or sum(counts) != len(length):
    raise ValueError(f"{split}: {len(length)} records in {len(paths)} files, but the dataset "
                     f"info lists {sum(counts)} in {len(counts)}")
  shard = np.repeat(np.arange(len(paths), dtype=np.int32), counts)
  length = np.array(length, np.int64)
  framed = np.split(length + 16, np.cumsum(counts)[:-1])  # uint64 length, crc, data, crc.
  offset = np.concatenate([12 + np.cumsum(f) - f for f in framed]).astype(np.int64)
  return Records(paths=paths, image_id=np.array(image_ids, np.int64), shard=shard,
                 offset=offset, length=length,
                 num_instances=np.array(num_instances, np.int32),
                 class_ids=np.array(class_ids, np.int32), class_splits=np.array(splits, np.int64),
                 height=np.array([h for h, _ in sizes], np.int32),
                 width=np.array([w for _, w in sizes], np.int32))


def load(builder, split: str) -> Records:
  """The split's record index, cached as records_<split>.npz beside the TFRecords (rebuilt
  when its fields or its record count differ from this code's)."""
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
    tmp.replace(cache)  # Over a stale cache: `rename` refuses an existing target.
  except (OSError, tf.errors.OpError) as e:
    logging.warning("cannot cache the record index at %s: %s", cache, e)
  return records


def read_record(path, offset, length):
  """The one serialized example at data offset `offset` of a TFRecord file: a 1-element dataset.

  TFRecordDatasetV2 starts at the record's header (byte_offsets) and reads it whole in one
  buffer of its framed size (12-byte header, data, 4-byte CRC), checking both CRCs;
  `take(1)` stops before the next record. Any tf.io.gfile filesystem (gs://, ...) works.
  """
  variant = tf.raw_ops.TFRecordDatasetV2(
      filenames=path, compression_type="", buffer_size=length + 16, byte_offsets=offset - 12)
  return tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.string)).take(1)
