"""Box and mask heads on FPN RoIs, as torchvision's RoIHeads with a fixed RoI count.

B images, P proposals, M GT instances, R sampled RoIs per image, Rm = int(R *
positive_fraction) mask RoIs per image (the most positives the sampler can draw),
K + 1 classes (0 = background), D detections per image, Sm GT mask side. Boxes are
float32 (x1, y1, x2, y2) in padded-image pixels; padding is flagged by `valid` masks and
never contributes to a loss or becomes a detection.

Module paths (torchvision names in brackets): `box_head/{fc6, fc7}` [box_head.fc6/fc7],
`box_head/{cls_score, bbox_pred}` [box_predictor.*], `mask_head/mask_conv{1..n}`
[mask_head.{0..n-1}.0], `mask_head/deconv` [mask_predictor.conv5_mask],
`mask_head/mask_logits` [mask_predictor.mask_fcn_logits]. fc6 flattens the pooled
features in torch's (C, y, x) order, so its weight converts with a plain transpose.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrcnn_jax.models import layers
from maskrcnn_jax.models import losses
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import conv as conv_ops
from maskrcnn_jax.ops import nms as nms_ops
from maskrcnn_jax.ops import roi_align as roi_ops
from maskrcnn_jax.ops import sampling

Dtype = Any
MASK_SIZE = 28  # Mask head output side (2 x the 14x14 mask RoIAlign).


class BoxHead(nn.Module):
  """Two FC layers + ReLU, then class logits and class-specific box deltas.

  pooled: [B, R, 7, 7, C] -> logits [B, R, K + 1], deltas [B, R, K + 1, 4], float32.
  """
  num_classes: int
  fc_dim: int = 1024
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    b, r = pooled.shape[:2]
    x = jnp.moveaxis(pooled.astype(self.dtype), -1, 2).reshape(b, r, -1)  # torch's C, y, x
    init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
    x = nn.relu(dense(self.fc_dim, kernel_init=init, name="fc6")(x))
    x = nn.relu(dense(self.fc_dim, kernel_init=init, name="fc7")(x))
    logits = dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                   name="cls_score")(x)
    deltas = dense(4 * self.num_classes, kernel_init=nn.initializers.normal(0.001),
                   name="bbox_pred")(x)
    return (logits.astype(jnp.float32),
            deltas.astype(jnp.float32).reshape(b, r, self.num_classes, 4))


class Deconv2x2(nn.Module):
  """Transposed conv 2x2, stride 2: nn.ConvTranspose(features, (2, 2), strides=(2, 2),
  padding="VALID")'s parameters and output, computed as one matmul per input pixel.

  The strided kernel never overlaps itself, so out[2i + a, 2j + b] = x[i, j] @
  kernel[1 - a, 1 - b] + bias; XLA:CPU takes seconds for ConvTranspose's kernel gradient.
  x: [N, H, W, C] -> [N, 2H, 2W, features], or with `phases` [N, H, W, 2, 2, features]
  (pixel (2i + a, 2j + b) at [i, j, a, b]: the matmul's own layout, no interleaving copy).
  """
  features: int
  kernel_init: Any = layers.KAIMING_OUT
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, phases: bool = False) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (2, 2, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    if phases:
      return (jnp.einsum("nijc,abco->nijabo", x.astype(self.dtype),
                         kernel[::-1, ::-1].astype(self.dtype)) + bias.astype(self.dtype))
    n, h, w, _ = x.shape
    y = jnp.einsum("nijc,abco->niajbo", x.astype(self.dtype),
                   kernel[::-1, ::-1].astype(self.dtype))
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class ClassLogits(nn.Module):
  """1x1 conv to K + 1 logits with `layers.Conv`'s parameters (`kernel` [1, 1, C, K + 1],
  `bias` [K + 1]); given each map's class, only that channel.

  x: [N, ..., C] -> [N, ..., K + 1], or with `classes` [N] int -> [N, ...]: the same dot
  products, without the K other channels (at inference the mask head needs only the
  detected class's, a 1 / (K + 1) share of the work).
  """
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, classes: jax.Array | None = None) -> jax.Array:
    kernel = self.param("kernel", layers.KAIMING_OUT, (1, 1, x.shape[-1], self.num_classes),
                        jnp.float32).astype(self.dtype)[0, 0]
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,),
                      jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    if classes is None:
      return conv_ops.conv1x1(x, kernel) + bias
    selected = jnp.einsum("n...c,cn->n...", x, kernel[:, classes])
    return selected + bias[classes].reshape(-1, *[1] * (x.ndim - 2))


class MaskHead(nn.Module):
  """`num_convs` conv3x3 + ReLU, deconv 2x2/2 + ReLU, 1x1 to K + 1 mask logits.

  pooled: [B, R, 14, 14, C] -> logits [B, R, 28, 28, K + 1] float32, or with `classes`
  [B, R] int the logits of each RoI's class only, [B, R, 28, 28]. The deconv kernel is
  flax ConvTranspose's [2, 2, in, out]: torch's ConvTranspose2d weight [in, out, a, b]
  maps to kernel[1 - a, 1 - b, in, out].
  """
  num_classes: int
  num_convs: int = 4
  channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array, classes: jax.Array | None = None) -> jax.Array:
    b, r = pooled.shape[:2]
    x = pooled.astype(self.dtype).reshape(b * r, *pooled.shape[2:])
    for i in range(1, self.num_convs + 1):
      x = nn.relu(layers.Conv(self.channels, 3, use_bias=True, dtype=self.dtype,
                              name=f"mask_conv{i}")(x))
    deconv = Deconv2x2(self.channels, dtype=self.dtype, name="deconv")
    logits = ClassLogits(self.num_classes, dtype=self.dtype, name="mask_logits")
    if classes is None:
      x = logits(nn.relu(deconv(x)))
      return x.astype(jnp.float32).reshape(b, r, *x.shape[1:])
    # One channel per RoI: interleaved after the logits, [N, H, W, 2, 2] -> [N, 2H, 2W].
    x = logits(nn.relu(deconv(x, phases=True)), classes.reshape(-1))
    h, w = x.shape[1:3]
    x = x.transpose(0, 1, 3, 2, 4).reshape(b, r, 2 * h, 2 * w)
    return x.astype(jnp.float32)


def sample_rois(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array,
                gt_classes: jax.Array, gt_valid: jax.Array, rng: jax.Array, *,
                num_samples: int, positive_fraction: float, fg_iou: float,
                box_weights: Sequence[float]) -> dict[str, jax.Array]:
  """Labels and samples one image's RoIs (torchvision's `select_training_samples`).

  The GT boxes join the proposals; a candidate is foreground at IoU >= fg_iou with its
  best GT, background otherwise (no ignored band, no low-quality matches).

  Args:
    proposals: [P, 4]; proposal_valid: [P] bool.
    gt_boxes: [M, 4]; gt_classes: [M] int in [1, K]; gt_valid: [M] bool.
    rng: sampling key.

  Returns:
    `rois` [R, 4], `classes` [R] int32 (0 for background and padding), `targets` [R, 4]
    box deltas to the matched GT (0 unless positive), `matched` [R] GT index,
    `positive` [R] and `valid` [R] bool.
  """
  boxes = jnp.concatenate([proposals, gt_boxes])
  valid = jnp.concatenate([proposal_valid, gt_valid])
  iou = box_ops.box_iou(gt_boxes, boxes)
  matched, labels = sampling.match(iou, high_threshold=fg_iou, low_threshold=fg_iou,
                                   allow_low_quality_matches=False, valid_gt=gt_valid)
  idx, positive, sample_valid = sampling.sample_balanced(
      labels, valid, num_samples=num_samples, positive_fraction=positive_fraction, rng=rng)
  positive &= sample_valid
  rois = jnp.where(sample_valid[:, None], boxes[idx], 0.0)
  matched = matched[idx]
  targets = box_ops.encode(gt_boxes[matched], rois, box_weights)
  return {
      "rois": rois,
      "classes": jnp.where(positive, gt_classes[matched], 0).astype(jnp.int32),
      "targets": jnp.where(positive[:, None], targets, 0.0),
      "matched": matched,
      "positive": positive,
      "valid": sample_valid,
  }


def mask_targets(gt_masks: jax.Array, gt_boxes: jax.Array, rois: jax.Array,
                 size: int = MASK_SIZE) -> jax.Array:
  """Soft mask targets of RoIs from GT masks cropped to their boxes.

  torchvision RoIAligns the full-image mask over each RoI; here each RoI is expressed in
  its GT mask's frame (the crop spans the GT box) and sampled with aligned=True, over a
  one-pixel zero border so that the mask ends at the box edge, with ceil(Sm / size)
  (at least 2) samples per bin and axis so that every crop pixel counts.

  Args:
    gt_masks: [R, Sm, Sm] (nonzero = object) of each RoI's matched GT.
    gt_boxes: [R, 4] the matched GT boxes.
    rois: [R, 4].

  Returns:
    [R, size, size] float32 in [0, 1].
  """
  side = gt_masks.shape[-1]
  masks = jnp.pad((gt_masks > 0).astype(jnp.float32), ((0, 0), (1, 1), (1, 1)))
  origin = jnp.tile(gt_boxes[:, :2], 2)
  extent = jnp.tile(jnp.maximum(gt_boxes[:, 2:] - gt_boxes[:, :2], 1e-6), 2)
  frame = (rois - origin) * side / extent + 1.0
  # About side / size mask pixels per bin for RoIs near their GT box: as many samples.
  out = roi_ops.roi_align(masks[..., None], frame[:, None], output_size=size,
                          spatial_scale=1.0, sampling_ratio=max(2, -(-side // size)),
                          aligned=True)
  return out[:, 0, ..., 0]


class RoIHeads(nn.Module):
  """Box and mask branches; attributes mirror `config.model.roi_heads`."""
  num_classes: int
  rois_per_image: int = 512
  positive_fraction: float = 0.25
  fg_iou: float = 0.5
  box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
  sampling_ratio: int = 2  # 0: adaptive (detectron2), at most max_sampling_ratio.
  max_sampling_ratio: int = 8
  aligned: bool = True
  fc_dim: int = 1024
  mask_convs: int = 4
  mask_channels: int = 256
  score_threshold: float = 0.05
  min_size: float = 1e-2  # Detections narrower or lower are dropped (torchvision; detectron2 0).
  nms_threshold: float = 0.5
  detections_per_image: int = 100
  topk_candidates: int = 4096
  dtype: Dtype = jnp.float32

  def setup(self):
    self.box_head = BoxHead(self.num_classes, self.fc_dim, dtype=self.dtype)
    self.mask_head = MaskHead(self.num_classes, self.mask_convs, self.mask_channels,
                              dtype=self.dtype)

  def _pool(self, features, boxes, size):
    return roi_ops.multilevel_roi_align(features, boxes, output_size=size,
                                        sampling_ratio=self.sampling_ratio,
                                        aligned=self.aligned,
                                        max_sampling_ratio=self.max_sampling_ratio)

  def __call__(self, features: Sequence[jax.Array], proposals: dict[str, jax.Array],
               image_hw: jax.Array, gt: dict[str, jax.Array] | None = None, *,
               train: bool) -> dict[str, jax.Array]:
    """Losses (train) or detections.

    Args:
      features: P2..P5, P_l [B, H/2^l, W/2^l, C].
      proposals: `boxes` [B, P, 4], `valid` [B, P] (stop-gradient).
      image_hw: [B, 2] valid image (height, width) inside the padding.
      gt: `boxes` [B, M, 4], `classes` [B, M], `masks` [B, M, Sm, Sm], `valid` [B, M];
        needed when `train`.
      train: losses or detections.

    Returns:
      train: float32 scalars `rcnn_class_loss`, `rcnn_box_loss`, `mask_loss`,
      `num_fg_rois`, `num_bg_rois` (per-image means). Otherwise detections `boxes`
      [B, D, 4], `scores` [B, D], `classes` [B, D] int32, `masks` [B, D, 28, 28]
      probabilities of the detected class, `valid` [B, D], `num_detections` [B] int32,
      `num_candidates` [B] int32 (class scores past the threshold, before the top-k cap);
      padded rows are zero. With adaptive sampling (`sampling_ratio` 0) also
      `num_capped_rois` [B] int32: proposals and detections pooled with fewer samples
      than torchvision's adaptive count (`max_sampling_ratio`).
    """
    if len(features) != 4:
      raise ValueError(f"RoIHeads take P2..P5 (4 maps), got {len(features)}")
    if train:
      if gt is None:
        raise ValueError("RoIHeads training needs gt")
      return self._losses(features, proposals, gt)
    return self._detect(features, proposals, image_hw)

  def _losses(self, features, proposals, gt):
    batch = proposals["boxes"].shape[0]
    sample = jax.vmap(functools.partial(
        sample_rois, num_samples=self.rois_per_image, positive_fraction=self.positive_fraction,
        fg_iou=self.fg_iou, box_weights=self.box_weights))(
            proposals["boxes"], proposals["valid"], gt["boxes"], gt["classes"], gt["valid"],
            jax.random.split(self.make_rng("sampling"), batch))
    logits, deltas = self.box_head(self._pool(features, sample["rois"], 7))
    valid, positive = sample["valid"], sample["positive"]
    num_sampled = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    class_loss = losses.softmax_cross_entropy(logits, sample["classes"])
    class_deltas = jnp.take_along_axis(deltas, sample["classes"][..., None, None], axis=2)[:, :, 0]
    box_loss = losses.smooth_l1(class_deltas, sample["targets"], beta=1 / 9).sum(-1)

    # Mask branch: the positives first, Rm slots (flagged), each with its GT's mask.
    num_masks = int(self.rois_per_image * self.positive_fraction)
    order = jnp.argsort(~positive, axis=1, stable=True)[:, :num_masks]
    take = lambda x: jnp.take_along_axis(x, order, axis=1)
    mask_valid = take(positive)
    mask_rois = jnp.take_along_axis(sample["rois"], order[..., None], axis=1)
    matched = take(sample["matched"])
    mask_logits = self.mask_head(self._pool(features, mask_rois, MASK_SIZE // 2))
    mask_logits = jnp.take_along_axis(mask_logits, take(sample["classes"])[
        :, :, None, None, None], axis=-1)[..., 0]
    gather = jax.vmap(lambda x, i: x[i])
    targets = mask_targets(
        gather(gt["masks"], matched).reshape(-1, *gt["masks"].shape[2:]),
        gather(gt["boxes"], matched).reshape(-1, 4), mask_rois.reshape(-1, 4))
    mask_bce = losses.sigmoid_bce(mask_logits, targets.reshape(mask_logits.shape))
    num_mask_pixels = jnp.maximum(mask_valid.sum() * MASK_SIZE**2, 1).astype(jnp.float32)
    return {
        "rcnn_class_loss": jnp.sum(jnp.where(valid, class_loss, 0.0)) / num_sampled,
        "rcnn_box_loss": jnp.sum(jnp.where(positive, box_loss, 0.0)) / num_sampled,
        "mask_loss": jnp.sum(jnp.where(mask_valid[..., None, None], mask_bce, 0.0))
                     / num_mask_pixels,
        "num_fg_rois": positive.sum(1).mean(dtype=jnp.float32),
        "num_bg_rois": (valid & ~positive).sum(1).mean(dtype=jnp.float32),
    }

  def _detect(self, features, proposals, image_hw):
    rois, rois_valid = proposals["boxes"], proposals["valid"]
    logits, deltas = self.box_head(self._pool(features, rois, 7))
    scores = jax.nn.softmax(logits)[..., 1:]  # [B, P, K]
    boxes = box_ops.decode(deltas[:, :, 1:], rois[:, :, None], self.box_weights)
    boxes = box_ops.clip_boxes(boxes, image_hw[:, 0, None, None, None],
                               image_hw[:, 1, None, None, None])
    candidate = (rois_valid[..., None] & (scores > self.score_threshold)
                 & ~box_ops.small_box_mask(boxes, self.min_size))
    classes = jnp.broadcast_to(jnp.arange(1, self.num_classes, dtype=jnp.int32), scores.shape)
    b = rois.shape[0]
    boxes, scores = boxes.reshape(b, -1, 4), scores.reshape(b, -1)
    classes, candidate = classes.reshape(b, -1), candidate.reshape(b, -1)
    # The best-scoring candidates only (detectron2's topk_candidates): exact unless more
    # than `topk_candidates` pass the threshold and fewer than D of them survive NMS.
    num_candidates = candidate.sum(1, dtype=jnp.int32)
    _, top = jax.lax.top_k(jnp.where(candidate, scores, -jnp.inf),
                           min(self.topk_candidates, scores.shape[1]))
    boxes = jnp.take_along_axis(boxes, top[..., None], axis=1)
    scores, classes, candidate = (jnp.take_along_axis(x, top, axis=1)
                                  for x in (scores, classes, candidate))
    keep, valid = jax.vmap(functools.partial(
        nms_ops.batched_nms, iou_threshold=self.nms_threshold,
        max_outputs=self.detections_per_image))(boxes, scores, classes, valid=candidate)
    take = lambda x: jnp.take_along_axis(x, keep, axis=1)
    boxes = jnp.where(valid[..., None], jnp.take_along_axis(boxes, keep[..., None], axis=1), 0.0)
    classes = jnp.where(valid, take(classes), 0)
    masks = self.mask_head(self._pool(features, boxes, MASK_SIZE // 2), classes)
    extra = {}
    if self.sampling_ratio == 0:
      capped = functools.partial(roi_ops.adaptive_overflow, aligned=self.aligned,
                                 max_sampling_ratio=self.max_sampling_ratio)
      extra["num_capped_rois"] = (capped(rois, output_size=7)
                                  + capped(boxes, output_size=MASK_SIZE // 2))
    return {
        **extra,
        "boxes": boxes,
        "scores": jnp.where(valid, take(scores), 0.0),
        "classes": classes,
        "masks": jnp.where(valid[..., None, None], jax.nn.sigmoid(masks), 0.0),
        "valid": valid,
        "num_detections": valid.sum(1, dtype=jnp.int32),
        "num_candidates": num_candidates,
    }
