"""The study's shape scaled to a 2-core CPU: ResNet-18 FPN, 256² synthetic images, 3 stages.

`make demo` runs it; the synthetic COCO-Stuff-format set is written to data.root on first use.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.root = "/tmp/maskrcnn_jax_demo/data"
  config.data.resize = "longest"  # The synthetic images are square: `square` resizes alike.
  config.data.image_size = 256
  config.data.max_instances = 16
  config.data.mask_size = 28
  config.data.eval_batch_size = 4
  config.data.synthetic.enabled = True
  config.data.synthetic.num_train = 96
  config.data.synthetic.num_val = 24
  config.data.synthetic.image_size = 256

  config.model.depth = 18
  config.model.freeze_at = 0  # No ImageNet weights here: the stem must learn too.
  config.model.fpn_channels = 64
  config.model.anchor_sizes = (16, 32, 64, 128, 256)
  config.model.rpn.pre_nms_topk_train = 500
  config.model.rpn.pre_nms_topk_test = 300
  config.model.rpn.post_nms_topk_train = 300
  config.model.rpn.post_nms_topk_test = 100
  config.model.roi_heads.rois_per_image = 64
  config.model.roi_heads.fc_dim = 256
  config.model.roi_heads.mask_convs = 2
  config.model.roi_heads.mask_channels = 64
  config.model.roi_heads.detections_per_image = 32

  config.train.global_batch_size = 4
  config.train.steps_per_epoch = 24
  config.train.stages = [
      default.stage("heads", "heads", steps=100, lr=0.02),
      default.stage("4+", "4+", steps=150, lr=0.02),
      default.stage("3+", "3+", steps=200, lr=0.01),
  ]
  config.train.warmup_steps = 20
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 100
  config.train.eval_every_steps = 0
  config.train.val_loss_batches = 4
  config.eval.num_pictures = 4
  config.init.checkpoint = "random"  # Synthetic data, no pretrained weights.
  config.init.scope = "full"  # For weights given on the command line.
  default.torchvision_weights(config.model)  # Normalised input for the random start.
  return config
