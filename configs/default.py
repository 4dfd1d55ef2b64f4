"""The study: Mask R-CNN R101-FPN on COCO-Stuff 2017 stuff classes, 3-stage fine-tuning.

It starts, as the study did, from an ImageNet-pretrained ResNet-101: detectron2's MSRA
`R-101.pkl`, converted once to `init.checkpoint` (README, "Pretrained weights"), with the
model options those weights need (`detectron2_weights`). FPN, RPN and heads start random
and the first stage (`heads`) trains them. experiments/coco_start.py starts from
detectron2's COCO Mask R-CNN R101-FPN instead; `--config.init.checkpoint=random` starts
from random weights (then `torchvision_weights` normalises the input better).

Where the study is silent it ran matterport Mask_RCNN's defaults; those are the values
below (1024² "square" input, 128 RoIs, gradient clip 5.0). The
model code follows the canonical detectron2/torchvision numbers, so only config values
select between the two.
"""

import ml_collections

from maskrcnn_jax.weights import options


def stage(name: str, trainable, *, steps: int, lr: float) -> ml_collections.ConfigDict:
  """One fine-tuning stage: `trainable` is a preset (heads, 5+, 4+, 3+, all) or regexes."""
  return ml_collections.ConfigDict(dict(name=name, trainable=trainable, steps=steps, lr=lr))


def detectron2_weights(model: ml_collections.ConfigDict) -> None:
  """The `config.model` values detectron2's converted weights need to compute their features:
  BGR input with its pixel mean and std 1, stride in the bottlenecks' first 1x1 conv, unrounded
  anchors (maskrcnn_jax/weights/convert_detectron2.py lists every difference). input_format
  RGB | BGR: channels reversed before normalisation; pixel_mean and pixel_std in input_format
  order, 0..255 units."""
  model.update(options.DETECTRON2)


