"""Matching predictions to ground truth and fixed-count balanced sampling.

M ground-truth boxes (padded, flagged by `valid_gt`), N predictions (anchors or proposals),
R = `num_samples`. Labels: 1 foreground, 0 background, -1 ignored.
"""

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import boxes as box_ops

FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1
GT_BLOCK = 8  # Ground truths matched at once: [8, N] qualities.


def match(quality: jnp.ndarray, *, high_threshold: float, low_threshold: float,
          allow_low_quality_matches: bool,
          valid_gt: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Assigns each prediction its best ground truth, as torchvision's `Matcher`.

  quality < low_threshold is background, low <= quality < high ignored, >= high foreground.
  With `allow_low_quality_matches`, every prediction that attains some valid ground truth's
  highest quality (ties included, even a highest quality of 0) becomes foreground with its
  own best ground truth, as torchvision does.

  Args:
    quality: `[M, N]` float32, e.g. `box_iou(gt_boxes, anchors)`.
    high_threshold, low_threshold: the thresholds above.
    allow_low_quality_matches: keep the best predictions of every ground truth.
    valid_gt: optional `[M]` bool; padded ground truth is never matched. Without any valid
      ground truth every prediction is background.

  Returns:
    `matched_idx [N]` int32 in `[0, M)` (the best valid ground truth; 0 where none) and
    `labels [N]` int32 in {1, 0, -1}.
  """
  quality = jnp.asarray(quality)
  if quality.ndim != 2:
    raise ValueError(f"quality must be [M, N], got {quality.shape}")
  quality = quality.astype(jnp.float32)
  return _match(lambda rows: quality[rows], *quality.shape, high_threshold, low_threshold,
                allow_low_quality_matches, valid_gt)


def match_boxes(gt_boxes: jnp.ndarray, boxes: jnp.ndarray, *, high_threshold: float,
                low_threshold: float, allow_low_quality_matches: bool,
                valid_gt: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`match(box_iou(gt_boxes, boxes), ...)` without the `[M, N]` IoU matrix.

  The IoU rows of `GT_BLOCK` ground truths at a time are computed when they are needed
  (twice: once for their best qualities, once to match), so memory is O(GT_BLOCK N) for
  any M: 262k anchors x 100 GT of a 1024² image would be a 105 MB matrix per image.

  Args:
    gt_boxes: `[M, 4]`; boxes: `[N, 4]` float32 (x1, y1, x2, y2).
    high_threshold, low_threshold, allow_low_quality_matches, valid_gt: as in `match`.

  Returns:
    `matched_idx [N]` int32 and `labels [N]` int32, equal to `match`'s.
  """
  gt_boxes, boxes = jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(boxes, jnp.float32)
  if gt_boxes.ndim != 2 or boxes.ndim != 2:
    raise ValueError(f"gt_boxes and boxes must be [M, 4] and [N, 4], got {gt_boxes.shape}, "
                     f"{boxes.shape}")
  rows = lambda rows: box_ops.box_iou(gt_boxes[rows], boxes)
  return _match(rows, gt_boxes.shape[0], boxes.shape[0], high_threshold, low_threshold,
                allow_low_quality_matches, valid_gt)


def _match(rows, m: int, n: int, high_threshold, low_threshold, allow_low_quality_matches,
           valid_gt):
  """`match` on qualities given by blocks of rows: `rows(idx [G])` -> `[G, N]` float32.

  Blocks of `GT_BLOCK` ground truths (the last one padded, as invalid); a loop over them,
  so XLA never reduces over a long leading axis (slow on CPU).
  """
  if low_threshold > high_threshold:
    raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
  valid_gt = jnp.ones((m,), bool) if valid_gt is None else jnp.asarray(valid_gt)
  if valid_gt.shape != (m,):
    raise ValueError(f"valid_gt must be [{m}], got {valid_gt.shape}")
  if m == 0:
    return jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32)
  g = min(GT_BLOCK, m)
  blocks = -(-m // g)
  gts = jnp.arange(blocks * g, dtype=jnp.int32).reshape(blocks, g)
  ok = jnp.pad(valid_gt, (0, blocks * g - m)).reshape(blocks, g)
  quality = lambda idx, ok: jnp.where(ok[:, None], rows(jnp.minimum(idx, m - 1)), -jnp.inf)
  best_per_gt = jax.lax.map(lambda x: jnp.max(quality(*x), axis=1), (gts, ok))

  # Strict `>` across blocks and argmax (the first maximum) inside one: the first best GT.
  def step(carry, xs):
    best, matched_idx, attains = carry
    idx, ok, q_best = xs
    q = quality(idx, ok)
    block_best, block_idx = jnp.max(q, axis=0), idx[jnp.argmax(q, axis=0)]
    better = block_best > best
    best = jnp.where(better, block_best, best)
    matched_idx = jnp.where(better, block_idx, matched_idx)
    attains |= jnp.any(ok[:, None] & (q == q_best[:, None]), axis=0)
    return (best, matched_idx, attains), None

  init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool))
  (best, matched_idx, attains), _ = jax.lax.scan(step, init, (gts, ok, best_per_gt))
  labels = jnp.where(best >= high_threshold, FOREGROUND,
                     jnp.where(best >= low_threshold, IGNORE, BACKGROUND))
  if allow_low_quality_matches:
    labels = jnp.where(attains, FOREGROUND, labels)
  labels = jnp.where(jnp.any(valid_gt), labels, BACKGROUND).astype(jnp.int32)
  return matched_idx, labels


