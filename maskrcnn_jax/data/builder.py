"""TFDS dataset: COCO-Stuff 2017 (download layout, read by `coco_reader`) or COCO panoptic
(`panoptic_reader`) into TFRecords.

One builder config per (class set, mask side Sm). Each record holds the encoded image (the
file's JPEG, or its pixels as PNG: `coco_reader`), the image id and size, and per instance
its box (original pixels), training id, crowd flag, mask area and box-cropped Sm×Sm mask,
bit-packed (Sm² / 8 bytes) and zlib-compressed (at Sm = 112 at most 1568 bytes per mask,
about 220 zlib-compressed for COCO-Stuff's stuff masks, beside 100-200 KiB of JPEG per COCO
image).

`build` writes the records itself, not through TFDS's download_and_prepare (which writes a
split all or nothing): each split in shards of `shard_images` consecutive image ids, in
image-id order, each shard committed on its own (temp file, then rename) in the dataset's
folder CONFIG_DIR/VERSION, so that a killed build resumes at the first unfinished shard with
the same records. `tfds.folder_dataset.write_metadata` then makes the folder a TFDS
dataset; its dataset_info.json, written last, commits it (no folder rename, which an object
store does file by file). Memory stays bounded: the workers pack the masks, and only
`max_pending_bytes` of images are in flight (`coco_reader.decode`).
The bad-input counts of the build (see `coco_reader`) are stored in the dataset's
metadata.json as `counts/<split>`, and the ids of images with partial annotations (in one of
the stuff and instances files only) as `partial/<split>`.
"""

import collections
import contextlib
import dataclasses
import functools
import itertools
import json

from absl import logging
from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants
from tensorflow_datasets.core import dataset_builder
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import naming

from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import DataError
from maskrcnn_jax.data import panoptic_reader

MASK_SIZES = (28, 56, 112)
SHARD_IMAGES = 1024  # Images per shard: about 160 MiB of COCO records, the unit of a resume.
MAX_PENDING_BYTES = 256 * 2**20  # Image bytes in flight between the workers and the writer.


@dataclasses.dataclass
class CocoStuffConfig(tfds.core.BuilderConfig):
  class_set: str = "stuff"
  mask_size: int = 112


def builder_config(class_set: str, mask_size: int) -> CocoStuffConfig:
  """The config named `{class_set}_m{mask_size}` (any positive mask size)."""
  categories.get_class_set(class_set)  # Raises for unknown names.
  if mask_size < 1:
    raise ValueError(f"mask_size must be positive, got {mask_size}")
  return CocoStuffConfig(
      name=f"{class_set}_m{mask_size}",
      description=f"class set {class_set}, masks cropped to their box at {mask_size}²",
      class_set=class_set,
      mask_size=mask_size,
  )


class MaskrcnnCocoStuff(dataset_builder.FileReaderBuilder):
  """COCO-Stuff 2017 instances (stuff, optionally things) for Mask R-CNN: read with TFDS,
  written by `build`."""

  # TFDS finds this itself through the `importlib_resources` backport, which it does not declare.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "EXIF orientation applied; converted and oriented images stored "
                            "as PNG pixels."}
  BUILDER_CONFIGS = [builder_config(c, m) for c in categories.CLASS_SET_NAMES for m in MASK_SIZES]

  def _info(self) -> tfds.core.DatasetInfo:
    packed = coco_reader.packed_mask_bytes(self.builder_config.mask_size)
    return tfds.core.DatasetInfo(builder=self, features=features(packed), **_INFO)

  def _download_and_prepare(self, dl_manager, download_config):
    raise NotImplementedError("built by maskrcnn_jax.data.builder.build, in resumable shards")


_INFO = dict(description=__doc__, disable_shuffling=True,
             homepage="https://github.com/nightrome/cocostuff")


