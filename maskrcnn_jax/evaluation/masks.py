"""Detections back into original-image coordinates: boxes and box-relative masks.

D detections, m mask side (28), H × W the original image. `image_info` is the batch's
`(orig_h, orig_w, scale, valid_h, valid_w)`: padded-image pixel = original pixel × scale.
"""

import numpy as np


def _check_info(image_info) -> tuple[int, int, float]:
  info = np.asarray(image_info, np.float64)
  if info.shape != (5,):
    raise ValueError(f"image_info must be [5] (orig_h, orig_w, scale, valid_h, valid_w), "
                     f"got shape {info.shape}")
  height, width, scale = int(round(info[0])), int(round(info[1])), float(info[2])
  if height <= 0 or width <= 0 or not scale > 0:
    raise ValueError(f"image_info has a bad size or scale: {info.tolist()}")
  return height, width, scale


def boxes_to_original(boxes: np.ndarray, image_info) -> np.ndarray:
  """Padded-image boxes → original-image boxes, clipped to the image.

  Args:
    boxes: [D, 4] float (x1, y1, x2, y2) in padded-image pixels.
    image_info: [5] (orig_h, orig_w, scale, valid_h, valid_w).

  Returns:
    [D, 4] float32 (x1, y1, x2, y2) in original pixels, inside [0, W] × [0, H].
  """
  boxes = np.asarray(boxes, np.float32)
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be [D, 4], got {boxes.shape}")
  height, width, scale = _check_info(image_info)
  out = boxes / np.float32(scale)
  out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
  out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
  return out


def _interpolation_weights(lo: np.ndarray, hi: np.ndarray, size: int, m: int) -> np.ndarray:
  """[D], [D] box edges → [D, size, m] bilinear weights of the m mask cells per output pixel.

  Output pixel p samples the mask at u = (p + 0.5 - lo) / (hi - lo) · m - 0.5, as
  `grid_sample(align_corners=False)` with zero padding: a neighbour outside [0, m) adds 0.
  """
  extent = np.maximum(hi - lo, 1e-6)[:, None]
  u = (np.arange(size, dtype=np.float32)[None] + 0.5 - lo[:, None]) / extent * m - 0.5
  u0 = np.floor(u)
  frac = u - u0
  cells = np.arange(m, dtype=np.float32)[None, None]
  return ((cells == u0[..., None]) * (1 - frac)[..., None]
          + (cells == u0[..., None] + 1) * frac[..., None]).astype(np.float32)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_info) -> np.ndarray:
  """Pastes box-relative mask probabilities into the original image.

  Each mask is resized bilinearly onto its box (box / scale, not clipped, so the mask keeps
  its geometry); pixels outside the box get 0. Matches detectron2 / torchvision
  `paste_masks_in_image` (`grid_sample`, `align_corners=False`), computed as two separable
  matrix products per mask.

  Args:
    masks: [D, m, m] float probabilities.
    boxes: [D, 4] float (x1, y1, x2, y2) in padded-image pixels.
    image_info: [5] (orig_h, orig_w, scale, valid_h, valid_w).

  Returns:
    [D, H, W] float32 probabilities in original-image pixels.
  """
  masks = np.asarray(masks, np.float32)
  boxes = np.asarray(boxes, np.float32)
  if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
    raise ValueError(f"masks must be [D, m, m], got {masks.shape}")
  if boxes.shape != (masks.shape[0], 4):
    raise ValueError(f"boxes must be [D, 4] with D = {masks.shape[0]}, got {boxes.shape}")
  height, width, scale = _check_info(image_info)
  m = masks.shape[1]
  boxes = boxes / np.float32(scale)
  wy = _interpolation_weights(boxes[:, 1], boxes[:, 3], height, m)  # [D, H, m]
  wx = _interpolation_weights(boxes[:, 0], boxes[:, 2], width, m)  # [D, W, m]
  return np.matmul(np.matmul(wy, masks), wx.transpose(0, 2, 1))
