"""Proposal 4: start from detectron2's COCO Mask R-CNN R101-FPN 3x instead of ImageNet.

What it changes: `init.checkpoint` is detectron2's mask_rcnn_R_101_FPN_3x, converted
(README, "Pretrained weights"), and `init.scope` is `full`: backbone, FPN, RPN, box head and
mask head all come from COCO; only the class layers (box classifier and deltas, mask
logits) start random, as stuff shares no class with COCO's 80 things. Model options
stay detectron2's. Why it should help on stuff: the COCO-trained FPN, RPN and box head
already localise objects and regions, so the first stage only has to learn the class
layers and converges in fewer steps. The risk: COCO trained the RPN and heads to find
things and to treat stuff as background, a bias the stuff classes must unlearn.

Full scale only: the CPU-sized ResNet-18 has no COCO weights.
"""

from configs import default
from experiments import common


def get_config(arg=None):
  if arg:
    raise ValueError(f"experiment scale {arg!r}: coco_start runs at full scale only (the "
                     "CPU-sized ResNet-18 has no COCO weights)")
  config = common.base(arg)
  default.detectron2_weights(config.model)
  config.init.checkpoint = "weights/detectron2_mask_rcnn_R_101_FPN_3x"
  config.init.scope = "full"
  return config
