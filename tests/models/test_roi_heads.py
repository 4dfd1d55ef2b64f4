"""RoI heads: sampling with GT appended, mask targets from cropped masks, padding."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.models import roi_heads

GT = jnp.array([[10, 10, 30, 30], [40, 0, 60, 20], [0, 0, 0, 0]], jnp.float32)
GT_CLASSES = jnp.array([3, 1, 0])
GT_VALID = jnp.array([True, True, False])


@functools.partial(jax.jit, static_argnames="num_samples")  # One program, not one per op.
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
  mask_targets = jax.jit(roi_heads.mask_targets, static_argnames="size")
  out = np.asarray(mask_targets(jnp.asarray(masks), gt_box, rois, size=8))
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
  init = jax.jit(functools.partial(heads.init, train=False))  # One compile, not one per op.
  variables = init(jax.random.key(0), features, proposals, jnp.array([[64.0, 64.0]]))
  apply = jax.jit(functools.partial(heads.apply, train=False))
  det = apply(variables, features, proposals, jnp.array([[64.0, 64.0]]))
  # One valid proposal -> at most one box per foreground class (identical boxes of one class
  # would be suppressed, of different classes are kept): 2 detections.
  assert int(det["num_detections"][0]) == 2
  assert set(np.asarray(det["classes"][0][:2]).tolist()) == {1, 2}
  proposals["valid"] = jnp.zeros((1, 6), bool)
  det = apply(variables, features, proposals, jnp.array([[64.0, 64.0]]))
  assert int(det["num_detections"][0]) == 0 and not det["masks"].any()


@pytest.mark.slow
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
  variables = jax.jit(functools.partial(make().init, train=False))(
      jax.random.key(0), features, proposals, hw)
  run = lambda **kw: jax.jit(functools.partial(make(**kw).apply, train=False))(
      variables, features, proposals, hw)
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
  out = roi_heads.Deconv2x2(6).apply(variables, x)
  np.testing.assert_allclose(out, reference.apply(variables, x), rtol=1e-5, atol=1e-6)
  phases = roi_heads.Deconv2x2(6).apply(variables, x, phases=True)  # [2, 3, 5, 2, 2, 6]
  np.testing.assert_allclose(phases.transpose(0, 1, 3, 2, 4, 5).reshape(out.shape), out,
                             rtol=1e-6, atol=1e-6)


def test_class_logits_of_given_classes_are_the_full_convs_channels():
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 8))
  layer = roi_heads.ClassLogits(5)
  variables = layer.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # Nonzero bias.
  full = layer.apply(variables, x)
  assert full.shape == (3, 4, 4, 5)
  classes = jnp.array([2, 0, 4])
  np.testing.assert_allclose(layer.apply(variables, x, classes),
                             full[jnp.arange(3), ..., classes], rtol=1e-6, atol=1e-6)

def _iou(a, b):
  """[N, 4] x [M, 4] -> [N, M] IoU, numpy."""
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)
  return inter / (area(a)[:, None] + area(b)[None] - inter)


def _encode(gt, rois, weights=(10.0, 10.0, 5.0, 5.0)):
  """torchvision's BoxCoder.encode, numpy."""
  wh, gwh = rois[:, 2:] - rois[:, :2], gt[:, 2:] - gt[:, :2]
  centre, gcentre = rois[:, :2] + 0.5 * wh, gt[:, :2] + 0.5 * gwh
  return np.concatenate([np.array(weights[:2]) * (gcentre - centre) / wh,
                         np.array(weights[2:]) * np.log(gwh / wh)], -1)


