"""Padded NMS: hand-made cases, greedy NumPy reference, vmap, parity with torchvision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import nms as nms_ops

REF = "tests/ops/torchvision_ops_ref.py"  # torchvision in its own process (tests/conftest.py).


# Box 1 overlaps box 0 with IoU 81 / 119 = 0.68; box 3 duplicates box 0 at the same score.
BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10],
                  [21, 21, 31, 31]], np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.9, 0.75], np.float32)


def run_nms(boxes, scores, *, iou_threshold, max_outputs, valid=None, groups=None):
  if groups is None:
    fn = functools.partial(nms_ops.nms, iou_threshold=iou_threshold, max_outputs=max_outputs)
    keep, ok = jax.jit(fn)(boxes, scores, valid=valid)
  else:
    fn = functools.partial(nms_ops.batched_nms, iou_threshold=iou_threshold,
                           max_outputs=max_outputs)
    keep, ok = jax.jit(fn)(boxes, scores, groups, valid=valid)
  assert keep.shape == ok.shape == (max_outputs,) and keep.dtype == jnp.int32
  ok = np.asarray(ok)
  assert not np.any(ok[1:] & ~ok[:-1]), "valid slots must form a prefix"
  return np.asarray(keep)[ok].tolist()


def test_hand_made():
  # Tie 0/3: the lower index wins and suppresses its duplicate. IoU(2, 4) = 81 / 119.
  assert run_nms(BOXES, SCORES, iou_threshold=0.5, max_outputs=5) == [0, 4]
  assert run_nms(BOXES, SCORES, iou_threshold=0.7, max_outputs=5) == [0, 1, 4, 2]
  assert run_nms(BOXES, SCORES, iou_threshold=0.7, max_outputs=2) == [0, 1]
  # Invalid boxes are never kept and suppress nothing.
  valid = np.array([False, True, True, True, False])
  assert run_nms(BOXES, SCORES, iou_threshold=0.5, max_outputs=5, valid=valid) == [3, 2]
  assert run_nms(BOXES, SCORES, iou_threshold=0.5, max_outputs=3, valid=np.zeros(5, bool)) == []


def test_zero_area_boxes_are_kept():
  boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 4, 4]], np.float32)
  assert run_nms(boxes, np.array([0.3, 0.2, 0.1], np.float32), iou_threshold=0.5,
                 max_outputs=3) == [0, 1, 2]


def test_groups_do_not_suppress_each_other():
  groups = np.array([0, 1, 0, 0, 1])
  assert run_nms(BOXES, SCORES, iou_threshold=0.5, max_outputs=5, groups=groups) == [0, 1, 4, 2]


def greedy_nms(boxes, scores, iou_threshold, valid):
  """Textbook greedy NMS, float64."""
  order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
  keep = []
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  for i in order:
    suppressed = False
    for j in keep:
      wh = np.maximum(np.minimum(boxes[i, 2:], boxes[j, 2:]) - np.maximum(boxes[i, :2],
                                                                          boxes[j, :2]), 0)
      inter = wh[0] * wh[1]
      union = area[i] + area[j] - inter
      suppressed |= union > 0 and inter / union > iou_threshold
    if not suppressed:
      keep.append(int(i))
  return keep


def random_boxes(rng, n, size=100.0):
  xy = rng.uniform(0, size, (n, 2))
  return np.concatenate([xy, xy + rng.uniform(1, size / 3, (n, 2))], -1).astype(np.float32)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_greedy_numpy(iou_threshold, seed):
  rng = np.random.default_rng(seed)
  boxes = random_boxes(rng, 300)
  scores = rng.uniform(size=300).astype(np.float32)
  valid = rng.uniform(size=300) > 0.1
  ref = greedy_nms(boxes.astype(np.float64), scores, iou_threshold, valid)
  assert run_nms(boxes, scores, iou_threshold=iou_threshold, max_outputs=300, valid=valid) == ref
  assert run_nms(boxes, scores, iou_threshold=iou_threshold, max_outputs=20,
                 valid=valid) == ref[:20]


def test_small_tiles_and_groups(monkeypatch):
  # Many tiles, chains of suppression inside tiles, and the kept-box buffer filling up.
  monkeypatch.setattr(nms_ops, "TILE", 16)
  rng = np.random.default_rng(5)
  boxes = random_boxes(rng, 150, size=60.0)
  scores = rng.uniform(size=150).astype(np.float32)
  groups = rng.integers(0, 3, 150)
  valid = rng.uniform(size=150) > 0.1
  ref = []
  for g in range(3):
    ref += greedy_nms(boxes.astype(np.float64), scores, 0.5, valid & (groups == g))
  ref = sorted(ref, key=lambda i: (-scores[i], i))
  for k in (150, 25):
    assert run_nms(boxes, scores, iou_threshold=0.5, max_outputs=k, valid=valid,
                   groups=groups) == ref[:k]


def test_vmap_over_images():
  rng = np.random.default_rng(3)
  boxes = np.stack([random_boxes(rng, 100) for _ in range(3)])
  scores = rng.uniform(size=(3, 100)).astype(np.float32)
  valid = rng.uniform(size=(3, 100)) > 0.2
  fn = jax.jit(jax.vmap(functools.partial(nms_ops.nms, iou_threshold=0.5, max_outputs=40)))
  keep, ok = fn(boxes, scores, valid=valid)
  for i in range(3):
    ref = greedy_nms(boxes[i].astype(np.float64), scores[i], 0.5, valid[i])[:40]
    assert np.asarray(keep[i])[np.asarray(ok[i])].tolist() == ref


def test_bad_input_raises():
  with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
    nms_ops.nms(BOXES[None], SCORES, iou_threshold=0.5, max_outputs=2)
  with pytest.raises(ValueError, match="scores must be"):
    nms_ops.nms(BOXES, SCORES[:3], iou_threshold=0.5, max_outputs=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_matches_torchvision(seed, iou_threshold, torch_reference):
  rng = np.random.default_rng(seed)
  n = 2000
  boxes = random_boxes(rng, n, size=600.0)
  boxes[:50] = boxes[50:100]  # Duplicates ...
  scores = rng.uniform(size=n).astype(np.float32)
  scores[:300] = np.round(scores[:300], 1)  # ... and many tied scores.
  groups = rng.integers(0, 5, n)
  refs = torch_reference(REF, inputs={"boxes": boxes, "scores": scores, "groups": groups},
                         op="nms", iou_threshold=iou_threshold)
  ref = refs["keep"].tolist()
  assert run_nms(boxes, scores, iou_threshold=iou_threshold, max_outputs=n) == ref
  assert run_nms(boxes, scores, iou_threshold=iou_threshold, max_outputs=100) == ref[:100]
  ref = refs["batched_keep"].tolist()
  kept = run_nms(boxes, scores, iou_threshold=iou_threshold, max_outputs=n, groups=groups)
  # torchvision merges the groups with an unstable sort: equal scores may come in any order.
  assert sorted(kept) == sorted(ref)
  np.testing.assert_array_equal(scores[kept], scores[ref])
