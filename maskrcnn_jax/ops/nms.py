"""Greedy non-maximum suppression with static output shapes.

N candidate boxes `[N, 4]` float32 `(x1, y1, x2, y2)`, K = `max_outputs`. The kept boxes
come back as `K` indices into the input plus a `valid` mask, in descending score order
(ties: lower index first, as `torch.sort` orders them), the same selection as
`torchvision.ops.nms` (IoU strictly above the threshold suppresses). The greedy loop
visits only kept boxes: each step takes the best remaining box and suppresses its row of
IoUs, so it runs at most K steps of O(N) work and O(N) memory.
Batch over images with `jax.vmap`, e.g. `jax.vmap(functools.partial(nms, iou_threshold=0.7,
max_outputs=1000))(boxes, scores, valid=valid)`.
"""

import jax
import jax.numpy as jnp


def _check(boxes, scores, groups, valid):
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be [N, 4], got {boxes.shape} (use jax.vmap for batches)")
  n = boxes.shape[0]
  for name, x in (("scores", scores), ("groups", groups), ("valid", valid)):
    if x is not None and x.shape != (n,):
      raise ValueError(f"{name} must be [{n}] to match boxes {boxes.shape}, got {x.shape}")


def _row_iou(box, boxes):
  """IoU of one box `[4]` against `[N, 4]`, torchvision's arithmetic, 0 for empty unions."""
  lt = jnp.maximum(box[:2], boxes[:, :2])
  rb = jnp.minimum(box[2:], boxes[:, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[:, 0] * wh[:, 1]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  union = (box[2] - box[0]) * (box[3] - box[1]) + area - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _greedy(boxes, scores, groups, valid, iou_threshold, max_outputs):
  n = boxes.shape[0]
  valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid)
  if max_outputs <= 0:
    raise ValueError(f"max_outputs must be positive, got {max_outputs}")
  # Valid boxes first, then by descending score; stable, so ties keep input order.
  order = jnp.lexsort((-jnp.asarray(scores, jnp.float32), ~valid)).astype(jnp.int32)
  sboxes = jnp.asarray(boxes, jnp.float32)[order]
  sgroups = None if groups is None else jnp.asarray(groups)[order]
  alive = valid[order]

  def body(state):
    alive, i, count, kept = state
    suppress = _row_iou(sboxes[i], sboxes) > iou_threshold
    if sgroups is not None:
      suppress &= sgroups == sgroups[i]
    alive = alive & ~suppress
    alive = alive.at[i].set(False)
    kept = kept.at[count].set(order[i])
    nxt = jnp.argmax(alive).astype(jnp.int32)
    return alive, nxt, count + 1, kept

  def cond(state):
    alive, i, count, _ = state
    return (count < max_outputs) & alive[i]

  init = (alive, jnp.argmax(alive).astype(jnp.int32), jnp.int32(0),
          jnp.zeros((max_outputs,), jnp.int32))
  _, _, count, kept = jax.lax.while_loop(cond, body, init)
  return kept, jnp.arange(max_outputs) < count


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
  return _greedy(boxes, scores, None, valid, iou_threshold, max_outputs)


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
  return _greedy(boxes, scores, groups, valid, iou_threshold, max_outputs)
