"""Mask R-CNN: ResNet + FPN backbone, RPN, box and mask heads (docs/design.md, "The model")."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrcnn_jax.models import fpn as fpn_lib
from maskrcnn_jax.models import resnet
from maskrcnn_jax.models import roi_heads as roi_heads_lib
from maskrcnn_jax.models import rpn as rpn_lib

Dtype = Any


def _inside(image_hw: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """[B, H, W] bool: the pixels inside each image's valid (height, width) `image_hw` [B, 2]."""
  rows = jnp.arange(shape[0], dtype=jnp.float32)[None, :, None] < image_hw[:, 0, None, None]
  cols = jnp.arange(shape[1], dtype=jnp.float32)[None, None, :] < image_hw[:, 1, None, None]
  return rows & cols


class MaskRCNN(nn.Module):
  """The whole detector on a batch (docs/design.md, "A batch").

  Attributes:
    backbone, fpn, rpn, roi_heads: the parts; their parameters live under those names.
    pixel_mean, pixel_std: normalisation of the uint8 image, in 0..255 units, in the
      channel order of `input_format`. The padding (outside `image_info`'s valid size) is
      0 after it, i.e. the mean colour, as torchvision and detectron2 pad their batches.
    input_format: "RGB" (images as they come), or "BGR": the channels are reversed before
      normalisation, for backbones trained on BGR images (detectron2's).
    dtype: compute dtype of the image fed to the backbone.
  """
  backbone: resnet.ResNet
  fpn: fpn_lib.FPN
  rpn: rpn_lib.RPN
  roi_heads: roi_heads_lib.RoIHeads
  pixel_mean: tuple[float, float, float] = (123.7, 116.8, 103.9)
  pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
  input_format: str = "RGB"
  dtype: Dtype = jnp.float32

  def __call__(self, batch: dict[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    """Losses and statistics (train) or detections.

    Args:
      batch: `image` [B, Hc, Wc, 3] uint8 and `image_info` [B, 5]; for training also
        `boxes` [B, M, 4], `classes` [B, M], `masks` [B, M, Sm, Sm], `valid` [B, M].
      train: sample and return losses, or detect.

    Returns:
      train: float32 scalars `rpn_objectness_loss`, `rpn_box_loss`, `rcnn_class_loss`,
      `rcnn_box_loss`, `mask_loss` and statistics (`num_rpn_fg`, `num_rpn_bg`,
      `num_fg_rois`, `num_bg_rois`, `num_proposals`, `num_gt`: per-image means).
      Otherwise the detections of `RoIHeads` plus `proposals` [B, P, 4],
      `proposal_scores` [B, P] and `proposal_valid` [B, P].
    """
    image = batch["image"]
    if image.ndim != 4 or image.shape[-1] != 3:
      raise ValueError(f"batch['image'] must be [B, H, W, 3], got {image.shape}")
    if self.input_format not in ("RGB", "BGR"):
      raise ValueError(f"input_format must be RGB or BGR, got {self.input_format!r}")
    if self.input_format == "BGR":
      image = image[..., ::-1]
    compute = jnp.promote_types(self.dtype, jnp.float32)  # bfloat16 normalises in float32.
    mean = jnp.asarray(self.pixel_mean, compute)
    std = jnp.asarray(self.pixel_std, compute)
    x = (image.astype(compute) - mean) / std
    image_hw = batch["image_info"][:, 3:5].astype(jnp.float32)
    x = jnp.where(_inside(image_hw, x.shape[1:3])[..., None], x, 0.0).astype(self.dtype)
    features = self.fpn(self.backbone(x))
    if not train:
      proposals, _ = self.rpn(features, image_hw, train=False)
      detections = self.roi_heads(features[:4], proposals, image_hw, train=False)
      return {**detections, "proposals": proposals["boxes"],
              "proposal_scores": proposals["scores"], "proposal_valid": proposals["valid"]}
    gt = {k: batch[k] for k in ("boxes", "classes", "masks", "valid")}
    gt["boxes"] = gt["boxes"].astype(jnp.float32)
    proposals, rpn_losses = self.rpn(features, image_hw, (gt["boxes"], gt["valid"]),
                                     train=True)
    roi_losses = self.roi_heads(features[:4], proposals, image_hw, gt, train=True)
    return {
        **rpn_losses,
        **roi_losses,
        "num_proposals": proposals["valid"].sum(1).mean(dtype=jnp.float32),
        "num_gt": gt["valid"].sum(1).mean(dtype=jnp.float32),
    }