def features(packed_mask_bytes: int) -> tfds.features.FeaturesDict:
  """The features of a record; masks [N, packed_mask_bytes] (`coco_reader.pack_masks`)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "image_id": np.int64,
      "height": np.int32,
      "width": np.int32,
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "is_crowd": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
      "areas": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "masks": tfds.features.Tensor(shape=(None, packed_mask_bytes), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),
  })


def present_splits(root, class_set: categories.ClassSet) -> list[str]:
  """The splits whose annotation files all exist under root (e.g. only `validation` for a
  COCO root holding val2017 alone); DataError when there is none."""
  kinds = coco_reader.annotation_kinds(class_set)
  paths = {split: [coco_reader.annotation_path(root, split, k) for k in kinds]
           for split in coco_reader.SPLIT_DIRS}
  present = [split for split, files in paths.items() if all(f.is_file() for f in files)]
  if not present:
    raise DataError(f"{root} holds no split: none of "
                    f"{', '.join(str(f) for fs in paths.values() for f in fs)} exists")
  for split in paths.keys() - present:
    logging.warning("%s: no split %s (%s missing)", root, split,
                    ", ".join(str(f) for f in paths[split] if not f.is_file()))
  return present


def make_builder(data_dir, *, class_set: str, mask_size: int) -> MaskrcnnCocoStuff:
  """The builder of (class set, Sm) in data_dir; built or not."""
  config = builder_config(class_set, mask_size)
  if config.name in MaskrcnnCocoStuff.builder_configs:
    config = config.name  # TFDS refuses a new config object under a registered name.
  return MaskrcnnCocoStuff(config=config, data_dir=str(data_dir))


def build(root, data_dir, *, class_set: str, mask_size: int, num_workers: int = 1,
          shard_images: int = SHARD_IMAGES,
          max_pending_bytes: int = MAX_PENDING_BYTES) -> MaskrcnnCocoStuff:
  """Builds (once; a no-op when already built) the TFRecords of ROOT under data_dir.

  Resumes a killed build at its first unfinished shard; removes the temp folders TFDS's
  builds leave (`incomplete.*`). num_workers: processes decoding the images (1: this one).
  The records are the same for any num_workers and max_pending_bytes; shard_images must
  stay the same to resume (else the split starts over).
  """
  builder = make_builder(data_dir, class_set=class_set, mask_size=mask_size)
  if builder.is_prepared():
    return builder
  class_set_ = categories.get_class_set(class_set)
  panoptic = class_set_.name == "panoptic"
  reader = panoptic_reader if panoptic else coco_reader
  indexed = {}  # Every split's annotations checked before any image is decoded.
  for split in present_splits(root, class_set_):
    counts, partial = collections.Counter(), set()
    tasks = reader.index(root, split, class_set_, mask_size=mask_size, counts=counts,
                         partial=partial)
    indexed[split] = tasks, counts, partial
  work = epath.Path(builder.data_path)
  for stale in work.parent.glob(f"{constants.INCOMPLETE_PREFIX}*"):
    logging.info("Removing the stale build folder %s", stale)
    stale.rmtree()
  (work / "progress").mkdir(parents=True, exist_ok=True)
  template = naming.ShardedFileTemplate(data_dir=work, template=naming.DEFAULT_FILENAME_TEMPLATE,
                                        dataset_name=builder.name, filetype_suffix="tfrecord")
  split_infos, metadata = [], tfds.core.MetadataDict()
  with contextlib.ExitStack() as stack:
    # Started on the first shard to write, once for both splits.
    pool = functools.cache(lambda: stack.enter_context(coco_reader.worker_pool(num_workers))
                           if num_workers > 1 else None)
    for split, (tasks, counts, partial) in indexed.items():
      writer = _SplitWriter(builder.info.features, template.replace(split=split), tasks,
                            shard_images, panoptic_reader.decode_task if panoptic else None)
      info = writer.write(pool=pool, max_pending_bytes=max_pending_bytes, counts=counts)
      split_infos.append(info)
      metadata[f"counts/{split}"] = dict(sorted(counts.items()))
      metadata[f"partial/{split}"] = sorted(partial)
      logging.info("%s %s: %s", builder.name, split, metadata[f"counts/{split}"])
  tfds.folder_dataset.write_metadata(
      data_dir=work, features=builder.info.features, split_infos=split_infos,
      version=builder.VERSION, filename_template=template, check_data=False,
      metadata=metadata, **_INFO)
  (work / "progress").rmtree()
  return make_builder(data_dir, class_set=class_set, mask_size=mask_size)


class _SplitWriter:
  """Writes one split's shards; each shard's record is committed with its counts in
  progress/ (the commit point), so the work folder can be resumed at any time."""

  def __init__(self, features_dict, template: naming.ShardedFileTemplate, tasks, shard_images,
               example=None):
    self.features, self.template, self.example = features_dict, template, example
    self.serializer = example_serializer.ExampleSerializer(features_dict.get_serialized_info())
    self.shards = [tasks[i:i + shard_images] for i in range(0, len(tasks), shard_images)] or [[]]
    self.progress = template.data_dir / "progress"

  def serialize(self, example: dict) -> bytes:
    """TFDS's serialization, with the features in a fixed order (protobuf's default map order
    changes from process to process): a resumed build writes the same bytes."""
    proto = self.serializer.get_tf_example(self.features.encode_example(example))
    return proto.SerializeToString(deterministic=True)

  def _path(self, k: int) -> epath.Path:
    return self.template.sharded_filepath(shard_index=k, num_shards=len(self.shards))

  def _done(self, k: int) -> epath.Path:
    return self.progress / f"{self.template.split}-{k:05d}.json"

  def _resume_at(self) -> int:
    """The first unfinished shard, after removing what an interrupted build left of the
    split (temp files, uncommitted shards; everything when the shard plan changed)."""
    plan = [[s[0][0], s[-1][0], len(s)] if s else [] for s in self.shards]
    plan_path = self.progress / f"{self.template.split}.plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
      logging.warning("%s: the split's images or shard_images changed since the interrupted "
                      "build: starting the split over", self.template.split)
      for done in self.progress.glob(f"{self.template.split}-*.json"):
        done.unlink()
    _commit(plan_path, json.dumps(plan).encode())
    start = next((k for k in range(len(self.shards)) if not self._done(k).exists()),
                 len(self.shards))
    committed = {self._path(k) for k in range(start)}
    t = self.template
    for path in [*t.data_dir.glob(f"{t.dataset_name}-{t.split}.{t.filetype_suffix}-*"),
                 *self.progress.glob("*.tmp")]:
      if path not in committed:
        path.unlink()
    if start:
      logging.info("%s: resuming at shard %d of %d", self.template.split, start,
                   len(self.shards))
    return start

  def write(self, *, pool, max_pending_bytes: int, counts) -> tfds.core.SplitInfo:
    """Writes the unfinished shards; adds every shard's counts to `counts`."""
    start = self._resume_at()
    tasks = [t for shard in self.shards[start:] for t in shard]
    results = coco_reader.decode(tasks, pool=pool() if tasks else None,
                                 max_pending_bytes=max_pending_bytes, example=self.example)
    for k in range(start, len(self.shards)):
      path, shard_counts, num_examples, num_bytes = self._path(k), collections.Counter(), 0, 0
      tmp = path.with_name(path.name + ".tmp")
      with tf.io.TFRecordWriter(str(tmp)) as writer:
        for example, image_counts, warnings in itertools.islice(results, len(self.shards[k])):
          shard_counts.update(image_counts)
          for message in warnings:
            logging.warning("%s", message)
          if example is not None:
            record = self.serialize(example)
            writer.write(record)
            num_examples, num_bytes = num_examples + 1, num_bytes + len(record)
      tmp.replace(path)
      _commit(self._done(k), json.dumps(dict(examples=num_examples, bytes=num_bytes,
                                             counts=shard_counts)).encode())
      logging.info("%s: shard %d of %d written (%d records)", self.template.split, k + 1,
                   len(self.shards), num_examples)
    shard_lengths, num_bytes = [], 0
    for k in range(len(self.shards)):
      done = json.loads(self._done(k).read_text())
      shard_lengths.append(done["examples"])
      num_bytes += done["bytes"]
      counts.update(done["counts"])
    return tfds.core.SplitInfo(name=self.template.split, shard_lengths=shard_lengths,
                               num_bytes=num_bytes, filename_template=self.template)


def _commit(path: epath.Path, data: bytes) -> None:
  """Writes a file whole or not at all: a temp file, then a rename."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(path)