@pytest.mark.slow
def test_losses_by_value():
  """Every candidate is sampled (R >= candidates, room for all positives), so the three
  losses follow from the heads' outputs on the candidates: cross-entropy averaged over the
  sampled RoIs of the batch, smooth-L1 (beta 1/9) of the GT class's deltas summed over the
  positives / the sampled RoIs, and BCE of the GT class's mask logits averaged over the
  positives' 28 x 28 pixels (torchvision's fastrcnn_loss and maskrcnn_loss)."""
  rng = np.random.default_rng(0)
  heads = roi_heads.RoIHeads(num_classes=4, rois_per_image=6, positive_fraction=0.5,
                             fc_dim=16, mask_convs=1, mask_channels=8)
  features = [jnp.asarray(rng.normal(size=(2, 16 // 2**i, 16 // 2**i, 8)), jnp.float32)
              for i in range(4)]
  gt_boxes = np.array([[[8, 8, 30, 28], [36, 30, 60, 60]], [[20, 4, 50, 40], [0, 0, 0, 0]]],
                      np.float32)
  gt = {"boxes": jnp.asarray(gt_boxes), "classes": jnp.array([[2, 1], [3, 0]]),
        "masks": jnp.asarray(rng.integers(0, 2, (2, 2, 14, 14)), jnp.uint8),
        "valid": jnp.array([[True, True], [True, False]])}
  proposals = np.array([[[9, 8, 31, 29], [0, 40, 20, 62], [36, 2, 64, 20], [0, 0, 0, 0]],
                        [[21, 6, 50, 41], [0, 44, 30, 64], [52, 0, 64, 30], [2, 2, 18, 14]]],
                       np.float32)
  proposal = {"boxes": jnp.asarray(proposals),
              "valid": jnp.array([[True, True, True, False], [True, True, True, True]])}
  image_hw = jnp.array([[64.0, 64.0]] * 2)
  variables = jax.jit(functools.partial(heads.init, train=True))(
      {"params": jax.random.key(0), "sampling": jax.random.key(1)}, features, proposal,
      image_hw, gt)
  bbox_pred = variables["params"]["box_head"]["bbox_pred"]
  bbox_pred["kernel"] = bbox_pred["kernel"] * 300  # Deltas of O(1) that differ by class.
  mask_pred = variables["params"]["mask_head"]["mask_logits"]
  mask_pred["kernel"] = mask_pred["kernel"] * 10  # Likewise the mask logits.
  out = jax.jit(functools.partial(heads.apply, train=True))(
      variables, features, proposal, image_hw, gt, rngs={"sampling": jax.random.key(2)})

  # The candidates: valid proposals, then valid GT; 5 per image, all sampled.
  cands, labels, matched = [], [], []
  for b in range(2):
    boxes = np.concatenate([proposals[b][np.asarray(proposal["valid"][b])],
                            gt_boxes[b][np.asarray(gt["valid"][b])]])
    iou = _iou(boxes, gt_boxes[b][np.asarray(gt["valid"][b])])
    cands.append(boxes)
    matched.append(iou.argmax(1))
    labels.append(np.where(iou.max(1) >= 0.5, np.asarray(gt["classes"][b])[iou.argmax(1)], 0))
  cands = np.stack(cands)
  assert [int((l > 0).sum()) for l in labels] == [3, 2]
  logits, deltas = jax.jit(functools.partial(
      heads.apply, method=lambda m, f, r: m.box_head(m._pool(f, r, 7))))(
          variables, features, jnp.asarray(cands))
  logits, deltas = np.asarray(logits, np.float64), np.asarray(deltas, np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  class_loss = -np.mean([log_probs[b, r, labels[b][r]] for b in range(2) for r in range(5)])
  box_sum, other_sum, mask_bce, other_bce = 0.0, 0.0, [], []
  smooth_l1 = lambda d: np.where(np.abs(d) < 1 / 9, 4.5 * d**2, np.abs(d) - 0.5 / 9).sum()
  for b in range(2):
    pos = np.flatnonzero(labels[b])
    targets = _encode(gt_boxes[b][matched[b][pos]], cands[b][pos])
    box_sum += smooth_l1(deltas[b, pos, labels[b][pos]] - targets)  # The GT class's deltas.
    other_sum += smooth_l1(deltas[b, pos, labels[b][pos] % 3 + 1] - targets)
    mask_logits = jax.jit(functools.partial(heads.apply, method=lambda m, f, r: m.mask_head(
        m._pool([x[b:b + 1] for x in f], r, 14))))(
            variables, features, jnp.asarray(cands[b:b + 1, pos]))[0]
    y = np.asarray(roi_heads.mask_targets(gt["masks"][b][matched[b][pos]],
                                          gt["boxes"][b][matched[b][pos]],
                                          jnp.asarray(cands[b][pos])))
    for bce, channel in ((mask_bce, labels[b][pos]), (other_bce, labels[b][pos] % 3 + 1)):
      x = np.asarray(mask_logits, np.float64)[np.arange(len(pos)), ..., channel]
      bce.append(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
  np.testing.assert_allclose(out["rcnn_class_loss"], class_loss, rtol=1e-5)
  np.testing.assert_allclose(out["rcnn_box_loss"], box_sum / 10, rtol=1e-5)
  assert abs(other_sum - box_sum) > 0.05 * box_sum  # Another class's deltas would show.
  mask_loss = np.concatenate(mask_bce).mean()  # Over the positives' pixels only.
  np.testing.assert_allclose(out["mask_loss"], mask_loss, rtol=1e-5)
  assert abs(np.concatenate(other_bce).mean() - mask_loss) > 0.05 * mask_loss  # The GT class's.
  np.testing.assert_allclose([out["num_fg_rois"], out["num_bg_rois"]], [2.5, 2.5])