def sample_balanced(labels: jnp.ndarray, valid: jnp.ndarray, *, num_samples: int,
                    positive_fraction: float,
                    rng: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Draws R predictions uniformly at random, at most `int(R * positive_fraction)` positive.

  As torchvision's `BalancedPositiveNegativeSampler`, with static shapes: positives
  (`labels >= 1`) first, negatives (`labels == 0`) fill the remaining slots, and slots
  left over when there are too few negatives are flagged invalid.

  Args:
    labels: `[N]` int, >= 1 positive, 0 negative, -1 ignored.
    valid: `[N]` bool; invalid predictions are never drawn.
    num_samples: R.
    positive_fraction: the positive share of R (an upper bound).
    rng: PRNG key.

  Returns:
    `indices [R]` int32 (distinct among valid slots; positives first),
    `is_positive [R]` bool and `valid [R]` bool.
  """
  labels, valid = jnp.asarray(labels), jnp.asarray(valid)
  if labels.ndim != 1 or valid.shape != labels.shape:
    raise ValueError(f"labels and valid must both be [N], got {labels.shape}, {valid.shape}")
  n = labels.shape[0]
  if not 0 < num_samples <= n:
    raise ValueError(f"num_samples must be in [1, {n}] (N predictions), got {num_samples}")
  num_pos = int(num_samples * positive_fraction)
  positive = valid & (labels >= 1)
  negative = valid & (labels == 0)
  pos_key, neg_key = jax.random.split(rng)
  # Priorities: chosen positives 3, negatives 1 + u, the rest 0 + u with u in [0, 1).
  chosen = jnp.zeros((n,), bool)
  if num_pos > 0:
    u = jax.random.uniform(pos_key, (n,))
    _, pos_idx = jax.lax.top_k(jnp.where(positive, u, -1.0), num_pos)
    chosen = chosen.at[pos_idx].set(positive[pos_idx])
  u = jax.random.uniform(neg_key, (n,))
  priority = jnp.where(chosen, 3.0, jnp.where(negative, 1.0 + u, u))
  values, indices = jax.lax.top_k(priority, num_samples)
  return indices.astype(jnp.int32), values >= 3.0, values >= 1.0


def sample_mask(labels: jnp.ndarray, valid: jnp.ndarray, *, num_samples: int,
                positive_fraction: float, rng: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`sample_balanced` as per-prediction masks: `labels, valid [N]` -> `positive, negative [N]`.

  Both bool; at most R entries are True in total. Suits losses summed over all anchors.
  """
  indices, is_positive, ok = sample_balanced(labels, valid, num_samples=num_samples,
                                             positive_fraction=positive_fraction, rng=rng)
  n = labels.shape[0]
  positive = jnp.zeros((n,), bool).at[indices].max(ok & is_positive)
  negative = jnp.zeros((n,), bool).at[indices].max(ok & ~is_positive)
  return positive, negative
