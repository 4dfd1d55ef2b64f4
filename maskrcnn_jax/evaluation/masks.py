"""Detections back into original-image coordinates: boxes and box-relative masks.

D detections, m mask side (28), H × W the original image. `image_info` is the batch's
`(orig_h, orig_w, scale, valid_h, valid_w)`. An evaluated image is resized, never cropped, so
its valid size is its resized size and each axis scales by its own ratio: padded-image x =
original x × valid_w / orig_w, y likewise (data/images.py; detectron2's and torchvision's
rescaling of detections).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _axis_scale(image_info):
  """[4] (sx, sy, sx, sy): padded-image pixels per original pixel, of a [5] `image_info`
  (numpy or traced; in its dtype)."""
  return (image_info[4:2:-1] / image_info[1::-1])[np.array([0, 1, 0, 1])]


def _check_info(image_info) -> tuple[int, int, np.ndarray]:
  """(H, W, [4] float64 `_axis_scale`)."""
  info = np.asarray(image_info, np.float64)
  if info.shape != (5,):
    raise ValueError(f"image_info must be [5] (orig_h, orig_w, scale, valid_h, valid_w), "
                     f"got shape {info.shape}")
  height, width = int(round(info[0])), int(round(info[1]))
  if height <= 0 or width <= 0 or not (info[3] > 0 and info[4] > 0):
    raise ValueError(f"image_info has a bad size: {info.tolist()}")
  return height, width, _axis_scale(info)


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
  return _clip(boxes / scale.astype(np.float32), height, width)


def _clip(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """[D, 4] (x1, y1, x2, y2) clamped to [0, W] × [0, H] (detectron2's `Boxes.clip`)."""
  return np.clip(boxes, 0, np.array([width, height, width, height], boxes.dtype))


def nonempty(boxes: np.ndarray) -> np.ndarray:
  """[D, 4] (x1, y1, x2, y2) → [D] bool: positive width and height (`Boxes.nonempty()`).

  detectron2 drops the other detections after clipping them to the original image.
  """
  return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _support(lo: np.ndarray, hi: np.ndarray, size: int, m: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """[D] box edges → ([D] first, [D] end) of the pixels that can get a non-zero weight:
  the box plus one mask cell each side, inside [0, size) (end ≤ first: none)."""
  margin = np.maximum(hi - lo, 0.0) / m + 1
  first = np.maximum(np.floor(lo - margin), 0).astype(np.intp)
  return first, np.maximum(np.minimum(np.ceil(hi + margin), size).astype(np.intp), first)


def _interpolation(lo: np.ndarray, hi: np.ndarray, first: np.ndarray, end: np.ndarray,
                   m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """[D] box edges and pixel ranges → the bilinear neighbours of every pixel of all D.

  Pixel p samples the mask at u = (p + 0.5 − lo) / (hi − lo) · m − 0.5, as
  `grid_sample(align_corners=False)` with zero padding: a neighbour outside [0, m) adds 0.
  The D boxes' pixels are concatenated (one array pass for all, not one per box).

  Returns:
    ([D + 1] offsets: box d's pixels are [offsets[d], offsets[d + 1]); [P] index of cell
    floor(u) in the mask padded with 2 zero cells each side, [P] its weight, [P] the
    weight of the next cell), float32 weights.
  """
  counts = end - first
  offsets = np.concatenate([[0], np.cumsum(counts)])
  pixels = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - first, counts)
  lo, extent = np.repeat(lo, counts), np.repeat(np.maximum(hi - lo, 1e-6), counts)
  u = (pixels.astype(np.float32) + 0.5 - lo) / extent * m - 0.5
  u0 = np.floor(u)
  frac = u - u0
  index = (np.clip(u0, -2, m) + 2).astype(np.intp)  # Past the padding: both cells zero.
  return offsets, index, (1 - frac).astype(np.float32), frac.astype(np.float32)


def paste_crops(masks: np.ndarray, boxes: np.ndarray, image_info, *,
                threshold: float | None = None) -> list[tuple[int, int, np.ndarray]]:
  """`paste_masks` within each box only: D crops of the original image.

  Args:
    masks, boxes, image_info, threshold: as `paste_masks`.

  Returns:
    Per detection (y0, x0, crop): crop [h, w] float32 probabilities (bool with
    `threshold`) of the pixels [y0, y0 + h) × [x0, x0 + w) (h or w 0 where the box
    misses the image); every pixel outside the crop is 0.
  """
  masks = np.asarray(masks, np.float32)
  boxes = np.asarray(boxes, np.float32)
  if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
    raise ValueError(f"masks must be [D, m, m], got {masks.shape}")
  if boxes.shape != (masks.shape[0], 4):
    raise ValueError(f"boxes must be [D, 4] with D = {masks.shape[0]}, got {boxes.shape}")
  if not np.isfinite(boxes).all():
    raise ValueError("boxes must be finite (drop non-finite detections first)")
  height, width, scale = _check_info(image_info)
  m = masks.shape[1]
  padded = np.pad(masks, ((0, 0), (2, 2), (2, 2)))
  crops = []
  x1, y1, x2, y2 = _clip(boxes.astype(np.float64) / scale, height, width).T
  y_first, y_end = _support(y1, y2, height, m)
  x_first, x_end = _support(x1, x2, width, m)
  y_at, iy, wy0, wy1 = _interpolation(y1, y2, y_first, y_end, m)
  x_at, ix, wx0, wx1 = _interpolation(x1, x2, x_first, x_end, m)
  for d in range(len(masks)):
    if y_end[d] == y_first[d] or x_end[d] == x_first[d]:
      crops.append((0, 0, np.zeros((0, 0), np.float32 if threshold is None else bool)))
      continue
    ys, xs = slice(y_at[d], y_at[d + 1]), slice(x_at[d], x_at[d + 1])
    # Two neighbours per axis: gathers, far cheaper than products with [P, m] weights.
    rows = (wy0[ys, None] * padded[d, iy[ys]]
            + wy1[ys, None] * padded[d, iy[ys] + 1])  # [h, m + 4]
    pasted = wx0[xs] * rows[:, ix[xs]] + wx1[xs] * rows[:, ix[xs] + 1]  # [h, w]
    crops.append((int(y_first[d]), int(x_first[d]),
                  pasted if threshold is None else pasted >= threshold))
  return crops


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_info, *,
                threshold: float | None = None) -> np.ndarray:
  """Pastes box-relative mask probabilities into the original image.

  Each mask is resized bilinearly onto its box (box / scale, clipped to the image first as
  detectron2's `detector_postprocess` clips the boxes it pastes into); pixels outside the
  box get 0. Matches detectron2's `paste_masks_in_image` (`grid_sample`,
  `align_corners=False`; torchvision's older integer-box paste differs by about a pixel at
  mask borders), computed per mask over the box's pixels only (`paste_crops`).

  Args:
    masks: [D, m, m] float probabilities.
    boxes: [D, 4] float (x1, y1, x2, y2) in padded-image pixels.
    image_info: [5] (orig_h, orig_w, scale, valid_h, valid_w).
    threshold: if given, the binary masks `probability >= threshold` are returned
      (thresholded inside each box: no full-image float array).

  Returns:
    [D, H, W] float32 probabilities in original-image pixels, or bool with `threshold`.
  """
  crops = paste_crops(masks, boxes, image_info, threshold=threshold)
  height, width, _ = _check_info(image_info)
  out = np.zeros((len(crops), height, width), np.float32 if threshold is None else bool)
  for d, (y0, x0, crop) in enumerate(crops):
    out[d, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
  return out


def crop_rle(y0: int, x0: int, crop: np.ndarray, height: int, width: int) -> np.ndarray:
  """A binary crop (`paste_crops`) → the uncompressed RLE counts of its H × W mask.

  Reads the crop's pixels only: the value changes along COCO's column-major order are
  those inside each column of the crop and at its top and bottom edges. The counts stay
  an int64 array, which pycocotools' `frPyObjects` takes as it takes a list (no list of
  Python ints made and converted back).
  """
  h, w = crop.shape
  edges = np.zeros((w, h + 2), bool)
  edges[:, 1:-1] = crop.T
  col, row = np.nonzero(edges[:, 1:] != edges[:, :-1])  # Column-major order, ascending.
  positions = (x0 + col) * height + (y0 + row)
  if y0 + h == height:
    # A change at the bottom edge lies at the next column's first pixel: a run going on
    # there (the crop spans the whole height) is one run, its position seen twice; past
    # the last column it lies past the image.
    twice = np.flatnonzero(positions[1:] == positions[:-1])
    positions = np.delete(positions, np.concatenate([twice, twice + 1]))
    positions = positions[positions < height * width]
  return np.diff(positions, prepend=0, append=height * width)


# ------------------------------------------------------------------ on the device
#
# The same paste, jitted with static shapes: masks of an image are pasted into an F × F
# frame of original pixels (F static, at least the largest original side: `frame_size`),
# where pixels past the image (y ≥ H or x ≥ W) are off. Pasting at original resolution,
# not in the padded S × S model frame, makes the result the host's exactly (up to float
# rounding at the threshold) and the frame no bigger than the images. The binary masks
# never leave the device: each becomes the positions where it changes value along
# COCO's column-major order (`transitions`), a few thousand numbers instead of H·W,
# and the host turns those into RLE counts without touching a pixel.


# RLE transitions kept per mask, per pixel of the frame side: 4 is two runs per column
# across the whole image; a mask with more is pasted again on the host.
RLE_CAPACITY_PER_SIDE = 4


def frame_size(heights, widths, multiple: int = 32) -> int:
  """The static side F of the pasting frame: the largest original side, rounded up."""
  side = max(int(np.max(heights)), int(np.max(widths)))
  return -(-side // multiple) * multiple


def _device_weights(lo, hi, size: int, m: int):
  """Traced box edges [D] → [D, size, m] weights of the m cells: `_interpolation`, all pixels.

  Pixels outside the box's support get all-zero rows (their u lies below −1 or above m).
  """
  pixels = jnp.arange(size, dtype=jnp.float32)[None, :]
  u = (pixels + 0.5 - lo[:, None]) / jnp.maximum(hi - lo, 1e-6)[:, None] * m - 0.5
  u0 = jnp.floor(u)[..., None]
  frac = (u[..., None] - u0)
  cells = jnp.arange(m, dtype=jnp.float32)
  return (cells == u0) * (1 - frac) + (cells == u0 + 1) * frac


def boxes_to_original_device(boxes, image_info):
  """`boxes_to_original` traced: [D, 4] padded-image pixels, [5] info → [D, 4] original."""
  height, width = jnp.round(image_info[0]), jnp.round(image_info[1])
  return jnp.clip(boxes / _axis_scale(image_info), 0.0, jnp.stack([width, height, width, height]))


def paste_image_device(masks, boxes, image_info, valid, *, frame: int, threshold: float):
  """`paste_masks(..., threshold=threshold)` of one image on the device, transposed.

  Args:
    masks: [D, m, m] float probabilities.
    boxes: [D, 4] float (x1, y1, x2, y2) in padded-image pixels, finite where `valid`.
    image_info: [5] (orig_h, orig_w, scale, valid_h, valid_w).
    valid: [D] bool; invalid detections paste nothing.
    frame: F, static, ≥ the original height and width.
    threshold: probability at which a pixel is on.

  Returns:
    [D, F, F] bool indexed [d, x, y] (column-major, COCO's RLE order), off outside the
    H × W image.
  """
  m = masks.shape[-1]
  boxes = boxes_to_original_device(jnp.where(valid[:, None], boxes, 0.0), image_info)
  wx = _device_weights(boxes[:, 0], boxes[:, 2], frame, m)  # [D, F(x), m]
  wy = _device_weights(boxes[:, 1], boxes[:, 3], frame, m)  # [D, F(y), m]
  # HIGHEST: a TF32/bf16 matmul would move pixels across the threshold.
  pasted = jnp.einsum("dxn,dmn,dym->dxy", wx, masks.astype(jnp.float32), wy,
                      precision=jax.lax.Precision.HIGHEST)
  pixels = jnp.arange(frame)
  inside = ((pixels[:, None] < jnp.round(image_info[1]))
            & (pixels[None, :] < jnp.round(image_info[0])))
  return (pasted >= threshold) & inside[None] & valid[:, None, None]


def paint_device(on, classes, scores, valid, *, fill: int):
  """`stuff_metrics.paint_instances` on the device: the highest score wins each pixel.

  Args:
    on: [D, F, F] bool (any layout, e.g. `paste_image_device`'s [d, x, y]).
    classes: [D] int training ids.
    scores: [D] float.
    valid: [D] bool; invalid detections are not painted.
    fill: label of pixels no mask covers.

  Returns:
    [F, F] int32 label map in the layout of `on`.
  """
  # Rank in ascending stable score order (of equal scores the later detection wins), as
  # the host's painting order; the invalid detections' ranks are never read.
  order = jnp.argsort(jnp.where(valid, scores, -jnp.inf), stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  on = on & valid[:, None, None]
  top = jnp.max(jnp.where(on, rank[:, None, None], -1), axis=0)
  return jnp.where(top >= 0, classes[order][jnp.maximum(top, 0)], fill).astype(jnp.int32)


def transitions_device(on, height, width, *, capacity: int):
  """Where each mask changes value in COCO's column-major order of its H × W image.

  Args:
    on: [D, F, F] bool indexed [d, x, y], off outside the image (`paste_image_device`).
    height, width: H and W, traced.
    capacity: C, static: positions kept per mask.

  Returns:
    (positions [D, C] int32 flat indices x·H + y where the value differs from the previous
    pixel's (before pixel 0: off), ascending, padded with −1; count [D] int32, the true
    number, larger than C where the positions were truncated).
  """
  d, frame = on.shape[0], on.shape[1]
  height, width = jnp.asarray(height, jnp.int32), jnp.asarray(width, jnp.int32)
  # The pixel before (x, 0) is (x − 1, H − 1): the last row of the previous column.
  last = jnp.take(on, jnp.maximum(height - 1, 0), axis=2)  # [D, F(x)]
  first_prev = jnp.pad(last, ((0, 0), (1, 0)))[:, :frame]
  prev = jnp.concatenate([first_prev[:, :, None], on[:, :, :-1]], axis=2)
  rows = jnp.arange(frame)
  change = ((on != prev) & (rows[None, :, None] < width)
            & (rows[None, None, :] < height)).reshape(d, -1)
  # The k-th change is where the running count first reaches k: a binary search per k,
  # cheaper than compacting the F² flags (`nonzero`) by a factor of about 2.5 on a CPU.
  seen = jnp.cumsum(change, axis=1, dtype=jnp.int32)
  count = seen[:, -1]
  flat = jax.vmap(lambda s: jnp.searchsorted(s, jnp.arange(1, capacity + 1, dtype=jnp.int32))
                  )(seen)
  positions = jnp.where(flat < frame * frame, (flat // frame) * height + flat % frame, -1)
  return positions.astype(jnp.int32), count


def paste_batch_device(detections, image_info, *, frame: int, capacity: int,
                       threshold: float, fill: int):
  """Device pasting of a batch: the label maps and the masks' RLE transitions.

  Images are pasted one after another (`lax.map`): the device holds one image's
  [D, F, F] float pasting at a time (D = 100, F = 640: 160 MB).

  Args:
    detections: `boxes` [B, D, 4] padded-image pixels, `scores` [B, D], `classes` [B, D],
      `masks` [B, D, m, m] probabilities, `valid` [B, D].
    image_info: [B, 5] (orig_h, orig_w, scale, valid_h, valid_w).
    frame, capacity, threshold: as `paste_image_device` and `transitions_device`.
    fill: label of pixels no mask covers.

  Returns:
    `label` [B, F, F] int16 indexed [x, y] (the crop [:W, :H], transposed, is the image's
    label map),
    `rle_positions` [B, D, C] int32 and `rle_count` [B, D] int32 (`transitions_device`),
    `pasted_valid` [B, D] bool: the detections pasted (valid, finite box and score, the
    box non-empty in the original image: `nonempty`).
  """

  def one(args):
    masks, boxes, scores, classes, valid, info = args
    original = boxes_to_original_device(boxes, info)
    valid = (valid & jnp.isfinite(boxes).all(-1) & jnp.isfinite(scores)
             & (original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1]))
    on = paste_image_device(masks, boxes, info, valid, frame=frame, threshold=threshold)
    label = paint_device(on, classes, scores, valid, fill=fill)
    positions, count = transitions_device(on, jnp.round(info[0]), jnp.round(info[1]),
                                          capacity=capacity)
    return label.astype(jnp.int16), positions, count, valid  # int16: half the transfer.

  label, positions, count, valid = jax.lax.map(one, (
      detections["masks"], detections["boxes"], detections["scores"],
      detections["classes"], detections["valid"].astype(bool),
      image_info.astype(jnp.float32)))
  return dict(label=label, rle_positions=positions, rle_count=count, pasted_valid=valid)


def transitions_to_rle(positions: np.ndarray, count: np.ndarray, height: int, width: int
                       ) -> list[list[int]]:
  """`transitions_device` output of N masks (each count ≤ C) → N uncompressed RLE counts.

  Args:
    positions: [N, C] int flat change positions, ascending.
    count: [N] int, the number of positions of each mask.
    height, width: H and W of the image.

  Returns:
    N lists of run lengths (zeros first), each summing to H·W.
  """
  positions, count = np.asarray(positions, np.int64), np.asarray(count)
  if not len(count):
    return []
  keep = int(count.max())
  edges = np.full((len(count), keep + 2), height * width, np.int64)
  edges[:, 0] = 0
  inside = np.arange(keep)[None] < count[:, None]
  edges[:, 1:-1] = np.where(inside, positions[:, :keep], height * width)
  runs = np.diff(edges, axis=1).tolist()  # Past a mask's count + 1 runs: zeros.
  return [r[:n + 1] for r, n in zip(runs, count.tolist())]
