"""Every experiment config is a valid config at both scales and differs from the baseline
only where its docstring says."""

import importlib

import pytest

from experiments import run
from maskrcnn_jax import validation
from maskrcnn_jax.training import optimizer
from maskrcnn_jax.weights import options


def get(name, scale):
  config = importlib.import_module(f"experiments.{name}").get_config(scale)
  if not config.data.root:
    config.data.root = "/data/coco"
  return config


@pytest.mark.parametrize("scale", [None, "cpu"])
@pytest.mark.parametrize("name", run.RUNS)
def test_valid(name, scale):
  validation.validate(get(name, scale))


@pytest.mark.parametrize("scale", [None, "cpu"])
def test_diffs_from_baseline(scale):
  base = get("baseline", scale)
  assert [s.lr for s in get("lr_001", scale).train.stages] == pytest.approx(
      [5 * s.lr for s in base.train.stages])
  assert get("rois_512", scale).model.roi_heads.rois_per_image == 512
  assert get("no_other", scale).data.class_set == "stuff_no_other"
  assert get("things_and_stuff", scale).data.class_set == "things_and_stuff"
  augment = get("augment_balanced", scale)
  assert augment.data.class_balanced and augment.data.augment.hflip
  assert base.model.roi_heads.rois_per_image == (128 if scale is None else 64)


def test_full_scale_is_the_study():
  """An ImageNet ResNet-101 (MSRA) with its model options; FPN, RPN and heads start random
  and the first stage trains them, as matterport's `heads`."""
  config = get("baseline", None)
  assert config.model.depth == 101 and config.data.image_size == 1024
  assert [(s.trainable, s.steps, s.lr) for s in config.train.stages] == [
      ("heads", 40000, 0.002), ("4+", 60000, 0.0002), ("3+", 100000, 0.00002)]
  assert (config.init.checkpoint, config.init.scope) == ("weights/detectron2_msra_R_101",
                                                         "backbone")
  assert options.of(config.model) == options.DETECTRON2
  assert optimizer.trainable_patterns("heads") == ("fpn/.*", "rpn/.*", "roi_heads/.*")


def test_unknown_scale():
  with pytest.raises(ValueError, match="experiment scale 'gpu'"):
    get("baseline", "gpu")


def test_coco_start_changes_only_the_start():
  """detectron2's COCO R101-FPN, every part but the class layers; full scale only."""
  base, coco = get("baseline", None), get("coco_start", None)
  validation.validate(coco)
  assert (coco.init.checkpoint, coco.init.scope) == (
      "weights/detectron2_mask_rcnn_R_101_FPN_3x", "full")
  coco.init = base.init
  assert coco.to_dict() == base.to_dict()
  assert "coco_start" in run.runs("") and "coco_start" not in run.runs("cpu")
  with pytest.raises(ValueError, match="coco_start runs at full scale only"):
    get("coco_start", "cpu")
