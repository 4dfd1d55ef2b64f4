"""`--mode=inspect` and the inspection notebooks on a 2-step run of the tiny config."""

import json
import pathlib
import runpy

import numpy as np
from PIL import Image
import pytest

from configs import default
from configs import tiny
from maskrcnn_jax import run

SECTIONS = ("data", "anchors", "rpn", "roi_heads", "predictions", "weights")
REPO = pathlib.Path(__file__).parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir) of a tiny run trained one step per stage (heads, 3+)."""
  root = tmp_path_factory.mktemp("inspect")
  config = tiny.get_config()
  config.data.root = str(root / "data")
  config.train.stages = [default.stage("heads", "heads", steps=1, lr=0.001),
                         default.stage("3+", "3+", steps=1, lr=0.001)]
  config.inspect.num_images = 2
  run.run(config, str(root / "run"), "train")
  return config, root / "run"


def test_inspect_mode_writes_every_picture(trained):
  config, workdir = trained
  written = run.run(config, str(workdir), "inspect")

  root = workdir / "inspect"
  summary = json.loads((root / "summary.json").read_text())
  assert summary["trained"] and summary["step"] == 2
  for section in SECTIONS:
    assert any(name.startswith(f"{section}/") and name.endswith(".png") for name in written), section
  expected = ["data/class_histogram.png", "data/instance_sizes.png", "data/repeat_factors.png",
              "data/augmentation.png", "anchors/levels.png", "predictions/confusion.png",
              "predictions/segm_ap.png", "weights/norms.png", "weights/histograms.png",
              "weights/stages.png"]
  for name in expected:
    assert name in written
  assert sum(n.startswith("data/gt_") for n in written) == 2
  assert sum(n.startswith("rpn/after_nms_") for n in written) == 2
  for name in written:
    path = root / name
    assert path.stat().st_size > 0, name
    if name.endswith(".png"):
      image = np.asarray(Image.open(path))
      assert image.ndim == 3 and image.std() > 0, name  # Not a blank picture.

  recall = json.loads((root / "rpn" / "recall.json").read_text())
  assert recall["num_gt"] > 0 and 0 <= recall["recall@0.7"] <= recall["recall@0.5"] <= 1
  stats = json.loads((root / "data" / "statistics.json").read_text())
  assert stats["num_images"] == config.data.synthetic.num_train
  # The stage table: heads trains no backbone parameter, 3+ trains res3..res5.
  stages = {r.split(",")[0]: r.split(",") for r in
            (root / "weights" / "stages.csv").read_text().splitlines()}
  header = stages["module"]
  res3 = dict(zip(header, stages["backbone/res3"]))
  assert float(res3["heads"]) == 0 and float(res3["3+"]) == 1


@pytest.mark.parametrize("name, expected", [
    ("inspect_data", ["gt_1.png", "class_histogram.png", "repeat_factors.png",
                      "augmentation.png"]),
    ("inspect_model", ["anchors.png", "rpn_targets.png", "before_nms.png", "after_nms.png",
                       "rois.png", "mask_targets.png", "segm_ap.png", "stages.png"]),
])
def test_notebooks_run_as_scripts(trained, tmp_path, monkeypatch, name, expected):
  config, workdir = trained
  monkeypatch.setenv("INSPECT_CONFIG", str(REPO / "configs" / "tiny.py"))
  monkeypatch.setenv("INSPECT_DATA_ROOT", config.data.root)
  monkeypatch.setenv("INSPECT_WORKDIR", str(workdir))
  monkeypatch.setenv("INSPECT_OUT", str(tmp_path))
  runpy.run_path(str(REPO / "docs" / "notebooks" / f"{name}.py"), run_name="__main__")
  for picture in expected:
    assert (tmp_path / picture).stat().st_size > 0, picture
