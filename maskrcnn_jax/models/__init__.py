"""Mask R-CNN in Flax: `build(config.model, num_classes=K + 1)` -> `MaskRCNN`.

Variables: `params` (trainable) and `frozen_bn` (the backbone's FrozenBatchNorm
`scale`/`bias`/`mean`/`var`, never trained). Parameter paths, '/'-joined, start with the
part they belong to, which is what staged fine-tuning selects on:

  backbone/stem/{conv1, bn1}                       ResNet stem (models/resnet.py)
  backbone/res{2..5}/block{i}/{conv1, conv2, ...}  ResNet stages, conv kernels [kh, kw, in, out]
  fpn/{lateral, output}{2..5}                      FPN (models/fpn.py)
  rpn/head/{conv, cls_logits, bbox_pred}           RPN head (models/rpn.py)
  roi_heads/box_head/{fc6, fc7, cls_score, bbox_pred}
  roi_heads/mask_head/{mask_conv1.., deconv, mask_logits}  (models/roi_heads.py)

Each module's docstring names its torchvision counterpart for weight conversion. Every
convolution is a `layers.Conv` (nn.Conv's parameters, CPU-friendly gradients).
"""

import jax
import jax.numpy as jnp
import ml_collections

from maskrcnn_jax.models import fpn
from maskrcnn_jax.models import mask_rcnn
from maskrcnn_jax.models import resnet
from maskrcnn_jax.models import roi_heads
from maskrcnn_jax.models import rpn

MaskRCNN = mask_rcnn.MaskRCNN

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def build(config: ml_collections.ConfigDict, *, num_classes: int) -> MaskRCNN:
  """The model of `config` (= `config.model`); `num_classes` counts the background."""
  if config.dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}")
  if config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("model.dtype float64 needs jax_enable_x64 (e.g. `with jax.enable_x64():`)")
  if num_classes < 2:
    raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
  dtype = _DTYPES[config.dtype]
  r, h = config.rpn, config.roi_heads
  return MaskRCNN(
      backbone=resnet.ResNet(depth=config.depth, freeze_at=config.freeze_at, dtype=dtype,
                             remat=config.remat, stride_in_1x1=config.stride_in_1x1),
      fpn=fpn.FPN(channels=config.fpn_channels, dtype=dtype),
      rpn=rpn.RPN(
          anchor_sizes=tuple(config.anchor_sizes), aspect_ratios=tuple(config.aspect_ratios),
          fg_iou=r.fg_iou, bg_iou=r.bg_iou, samples_per_image=r.samples_per_image,
          positive_fraction=r.positive_fraction, pre_nms_topk_train=r.pre_nms_topk_train,
          pre_nms_topk_test=r.pre_nms_topk_test, post_nms_topk_train=r.post_nms_topk_train,
          post_nms_topk_test=r.post_nms_topk_test, nms_threshold=r.nms_threshold,
          min_size=r.min_size, round_anchors=config.round_anchors,
          nms_on_logits=r.nms_on_logits, dtype=dtype),
      roi_heads=roi_heads.RoIHeads(
          num_classes=num_classes, rois_per_image=h.rois_per_image,
          positive_fraction=h.positive_fraction, fg_iou=h.fg_iou,
          box_weights=tuple(h.box_weights), sampling_ratio=h.sampling_ratio,
          max_sampling_ratio=h.max_sampling_ratio,
          aligned=h.aligned, fc_dim=h.fc_dim, mask_convs=h.mask_convs,
          mask_channels=h.mask_channels, score_threshold=h.score_threshold,
          min_size=h.min_size,
          nms_threshold=h.nms_threshold, detections_per_image=h.detections_per_image,
          topk_candidates=h.topk_candidates, dtype=dtype),
      pixel_mean=tuple(config.pixel_mean),
      pixel_std=tuple(config.pixel_std),
      input_format=config.input_format,
      dtype=dtype)
