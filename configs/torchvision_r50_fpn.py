"""torchvision's `maskrcnn_resnet50_fpn` (v1) inference settings, for its converted weights.

  python -m maskrcnn_jax.weights.convert_torchvision \
      --input maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth \
      --output weights/torchvision_maskrcnn_resnet50_fpn_coco
  python main.py --config configs/torchvision_r50_fpn.py --mode=predict --workdir DIR \
      --config.predict.input_dir=IMAGES
  python main.py --config configs/torchvision_r50_fpn.py --mode=eval --workdir DIR \
      --config.data.root=COCO   # COCO/val2017/, COCO/annotations/instances_val2017.json

torchvision's classifier has 91 outputs: background and COCO ids 1-90 (the unannotated
ids included), output i = COCO id i (`classifier_layout` torchvision91). With the class
set `coco` those rows are mapped onto its 80 classes at load time, so predictions and
COCO AP use the converted classifier; other class sets keep the rows of the COCO classes
they share and initialise the rest (`maskrcnn_jax.weights.load`).

Its resize: the shorter side to 800, the longer at most 1333 (`data.resize` shortest_edge);
torchvision pads to a multiple of 32, here to a fixed canvas per orientation, 832 × 1344 or
1344 × 832 (`data.aspect_grouping`). torchvision floors the resized size where this rounds
it (a side may differ by a pixel).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.resize, config.data.min_size, config.data.max_size = "shortest_edge", (800,), 1333
  # Landscape images on 832 x 1344, portrait ones on 1344 x 832, not all on 1344²: the
  # reference groups its training batches by aspect ratio and pads each batch only to its
  # own images (a multiple of 32), so this is nearer its input, at 0.62x the pixels.
  config.data.aspect_grouping = True

  config.model.depth = 50
  config.model.freeze_at = 2  # torchvision's default trainable_backbone_layers=3.
  config.model.fpn_channels = 256
  # ImageNet mean / std x 255: torchvision normalises 0-1 images by (0.485, 0.456, 0.406)
  # and (0.229, 0.224, 0.225).
  default.torchvision_weights(config.model)
  config.model.anchor_sizes = (32, 64, 128, 256, 512)
  config.model.aspect_ratios = (0.5, 1.0, 2.0)

  rpn = config.model.rpn
  rpn.fg_iou, rpn.bg_iou = 0.7, 0.3
  rpn.samples_per_image, rpn.positive_fraction = 256, 0.5
  rpn.pre_nms_topk_train, rpn.post_nms_topk_train = 2000, 2000
  rpn.pre_nms_topk_test, rpn.post_nms_topk_test = 1000, 1000
  rpn.nms_threshold = 0.7
  rpn.min_size = 1e-3

  heads = config.model.roi_heads
  heads.rois_per_image, heads.positive_fraction, heads.fg_iou = 512, 0.25, 0.5
  heads.box_weights = (10.0, 10.0, 5.0, 5.0)
  heads.sampling_ratio = 2
  heads.aligned = False  # torchvision's MultiScaleRoIAlign.
  heads.fc_dim = 1024
  heads.mask_convs, heads.mask_channels = 4, 256
  heads.score_threshold = 0.05
  heads.nms_threshold = 0.5
  heads.detections_per_image = 100

  config.data.class_set = "coco"  # torchvision91 rows are mapped onto it at load time.
  config.init.checkpoint = "weights/torchvision_maskrcnn_resnet50_fpn_coco"
  config.init.scope = "full"
  return config
