"""Region proposal network: head, proposals and losses, as torchvision's RegionProposalNetwork.

B images, N anchors over all levels (level-major, then location, then anchor, as
torchvision's `concat_box_prediction_layers`), A anchors per location, M GT boxes,
P proposals per image. Boxes are float32 (x1, y1, x2, y2) in padded-image pixels.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.models import layers
from maskrcnn_jax.models import losses
from maskrcnn_jax.ops import anchors as anchor_ops
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops
from maskrcnn_jax.ops import sampling

Dtype = Any
STRIDES = (4, 8, 16, 32, 64)  # P2..P6


class RPNHead(nn.Module):
  """Shared 3x3 conv + ReLU, then 1x1 objectness (A) and box deltas (4A) on every level.

  Module paths (torchvision's RPNHead in brackets): `conv` [conv.0.0], `cls_logits`,
  `bbox_pred`. `bbox_pred` channel `4a + k` is delta k of anchor a, as in torchvision.
  """
  num_anchors: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """features: P_l [B, H_l, W_l, C] -> objectness [B, N] and deltas [B, N, 4], float32
    (float64 for a float64 model)."""
    init = nn.initializers.normal(0.01)
    conv = lambda features, kernel, name: layers.Conv(
        features, kernel, use_bias=True, dtype=self.dtype, kernel_init=init, name=name)
    conv3 = conv(features[0].shape[-1], 3, "conv")
    cls_logits = conv(self.num_anchors, 1, "cls_logits")
    bbox_pred = conv(4 * self.num_anchors, 1, "bbox_pred")
    objectness, deltas = [], []
    for x in features:
      x = nn.relu(conv3(x))
      b = x.shape[0]
      objectness.append(cls_logits(x).reshape(b, -1))
      deltas.append(bbox_pred(x).reshape(b, -1, 4))
    dtype = jnp.promote_types(self.dtype, jnp.float32)
    return (jnp.concatenate(objectness, 1).astype(dtype),
            jnp.concatenate(deltas, 1).astype(dtype))


def propose(anchors: Sequence[np.ndarray], objectness: jax.Array, deltas: jax.Array,
            image_hw: jax.Array, *, pre_nms_topk: int, post_nms_topk: int,
            nms_threshold: float, min_size: float,
            nms_on_logits: bool = False) -> dict[str, jax.Array]:
  """Proposals of one image, as torchvision's `filter_proposals`.

  Per level the `pre_nms_topk` best-scoring anchors are decoded, clipped to the valid
  image, tiny boxes dropped, then NMS runs per level and the `post_nms_topk` best boxes
  over all levels are kept.

  Args:
    anchors: per level [N_l, 4] (sum N_l = N).
    objectness: [N] logits.
    deltas: [N, 4].
    image_hw: [2] valid image (height, width).

  Returns:
    `boxes` [P, 4], `scores` [P] (sigmoid), `valid` [P] with P = post_nms_topk; invalid
    rows are zero.
  """
  boxes, scores, levels = [], [], []
  offset = 0
  for level, level_anchors in enumerate(anchors):
    n = level_anchors.shape[0]
    k = min(pre_nms_topk, n)
    top_logits, top = jax.lax.top_k(objectness[offset:offset + n], k)
    boxes.append(box_ops.decode(deltas[offset:offset + n][top], jnp.asarray(level_anchors)[top]))
    scores.append(top_logits)
    levels.append(jnp.full((k,), level, jnp.int32))
    offset += n
  boxes = box_ops.clip_boxes(jnp.concatenate(boxes), image_hw[0], image_hw[1])
  logits = jnp.concatenate(scores)
  scores = jax.nn.sigmoid(logits)
  valid = ~box_ops.small_box_mask(boxes, min_size)
  # detectron2 ranks by logit; sigmoid probabilities (torchvision) tie at 1 above ~17.
  keep, keep_valid = nms_ops.batched_nms(boxes, logits if nms_on_logits else scores,
                                         jnp.concatenate(levels),
                                         iou_threshold=nms_threshold,
                                         max_outputs=post_nms_topk, valid=valid)
  return {  # float32, as detectron2's Boxes (decoded in float64 for a float64 model).
      "boxes": jnp.where(keep_valid[:, None], boxes[keep], 0.0).astype(jnp.float32),
      "scores": jnp.where(keep_valid, scores[keep], 0.0).astype(jnp.float32),
      "valid": keep_valid,
  }


def rpn_losses(anchors: jax.Array, objectness: jax.Array, deltas: jax.Array,
               gt_boxes: jax.Array, gt_valid: jax.Array, rng: jax.Array, *,
               fg_iou: float, bg_iou: float, samples_per_image: int,
               positive_fraction: float) -> dict[str, jax.Array]:
  """RPN losses of a batch, normalised as torchvision (all images' samples pooled).

  Anchors match GT at IoU >= fg_iou (plus each GT's best anchors), background below
  bg_iou; every anchor takes part, also those crossing the image border.

  Args:
    anchors: [N, 4].
    objectness: [B, N] logits.
    deltas: [B, N, 4].
    gt_boxes: [B, M, 4].
    gt_valid: [B, M] bool.
    rng: key for the anchor sampling.

  Returns:
    `rpn_objectness_loss` (BCE, mean over sampled anchors), `rpn_box_loss` (smooth-L1,
    beta 1/9, summed over positives / sampled anchors) and the per-image means
    `num_rpn_fg`, `num_rpn_bg`.
  """
  batch = objectness.shape[0]

  def one_image(objectness, deltas, gt_boxes, gt_valid, rng):
    matched, labels = sampling.match_boxes(gt_boxes, anchors, high_threshold=fg_iou,
                                           low_threshold=bg_iou, allow_low_quality_matches=True,
                                           valid_gt=gt_valid)
    idx, positive, valid = sampling.sample_balanced(
        labels, jnp.ones(labels.shape, bool), num_samples=samples_per_image,
        positive_fraction=positive_fraction, rng=rng)
    positive &= valid
    targets = box_ops.encode(gt_boxes[matched[idx]], anchors[idx])
    targets = jnp.where(positive[:, None], targets, 0.0)
    bce = losses.sigmoid_bce(objectness[idx], positive.astype(jnp.float32))
    box = losses.smooth_l1(deltas[idx], targets, beta=1 / 9).sum(-1)
    return (jnp.sum(jnp.where(valid, bce, 0.0)), jnp.sum(jnp.where(positive, box, 0.0)),
            positive.sum(), (valid & ~positive).sum())

  bce, box, num_fg, num_bg = jax.vmap(one_image)(objectness, deltas, gt_boxes, gt_valid,
                                                 jax.random.split(rng, batch))
  num_sampled = jnp.maximum(jnp.sum(num_fg + num_bg), 1).astype(jnp.float32)
  return {
      "rpn_objectness_loss": bce.sum() / num_sampled,
      "rpn_box_loss": box.sum() / num_sampled,
      "num_rpn_fg": num_fg.mean(dtype=jnp.float32),
      "num_rpn_bg": num_bg.mean(dtype=jnp.float32),
  }


class RPN(nn.Module):
  """Head + anchors + proposals (+ losses when `gt` is given).

  Attributes mirror `config.model.rpn` (see configs/default.py).
  """
  anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
  aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
  fg_iou: float = 0.7
  bg_iou: float = 0.3
  samples_per_image: int = 256
  positive_fraction: float = 0.5
  pre_nms_topk_train: int = 2000
  pre_nms_topk_test: int = 1000
  post_nms_topk_train: int = 2000
  post_nms_topk_test: int = 1000
  nms_threshold: float = 0.7
  min_size: float = 1e-3
  round_anchors: bool = True
  nms_on_logits: bool = False
  dtype: Dtype = jnp.float32

  def anchors(self, height: int, width: int) -> list[np.ndarray]:
    """The anchors of a padded `height` × `width` image: per level P2..P6, [N_l, 4]."""
    return anchor_ops.generate_anchors((height, width), strides=STRIDES,
                                       sizes=self.anchor_sizes, aspect_ratios=self.aspect_ratios,
                                       rounded=self.round_anchors)

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], image_hw: jax.Array,
               gt: tuple[jax.Array, jax.Array] | None = None, *, train: bool):
    """Proposals (and losses).

    Args:
      features: P2..P6, P_l [B, H/2^l, W/2^l, C] for a padded [B, H, W, 3] image.
      image_hw: [B, 2] valid image (height, width) inside the padding.
      gt: (boxes [B, M, 4], valid [B, M]); needed when `train`.
      train: training (train top-k, losses) or inference.

    Returns:
      (proposals, losses): proposals `boxes` [B, P, 4], `scores` [B, P], `valid` [B, P],
      all stop-gradient; losses a dict (empty unless `train`).
    """
    height, width = features[0].shape[1] * STRIDES[0], features[0].shape[2] * STRIDES[0]
    anchors = self.anchors(height, width)
    num_anchors = len(self.aspect_ratios)
    for level, (x, a) in enumerate(zip(features, anchors)):
      if x.shape[1] * x.shape[2] * num_anchors != a.shape[0]:
        raise ValueError(f"feature map {level} of shape {x.shape[1:3]} does not match the "
                         f"anchors of a {height}x{width} image: use a multiple of 64")
    objectness, deltas = RPNHead(num_anchors, dtype=self.dtype, name="head")(features)
    proposals = jax.vmap(lambda o, d, hw: propose(
        anchors, o, d, hw,
        pre_nms_topk=self.pre_nms_topk_train if train else self.pre_nms_topk_test,
        post_nms_topk=self.post_nms_topk_train if train else self.post_nms_topk_test,
        nms_threshold=self.nms_threshold, min_size=self.min_size,
        nms_on_logits=self.nms_on_logits))(
            jax.lax.stop_gradient(objectness), jax.lax.stop_gradient(deltas), image_hw)
    if not train:
      return proposals, {}
    if gt is None:
      raise ValueError("RPN training needs gt=(boxes, valid)")
    loss = rpn_losses(jnp.asarray(np.concatenate(anchors)), objectness, deltas, *gt,
                      self.make_rng("sampling"), fg_iou=self.fg_iou, bg_iou=self.bg_iou,
                      samples_per_image=self.samples_per_image,
                      positive_fraction=self.positive_fraction)
    return proposals, loss
