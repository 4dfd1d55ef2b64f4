"""Builds the TFRecords of a COCO-Stuff root once and prints what the build skipped.

    python -m maskrcnn_jax.data.prepare --root ROOT --data_dir DIR \
        [--class_set stuff|stuff_no_other|things_and_stuff|coco|panoptic] [--mask_size 112] \
        [--build_workers N] [--max_instances 100] [--config configs/default.py]

What is built is `config.data` of --config (run from the repository root for the default
path), with the keys the flags name replaced by the flags given. `data.build_workers`
processes decode the images (JPEG check, RLE and polygon decoding, mask crops); this
process reads the JSON once, checks it before any image is decoded and writes the TFRecords
in image-id order, so the result is the same for any N. A killed build resumes where it
stopped. Bad annotation files stop it with one line (exit code 1).
"""

import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import DataError


def main(argv):
  del argv
  f = flags.FLAGS
  data_config = f.config.data
  overrides = dict(root=f.root, tfds_data_dir=f.data_dir, class_set=f.class_set,
                   mask_size=f.mask_size, max_instances=f.max_instances,
                   build_workers=f.build_workers)
  data_config.update({k: v for k, v in overrides.items() if v is not None})
  if not data_config.root:
    raise app.UsageError("no data root: pass --root (or set data.root in --config)")
  start = time.time()
  try:
    builder = build.prepare(data_config)
  except DataError as e:
    sys.exit(f"Invalid data: {e}")
  print(f"{builder.data_dir} ready in {time.time() - start:.1f} s")
  for split, info in builder.info.splits.items():
    counts = builder.info.metadata.get(f"counts/{split}", {})
    print(f"{split}: {info.num_examples} images, {info.num_bytes / 2**20:.1f} MiB; "
          f"build counts: {counts}")


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", "configs/default.py",
                                  "Config whose `data` is built.", lock_config=True)
  flags.DEFINE_string("root", None, "COCO-Stuff root (train2017/, val2017/, annotations/); "
                      "default: data.root.")
  flags.DEFINE_string("data_dir", None, "TFDS data dir; default: data.tfds_data_dir, else "
                      "ROOT/tfds.")
  flags.DEFINE_enum("class_set", None, list(categories.CLASS_SET_NAMES),
                    "Class set; default: data.class_set.")
  flags.DEFINE_integer("mask_size", None, "Side of the stored box-cropped masks; default: "
                       "data.mask_size.")
  flags.DEFINE_integer("build_workers", None, "Processes decoding the images (0: one per "
                       "core); default: data.build_workers.", lower_bound=0)
  flags.DEFINE_integer("max_instances", None, "data.max_instances of training: images above "
                       "it are reported; default: the config's.")
  app.run(main)
