"""RoI heads: sampling with GT appended, mask targets from cropped masks, padding."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.models import roi_heads

GT = jnp.array([[10, 10, 30, 30], [40, 0, 60, 20], [0, 0, 0, 0]], jnp.float32)
GT_CLASSES = jnp.array([3, 1, 0])
GT_VALID = jnp.array([True, True, False])


def _sample(proposals, proposal_valid, num_samples=8):
  return roi_heads.sample_rois(proposals, proposal_valid, GT, GT_CLASSES, GT_VALID,
                               jax.random.key(0), num_samples=num_samples,
                               positive_fraction=0.5, fg_iou=0.5,
                               box_weights=(10.0, 10.0, 5.0, 5.0))


def test_gt_boxes_are_sampled_when_proposals_are_padding():
  out = _sample(jnp.ones((6, 4)), jnp.zeros((6,), bool))
  assert out["valid"].sum() == 2 and out["positive"].sum() == 2
  pos = np.asarray(out["positive"])
  rois = np.asarray(out["rois"])[pos]
  order = np.argsort(rois[:, 0])
  np.testing.assert_allclose(rois[order], GT[:2])
  np.testing.assert_array_equal(np.asarray(out["classes"])[pos][order], [3, 1])
  np.testing.assert_allclose(out["targets"], 0, atol=1e-6)
  assert not out["rois"][~out["valid"]].any() and not out["classes"][~pos].any()


def test_foreground_threshold_and_targets():
  proposals = jnp.array([[10, 10, 30, 32], [10, 10, 30, 60], [70, 70, 80, 80], [0, 0, 1, 1]],
                        jnp.float32)
  out = _sample(proposals, jnp.ones((4,), bool), num_samples=6)
  by_box = {tuple(np.asarray(r).tolist()): i for i, r in enumerate(out["rois"])
            if out["valid"][i]}
  fg = by_box[(10.0, 10.0, 30.0, 32.0)]  # IoU 400 / 440 with GT 0
  bg = by_box[(10.0, 10.0, 30.0, 60.0)]  # IoU 0.4
  assert out["positive"][fg] and out["classes"][fg] == 3
  assert not out["positive"][bg] and out["classes"][bg] == 0
  # dy = 10 * (20 - 21) / 22, dh = 5 * log(20 / 22).
  np.testing.assert_allclose(out["targets"][fg], [0, -10 / 22, 0, 5 * np.log(20 / 22)],
                             rtol=1e-5, atol=1e-6)
  assert out["valid"].sum() == 6 and out["positive"].sum() == 3


def test_mask_targets():
  gt_box = jnp.array([[10.0, 10.0, 30.0, 30.0]] * 4)
  masks = np.zeros((4, 8, 8), np.uint8)
  masks[:, :, :4] = 1  # Left half of the box: x in [10, 20).
  rois = jnp.array([
      [13, 13, 17, 27],    # Inside the left half, >= 1 mask pixel (2.5 px) from its edges.
      [23, 11, 29, 29],    # Inside the right half.
      [40, 40, 50, 50],    # Outside the box.
      [0, 10, 40, 30],     # Twice the box's width: the object fills x in [10, 20).
  ])
  out = np.asarray(roi_heads.mask_targets(jnp.asarray(masks), gt_box, rois, size=8))
  np.testing.assert_allclose(out[0], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[1], 0.0, atol=1e-6)
  np.testing.assert_allclose(out[2], 0.0, atol=1e-6)
  # Columns of 5 px: [0, 5) and [5, 10) outside, [10, 15) inside, [20, 40) outside.
  np.testing.assert_allclose(out[3][:, [0, 1, 4, 5, 6, 7]], 0.0, atol=1e-6)
  assert np.all(out[3][:, 2] > 0.5)


def test_detection_drops_padded_proposals():
  heads = roi_heads.RoIHeads(num_classes=3, fc_dim=16, mask_convs=1, mask_channels=8,
                             detections_per_image=5, score_threshold=0.0)
  features = [jnp.ones((1, 16 // 2**i, 16 // 2**i, 8)) for i in range(4)]
  proposals = {"boxes": jnp.tile(jnp.array([[[8.0, 8.0, 40.0, 40.0]]]), (1, 6, 1)),
               "valid": jnp.array([[True, False, False, False, False, False]])}
  init = functools.partial(heads.init, train=False)
  variables = init(jax.random.key(0), features, proposals, jnp.array([[64.0, 64.0]]))
  det = heads.apply(variables, features, proposals, jnp.array([[64.0, 64.0]]), train=False)
  # One valid proposal -> at most one box per foreground class (identical boxes of one class
  # would be suppressed, of different classes are kept): 2 detections.
  assert int(det["num_detections"][0]) == 2
  assert set(np.asarray(det["classes"][0][:2]).tolist()) == {1, 2}
  proposals["valid"] = jnp.zeros((1, 6), bool)
  det = heads.apply(variables, features, proposals, jnp.array([[64.0, 64.0]]), train=False)
  assert int(det["num_detections"][0]) == 0 and not det["masks"].any()


def test_topk_candidates_cap_keeps_the_best_scores():
  # 24 random proposals x 5 classes = 120 candidates; the cap leaves the best 40 to NMS.
  features = [jax.random.normal(jax.random.key(i), (1, 32 // 2**i, 32 // 2**i, 8))
              for i in range(4)]
  xy = jax.random.uniform(jax.random.key(5), (1, 24, 2), maxval=80.0)
  wh = jax.random.uniform(jax.random.key(6), (1, 24, 2), minval=8.0, maxval=40.0)
  proposals = {"boxes": jnp.concatenate([xy, xy + wh], -1), "valid": jnp.ones((1, 24), bool)}
  hw = jnp.array([[128.0, 128.0]])
  make = functools.partial(roi_heads.RoIHeads, num_classes=6, fc_dim=16, mask_convs=1,
                           mask_channels=8, score_threshold=0.0, nms_threshold=0.5)
  variables = make().init(jax.random.key(0), features, proposals, hw, train=False)
  run = lambda **kw: make(**kw).apply(variables, features, proposals, hw, train=False)
  full = run(detections_per_image=10, topk_candidates=120)
  capped = run(detections_per_image=10, topk_candidates=40)
  assert int(full["num_candidates"][0]) == int(capped["num_candidates"][0]) == 120
  assert int(capped["num_detections"][0]) == 10  # Enough survive among the best 40: exact.
  for key in ("boxes", "scores", "classes", "valid"):
    np.testing.assert_array_equal(capped[key], full[key])
  # A cap of 3 candidates yields at most 3 detections, the best-scoring ones.
  tiny = run(detections_per_image=10, topk_candidates=3)
  assert int(tiny["num_detections"][0]) <= 3
  np.testing.assert_array_equal(tiny["scores"][0, :1], full["scores"][0, :1])


def test_deconv_matches_flax_conv_transpose():
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4))
  reference = nn.ConvTranspose(6, (2, 2), strides=(2, 2), padding="VALID")
  variables = reference.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # Nonzero bias.
  np.testing.assert_allclose(roi_heads.Deconv2x2(6).apply(variables, x),
                             reference.apply(variables, x), rtol=1e-5, atol=1e-6)
