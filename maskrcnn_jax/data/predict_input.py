"""Image files -> the batches of `--mode=predict`: the evaluation format, without TFRecords."""

from etils import epath
import ml_collections
import numpy as np

from maskrcnn_jax.data import images
from maskrcnn_jax.data import pixels


def load_images(paths: list[str], data_config: ml_collections.ConfigDict, *,
                batch_size: int) -> dict:
  """Image files (JPEG, PNG, any mode; EXIF orientation applied) -> one evaluation-style
  batch for prediction, resized as evaluation resizes (`images`).

  Returns image [B, Hc, Wc, 3] uint8 (the canvas), image_id [B] int32 (position in
  `paths`), image_info [B, 5] float32, image_valid [B] bool (false past len(paths)), and
  `original`: a list of the len(paths) decoded [H, W, 3] uint8 images (not an array:
  sizes differ).
  """
  if not 0 < len(paths) <= batch_size:
    raise ValueError(f"need 1 to {batch_size} paths, got {len(paths)}")
  height, width = images.canvas(data_config)
  out = {"image": np.zeros((batch_size, height, width, 3), np.uint8),
         "image_id": np.zeros((batch_size,), np.int32),
         "image_info": np.zeros((batch_size, 5), np.float32),
         "image_valid": np.zeros((batch_size,), bool), "original": []}
  for i, path in enumerate(paths):
    original = pixels.decode(epath.Path(path).read_bytes())
    h, w = original.shape[:2]
    scale = images.scale(h, w, data_config)
    new_h, new_w = images.resized_size(h, w, scale)
    out["image"][i] = images.to_canvas(images.resize(original, new_h, new_w), data_config)
    out["image_id"][i] = i
    out["image_info"][i] = (h, w, scale, new_h, new_w)
    out["image_valid"][i] = True
    out["original"].append(original)
  return out