def torchvision_weights(model: ml_collections.ConfigDict) -> None:
  """The same values for torchvision's weights, and for random starts (whose input this
  normalises): RGB, ImageNet mean and std, stride in the 3x3 conv, rounded anchors."""
  model.update(options.TORCHVISION)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.root = ""  # ROOT/{train2017,val2017,annotations}: the COCO download layout.
  config.data.tfds_data_dir = ""  # Where the TFDS builder writes; default ROOT/tfds.
  config.data.class_set = "stuff"  # stuff | stuff_no_other | things_and_stuff | coco | panoptic
  # The study's matterport "square" resize: shortest side up to 800, longest at most 1024,
  # padded to 1024² (maskrcnn_jax/data/images.py: longest | shortest_edge | square).
  config.data.resize = "square"
  config.data.image_size = 1024  # `longest`: the longest side, and the square canvas.
  # shortest_edge | square: the shortest side (a tuple: one drawn per training image, the
  # largest in evaluation) and the longest side's cap, which also sets the square canvas.
  config.data.min_size = (800,)
  config.data.max_size = 1024
  # Two canvases, max(min_size) x max_size for landscape images and its transpose for
  # portrait ones, each batch of one orientation, instead of one max_size² canvas
  # (shortest_edge only, maskrcnn_jax/data/images.py). Off: `square` gains nothing from it.
  config.data.aspect_grouping = False
  config.data.max_instances = 100
  # GT masks stored cropped to their box at this size; 112 gives mask targets closer to the
  # full-resolution mask than torchvision's (docs/benchmarks.md, mask targets).
  config.data.mask_size = 112
  config.data.read_parallelism = 16  # Records read at once: raise it for a remote data dir.
  config.data.build_workers = 0  # Processes decoding images in a data build; 0: one per core.
  # Train on images listed in only one of the stuff and instances files (things_and_stuff).
  config.data.allow_partial_annotations = False
  config.data.eval_batch_size = 2
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.hflip = False
  config.data.augment.scale_range = (1.0, 1.0)  # Scale jitter of the resized image.
  config.data.augment.photometric = False
  config.data.class_balanced = False  # Repeat-factor sampling (LVIS).
  config.data.repeat_threshold = 0.001
  # Synthetic COCO-Stuff-format set, written to data.root when it is empty.
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.enabled = False
  config.data.synthetic.num_train = 0
  config.data.synthetic.num_val = 0
  config.data.synthetic.image_size = 0
  config.data.synthetic.seed = 0  # Seeds the synthetic images (not config.seed: data stay fixed).
  config.data.synthetic.num_stuff_classes = 8  # Stuff classes drawn in the synthetic images.

  config.model = ml_collections.ConfigDict()
  config.model.depth = 101
  # float32 | bfloat16 | float64 (compute; float64 under jax_enable_x64); params stay float32.
  config.model.dtype = "float32"
  config.model.freeze_at = 2  # Stem (1) and res2 (2) always frozen, as detectron2.
  config.model.remat = False
  config.model.fpn_channels = 256
  # Input normalisation, bottleneck stride and anchor rounding follow the weights the run
  # starts from (init.checkpoint): detectron2's MSRA ResNet here, which is the Caffe model
  # matterport's Keras ResNet-101 ImageNet weights were converted from (BGR, its MEAN_PIXEL
  # subtracted only, stride in the 1x1 conv); torchvision_weights() for torchvision's or a
  # random start. Anchor rounding is the RPN's: free while the RPN starts random.
  detectron2_weights(config.model)
  config.model.anchor_sizes = (32, 64, 128, 256, 512)
  config.model.aspect_ratios = (0.5, 1.0, 2.0)
  config.model.rpn = ml_collections.ConfigDict()
  config.model.rpn.fg_iou = 0.7
  config.model.rpn.bg_iou = 0.3
  config.model.rpn.samples_per_image = 256
  config.model.rpn.positive_fraction = 0.5
  config.model.rpn.pre_nms_topk_train = 2000
  config.model.rpn.pre_nms_topk_test = 1000
  config.model.rpn.post_nms_topk_train = 2000
  config.model.rpn.post_nms_topk_test = 1000
  config.model.rpn.nms_threshold = 0.7
  config.model.rpn.min_size = 1e-3
  config.model.rpn.nms_on_logits = False  # Rank proposals by logit (detectron2), not sigmoid.
  config.model.roi_heads = ml_collections.ConfigDict()
  config.model.roi_heads.rois_per_image = 128  # The study; 256 and 512 in its sweep.
  config.model.roi_heads.positive_fraction = 0.25
  config.model.roi_heads.fg_iou = 0.5
  config.model.roi_heads.box_weights = (10.0, 10.0, 5.0, 5.0)
  config.model.roi_heads.sampling_ratio = 2  # 0: adaptive, as detectron2 (roi_align.py).
  config.model.roi_heads.max_sampling_ratio = 8  # Cap of adaptive samples per bin (counted).
  config.model.roi_heads.aligned = True
  config.model.roi_heads.fc_dim = 1024
  config.model.roi_heads.mask_convs = 4
  config.model.roi_heads.mask_channels = 256  # Channels of the mask convs and deconv.
  config.model.roi_heads.score_threshold = 0.05
  config.model.roi_heads.min_size = 1e-2  # Smaller detections dropped (detectron2: 0).
  config.model.roi_heads.nms_threshold = 0.5
  config.model.roi_heads.detections_per_image = 100
  # Best class scores per image kept for detection NMS (docs/benchmarks.md, "NMS").
  config.model.roi_heads.topk_candidates = 4096

  config.train = ml_collections.ConfigDict()
  config.train.global_batch_size = 2
  config.train.steps_per_epoch = 1000
  config.train.stages = [
      stage("heads", "heads", steps=40 * 1000, lr=0.002),
      stage("4+", "4+", steps=60 * 1000, lr=0.0002),
      stage("3+", "3+", steps=100 * 1000, lr=0.00002),
  ]
  config.train.momentum = 0.9
  config.train.weight_decay = 1e-4
  config.train.grad_clip_norm = 5.0  # 0 disables clipping.
  config.train.warmup_steps = 500  # Linear warm-up at the start of every stage.
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  config.train.eval_every_steps = 10000  # Plus at the end of every stage; 0: stage ends only.
  config.train.val_loss_batches = 50  # The study's 50 validation steps per epoch.
  config.train.max_nonfinite_steps = 10
  config.train.profile_steps = 0  # >0: a profile of that many steps after the first log.
  config.train.allow_config_change = False  # Resume despite a changed data order or schedule.

  config.init = ml_collections.ConfigDict()
  # The study's start, an ImageNet ResNet-101: detectron2's MSRA R-101.pkl, what detectron2's
  # own R101-FPN trainings start from, converted once (README, "Pretrained weights"); a
  # relative path is read from the directory main.py runs in. "random": start from random
  # weights (tiny and demo configs). Not read on resume.
  config.init.checkpoint = "weights/detectron2_msra_R_101"
  # backbone: the ResNet only; full: everything but the class layers, which keep their
  # initialisation for classes the checkpoint lacks (experiments/coco_start.py).
  config.init.scope = "backbone"  # backbone | full

  config.eval = ml_collections.ConfigDict()
  config.eval.checkpoint = ""  # Empty: the latest in the workdir.
  config.eval.num_images = -1  # -1: the whole validation split.
  config.eval.mask_threshold = 0.5
  config.eval.num_pictures = 8  # Images drawn in collages and proposal pictures.
  # The PNG pictures (and TensorBoard images) of each evaluation: confusion matrices, counts,
  # precision/recall, collages, loss curves. Off: metrics, tables and results only.
  config.eval.pictures = True
  # Minimum detection score for per-image precision/recall, prediction counts and pictures
  # (AP and the semantic metrics use every detection).
  config.eval.score_threshold = 0.5
  # COCOeval implementation: pycocotools (the reference), faster_coco_eval (C++; same
  # matches, AP within 1e-15: evaluation/coco_eval.py) or auto (faster_coco_eval where it
  # is installed).
  config.eval.coco_backend = "auto"
  # Where masks are pasted and painted: device | host | auto (the device unless on a CPU).
  config.eval.paste = "auto"
  # Also write COCO-Stuff's official results (label-map PNGs + RLE JSON, evaluation/export.py).
  config.eval.official_export = False
  # Panoptic merge of `things_and_stuff` and `panoptic` detections (PanopticFPN defaults).
  config.eval.panoptic = ml_collections.ConfigDict()
  config.eval.panoptic.overlap_threshold = 0.5  # Most of a thing that may lie on others.
  config.eval.panoptic.stuff_area_threshold = 4096  # Fewest pixels of a stuff segment.
  config.eval.panoptic.instances_score_threshold = 0.5  # Lowest score of a thing segment.

  config.predict = ml_collections.ConfigDict()
  config.predict.input_dir = ""
  config.predict.score_threshold = 0.5

  # --mode=inspect (maskrcnn_jax/inspection): images drawn, and images counted for histograms.
  config.inspect = ml_collections.ConfigDict()
  config.inspect.num_images = 4
  config.inspect.num_stats_images = 1000  # -1: the whole train split.
  return config
