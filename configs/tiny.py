"""The smallest config that runs every code path in seconds: tests and smoke runs.

  python main.py --config configs/tiny.py --workdir /tmp/tiny
"""

from configs import default
from configs import demo


def get_config():
  config = demo.get_config()
  config.data.root = "/tmp/maskrcnn_jax_tiny/data"
  config.data.image_size = 64
  config.data.max_instances = 6
  config.data.mask_size = 14
  config.data.build_workers = 1  # 12 images: a worker pool would only add its start-up.
  config.data.eval_batch_size = 2
  config.data.synthetic.num_train = 8
  config.data.synthetic.num_val = 4
  config.data.synthetic.image_size = 64

  config.model.fpn_channels = 16
  config.model.anchor_sizes = (8, 16, 32, 64, 128)
  config.model.rpn.pre_nms_topk_train = 64
  config.model.rpn.pre_nms_topk_test = 32
  config.model.rpn.post_nms_topk_train = 32
  config.model.rpn.post_nms_topk_test = 16
  config.model.roi_heads.rois_per_image = 16
  config.model.roi_heads.fc_dim = 32
  config.model.roi_heads.mask_convs = 1
  config.model.roi_heads.detections_per_image = 8

  config.train.global_batch_size = 2
  config.train.steps_per_epoch = 4
  config.train.stages = [
      default.stage("heads", "heads", steps=2, lr=0.01),
      default.stage("4+", "4+", steps=2, lr=0.001),
  ]
  config.train.warmup_steps = 1
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.train.val_loss_batches = 1
  config.eval.num_pictures = 2
  config.eval.pictures = False  # Seconds per evaluation: tests of the pictures turn them on.
  return config
