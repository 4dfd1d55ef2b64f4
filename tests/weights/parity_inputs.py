"""What the parity tests share: original images through the evaluation preprocessing, as
`--mode=eval` resizes and pads them."""

import numpy as np
import tensorflow as tf

from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import preprocess


def evaluation_batch(originals, data_config):
  """Original images -> the evaluation pipeline's `image` and `image_info` (no instances)."""
  none = np.zeros((0, coco_reader.packed_mask_bytes(data_config.mask_size)), np.uint8)
  outs = [preprocess.preprocess(
      {"image": tf.io.encode_png(image), "image_id": tf.constant(i, tf.int64),
       "boxes": tf.zeros([0, 4]), "classes": tf.zeros([0], tf.int32),
       "is_crowd": tf.zeros([0], tf.bool), "areas": tf.zeros([0], tf.int32),
       "masks": tf.constant(none)}, tf.constant(0, tf.int64), seed=0, data_config=data_config,
      train=False) for i, image in enumerate(originals)]
  return {k: np.stack([o[k].numpy() for o in outs]) for k in ("image", "image_info")}
