"""FPN anchors, identical to torchvision's `AnchorGenerator` for the same strides, or
unrounded as detectron2's `DefaultAnchorGenerator` (offset 0).

A anchors per location (sizes x aspect ratios of a level). Anchors depend on static shapes
only, so they are NumPy constants computed at trace time.
"""

from typing import Sequence

import numpy as np


def _per_level(name, values, num_levels):
  """Normalises `(32, 64, ...)` or `((32,), (64,), ...)` to one tuple per level."""
  values = tuple(v if isinstance(v, (tuple, list)) else (v,) for v in values)
  if len(values) != num_levels:
    raise ValueError(f"{name} has {len(values)} levels, strides have {num_levels}")
  return values


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float],
                 rounded: bool = True) -> np.ndarray:
  """`[len(aspect_ratios) * len(sizes), 4]` float32 anchors centred on 0, ratio-major.

  Aspect ratio is height / width. `rounded`: corners rounded half-to-even like
  torchvision's `torch.round`; else detectron2's w = sqrt(size^2 / ratio), h = ratio * w
  in float64, then float32 (for one size per level its order is the same).
  """
  if not rounded:
    ratios = np.asarray(aspect_ratios, np.float64)[:, None]
    ws = np.sqrt(np.asarray(sizes, np.float64)[None, :]**2 / ratios)
    hs = ratios * ws
    ws, hs = ws.reshape(-1), hs.reshape(-1)
    return (np.stack([-ws, -hs, ws, hs], axis=1) / 2).astype(np.float32)
  scales = np.asarray(sizes, np.float32)
  h_ratios = np.sqrt(np.asarray(aspect_ratios, np.float32))
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def generate_anchors(image_size, *, strides: Sequence[int] = (4, 8, 16, 32, 64),
                     sizes: Sequence = (32, 64, 128, 256, 512),
                     aspect_ratios: Sequence = (0.5, 1.0, 2.0),
                     rounded: bool = True) -> list[np.ndarray]:
  """Anchors of every level for a padded image.

  Args:
    image_size: `(H, W)` or an int for a square image, in pixels.
    strides: level strides; level l's map is `ceil(H / stride) x ceil(W / stride)`.
    sizes: one size (or tuple of sizes) per level.
    aspect_ratios: height / width ratios, shared by all levels or one tuple per level.
    rounded: round the base anchors (torchvision) or not (detectron2).

  Returns:
    One `[H_l * W_l * A, 4]` float32 array per level, ordered by location (row-major)
    then anchor (ratio-major), anchor `(x1, y1, x2, y2)` = base anchor + `(x, y, x, y) * stride`.
  """
  height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
  sizes = _per_level("sizes", sizes, len(strides))
  if aspect_ratios and isinstance(aspect_ratios[0], (tuple, list)):
    ratios = _per_level("aspect_ratios", aspect_ratios, len(strides))
  else:
    ratios = (tuple(aspect_ratios),) * len(strides)
  anchors = []
  for stride, level_sizes, level_ratios in zip(strides, sizes, ratios):
    grid_h, grid_w = -(-height // stride), -(-width // stride)
    shift_x = np.arange(grid_w, dtype=np.float32) * np.float32(stride)
    shift_y = np.arange(grid_h, dtype=np.float32) * np.float32(stride)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    cell = base_anchors(level_sizes, level_ratios, rounded)
    anchors.append((shifts + cell[None]).reshape(-1, 4))
  return anchors


def generate_anchors_concat(image_size, **kwargs) -> np.ndarray:
  """All levels of `generate_anchors` concatenated: `[sum_l H_l * W_l * A, 4]` float32."""
  return np.concatenate(generate_anchors(image_size, **kwargs), axis=0)
