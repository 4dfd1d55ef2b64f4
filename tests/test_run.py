"""What main.py calls: validation of data and stages, the resume guard, the config history,
and the run's files on a non-local filesystem (TensorFlow's in-memory `ram://`).

epath sends `gs://` paths to its TensorFlow (gfile) backend when TensorFlow is installed;
the `ram` fixture sends `ram://` there too, so the offline test takes the code path of a
bucket workdir. orbax writes arrays with tensorstore, which has no `ram://`: checkpoints
go to local disk there.
"""

import io
import json
import logging
import pathlib

from etils import epath
from etils.epath import backend
from etils.epath import gpath
from etils.epath import register
import jax
import numpy as np
from PIL import Image
import pytest

from configs import default
from configs import tiny
from maskrcnn_jax import models
from maskrcnn_jax import run
from maskrcnn_jax import validation
from maskrcnn_jax.data import build
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import load
from maskrcnn_jax.weights import options


def saved_workdir(tmp_path, config, *, checkpoint=True):
  """A workdir as a run of `config` leaves it: config.json and (optionally) a checkpoint."""
  run.write_config(config, str(tmp_path))
  if checkpoint:
    (tmp_path / "checkpoints" / "2" / "state").mkdir(parents=True)
  return str(tmp_path)


def test_config_history_is_kept(tmp_path):
  config = default.get_config()
  run.write_config(config, str(tmp_path))
  config.model.depth = 50
  run.write_config(config, str(tmp_path))
  history = sorted((tmp_path / "configs").iterdir())
  assert len(history) == 2 and all(p.name.startswith("config-") for p in history)
  depths = {json.loads(p.read_text())["model"]["depth"] for p in history}
  assert depths == {101, 50}
  assert json.loads((tmp_path / "config.json").read_text())["model"]["depth"] == 50


@pytest.mark.parametrize("change, keys", [
    (lambda c: setattr(c.train, "global_batch_size", 4), ["train.global_batch_size (2 -> 4)"]),
    (lambda c: setattr(c, "seed", 1), ["seed (0 -> 1)"]),
    (lambda c: setattr(c.data, "image_size", 512), ["data.image_size (1024 -> 512)"]),
    (lambda c: setattr(c.data, "class_set", "stuff_no_other"), ["data.class_set"]),
    (lambda c: setattr(c.train.stages[1], "steps", 5), ["train.stages[1].steps (60000 -> 5)"]),
    (lambda c: setattr(c.train.stages[2], "trainable", "all"), ["train.stages[2].trainable"]),
    (lambda c: setattr(c.train.stages[0], "name", "h"), ["train.stages[0].name"]),
    (lambda c: c.train.stages.pop(), ["train.stages[2].name ('3+' -> absent)", "train.stages[2].steps"]),
])
def test_resume_refuses_a_changed_data_order_or_schedule(tmp_path, change, keys):
  config = default.get_config()
  config.data.root = "/data"
  workdir = saved_workdir(tmp_path, config)
  change(config)
  with pytest.raises(validation.ConfigError) as e:
    run.check_resume(config, workdir)
  message = str(e.value)
  assert "\n" not in message and "allow_config_change=True" in message
  assert all(k in message for k in keys), message


def test_resume_allows_other_changes_and_the_override(tmp_path, caplog):
  config = default.get_config()
  workdir = saved_workdir(tmp_path, config)
  config.train.stages[1].lr = 0.001
  config.data.eval_batch_size = 8
  config.eval.num_pictures = 0
  config.data.root = "gs://bucket/coco"
  config.data.read_parallelism = 64
  config.data.build_workers = 96
  with caplog.at_level(logging.INFO):
    run.check_resume(config, workdir)  # Learning rates, evaluation, where the data is read.
  assert "train.stages[1].lr (0.0002 -> 0.001)" in caplog.text
  assert "data.root ('' -> 'gs://bucket/coco')" in caplog.text
  assert "data.read_parallelism (16 -> 64)" in caplog.text
  assert "data.build_workers (0 -> 96)" in caplog.text
  config.seed = 7
  config.train.allow_config_change = True
  with caplog.at_level(logging.WARNING):
    run.check_resume(config, workdir)
  assert "allow_config_change=True despite" in caplog.text and "seed (0 -> 7)" in caplog.text


