"""Box geometry: areas, pairwise IoU, clipping and the R-CNN box coding.

Boxes are `[..., 4]` float32 `(x1, y1, x2, y2)` in padded-image pixels. Widths are
`x2 - x1` (no `+ 1`), as in torchvision's `BoxCoder` and detectron2's `Box2BoxTransform`.
"""

import math
from typing import Sequence

import jax.numpy as jnp

# Largest log-scale a decoded width or height may grow by: exp(4.135) = 1000 / 16.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _check_boxes(name: str, boxes: jnp.ndarray, ndim: int | None = None):
  if boxes.shape[-1:] != (4,) or (ndim is not None and boxes.ndim != ndim):
    want = "[..., 4]" if ndim is None else "[" + ", ".join(["N"] * (ndim - 1) + ["4"]) + "]"
    raise ValueError(f"{name} must be {want}, got shape {boxes.shape}")


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """`boxes: [..., 4]` -> `[...]` area `(x2 - x1) * (y2 - y1)` (negative for inverted boxes)."""
  _check_boxes("boxes", boxes)
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise IoU, `a: [N, 4]`, `b: [M, 4]` -> `[N, M]` float32.

  Same arithmetic as `torchvision.ops.box_iou`; where the union is not positive
  (two zero-area boxes) the IoU is 0 instead of NaN.
  """
  _check_boxes("a", a, 2)
  _check_boxes("b", b, 2)
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = box_area(a)[:, None] + box_area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes: jnp.ndarray, height, width) -> jnp.ndarray:
  """Clamps `boxes: [..., 4]` to `[0, width] x [0, height]` (scalars, may be traced)."""
  _check_boxes("boxes", boxes)
  x = jnp.clip(boxes[..., 0::2], 0.0, width)
  y = jnp.clip(boxes[..., 1::2], 0.0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def small_box_mask(boxes: jnp.ndarray, min_size: float) -> jnp.ndarray:
  """`boxes: [..., 4]` -> `[...]` bool, True where width or height is below `min_size`.

  The complement of the boxes `torchvision.ops.remove_small_boxes` keeps.
  """
  _check_boxes("boxes", boxes)
  return ((boxes[..., 2] - boxes[..., 0]) < min_size) | ((boxes[..., 3] - boxes[..., 1]) < min_size)


def _centers_sizes(boxes):
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(reference_boxes: jnp.ndarray, proposals: jnp.ndarray,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jnp.ndarray:
  """Regression targets that move `proposals` onto `reference_boxes` (torchvision `encode_single`).

  Args:
    reference_boxes: `[..., 4]` target (GT) boxes.
    proposals: `[..., 4]` anchors or proposals, broadcastable with `reference_boxes`.
    weights: `(wx, wy, ww, wh)` multipliers of the deltas.

  Returns:
    `[..., 4]` float32 deltas `(dx, dy, dw, dh)`; degenerate proposals give inf/NaN,
    so callers mask targets of padded boxes.
  """
  _check_boxes("reference_boxes", reference_boxes)
  _check_boxes("proposals", proposals)
  wx, wy, ww, wh = weights
  px, py, pw, ph = _centers_sizes(proposals.astype(jnp.float32))
  gx, gy, gw, gh = _centers_sizes(reference_boxes.astype(jnp.float32))
  return jnp.stack([wx * (gx - px) / pw, wy * (gy - py) / ph,
                    ww * jnp.log(gw / pw), wh * jnp.log(gh / ph)], axis=-1)


def decode(deltas: jnp.ndarray, boxes: jnp.ndarray,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
           clip: float = DEFAULT_SCALE_CLAMP) -> jnp.ndarray:
  """Applies `deltas` to `boxes` (torchvision `decode_single`, torchvision >= 0.8 corners).

  Args:
    deltas: `[..., 4]` `(dx, dy, dw, dh)` as produced by `encode`.
    boxes: `[..., 4]` anchors or proposals, broadcastable with `deltas`.
    weights: `(wx, wy, ww, wh)` the deltas were encoded with.
    clip: upper clamp of `dw / ww` and `dh / wh` before the exponential.

  Returns:
    `[..., 4]` decoded boxes (not clipped to the image) in the deltas' precision, at
    least float32 (float64 for a float64 model: float32 rounding at the far corner of a
    clamped, image-wide box, |x| ~ 4e4, is ~5e-3 px).
  """
  _check_boxes("deltas", deltas)
  _check_boxes("boxes", boxes)
  wx, wy, ww, wh = weights
  dtype = jnp.promote_types(deltas.dtype, jnp.float32)
  deltas = deltas.astype(dtype)
  cx, cy, w, h = _centers_sizes(boxes.astype(dtype))
  dw = jnp.minimum(deltas[..., 2] / ww, clip)
  dh = jnp.minimum(deltas[..., 3] / wh, clip)
  pcx = deltas[..., 0] / wx * w + cx
  pcy = deltas[..., 1] / wy * h + cy
  half_w = 0.5 * (jnp.exp(dw) * w)
  half_h = 0.5 * (jnp.exp(dh) * h)
  return jnp.stack([pcx - half_w, pcy - half_h, pcx + half_w, pcy + half_h], axis=-1)
