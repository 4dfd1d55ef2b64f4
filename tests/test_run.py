"""The run's files on a non-local filesystem: TensorFlow's in-memory `ram://`.

epath sends `gs://` paths to its TensorFlow (gfile) backend when TensorFlow is installed;
the fixture sends `ram://` there too, so this offline test takes the code path of a
bucket workdir. orbax writes arrays with tensorstore, which has no `ram://`: checkpoints
go to local disk here.
"""

import io
import json
import pathlib

from etils import epath
from etils.epath import backend
from etils.epath import gpath
from etils.epath import register
import numpy as np
from PIL import Image
import pytest

from configs import default
from configs import tiny
from maskrcnn_jax import run
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.weights import checkpoint


@pytest.fixture
def ram(monkeypatch):
  """epath accepts `ram://` (gfile backend) for the test; yields a fresh root."""
  monkeypatch.setattr(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + ("ram://",))
  monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"ram"})
  monkeypatch.setitem(gpath._URI_MAP_ROOT, "ram://", "/ram/")
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", backend.tf_backend)
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "ram://", gpath.PosixGPath)
  root = epath.Path("ram://test_run")
  yield root
  root.rmtree(missing_ok=True)


def test_train_eval_predict_outputs_on_ram(ram, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # A path taken as local would land here, e.g. ./ram:/...
  local_checkpoints = tmp_path / "local"
  real_manager = checkpoint.manager
  monkeypatch.setattr(checkpoint, "manager",
                      lambda workdir, keep: real_manager(str(local_checkpoints), keep=keep))
  config = tiny.get_config()
  config.data.root = str(tmp_path / "data")
  config.data.tfds_data_dir = str(ram / "tfds")
  config.train.stages = [default.stage("heads", "heads", steps=1, lr=0.01)]
  config.eval.checkpoint = str(local_checkpoints)
  inputs = ram / "inputs"
  inputs.mkdir(parents=True)
  image = io.BytesIO()
  Image.new("RGB", (40, 30), (90, 160, 20)).save(image, format="PNG")
  (inputs / "a.png").write_bytes(image.getvalue())
  config.predict.input_dir = str(inputs)
  workdir = ram / "workdir"

  run.write_config(config, str(workdir))
  run.run(config, str(workdir), "train_and_eval")
  evaluated = run.run(config, str(workdir), "eval")
  predicted = epath.Path(run.run(config, str(workdir), "predict"))

  assert json.loads((workdir / "config.json").read_text())["data"]["tfds_data_dir"] == str(
      ram / "tfds")
  assert {"train/total_loss", "val/total_loss", "segm/AP"} <= set(pictures.read_scalars(
      str(workdir)))
  assert any(p.name.startswith("events.out.tfevents") for p in workdir.iterdir())
  out = workdir / "eval" / "1"
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["step"] == 1 and metrics["segm/AP"] == pytest.approx(evaluated["segm/AP"])
  assert isinstance(json.loads((out / "coco_results.json").read_text()), list)
  for name in ("per_class", "per_supercategory", "per_image", "confusion"):
    assert (out / f"{name}.csv").read_text().count("\n") >= 1, name
  pngs = [p for p in out.iterdir() if p.suffix == ".png"]
  assert {"confusion", "loss_curves"} <= {p.stem for p in pngs}
  for path in pngs + [predicted / "a.png"]:
    assert np.asarray(Image.open(io.BytesIO(path.read_bytes()))).ndim == 3, path
  assert predicted == workdir / "predict"
  assert json.loads((predicted / "image_ids.json").read_text()) == {"0": str(inputs / "a.png")}
  assert isinstance(json.loads((predicted / "coco_results.json").read_text()), list)
  assert any(p.name.startswith("records_train") for p in (ram / "tfds").rglob("*.npz"))
  # Nothing but the data root, the checkpoints and the compile cache is local.
  assert sorted(p.name for p in pathlib.Path(tmp_path).iterdir()) == ["data", "local"]
