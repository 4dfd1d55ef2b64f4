"""TFDS builder: COCO-Stuff 2017 (download layout, read by `coco_reader`) or COCO panoptic
(`panoptic_reader`) into TFRecords.

One builder config per (class set, mask side Sm). Each record holds the encoded JPEG, the
image id and size, and per instance its box (original pixels), training id, crowd flag,
mask area and box-cropped Sm×Sm mask, bit-packed (Sm² / 8 bytes) and zlib-compressed
(at Sm = 112 at most 1568 bytes per mask, about 220 zlib-compressed for COCO-Stuff's stuff
masks, beside 100-200 KiB of JPEG per COCO image).
Examples are written in image-id order. The bad-input counts of the build (see
`coco_reader`) are stored in the dataset's metadata.json as `counts/<split>`, and the ids of
images with partial annotations (in one of the stuff and instances files only) as
`partial/<split>`.
"""

import collections
import dataclasses

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import panoptic_reader

MASK_SIZES = (28, 56, 112)


def packed_mask_bytes(mask_size: int) -> int:
  """Bytes of one bit-packed Sm×Sm mask."""
  return (mask_size * mask_size + 7) // 8


def pack_masks(masks: np.ndarray) -> np.ndarray:
  """[N, Sm, Sm] uint8 in {0, 1} -> [N, packed_mask_bytes(Sm)] uint8 (bits, MSB first)."""
  n, height, width = masks.shape
  return np.packbits(masks.reshape(n, height * width).astype(bool), axis=1)


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


class MaskrcnnCocoStuff(tfds.core.GeneratorBasedBuilder):
  """COCO-Stuff 2017 instances (stuff, optionally things) for Mask R-CNN."""

  pool = None  # Processes decoding the images while building (coco_reader.worker_pool).

  # TFDS finds this itself through the `importlib_resources` backport, which it does not declare.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [builder_config(c, m) for c in categories.CLASS_SET_NAMES for m in MASK_SIZES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point manual_dir at a COCO-Stuff 2017 root laid out as the official downloads unpack:
    train2017/*.jpg, val2017/*.jpg                  (images_{train,val}2017.zip)
    annotations/stuff_{train,val}2017.json          (stuff_annotations_trainval2017.zip)
    annotations/instances_{train,val}2017.json      (annotations_trainval2017.zip; things_and_stuff)
    annotations/panoptic_{train,val}2017{.json,/}   (panoptic_annotations_trainval2017.zip)
  Nothing is downloaded.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    packed = packed_mask_bytes(self.builder_config.mask_size)
    zlib = tfds.features.Encoding.ZLIB
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "image_id": np.int64,
            "height": np.int32,
            "width": np.int32,
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "is_crowd": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            "areas": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "masks": tfds.features.Tensor(shape=(None, packed), dtype=np.uint8, encoding=zlib),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
        homepage="https://github.com/nightrome/cocostuff",
    )

  def _split_generators(self, dl_manager):
    """The splits whose annotation files all exist (e.g. only `validation` for a COCO root
    holding val2017 alone)."""
    root = dl_manager.manual_dir
    kinds = coco_reader.annotation_kinds(categories.get_class_set(self.builder_config.class_set))
    paths = {split: [coco_reader.annotation_path(root, split, k) for k in kinds]
             for split in coco_reader.SPLIT_DIRS}
    present = [split for split, files in paths.items() if all(f.is_file() for f in files)]
    if not present:
      raise FileNotFoundError(f"{root} holds no split: none of "
                              f"{', '.join(str(f) for fs in paths.values() for f in fs)} exists")
    for split in paths.keys() - present:
      logging.warning("%s: no split %s (%s missing)", root, split,
                      ", ".join(str(f) for f in paths[split] if not f.is_file()))
    return {split: self._generate_examples(root, split) for split in present}

  def _generate_examples(self, root, split):
    config = self.builder_config
    class_set = categories.get_class_set(config.class_set)
    counts, partial = collections.Counter(), set()
    reader = panoptic_reader if class_set.name == "panoptic" else coco_reader
    for example in reader.read_examples(root, split, class_set, mask_size=config.mask_size,
                                        counts=counts, partial=partial, pool=self.pool):
      example["masks"] = pack_masks(example["masks"])
      yield example["image_id"], example
    self.info.metadata[f"counts/{split}"] = dict(sorted(counts.items()))
    self.info.metadata[f"partial/{split}"] = sorted(partial)
    logging.info("%s %s: %s", self.name, split, dict(sorted(counts.items())))


def make_builder(data_dir, *, class_set: str, mask_size: int) -> MaskrcnnCocoStuff:
  """The builder of (class set, Sm) in data_dir; built or not."""
  config = builder_config(class_set, mask_size)
  if config.name in MaskrcnnCocoStuff.builder_configs:
    config = config.name  # TFDS refuses a new config object under a registered name.
  return MaskrcnnCocoStuff(config=config, data_dir=str(data_dir))


def build(root, data_dir, *, class_set: str, mask_size: int,
          num_workers: int = 1) -> MaskrcnnCocoStuff:
  """Builds (once; a no-op when already built) the TFRecords of ROOT under data_dir."""
  builder = make_builder(data_dir, class_set=class_set, mask_size=mask_size)
  if builder.is_prepared():
    return builder
  config = tfds.download.DownloadConfig(manual_dir=str(root), try_download_gcs=False)
  if num_workers <= 1:
    builder.download_and_prepare(download_config=config)
    return builder
  with coco_reader.worker_pool(num_workers) as pool:  # One pool for both splits.
    builder.pool = pool
    try:
      builder.download_and_prepare(download_config=config)
    finally:
      builder.pool = None
  return builder
