"""The `config.model` options that weights compute their features with.

Weight shapes do not depend on them, so detectron2's weights under torchvision's options
(or the reverse) would load without complaint and compute wrong features. The converters
and training checkpoints record them in their metadata (`checkpoint.load_metadata`), and
`maskrcnn_jax.weights.load.check_options` compares them with `config.model`. The configs
set them with `configs/default.py`'s `detectron2_weights` and `torchvision_weights`.
"""

from typing import Any, Mapping

KEYS = ("input_format", "pixel_mean", "pixel_std", "stride_in_1x1", "round_anchors")
# BGR input with detectron2's (Caffe2's) pixel mean and std 1, stride in the bottlenecks'
# first 1x1 conv (MSRA), unrounded anchors (maskrcnn_jax/weights/convert_detectron2.py).
DETECTRON2 = {"input_format": "BGR", "pixel_mean": (103.530, 116.280, 123.675),
              "pixel_std": (1.0, 1.0, 1.0), "stride_in_1x1": True, "round_anchors": False}
# RGB, ImageNet mean and std x 255, stride in the 3x3 conv, rounded base anchors.
TORCHVISION = {"input_format": "RGB", "pixel_mean": (123.675, 116.28, 103.53),
               "pixel_std": (58.395, 57.12, 57.375), "stride_in_1x1": False,
               "round_anchors": True}
# The config helper that sets each set of values.
HELPERS = (("detectron2_weights", DETECTRON2), ("torchvision_weights", TORCHVISION))


def of(model: Mapping[str, Any]) -> dict[str, Any]:
  """The options of `config.model` (or of recorded metadata), tuples for sequences."""
  return {k: tuple(model[k]) if isinstance(model[k], list | tuple) else model[k]
          for k in KEYS if k in model}
