"""Greedy non-maximum suppression with static output shapes.

N candidate boxes `[N, 4]` float32 `(x1, y1, x2, y2)`, K = `max_outputs`. The kept boxes
come back as `K` indices into the input plus a `valid` mask, in descending score order
(ties: lower index first, as `torch.sort` orders them), the same selection as
`torchvision.ops.nms` (IoU strictly above the threshold suppresses).

Tiled, as the MLPerf TPU SSD kernel: the score-sorted boxes are cut into tiles of `TILE`;
a tile first drops boxes suppressed by the boxes kept so far (one `[TILE, K]` IoU block
against a buffer of the kept boxes), then settles its own boxes by iterating "kept unless
an earlier kept box of the tile suppresses it" to its fixed point, which is exactly the
greedy result. Tiles stop once K boxes are kept or no valid candidate is left. Memory
O(TILE * (TILE + K)); no loop over single boxes. Callers with many candidates cap them
by score first (`lax.top_k`), as the detection path does (`RoIHeads.topk_candidates`).
Batch over images with `jax.vmap`, e.g. `jax.vmap(functools.partial(nms, iou_threshold=0.7,
max_outputs=1000))(boxes, scores, valid=valid)`.
"""

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import boxes as box_ops

TILE = 256  # Fastest of 64..512 for 2000 boxes on CPU.


def _check(boxes, scores, groups, valid):
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be [N, 4], got {boxes.shape} (use jax.vmap for batches)")
  n = boxes.shape[0]
  for name, x in (("scores", scores), ("groups", groups), ("valid", valid)):
    if x is not None and x.shape != (n,):
      raise ValueError(f"{name} must be [{n}] to match boxes {boxes.shape}, got {x.shape}")


def _suppressors(a, b, iou_threshold, group_a, group_b):
  """`[Ta, Tb]` bool: box a[i] and b[j] overlap above the threshold (and share a group)."""
  over = box_ops.box_iou(a, b) > iou_threshold
  if group_a is not None:
    over &= group_a[:, None] == group_b[None, :]
  return over


def _greedy(boxes, scores, groups, valid, iou_threshold, max_outputs, tile):
  n = boxes.shape[0]
  if max_outputs <= 0:
    raise ValueError(f"max_outputs must be positive, got {max_outputs}")
  valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid)
  # Descending score, ties in input order (top_k puts the lower index first): one sort key.
  key = jnp.where(valid, jnp.asarray(scores, jnp.float32), -jnp.inf)
  order = jax.lax.top_k(key, n)[1].astype(jnp.int32)
  tile = min(tile, n)
  padded = -(-n // tile) * tile
  pad = lambda x: jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))
  sboxes = pad(jnp.asarray(boxes, jnp.float32)[order])
  sgroups = None if groups is None else pad(jnp.asarray(groups)[order])
  alive = pad(valid[order])
  last = jnp.max(jnp.where(alive, jnp.arange(padded), -1))  # No valid candidate past this.
  earlier = jnp.arange(tile)[:, None] > jnp.arange(tile)[None, :]  # [i, j]: j before i
  slots = jnp.arange(max_outputs)

  def tile_body(state):
    t, count, kept_boxes, kept_groups, keep = state
    start = t * tile
    tboxes = jax.lax.dynamic_slice_in_dim(sboxes, start, tile)
    tgroups = None if sgroups is None else jax.lax.dynamic_slice_in_dim(sgroups, start, tile)
    # Suppressed by the boxes kept in earlier tiles (at most K of them, so [TILE, K] IoUs).
    cross = _suppressors(tboxes, kept_boxes, iou_threshold, tgroups, kept_groups)
    candidate = (jax.lax.dynamic_slice_in_dim(alive, start, tile)
                 & ~jnp.any(cross & (slots < count), axis=1))
    # Inside the tile: greedy NMS is the fixed point of "kept unless an earlier kept box
    # suppresses it"; iterating from all candidates fixes one more box per round at least.
    inner = _suppressors(tboxes, tboxes, iou_threshold, tgroups, tgroups) & earlier

    def settle(state):
      kept, _ = state
      new = candidate & ~jnp.any(inner & kept[None, :], axis=1)
      return new, jnp.any(new != kept)

    kept, _ = jax.lax.while_loop(lambda s: s[1], settle, (candidate, jnp.bool_(True)))
    dest = jnp.where(kept, count + jnp.cumsum(kept) - 1, max_outputs)  # Past K: dropped.
    kept_boxes = kept_boxes.at[dest].set(tboxes, mode="drop")
    if kept_groups is not None:
      kept_groups = kept_groups.at[dest].set(tgroups, mode="drop")
    keep = jax.lax.dynamic_update_slice_in_dim(keep, kept, start, 0)
    return t + 1, count + jnp.sum(kept, dtype=jnp.int32), kept_boxes, kept_groups, keep

  def more(state):
    t, count = state[:2]
    return (t * tile <= last) & (count < max_outputs)

  init = (jnp.int32(0), jnp.int32(0), jnp.zeros((max_outputs, 4), jnp.float32),
          None if sgroups is None else jnp.zeros((max_outputs,), sgroups.dtype),
          jnp.zeros((padded,), bool))
  _, count, _, _, keep = jax.lax.while_loop(more, tile_body, init)
  (kept_slots,) = jnp.nonzero(keep, size=max_outputs, fill_value=0)
  ok = slots < count
  return jnp.where(ok, order[jnp.minimum(kept_slots, n - 1)], 0), ok


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, *, iou_threshold: float, max_outputs: int,
        valid: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS of one image's boxes.

  Args:
    boxes: `[N, 4]` float32.
    scores: `[N]` float; need not be sorted.
    iou_threshold: a box whose IoU with a kept box exceeds this is suppressed.
    max_outputs: K, the static number of output slots.
    valid: optional `[N]` bool; invalid boxes are never kept and suppress nothing.

  Returns:
    `indices [K]` int32 into `boxes` (0 in unused slots) and `valid [K]` bool; the valid
    prefix equals `torchvision.ops.nms(boxes, scores, iou_threshold)[:K]`.
  """
  _check(boxes, scores, None, valid)
  return _greedy(boxes, scores, None, valid, iou_threshold, max_outputs, TILE)


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, groups: jnp.ndarray, *,
                iou_threshold: float, max_outputs: int,
                valid: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """NMS within groups (classes or levels): boxes of different groups never suppress each other.

  Args:
    boxes: `[N, 4]` float32.
    scores: `[N]` float.
    groups: `[N]` int group ids.
    iou_threshold, max_outputs, valid: as in `nms`.

  Returns:
    `indices [K]` int32 and `valid [K]` bool, all groups merged in descending score order,
    the selection of `torchvision.ops.batched_nms(boxes, scores, groups, iou_threshold)[:K]`.
  """
  _check(boxes, scores, groups, valid)
  return _greedy(boxes, scores, groups, valid, iou_threshold, max_outputs, TILE)
