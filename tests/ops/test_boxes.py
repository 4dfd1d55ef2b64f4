"""Box geometry and coding: hand-computed values, round trips, parity with torchvision."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import boxes as box_ops

REF = "tests/ops/torchvision_ops_ref.py"  # torchvision in its own process (tests/conftest.py).


WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def test_area_and_iou():
  a = np.array([[0, 0, 10, 10], [2, 2, 2, 2]], np.float32)
  b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [2, 2, 2, 2], [20, 20, 30, 30]], np.float32)
  np.testing.assert_allclose(box_ops.box_area(a), [100, 0])
  iou = jax.jit(box_ops.box_iou)(a, b)
  # 25 / (100 + 100 - 25); identical boxes 1; a zero-area pair has no union: 0, not NaN.
  np.testing.assert_allclose(iou, [[1 / 7, 1, 0, 0], [0, 0, 0, 0]], rtol=1e-6)
  with pytest.raises(ValueError, match=r"a must be \[N, 4\]"):
    box_ops.box_iou(a[None], b)


def test_clip_with_traced_size():
  boxes = np.array([[-5, 3, 50, 70], [10, -1, 20, 30]], np.float32)
  clip = jax.jit(box_ops.clip_boxes)
  np.testing.assert_array_equal(clip(boxes, jnp.float32(60), jnp.float32(40)),
                                [[0, 3, 40, 60], [10, 0, 20, 30]])


def test_small_box_mask():
  boxes = np.array([[0, 0, 5, 5], [0, 0, 0.5, 5], [0, 0, 5, 0.5], [1, 1, 2, 2]], np.float32)
  np.testing.assert_array_equal(box_ops.small_box_mask(boxes, 1.0), [False, True, True, False])


def test_encode_hand_computed():
  proposal = np.array([0, 0, 10, 10], np.float32)  # centre (5, 5), 10 x 10
  target = np.array([1, 2, 11, 14], np.float32)    # centre (6, 8), 10 x 12
  deltas = jax.jit(functools.partial(box_ops.encode, weights=WEIGHTS))(target, proposal)
  np.testing.assert_allclose(deltas, [10 * 1 / 10, 10 * 3 / 10, 0, 5 * math.log(1.2)], rtol=1e-6)


def test_round_trip_and_clamp():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 100, (3, 50, 2))
  proposals = np.concatenate([xy, xy + rng.uniform(1, 80, (3, 50, 2))], -1).astype(np.float32)
  targets = np.concatenate([xy, xy + rng.uniform(1, 80, (3, 50, 2))], -1).astype(np.float32)
  deltas = box_ops.encode(targets, proposals, WEIGHTS)
  decoded = jax.jit(functools.partial(box_ops.decode, weights=WEIGHTS))(deltas, proposals)
  np.testing.assert_allclose(decoded, targets, atol=1e-3)
  # dw / ww above log(1000 / 16) is clamped: the width grows at most 62.5 times.
  big = box_ops.decode(np.array([0, 0, 100, 0], np.float32), np.array([0, 0, 2, 2], np.float32),
                       WEIGHTS)
  np.testing.assert_allclose(big, [1 - 62.5, 0, 1 + 62.5, 2], rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchvision(seed, torch_reference):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(-20, 300, (200, 2))
  a = np.concatenate([xy, xy + rng.uniform(0.5, 200, (200, 2))], -1).astype(np.float32)
  xy = rng.uniform(-20, 300, (200, 2))
  b = np.concatenate([xy, xy + rng.uniform(0.5, 200, (200, 2))], -1).astype(np.float32)
  wild = rng.normal(scale=3.0, size=(200, 4)).astype(np.float32) * WEIGHTS  # Some get clamped.
  ref = torch_reference(REF, inputs={"a": a, "b": b, "wild": wild}, op="boxes",
                        weights=WEIGHTS, clip_hw=(200, 150), min_size=5.0)
  np.testing.assert_allclose(box_ops.box_iou(a, b), ref["iou"], atol=1e-6)
  np.testing.assert_array_equal(box_ops.clip_boxes(a, 200, 150), ref["clip"])
  np.testing.assert_array_equal(np.flatnonzero(~np.asarray(box_ops.small_box_mask(a, 5.0))),
                                ref["keep"])
  np.testing.assert_allclose(box_ops.encode(a, b, WEIGHTS), ref["encode"], atol=1e-5)
  np.testing.assert_allclose(box_ops.decode(wild, b, WEIGHTS), ref["decode"], rtol=1e-5,
                             atol=1e-3)
