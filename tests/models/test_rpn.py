"""RPN: head layout, proposals (clipping, per-level NMS, padding) and hand-computed losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.models import rpn

SMALL = dict(pre_nms_topk=10, post_nms_topk=6, nms_threshold=0.7, min_size=1e-3)


def test_head_layout():
  features = [jnp.ones((2, 8 // 2**i, 8 // 2**i, 4)) for i in range(3)]
  head = rpn.RPNHead(num_anchors=3)
  variables = head.init(jax.random.key(0), features)
  objectness, deltas = head.apply(variables, features)
  n = 3 * (64 + 16 + 4)
  assert objectness.shape == (2, n) and deltas.shape == (2, n, 4)
  # Anchor a of location (y, x) reads channel a of cls_logits and 4a..4a+3 of bbox_pred.
  x = jax.random.normal(jax.random.key(1), (1, 2, 2, 4))
  objectness, deltas = head.apply(variables, [x])
  params = variables["params"]
  hidden = jax.nn.relu(jax.lax.conv_general_dilated(
      x, params["conv"]["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv"]["bias"])
  logits = hidden @ params["cls_logits"]["kernel"][0, 0] + params["cls_logits"]["bias"]
  boxes = hidden @ params["bbox_pred"]["kernel"][0, 0] + params["bbox_pred"]["bias"]
  np.testing.assert_allclose(objectness[0, 3 * 3 + 2], logits[0, 1, 1, 2], rtol=1e-5)
  np.testing.assert_allclose(deltas[0, 3 * 1 + 1], boxes[0, 0, 1, 4:8], rtol=1e-5)


def test_proposals_clip_suppress_and_pad():
  level0 = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30], [50, 50, 60, 60]],
                    np.float32)
  level1 = np.array([[0, 0, 10, 10], [5, 5, 45, 45]], np.float32)
  objectness = jnp.array([4.0, 3.0, 2.0, 5.0, 1.0, 0.0])
  out = rpn.propose([level0, level1], objectness, jnp.zeros((6, 4)), jnp.array([40.0, 48.0]),
                    **SMALL)
  # Anchor 3 lies below the valid image (clipped to zero height): dropped. Anchor 1
  # overlaps anchor 0 on its level: suppressed. Anchor 4 equals anchor 0 on another level.
  np.testing.assert_array_equal(out["valid"], [True, True, True, True, False, False])
  np.testing.assert_allclose(out["boxes"][:4], [[0, 0, 10, 10], [20, 20, 30, 30],
                                                [0, 0, 10, 10], [5, 5, 45, 40]])
  np.testing.assert_allclose(out["scores"][:4], jax.nn.sigmoid(jnp.array([4.0, 2.0, 1.0, 0.0])),
                             rtol=1e-6)
  assert not out["boxes"][4:].any() and not out["scores"][4:].any()


def test_proposals_take_top_k_per_level():
  anchors = [np.array([[0, 0, 4, 4], [10, 0, 14, 4], [20, 0, 24, 4]], np.float32),
             np.array([[0, 10, 4, 14], [10, 10, 14, 14]], np.float32)]
  objectness = jnp.array([1.0, 3.0, 2.0, -1.0, -2.0])
  out = rpn.propose(anchors, objectness, jnp.zeros((5, 4)), jnp.array([32.0, 32.0]),
                    **{**SMALL, "pre_nms_topk": 1})
  np.testing.assert_array_equal(out["valid"], [True, True] + [False] * 4)
  np.testing.assert_allclose(out["boxes"][:2], [[10, 0, 14, 4], [0, 10, 4, 14]])


@pytest.mark.parametrize("nms_on_logits, kept", [(False, [0, 0, 10, 10]), (True, [20, 0, 30, 10])])
def test_proposals_ranked_by_logit_or_probability(nms_on_logits, kept):
  """Logits 20 and 25 both have sigmoid 1.0 in float32: only the logit tells them apart
  (within a level the per-level top-k already orders by logit)."""
  anchors = [np.array([[0, 0, 10, 10]], np.float32), np.array([[20, 0, 30, 10]], np.float32)]
  out = rpn.propose(anchors, jnp.array([20.0, 25.0]), jnp.zeros((2, 4)),
                    jnp.array([32.0, 32.0]), **{**SMALL, "post_nms_topk": 1},
                    nms_on_logits=nms_on_logits)
  np.testing.assert_allclose(out["boxes"][0], kept)


@jax.jit  # One program, not one compile per operation.
def _losses(objectness, deltas, gt_boxes, gt_valid, anchors):
  return rpn.rpn_losses(anchors, objectness, deltas, gt_boxes, gt_valid,
                        jax.random.key(0), fg_iou=0.7, bg_iou=0.3, samples_per_image=4,
                        positive_fraction=0.5)


ANCHORS = np.array([[0, 0, 10, 10], [30, 30, 40, 40], [50, 0, 60, 10], [0, 50, 10, 60],
                    [5, 0, 15, 10], [50, 50, 60, 60]], np.float32)


@pytest.mark.slow
def test_losses_by_hand():
  gt = jnp.array([[[0, 0, 10, 10], [0, 0, 0, 0]], [[30, 30, 40, 40], [0, 0, 0, 0]]])
  gt_valid = jnp.array([[True, False], [True, False]])
  deltas = jnp.ones((2, 6, 4))
  out = _losses(jnp.zeros((2, 6)), deltas, gt, gt_valid, ANCHORS)
  # Each image: 1 positive (the anchor equal to its GT), 3 sampled negatives (anchor 4,
  # IoU 1/3 with image 0's GT, sits between the thresholds and is never drawn there).
  assert out["num_rpn_fg"] == 1 and out["num_rpn_bg"] == 3
  np.testing.assert_allclose(out["rpn_objectness_loss"], math.log(2), rtol=1e-6)
  # Zero targets, deltas 1: 4 coordinates x (1 - beta / 2) per positive, over 8 samples.
  np.testing.assert_allclose(out["rpn_box_loss"], 2 * 4 * (1 - 0.5 / 9) / 8, rtol=1e-6)


def test_losses_without_gt():
  out = _losses(jnp.zeros((1, 6)), jnp.ones((1, 6, 4)), jnp.zeros((1, 2, 4)),
                jnp.zeros((1, 2), bool), ANCHORS)
  assert out["num_rpn_fg"] == 0 and out["num_rpn_bg"] == 4
  assert out["rpn_box_loss"] == 0
  np.testing.assert_allclose(out["rpn_objectness_loss"], math.log(2), rtol=1e-6)


def test_anchor_mismatch_raises():
  model = rpn.RPN()
  features = [jnp.zeros((1, 8, 8, 4))] * 5  # Not a pyramid.
  with pytest.raises(ValueError, match="anchors"):
    model.init(jax.random.key(0), features, jnp.array([[32.0, 32.0]]), train=False)