def test_a_run_saved_before_a_key_was_added_resumes_with_its_old_value(tmp_path):
  config = tiny.get_config()
  workdir = saved_workdir(tmp_path, config)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["data"]["aspect_grouping"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  run.check_resume(config, workdir)  # Absent: the order it had, ungrouped.
  config.data.resize, config.data.aspect_grouping = "shortest_edge", True
  with pytest.raises(validation.ConfigError, match=r"data.aspect_grouping \(False -> True\)"):
    run.check_resume(config, workdir)


def test_a_new_run_or_one_without_checkpoints_is_not_a_resume(tmp_path):
  config = default.get_config()
  run.check_resume(config, str(tmp_path / "new"))
  workdir = saved_workdir(tmp_path / "crashed", config, checkpoint=False)
  config.seed = 3
  run.check_resume(config, workdir)


def test_missing_data_root_is_one_line(tmp_path):
  config = tiny.get_config()
  config.data.root = str(tmp_path / "nowhere")
  config.data.synthetic.enabled = False
  with pytest.raises(validation.ConfigError, match=r"config.data.root = '.*nowhere': no such "):
    run.validate(config, "eval")


def test_trainable_matching_nothing_is_rejected_before_compile():
  config = tiny.get_config()
  config.train.stages[1] = default.stage("4+", ("backbone/res4/.*", "roi_head/.*"), steps=2,
                                         lr=0.1)
  run.validate(config, "eval")  # Only training reads the stages.
  with pytest.raises(validation.ConfigError,
                     match=r"config.train.stages\[1\].trainable = .*'roi_head/\.\*' matches no"):
    run.validate(config, "train")  # jax.eval_shape of the init: no compile, no backend.


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


@pytest.mark.slow(seconds=50)
def test_train_eval_predict_outputs_on_ram(ram, tiny_data, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # A path taken as local would land here, e.g. ./ram:/...
  local_checkpoints = tmp_path / "local"
  real_manager = checkpoint.manager
  monkeypatch.setattr(checkpoint, "manager",
                      lambda workdir, keep: real_manager(str(local_checkpoints), keep=keep))
  config = tiny.get_config()
  config.data.root = tiny_data
  # TFDS builds into a temporary directory it renames, and ram:// cannot rename directories:
  # built locally, then copied without the record index (which the run writes).
  local_tfds = pathlib.Path(build.data_dir(config.data))
  for path in local_tfds.rglob("*"):
    if path.is_file() and path.suffix != ".npz":
      target = ram / "tfds" / path.relative_to(local_tfds)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(path.read_bytes())
  config.data.tfds_data_dir = str(ram / "tfds")
  config.train.stages = config.train.stages[:1]  # Heads, 2 steps.
  config.eval.checkpoint = str(local_checkpoints)
  inputs = ram / "inputs"
  inputs.mkdir(parents=True)
  image = io.BytesIO()
  Image.new("RGB", (40, 30), (90, 160, 20)).save(image, format="PNG")
  (inputs / "a.png").write_bytes(image.getvalue())
  config.predict.input_dir = str(inputs)
  config.eval.pictures = True
  workdir = ram / "workdir"

  run.write_config(config, str(workdir))
  trained = run.run(config, str(workdir), "train_and_eval")
  (workdir / "eval").rmtree()  # ram:// appends to a file written again: eval rewrites it.
  evaluated = run.run(config, str(workdir), "eval")
  assert evaluated["segm/AP"] == pytest.approx(trained["metrics"]["segm/AP"])
  predicted = epath.Path(run.run(config, str(workdir), "predict"))

  assert json.loads((workdir / "config.json").read_text())["data"]["tfds_data_dir"] == str(
      ram / "tfds")
  assert {"train/total_loss", "val/total_loss", "segm/AP"} <= set(pictures.read_scalars(
      str(workdir)))
  assert any(p.name.startswith("events.out.tfevents") for p in workdir.iterdir())
  out = workdir / "eval" / "2"
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["step"] == 2 and metrics["segm/AP"] == pytest.approx(evaluated["segm/AP"])
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
  indexes = list(local_tfds.rglob("records_*.npz"))
  assert len(indexes) == 2  # train, validation: written again on ram:// by the run.
  for index in indexes:
    assert (ram / "tfds" / index.relative_to(local_tfds)).read_bytes() == index.read_bytes()
  # Nothing but the checkpoints is local (the data root and its build are elsewhere).
  assert sorted(p.name for p in tmp_path.iterdir()) == ["local"]


@pytest.fixture
def no_work(monkeypatch):
  """Fails a test that builds records; yields the compiles (lowerings) seen."""
  def build_records(*args, **kwargs):
    raise AssertionError("records built before the weights were validated")
  monkeypatch.setattr(build, "prepare", build_records)
  compiles = []
  listener = lambda name, secs, **kw: compiles.append(name) if name in _COMPILE_EVENTS else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  yield compiles
  jax.monitoring.unregister_event_duration_listener(listener)


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def tiny_weights(path, depth=18, **meta):
  """The tiny model's variables (zeros; ResNet-`depth`) as converted weights."""
  config = tiny.get_config()
  config.model.depth = depth
  model = models.build(config.model, num_classes=4)
  shapes = jax.eval_shape(lambda: load.init_inference(model, jax.random.key(0)))
  checkpoint.save_variables(str(path), jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                            {**options.TORCHVISION, **meta})
  return str(path)


def weights_error(config, mode, workdir) -> str:
  with pytest.raises(validation.ConfigError) as e:
    run.validate(config, mode, str(workdir))
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.mark.slow
def test_weight_errors_are_one_line_before_any_work(tmp_path, no_work):
  config = tiny.get_config()
  config.data.class_set = "coco"  # The 91-way classifier below: class layers aside.
  config.init.checkpoint = str(tmp_path / "model_final_f10217.pkl")
  (tmp_path / "model_final_f10217.pkl").write_bytes(b"")
  assert weights_error(config, "train", tmp_path / "run") == (
      f"config.init.checkpoint = '{tmp_path}/model_final_f10217.pkl': a weight file, not "
      "converted weights; convert it once with `python -m maskrcnn_jax.weights."
      f"convert_detectron2 --input {tmp_path}/model_final_f10217.pkl --output "
      f"{tmp_path}/model_final_f10217` and set config.init.checkpoint = "
      f"'{tmp_path}/model_final_f10217'")
  config.init.checkpoint = str(tmp_path / "resnet50.pth")
  (tmp_path / "resnet50.pth").write_bytes(b"")
  assert "convert_torchvision --input" in weights_error(config, "train", tmp_path / "run")

  (tmp_path / "empty").mkdir()
  config.init.checkpoint = str(tmp_path / "empty")
  assert weights_error(config, "train", tmp_path / "run") == (
      f"config.init.checkpoint = '{tmp_path}/empty': no finished checkpoint in {tmp_path}/empty")

  config.init.checkpoint = tiny_weights(tmp_path / "r34", depth=34)
  message = weights_error(config, "train", tmp_path / "run")
  assert message.startswith(f"config.init.checkpoint = '{tmp_path}/r34': its parameters do "
                            "not fit the model (")
  assert message.endswith("likely cause: the weights hold a ResNet-34, config.model.depth = 18")

  config.init.checkpoint = tiny_weights(tmp_path / "d2", **options.DETECTRON2)
  assert "set their options with detectron2_weights(config.model)" in weights_error(
      config, "train", tmp_path / "run")
  (tmp_path / "d2" / "metadata.json").write_text("{not json")
  assert "config.init.checkpoint" in weights_error(config, "train", tmp_path / "run")

  config.init.checkpoint = tiny_weights(tmp_path / "ok")
  run.validate(config, "train", str(tmp_path / "run"))
  config.eval.checkpoint = str(tmp_path / "nowhere")
  assert weights_error(config, "eval", tmp_path / "run") == (
      f"config.eval.checkpoint = '{tmp_path}/nowhere': no such file or directory")
  config.eval.checkpoint = str(tmp_path / "r34")
  assert "ResNet-34" in weights_error(config, "eval", tmp_path / "run")
  assert not no_work


def test_own_checkpoint_options_are_checked_before_any_work(tmp_path, no_work,
                                                            monkeypatch):
  """Eval of the workdir's own checkpoint: its recorded options are checked by `validate`,
  once, in one line (the loaders leave the check to it); a resume is check_resume's."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  step = tmp_path / "run" / "checkpoints" / "2"
  checkpoint.save_variables(str(step), {"params": {"w": np.zeros(1, np.float32)}})
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    checkpointer.save(step / "meta", dict(options.DETECTRON2))
  calls = []
  check = load.check_options
  monkeypatch.setattr(load, "check_options", lambda *a, **k: (calls.append(a), check(*a, **k)))
  message = weights_error(config, "eval", tmp_path / "run")
  assert message.startswith(f"config.model.input_format = 'RGB': the weights at "
                            f"'{tmp_path}/run' were made with 'BGR'")
  run.validate(config, "train", str(tmp_path / "run"))  # A resume: check_resume's to guard.
  config.model.update(options.DETECTRON2)
  run.validate(config, "eval", str(tmp_path / "run"))
  assert len(calls) == 2 and not no_work
