"""Matcher and balanced sampler: hand-made cases, sampling statistics, parity with torchvision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import sampling

REF = "tests/ops/torchvision_ops_ref.py"  # torchvision in its own process (tests/conftest.py).


# 3 GT (the last one padded) x 6 predictions.
QUALITY = np.array([[0.9, 0.5, 0.1, 0.0, 0.2, 0.1],
                    [0.2, 0.6, 0.65, 0.1, 0.25, 0.1],
                    [0.0, 0.0, 0.0, 0.95, 0.0, 0.0]], np.float32)
VALID_GT = np.array([True, True, False])


def run_match(quality, valid_gt=None, allow_low_quality_matches=True, high=0.7, low=0.3):
  fn = functools.partial(sampling.match, high_threshold=high, low_threshold=low,
                         allow_low_quality_matches=allow_low_quality_matches)
  idx, labels = jax.jit(fn)(quality, valid_gt=valid_gt)
  assert idx.dtype == labels.dtype == jnp.int32
  return np.asarray(idx).tolist(), np.asarray(labels).tolist()


def test_match_hand_made():
  # 0: 0.9 fg. 1, 2: 0.6 and 0.65 between the thresholds, ignored. 3: the padded GT's 0.95
  # does not count, 0.1 is background. 5: tied 0.1, the first GT.
  idx, labels = run_match(QUALITY, VALID_GT, allow_low_quality_matches=False)
  assert idx == [0, 1, 1, 1, 1, 0]
  assert labels == [1, -1, -1, 0, 0, 0]
  # GT 1's best prediction (2, at 0.65) becomes foreground.
  assert run_match(QUALITY, VALID_GT)[1] == [1, -1, 1, 0, 0, 0]


def test_match_low_quality_ties_and_no_gt():
  idx, labels = run_match(np.array([[0.4, 0.4, 0.1]], np.float32))
  assert idx == [0, 0, 0] and labels == [1, 1, 0]
  assert run_match(QUALITY, np.zeros(3, bool))[1] == [0] * 6
  assert run_match(QUALITY[:0])[1] == [0] * 6
  # Equal thresholds (RoI heads): nothing is ignored.
  assert run_match(QUALITY, VALID_GT, False, 0.5, 0.5)[1] == [1, 1, 1, 0, 0, 0]


def labelled(n_pos, n_neg, n_ignore, n_invalid, rng):
  labels = np.array([1] * n_pos + [0] * n_neg + [-1] * n_ignore + [1, 0] * (n_invalid // 2))
  valid = np.arange(labels.size) < n_pos + n_neg + n_ignore
  perm = rng.permutation(labels.size)
  return labels[perm].astype(np.int32), valid[perm]


def run_sample(labels, valid, key, num_samples=64, positive_fraction=0.25):
  fn = functools.partial(sampling.sample_balanced, num_samples=num_samples,
                         positive_fraction=positive_fraction)
  idx, pos, ok = jax.jit(fn)(labels, valid, rng=key)
  assert idx.shape == pos.shape == ok.shape == (num_samples,) and idx.dtype == jnp.int32
  return np.asarray(idx), np.asarray(pos), np.asarray(ok)


@pytest.mark.parametrize("n_pos, n_neg, want_pos, want_neg", [
    (40, 500, 16, 48),  # Positives capped at 64 * 0.25.
    (3, 500, 3, 61),    # Few positives: negatives fill up.
    (5, 10, 5, 10),     # Too few of both: the rest of the slots invalid.
    (0, 0, 0, 0),
])
def test_sample_counts(n_pos, n_neg, want_pos, want_neg):
  rng = np.random.default_rng(0)
  labels, valid = labelled(n_pos, n_neg, 30, 40, rng)
  idx, pos, ok = run_sample(labels, valid, jax.random.key(0))
  assert (ok & pos).sum() == want_pos and (ok & ~pos).sum() == want_neg
  assert len(set(idx[ok].tolist())) == ok.sum()
  assert np.all(valid[idx[ok]])
  np.testing.assert_array_equal(labels[idx[ok & pos]], 1)
  np.testing.assert_array_equal(labels[idx[ok & ~pos]], 0)
  # Positives first, then negatives, then invalid slots.
  rank = np.where(ok, np.where(pos, 0, 1), 2)
  assert np.all(np.diff(rank) >= 0)
  pos_mask, neg_mask = jax.jit(functools.partial(
      sampling.sample_mask, num_samples=64, positive_fraction=0.25))(labels, valid,
                                                                     rng=jax.random.key(0))
  assert np.flatnonzero(pos_mask).tolist() == sorted(idx[ok & pos].tolist())
  assert np.flatnonzero(neg_mask).tolist() == sorted(idx[ok & ~pos].tolist())


def test_sample_is_uniform_and_keyed():
  labels, valid = labelled(40, 500, 0, 0, np.random.default_rng(1))
  keys = jax.random.split(jax.random.key(3), 400)
  fn = lambda key: sampling.sample_mask(labels, valid, num_samples=64, positive_fraction=0.25,
                                        rng=key)
  pos, neg = jax.jit(jax.vmap(fn))(keys)
  # Each of 40 positives is drawn with probability 16 / 40, each negative with 48 / 500.
  freq_pos = np.asarray(pos).mean(0)[labels == 1]
  freq_neg = np.asarray(neg).mean(0)[labels == 0]
  np.testing.assert_allclose(freq_pos, 0.4, atol=0.1)
  np.testing.assert_allclose(freq_neg.mean(), 48 / 500, rtol=0.01)
  assert freq_neg.min() > 0.02 and freq_neg.max() < 0.2
  assert not np.array_equal(pos[0], pos[1])
  a = run_sample(labels, valid, jax.random.key(7))
  b = run_sample(labels, valid, jax.random.key(7))
  np.testing.assert_array_equal(a[0], b[0])


def test_bad_input_raises():
  with pytest.raises(ValueError, match="num_samples"):
    sampling.sample_balanced(np.zeros(8, np.int32), np.ones(8, bool), num_samples=9,
                             positive_fraction=0.5, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"quality must be \[M, N\]"):
    sampling.match(np.zeros(4), high_threshold=0.7, low_threshold=0.3,
                   allow_low_quality_matches=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
def test_match_matches_torchvision(seed, allow_low_quality_matches, torch_reference):
  rng = np.random.default_rng(seed)
  def boxes(n):
    xy = rng.uniform(0, 200, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2))], -1).astype(np.float32)
  gt, anchors = boxes(7), boxes(500)
  iou = np.array(box_ops.box_iou(gt, anchors))
  ref = torch_reference(REF, inputs={"iou": iou[:5]}, op="match", high=0.7, low=0.3,
                        allow_low_quality_matches=allow_low_quality_matches)["matches"]
  # Rows 5, 6 act as padding below.
  idx, labels = run_match(iou, np.arange(7) < 5, allow_low_quality_matches)
  np.testing.assert_array_equal(labels, np.where(ref >= 0, 1, np.where(ref == -1, 0, -1)))
  np.testing.assert_array_equal(np.asarray(idx)[ref >= 0], ref[ref >= 0])


@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
def test_match_boxes_equals_match_of_the_iou_matrix(allow_low_quality_matches):
  rng = np.random.default_rng(3)
  def boxes(b, n):
    xy = rng.uniform(0, 200, (b, n, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 80, (b, n, 2))], -1).astype(np.float32)
  gt, anchors = boxes(3, 9), boxes(1, 700)[0]
  gt[:, 1] = gt[:, 0]  # A duplicate GT: equal best qualities.
  anchors[:20] = anchors[20:40]  # Duplicate anchors: ties for each GT's best.
  valid = rng.uniform(size=(3, 9)) > 0.3
  valid[2] = False  # An image without GT.
  kw = dict(high_threshold=0.7, low_threshold=0.3,
            allow_low_quality_matches=allow_low_quality_matches)
  by_rows = jax.jit(jax.vmap(lambda g, v: sampling.match_boxes(g, anchors, valid_gt=v, **kw)))
  by_matrix = jax.jit(jax.vmap(lambda g, v: sampling.match(box_ops.box_iou(g, anchors),
                                                           valid_gt=v, **kw)))
  for a, b in zip(by_rows(gt, valid), by_matrix(gt, valid)):
    np.testing.assert_array_equal(a, b)
