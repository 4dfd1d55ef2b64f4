"""The study's RoI sweep: 256 RoIs per image fed to the box and mask heads (baseline 128)."""

from experiments import common


def get_config(arg=None):
  config = common.base(arg)
  config.model.roi_heads.rois_per_image = 256
  # RoIs are drawn from the proposals (and GT): keep enough of them at CPU scale.
  config.model.rpn.post_nms_topk_train = max(config.model.rpn.post_nms_topk_train, 256)
  return config
