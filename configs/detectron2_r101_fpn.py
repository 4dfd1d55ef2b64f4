"""detectron2's COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x, for its converted weights.

  wget https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x/138205316/model_final_a3ec72.pkl
  python -m maskrcnn_jax.weights.convert_detectron2 --input model_final_a3ec72.pkl \\
      --output weights/detectron2_mask_rcnn_R_101_FPN_3x
  python main.py --config configs/detectron2_r101_fpn.py --mode=predict --workdir DIR \\
      --config.predict.input_dir=IMAGES
  python main.py --config configs/detectron2_r101_fpn.py --mode=eval --workdir DIR \\
      --config.data.root=COCO   # COCO/val2017/, COCO/annotations/instances_val2017.json

The class set `coco`: detectron2's 81-way classifier (`classifier_layout` detectron2_81,
background last) is mapped onto it at load time. The model takes detectron2's inference
settings (maskrcnn_jax/weights/convert_detectron2.py lists every difference from
torchvision's): configs/default.py's `detectron2_weights`, plus adaptive RoIAlign sampling,
no minimum detection size and RPN boxes kept down to a width of 1e-7. Its resize: the
shorter side to 800, the longer at most 1333 (`data.resize` shortest_edge); detectron2 pads
to a multiple of 32, here to a fixed canvas per orientation, 832 × 1344 or
1344 × 832 (`data.aspect_grouping`).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.class_set = "coco"
  config.data.resize, config.data.min_size, config.data.max_size = "shortest_edge", (800,), 1333
  # Landscape images on 832 x 1344, portrait ones on 1344 x 832, not all on 1344²: the
  # reference groups its training batches by aspect ratio and pads each batch only to its
  # own images (a multiple of 32), so this is nearer its input, at 0.62x the pixels.
  config.data.aspect_grouping = True
  default.detectron2_weights(config.model)
  config.init.checkpoint = "weights/detectron2_mask_rcnn_R_101_FPN_3x"
  config.init.scope = "full"

  rpn = config.model.rpn
  rpn.pre_nms_topk_test, rpn.post_nms_topk_test = 1000, 1000
  rpn.pre_nms_topk_train, rpn.post_nms_topk_train = 2000, 1000
  rpn.nms_threshold = 0.7
  rpn.min_size = 1e-7  # detectron2 keeps boxes of any positive size.
  rpn.nms_on_logits = True  # detectron2 ranks proposals by logit (no ties at sigmoid 1.0).

  heads = config.model.roi_heads
  heads.rois_per_image, heads.positive_fraction, heads.fg_iou = 512, 0.25, 0.5
  heads.sampling_ratio = 0  # POOLER_SAMPLING_RATIO 0: adaptive, capped (max_sampling_ratio).
  heads.aligned = True  # ROIAlignV2.
  heads.min_size = 0.0
  heads.score_threshold, heads.nms_threshold, heads.detections_per_image = 0.05, 0.5, 100
  return config
