"""Builds the TFRecords of a COCO-Stuff root once and prints what the build skipped.

    python -m maskrcnn_jax.data.prepare --root ROOT --data_dir DIR \
        [--class_set stuff|stuff_no_other|things_and_stuff] [--mask_size 112] \
        [--num_workers N] [--max_instances 100]

--num_workers processes decode the images (JPEG check, RLE and polygon decoding, mask
crops); this process reads the JSON once and writes the TFRecords in image-id order, so
the result is the same for any N.
"""

import time

from absl import app
from absl import flags
import ml_collections

from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories


def main(argv):
  del argv
  f = flags.FLAGS
  data_config = ml_collections.ConfigDict(dict(
      root=f.root, tfds_data_dir=f.data_dir, class_set=f.class_set, mask_size=f.mask_size,
      max_instances=f.max_instances, synthetic=dict(enabled=False)))
  start = time.time()
  builder = build.prepare(data_config, num_workers=f.num_workers)
  print(f"{builder.data_dir} ready in {time.time() - start:.1f} s")
  for split, info in builder.info.splits.items():
    counts = builder.info.metadata.get(f"counts/{split}", {})
    print(f"{split}: {info.num_examples} images, {info.num_bytes / 2**20:.1f} MiB; "
          f"build counts: {counts}")


if __name__ == "__main__":
  flags.DEFINE_string("root", None, "COCO-Stuff root (train2017/, val2017/, annotations/).",
                      required=True)
  flags.DEFINE_string("data_dir", "", "TFDS data dir; default ROOT/tfds.")
  flags.DEFINE_enum("class_set", "stuff", list(categories.CLASS_SET_NAMES), "Class set.")
  flags.DEFINE_integer("mask_size", 112, "Side of the stored box-cropped masks "
                       "(data.mask_size; configs/default.py: 112).")
  flags.DEFINE_integer("num_workers", 1, "Processes decoding the images.", lower_bound=1)
  flags.DEFINE_integer("max_instances", 100,
                       "data.max_instances of training: images above it are reported.")
  app.run(main)
