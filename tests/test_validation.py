"""Config validation: every rule fails in one line naming the key and what is allowed."""

import pytest

from configs import default
from configs import demo
from configs import detectron2_r101_fpn
from configs import tiny
from configs import torchvision_r50_fpn
from maskrcnn_jax import validation


@pytest.mark.parametrize("get_config", [default.get_config, demo.get_config, tiny.get_config,
                                        torchvision_r50_fpn.get_config,
                                        detectron2_r101_fpn.get_config])
def test_shipped_configs_are_valid(get_config):
  config = get_config()
  config.data.root = config.data.root or "/data/coco"  # default.py names no data.
  validation.validate(config)


def test_longest_needs_a_canvas_of_whole_strides():
  config = default.get_config()
  config.data.root, config.data.resize, config.data.image_size = "/data", "longest", 1000
  with pytest.raises(validation.ConfigError, match=r"^config.data.image_size = 1000: must be a "
                     r"positive multiple of 64 \(data.resize longest\)$"):
    validation.validate(config)


@pytest.mark.parametrize("key, value, message", [
    ("model.depth", 77, "config.model.depth = 77: must be one of 18, 34, 50, 101, 152"),
    ("model.dtype", "float16", "config.model.dtype = 'float16': must be one of float32"),
    ("data.resize", "fit", "config.data.resize = 'fit': must be one of longest, shortest_edge, "
     "square"),
    ("data.min_size", (800, 0), "config.data.min_size = (800, 0): must be one or more positive "
     "integers (data.resize square)"),
    ("data.max_size", 700, "config.data.max_size = 700: must be >= the largest data.min_size (800)"),
    ("data.aspect_grouping", True, "config.data.aspect_grouping = True: needs data.resize "
     "shortest_edge (with square a square image fills"),
    ("data.class_set", "stuf", "config.data.class_set = 'stuf': must be one of coco, stuff"),
    ("data.root", "", "config.data.root = '': must name the COCO-Stuff root"),
    ("model.rpn.bg_iou", 0.8, "config.model.rpn.bg_iou = 0.8: must be <= model.rpn.fg_iou"),
    ("model.roi_heads.positive_fraction", 1.5, "must be in [0, 1]"),
    ("model.roi_heads.rois_per_image", 0, "config.model.roi_heads.rois_per_image = 0: must be > 0"),
    ("train.momentum", 1.0, "config.train.momentum = 1.0: must be in [0, 1)"),
    ("init.scope", "head", "config.init.scope = 'head': must be one of backbone, full"),
    ("init.checkpoint", "", "config.init.checkpoint = '': must name converted weights (a "
     "directory) or be 'random'"),
    ("eval.mask_threshold", 1.0, "config.eval.mask_threshold = 1.0: must be in (0, 1)"),
    ("eval.coco_backend", "fast", "config.eval.coco_backend = 'fast': must be one of auto, pycoco"),
    ("eval.paste", "gpu", "config.eval.paste = 'gpu': must be one of auto, device, host"),
    ("eval.panoptic.overlap_threshold", 1.5, "overlap_threshold = 1.5: must be in [0, 1]"),
    ("eval.panoptic.stuff_area_threshold", -1, "stuff_area_threshold = -1: must be >= 0"),
])
def test_bad_values(key, value, message):
  config = default.get_config()
  config.data.root = "/data"
  *path, leaf = key.split(".")
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config)
  assert message in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("stage, message", [
    (dict(name="a", trainable="6+", steps=1, lr=0.1), "stages[0].trainable = '6+': must be a preset"),
    (dict(name="a", trainable=["fpn/(("], steps=1, lr=0.1), "not a valid regex"),
    (dict(name="a", trainable="heads", steps=0, lr=0.1), "stages[0].steps = 0: must be a positive"),
    (dict(name="a", trainable="heads", steps=1, lr=-1.0), "stages[0].lr = -1.0: must be > 0"),
    (dict(name="a", trainable="heads", steps=1), "must have exactly the keys"),
])
def test_bad_stages(stage, message):
  config = demo.get_config()
  config.train.stages = [default.stage(**stage)] if "lr" in stage else [stage]
  with pytest.raises(validation.ConfigError, match="config.train.stages"):
    validation.validate(config)
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config)
  assert message in str(e.value)


def test_duplicate_stage_names():
  config = demo.get_config()
  config.train.stages = [default.stage("a", "heads", steps=1, lr=0.1)] * 2
  with pytest.raises(validation.ConfigError, match=r"stages\[1\].name = 'a'"):
    validation.validate(config)


def test_batch_must_split_over_devices():
  config = demo.get_config()
  validation.validate_devices(config, 4)
  with pytest.raises(validation.ConfigError,
                     match="config.train.global_batch_size = 4: must be divisible by the device count .3."):
    validation.validate_devices(config, 3)


def test_rois_need_enough_proposals():
  config = demo.get_config()
  config.model.roi_heads.rois_per_image = 512
  with pytest.raises(validation.ConfigError,
                     match=r"rois_per_image = 512: must be <= model.rpn.post_nms_topk_train"):
    validation.validate(config)


@pytest.mark.parametrize("override, message", [
    ("--config.model.detph=1", "unknown key 'detph' (did you mean 'depth'?) in --config.model.detph=1"),
    ("--config.modle.depth=1", "unknown key 'modle' (did you mean 'model'?) in --config.modle.depth=1"),
    ("--config.no_such_key=1", "unknown key 'no_such_key' in --config.no_such_key=1"),
    ("--config.train.stages[7].lr=0.1", "config.train.stages[7]: out of range, config.train.stages "
     "has 3 stages (0..2) in --config.train.stages[7].lr=0.1"),
    ("--config.train.stages[1].lrr=1", "unknown key 'lrr' (did you mean 'lr'?) in"),
    ("--config.model.depth.x=1", "config.model.depth has no field 'x': it is a value in"),
    ("--config.model.depth=50", None),
    ("--config.train.stages[2].lr=0.1", None),
])
def test_override_errors(override, message):
  error = validation.override_error(default.get_config(), override)
  if message is None:
    assert error is None
  else:
    assert error.startswith(message) and "\n" not in error and "\\" not in error


def test_predict_needs_no_data_root():
  config = default.get_config()
  validation.validate(config, needs_data=False)
  with pytest.raises(validation.ConfigError, match="config.data.root = ''"):
    validation.validate(config)


def test_init_checkpoint_must_exist_or_be_random(tmp_path):
  config = default.get_config()
  config.init.checkpoint = str(tmp_path / "d2_r101")
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_init_checkpoint(config, inference=False)
  assert str(e.value) == (
      f"config.init.checkpoint = '{tmp_path}/d2_r101': no converted weights there; convert "
      "them once with `python -m maskrcnn_jax.weights.convert_detectron2 --input "
      f"FILE.pkl --output {tmp_path}/d2_r101` (README: Pretrained weights, the file of each "
      "config), or set 'random' to start from random weights")
  (tmp_path / "d2_r101").mkdir()
  validation.validate_init_checkpoint(config, inference=True)
  config.init.checkpoint = "random"
  validation.validate_init_checkpoint(config, inference=False)
  with pytest.raises(validation.ConfigError, match="evaluation and prediction need weights"):
    validation.validate_init_checkpoint(config, inference=True)
