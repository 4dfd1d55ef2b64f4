"""Image files -> the batches of `--mode=predict`: the evaluation format, without TFRecords."""

from etils import epath
import ml_collections
import numpy as np

from maskrcnn_jax.data import images
from maskrcnn_jax.data import pixels
from maskrcnn_jax.data import sampler


def load_images(paths: list[str], data_config: ml_collections.ConfigDict, *,
                batch_size: int) -> dict:
  """Image files (JPEG, PNG, any mode; EXIF orientation applied) -> one evaluation-style
  batch for prediction, resized as evaluation resizes (`images`).

  Returns image [B, Hc, Wc, 3] uint8 (the canvas; with `data.aspect_grouping` the one of
  the images' orientation, which they must share: `batches`), image_id [B] int32 (position
  in `paths`), image_info [B, 5] float32, image_valid [B] bool (false past len(paths)), and
  `original`: a list of the len(paths) decoded [H, W, 3] uint8 images (not an array:
  sizes differ).
  """
  if not 0 < len(paths) <= batch_size:
    raise ValueError(f"need 1 to {batch_size} paths, got {len(paths)}")
  originals = [pixels.decode(epath.Path(path).read_bytes()) for path in paths]
  portrait = [bool(sampler.is_portrait(*o.shape[:2])) for o in originals]
  if data_config.aspect_grouping and len(set(portrait)) > 1:
    raise ValueError(f"{paths[portrait.index(not portrait[0])]}: not of the orientation of "
                     f"{paths[0]}, and data.aspect_grouping puts a batch on one canvas")
  height, width = images.canvas(data_config, portrait=portrait[0])
  out = {"image": np.zeros((batch_size, height, width, 3), np.uint8),
         "image_id": np.zeros((batch_size,), np.int32),
         "image_info": np.zeros((batch_size, 5), np.float32),
         "image_valid": np.zeros((batch_size,), bool), "original": originals}
  for i, original in enumerate(originals):
    h, w = original.shape[:2]
    scale = images.scale(h, w, data_config)
    new_h, new_w = images.resized_size(h, w, scale)
    out["image"][i] = images.to_canvas(images.resize(original, new_h, new_w), (height, width))
    out["image_id"][i] = i
    out["image_info"][i] = (h, w, scale, new_h, new_w)
    out["image_valid"][i] = True
  return out


def batches(paths: list[str], data_config: ml_collections.ConfigDict, *,
            batch_size: int) -> list[list[int]]:
  """Positions in `paths` of each prediction batch: in order, `batch_size` at a time; with
  `data.aspect_grouping` the landscape images first, then the portrait ones (each image's
  orientation read from its header, `pixels.shown_size`)."""
  groups = np.zeros(len(paths), np.int64)
  if data_config.aspect_grouping:
    groups = np.array([sampler.is_portrait(*_shown_size(p)) for p in paths], np.int64)
  out = []
  for g in np.unique(groups):
    members = np.flatnonzero(groups == g).tolist()
    out += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
  return out


def _shown_size(path: str) -> tuple[int, int]:
  with epath.Path(path).open("rb") as f:  # The header only: the pixels are read per batch.
    return pixels.shown_size(f)
