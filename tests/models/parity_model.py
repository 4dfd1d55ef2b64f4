"""The ResNet-18 FPN Mask R-CNN of the torchvision parity tests, and its weight conversion.

torchvision's side is `build` in mask_rcnn_parity_ref.py (the same sizes: 4 classes with
the background, anchors 16..256, box head FC 64, two 32-channel mask convs, RoIAlign
aligned=False); `model_config` is ours. `convert` is written independently of
maskrcnn_jax.weights.convert_torchvision and takes any subset of the state dict, so it
also converts gradients keyed by torch's parameter names.
"""

import re

from configs import default
from flax import traverse_util
import jax.numpy as jnp
import ml_collections

S = 128
NUM_CLASSES = 4  # With the background.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZES = (16, 32, 64, 128, 256)

# torchvision state_dict key -> our '/'-joined path; kernels need a layout change.
_RULES = [
    (r"backbone\.body\.conv1\.(.*)", r"backbone/stem/conv1/\1"),
    (r"backbone\.body\.bn1\.(.*)", r"backbone/stem/bn1/\1"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.(.*)",
     lambda m: f"backbone/res{int(m[1]) + 1}/block{m[2]}/downsample_conv/{m[3]}"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.*)",
     lambda m: f"backbone/res{int(m[1]) + 1}/block{m[2]}/downsample_bn/{m[3]}"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.(\w+)\.(.*)",
     lambda m: f"backbone/res{int(m[1]) + 1}/block{m[2]}/{m[3]}/{m[4]}"),
    (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(.*)", lambda m: f"fpn/lateral{int(m[1]) + 2}/{m[2]}"),
    (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(.*)", lambda m: f"fpn/output{int(m[1]) + 2}/{m[2]}"),
    (r"rpn\.head\.conv\.0\.0\.(.*)", r"rpn/head/conv/\1"),
    (r"rpn\.head\.(\w+)\.(.*)", r"rpn/head/\1/\2"),
    (r"roi_heads\.box_head\.(\w+)\.(.*)", r"roi_heads/box_head/\1/\2"),
    (r"roi_heads\.box_predictor\.(\w+)\.(.*)", r"roi_heads/box_head/\1/\2"),
    (r"roi_heads\.mask_head\.(\d)\.0\.(.*)",
     lambda m: f"roi_heads/mask_head/mask_conv{int(m[1]) + 1}/{m[2]}"),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(.*)", r"roi_heads/mask_head/deconv/\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(.*)", r"roi_heads/mask_head/mask_logits/\1"),
]
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def convert(state_dict):
  """torchvision MaskRCNN state_dict (or a part of it) -> {"params", "frozen_bn"}."""
  params, frozen = {}, {}
  for key, value in state_dict.items():
    for pattern, repl in _RULES:
      if re.fullmatch(pattern, key):
        path = re.sub(pattern, repl, key)
        break
    else:
      raise KeyError(key)
    module, name = path.rsplit("/", 1)
    if re.search(r"/(bn\d|downsample_bn)$", module):
      frozen[f"{module}/{_BN[name]}"] = value
    elif name == "bias":
      params[path] = value
    elif module.endswith("deconv"):  # [in, out, a, b] -> [1 - a, 1 - b, in, out]
      params[f"{module}/kernel"] = value[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
    elif value.ndim == 4:  # [out, in, kh, kw] -> [kh, kw, in, out]
      params[f"{module}/kernel"] = value.transpose(2, 3, 1, 0)
    else:  # Linear [out, in] -> [in, out]
      params[f"{module}/kernel"] = value.T
  unflat = lambda d: traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in d.items()},
                                                  sep="/")
  return {"params": unflat(params), "frozen_bn": unflat(frozen)}


def model_config() -> ml_collections.ConfigDict:
  """`config.model` of the twin of mask_rcnn_parity_ref.build (inference settings too)."""
  config = default.get_config().model
  default.torchvision_weights(config)
  config.depth = 18
  config.fpn_channels = 256
  config.pixel_mean = tuple(255 * m for m in MEAN)
  config.pixel_std = tuple(255 * s for s in STD)
  config.anchor_sizes = SIZES
  config.rpn.pre_nms_topk_test = 300
  config.rpn.post_nms_topk_test = 100
  config.roi_heads.aligned = False  # torchvision's MultiScaleRoIAlign.
  config.roi_heads.fc_dim = 64
  config.roi_heads.mask_convs = 2
  config.roi_heads.mask_channels = 32
  config.roi_heads.detections_per_image = 20
  return config


def group(ref, prefix):
  """The entries of `ref` under `prefix`, with the prefix dropped."""
  return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}
