"""Image files -> the batches of `--mode=predict`: the evaluation format, without TFRecords."""

import io

from etils import epath
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow as tf


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
