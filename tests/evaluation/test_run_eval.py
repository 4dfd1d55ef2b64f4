"""`--mode=eval` and `--mode=predict` on a checkpoint of the tiny config."""

import json
import pathlib

import jax
import numpy as np
from PIL import Image
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
import pytest

from configs import default
from configs import tiny
from maskrcnn_jax import models
from maskrcnn_jax import run
from maskrcnn_jax.data import categories
from maskrcnn_jax.training import checkpoint


def test_eval_and_predict_modes(tmp_path):
  config = tiny.get_config()
  config.data.root = str(tmp_path / "data")
  config.train.stages = [default.stage("all", "all", steps=1, lr=0.001)]
  workdir = tmp_path / "run"
  run.run(config, str(workdir), "train")
  assert not (workdir / "eval").exists()  # --mode=train does not evaluate.

  metrics = run.run(config, str(workdir), "eval")
  assert metrics["num_images"] == config.data.synthetic.num_val
  written = json.loads((workdir / "eval" / "1" / "metrics.json").read_text())
  assert written["step"] == 1 and "segm/AP" in written

  images = tmp_path / "images"
  images.mkdir()
  for i, path in enumerate(sorted((tmp_path / "data" / "val2017").glob("*.jpg"))[:3]):
    Image.open(path).convert("L").save(images / f"img{i}.png")  # Grayscale PNGs too.
  config.predict.input_dir = str(images)
  out = pathlib.Path(run.run(config, str(workdir), "predict"))
  assert sorted(p.name for p in out.glob("img*.png")) == ["img0.png", "img1.png", "img2.png"]
  assert Image.open(out / "img0.png").size[0] > 0
  assert isinstance(json.loads((out / "coco_results.json").read_text()), list)


SAMPLES = pathlib.Path(__file__).parents[2].parent / "shared" / "coco_samples" / "panoptic_val2017"


@pytest.fixture
def coco_root(tmp_path):
  """A COCO 2017 root (val2017/ + annotations/instances_val2017.json, no stuff file) made of
  the two real val2017 images of the shared samples and their 43 thing annotations."""
  if not SAMPLES.is_dir():
    pytest.skip(f"{SAMPLES} (real COCO samples) not present")
  root = tmp_path / "coco"
  (root / "annotations").mkdir(parents=True)
  (root / "val2017").symlink_to(SAMPLES / "images" / "val2017")
  (root / "annotations" / "instances_val2017.json").symlink_to(
      SAMPLES / "annotations" / "instances_val2017_from_panoptic.json")
  return root


def torchvision_layout_weights(config, path):
  """Random weights of the tiny model with torchvision's 91-way COCO classifier."""
  model = models.build(config.model, num_classes=91)
  batch = {"image": np.zeros((1, 64, 64, 3), np.uint8),
           "image_info": np.array([[64, 64, 1, 64, 64]], np.float32)}
  variables = model.init({"params": jax.random.key(0), "sampling": jax.random.key(1)}, batch,
                         train=False)
  checkpoint.save_variables(str(path), jax.device_get(variables),
                            {"classifier_layout": "torchvision91"})


def test_eval_and_predict_on_a_coco_root(coco_root, tmp_path):
  """Class set `coco` from converted weights: COCO AP on real val2017 images, and predict
  on their folder without a data root; results carry COCO image and category ids."""
  config = tiny.get_config()
  config.data.class_set = "coco"
  config.data.root = str(coco_root)
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  config.data.image_size = 128
  config.model.roi_heads.detections_per_image = 50
  config.model.roi_heads.score_threshold = 0.0  # Random weights: keep what they find.
  config.init.checkpoint = str(tmp_path / "tv")
  torchvision_layout_weights(config, tmp_path / "tv")
  workdir = tmp_path / "run"
  run.validate(config, "eval", str(workdir))
  metrics = run.run(config, str(workdir), "eval")
  assert metrics["num_images"] == 2
  results = json.loads((workdir / "eval" / "0" / "coco_results.json").read_text())
  assert {r["image_id"] for r in results} == {142238, 439180}
  assert {r["category_id"] for r in results} <= set(categories.THING_IDS)

  # The written results score the same against the instances JSON with plain pycocotools.
  gt = coco_lib.COCO(str(coco_root / "annotations" / "instances_val2017.json"))
  for iou_type in ("bbox", "segm"):
    ev = cocoeval.COCOeval(gt, gt.loadRes(results), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert metrics[f"{iou_type}/AP"] == pytest.approx(max(ev.stats[0], 0.0), abs=1e-9)

  config.data.root = ""
  config.predict.input_dir = str(coco_root / "val2017")
  run.validate(config, "predict", str(workdir / "predict_run"))
  out = pathlib.Path(run.run(config, str(workdir / "predict_run"), "predict"))
  assert sorted(p.name for p in out.glob("*.png")) == ["000000142238.png", "000000439180.png"]
  predicted = json.loads((out / "coco_results.json").read_text())
  assert {r["image_id"] for r in predicted} == {142238, 439180}
  assert {r["category_id"] for r in predicted} <= set(categories.THING_IDS)
  assert len(predicted) == len(results)
