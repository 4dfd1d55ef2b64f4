"""`--mode=inspect` and the inspection notebooks on a 2-step run of the tiny config."""

import json
import pathlib
import pickle
import runpy

import numpy as np
from PIL import Image
import pytest

from configs import default
from configs import tiny
from maskrcnn_jax import run
from maskrcnn_jax.inspection import notebook

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


@pytest.fixture(scope="module")
def inspected(trained):
  """(files `--mode=inspect` wrote, as `section/name`; the folder holding them)."""
  config, workdir = trained
  return run.run(config, str(workdir), "inspect"), workdir / "inspect"


def test_inspect_mode_writes_every_picture(trained, inspected):
  config, _ = trained
  written, root = inspected

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


@pytest.mark.parametrize("name, sections", [("inspect_data", SECTIONS[:1]),
                                            ("inspect_model", SECTIONS[1:])])
def test_notebook_writes_what_inspect_mode_writes(trained, inspected, tmp_path, monkeypatch,
                                                  name, sections):
  """The notebooks, run as scripts on the run's config, write the same files, byte for byte."""
  config, workdir = trained
  _, root = inspected
  (tmp_path / "config.pkl").write_bytes(pickle.dumps(config))
  (tmp_path / "config.py").write_text(
      "import pathlib\nimport pickle\n\n\ndef get_config():\n"
      "  return pickle.loads((pathlib.Path(__file__).parent / 'config.pkl').read_bytes())\n")
  out = tmp_path / "out"
  monkeypatch.setenv("INSPECT_CONFIG", str(tmp_path / "config.py"))
  monkeypatch.setenv("INSPECT_DATA_ROOT", config.data.root)
  monkeypatch.setenv("INSPECT_WORKDIR", str(workdir))
  monkeypatch.setenv("INSPECT_OUT", str(out))
  runpy.run_path(str(REPO / "docs" / "notebooks" / f"{name}.py"), run_name="__main__")
  assert sorted(p.name for p in out.iterdir()) == sorted(sections)
  for section in sections:
    names = sorted(p.name for p in (root / section).iterdir())
    assert sorted(p.name for p in (out / section).iterdir()) == names, section
    for n in names:
      assert (out / section / n).read_bytes() == (root / section / n).read_bytes(), n


def test_gallery_shows_pictures_values_and_tables():
  html = notebook.Gallery({"s/a.png": np.zeros((2, 2, 3), np.uint8), "s/b.json": {"x": 1},
                           "s/c.csv": [{"k": i} for i in range(12)]})._repr_html_()
  assert html.count('<img src="data:image/png;base64,') == 1
  assert '"x": 1' in html
  assert html.count("<tr>") == 1 + notebook.MAX_ROWS and "12 rows" in html
