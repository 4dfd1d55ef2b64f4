"""`--mode=eval` and `--mode=predict` on a checkpoint of the tiny config."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
import pytest

from configs import tiny
from maskrcnn_jax import models
from maskrcnn_jax import run
from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import load

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow(seconds=100)
def test_eval_and_predict_modes(tiny_workdir, tmp_path):
  config, workdir = tiny_workdir  # Trained by --mode=train to step 4.
  assert not (workdir / "eval").exists()  # --mode=train does not evaluate.

  config.model.roi_heads.score_threshold = 0.0  # 4 steps: no score passes the default.
  metrics = run.run(config, str(workdir), "eval")  # On the CPU: pasted on the host.
  assert metrics["num_images"] == config.data.synthetic.num_val
  # The default backend (`auto`: faster-coco-eval, installed here) = pycocotools, on the
  # run's detections, and on them moved to classes of their image's GT (false positives
  # there) with a copy of each GT region added at one of their scores (4 steps of
  # training find nothing: AP 0).
  assert config.eval.coco_backend == "auto"
  results = json.loads((workdir / "eval" / "4" / "coco_results.json").read_text())
  assert len(results) == 8 * config.data.synthetic.num_val  # detections_per_image each.
  gt = coco_eval.load_ground_truth(build.annotation_files(config.data, "validation"),
                                   categories.get_class_set(config.data.class_set))
  rng = np.random.default_rng(0)
  hits = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"],
               score=float(rng.choice([r["score"] for r in results])),
               segmentation=a["segmentation"])
          for a in gt.anns.values()]
  mixed = hits + [dict(r, category_id=int(rng.choice([a["category_id"]
                                                      for a in gt.imgToAnns[r["image_id"]]])))
                  for r in results]
  for iou_type in coco_eval.IOU_TYPES:
    ref, _ = coco_eval.evaluate(gt, results, iou_type, list(gt.imgs), backend="pycocotools")
    for k, v in ref.items():
      assert metrics[f"{iou_type}/{k}"] == pytest.approx(v, rel=0, abs=1e-12, nan_ok=True), k
    ref, ref_per_class = coco_eval.evaluate(gt, mixed, iou_type, list(gt.imgs),
                                            backend="pycocotools")
    got, per_class = coco_eval.evaluate(gt, mixed, iou_type, list(gt.imgs), backend="auto")
    assert 0.1 < ref["AP"] < 0.9, iou_type  # The ranking of both sets matters.
    assert got == pytest.approx(ref, rel=0, abs=1e-12, nan_ok=True), iou_type
    np.testing.assert_allclose(per_class, ref_per_class, rtol=0, atol=1e-12)
  config.eval.paste = "device"
  config.eval.official_export = True
  on_device = run.run(config, str(workdir), "eval")
  for k, v in metrics.items():
    assert on_device[k] == pytest.approx(v, abs=1e-4, nan_ok=True), k
  written = json.loads((workdir / "eval" / "4" / "metrics.json").read_text())
  assert written["step"] == 4 and "segm/AP" in written
  # The stuff class set: the official results, nothing panoptic.
  assert (workdir / "eval" / "4" / "stuff_results.json").exists()
  assert not (workdir / "eval" / "4" / "panoptic.json").exists()
  assert not any(k.startswith("panoptic") for k in on_device)

  images = tmp_path / "images"
  images.mkdir()
  for i, path in enumerate(sorted(pathlib.Path(config.data.root, "val2017").glob("*.jpg"))[:3]):
    Image.open(path).convert("L").save(images / f"img{i}.png")  # Grayscale PNGs too.
  config.predict.input_dir = str(images)
  out = pathlib.Path(run.run(config, str(workdir), "predict"))
  assert sorted(p.name for p in out.glob("img*.png")) == ["img0.png", "img1.png", "img2.png"]
  assert Image.open(out / "img0.png").size[0] > 0
  assert isinstance(json.loads((out / "coco_results.json").read_text()), list)


@pytest.mark.slow
def test_two_processes_with_uneven_shards(tmp_path):
  """Same skip decisions on both processes, and the merged scores of both shards."""
  import two_process_worker as worker  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen([sys.executable, worker.__file__, "--process_id", str(i),
                             "--port", str(port), "--dir", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  out = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    out.append(json.loads(stdout.strip().splitlines()[-1]))  # Gloo may print before it.
  # Only batch 0 is full everywhere: the mean of x over its 4 images (0, 0, 1, 1).
  assert out[0]["losses"] == out[1]["losses"] == {"x": 0.5}
  cs = categories.get_class_set("stuff")
  one = evaluator_lib.Evaluator([str(tmp_path / "gt.json")], cs, num_pictures=0,
                                coco_backend="pycocotools")
  for batch, dets in worker.data(str(tmp_path / "gt.json"), cs).values():
    one.add(batch, dets)
  expected = one.result()
  assert expected["num_images"] == 5
  assert out[0]["metrics"] == pytest.approx(expected, rel=0, abs=0, nan_ok=True)  # Exact.
  assert not (tmp_path / "eval" / "process_states").exists()


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
  variables = load.init_inference(model, jax.random.key(0))
  checkpoint.save_variables(str(path), jax.device_get(variables),
                            {"classifier_layout": "torchvision91"})


@pytest.mark.slow
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
