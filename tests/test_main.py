"""main.py's command line: overrides reach the config; bad ones exit with one line.

Flag parsing and `main.main` run in this process (`exit_message`); a real `main.py` process
is started where the process itself is what is tested: the exit code of a preempted run.
"""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest

import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A clean environment, plus the tests' compile settings (tests/conftest.py): main.py's
# programs compile unoptimised, once per suite.
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
       **{k: os.environ[k] for k in ("JAX_COMPILATION_CACHE_DIR",
                                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}}


def exit_message(*args) -> str:
  """What main.py exits with (its last line on stderr) for `args`, run in this process."""
  code = exit_code(*args)
  assert isinstance(code, str)  # A message: Python prints it and exits with 1.
  return code


def exit_code(*args) -> int | str:
  """main.py's `sys.exit` argument for `args`, run in this process."""
  argv = ["main.py", *args]
  absl_level = logging.getLogger("absl").level  # Parsing sets it from --verbosity.
  try:  # ml_collections reads the `--config.` overrides from sys.argv.
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as e:
      main.main(main.parse_flags(argv))
  finally:  # The next call parses afresh: the config's override flags are defined per parse.
    main.FLAGS.unparse_flags()
    for name in [n for n in main.FLAGS if n.startswith("config.")]:
      delattr(main.FLAGS, name)
    logging.getLogger("absl").setLevel(absl_level)
  return e.value.code


@pytest.mark.parametrize("override, expected", [
    ("--config.no_such_key=1", "Invalid config: unknown key 'no_such_key' in --config.no_such_key=1"),
    ("--config.model.depth=77", "Invalid config: config.model.depth = 77: must be one of 18, 34, 50, 101, 152"),
    ("--config.train.stages[7].lr=0.1", "Invalid config: config.train.stages[7]: out of range, "
     "config.train.stages has 3 stages (0..2) in --config.train.stages[7].lr=0.1"),
])
def test_bad_override_exits_with_one_line(tmp_path, override, expected):
  assert exit_message("--config", str(ROOT / "configs/default.py"), "--workdir", str(tmp_path),
                      override) == expected


def test_override_reaches_the_config(tmp_path):
  """The overridden value is what validation sees, and nothing runs after a bad config."""
  assert exit_message("--config", str(ROOT / "configs/default.py"), "--workdir", str(tmp_path),
                      "--config.data.root=/data", "--config.data.max_size=700") == (
      "Invalid config: config.data.max_size = 700: must be >= the largest data.min_size (800)")
  assert not (tmp_path / "config.json").exists()


def test_resolved_config_written(tmp_path):
  from configs import default  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import run  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model.depth = 50
  run.write_config(config, str(tmp_path))
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["model"]["depth"] == 50
  assert written["train"]["stages"][1]["trainable"] == "4+"


@pytest.mark.parametrize("mode", ["eval", "predict", "inspect"])
def test_other_modes_write_their_config_beside_their_outputs(tmp_path, mode):
  """Only training writes config.json, the resume guard's reference."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import run  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  run.write_config(config, str(tmp_path), "train")
  config.seed = 7
  run.write_config(config, str(tmp_path), mode)
  assert json.loads((tmp_path / mode / "config.json").read_text())["seed"] == 7
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
  assert len(list((tmp_path / "configs").iterdir())) == 1


def test_only_divergence_exits_3(tmp_path, monkeypatch):
  from maskrcnn_jax import run  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import training  # pylint: disable=g-import-not-at-top
  errors = [training.DivergenceError("3 steps in a row had a non-finite loss"),
            FloatingPointError("overflow in a host computation")]
  def fail(*args, **kwargs):
    raise errors.pop(0)
  monkeypatch.setattr(run, "validate", lambda *args: None)
  monkeypatch.setattr(run, "check_resume", lambda *args: None)
  monkeypatch.setattr(run, "run", fail)
  args = ["--config", str(ROOT / "configs/tiny.py"), "--workdir", str(tmp_path)]
  assert exit_code(*args) == main.EXIT_DIVERGED
  with pytest.raises(FloatingPointError, match="overflow"):  # A crash: Python exits with 1.
    exit_code(*args)


@pytest.mark.slow
def test_preempted_run_exits_143_and_a_changed_resume_is_refused(tiny_data, tmp_path):
  """SIGTERM during the first stage: checkpoint, exit 143; resuming with another seed: 1."""
  workdir = tmp_path / "workdir"
  args = ["--config", str(ROOT / "configs/tiny.py"), "--workdir", str(workdir), "--mode",
          "train", f"--config.data.root={tiny_data}"]
  log = tmp_path / "stderr.txt"
  with log.open("w") as err:
    proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, stderr=err,
                            stdout=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while "Stage heads" not in log.read_text() and time.time() < deadline:
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # Before the first step: it stops after that step.
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
  steps = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps and int(steps[0]) < 4
  last = exit_message(*args, "--config.seed=1")
  assert last.startswith(f"Invalid config: resuming {workdir} would change the data order")
  assert "seed (0 -> 1)" in last


def test_missing_pretrained_weights_name_the_converter(tmp_path):
  last = exit_message("--config", str(ROOT / "configs/default.py"), "--workdir",
                      str(tmp_path / "run"),
                      f"--config.data.root={tmp_path}",  # Exists: the weights are missing.
                      f"--config.init.checkpoint={tmp_path}/weights/d2_r101")
  assert last.startswith(f"Invalid config: config.init.checkpoint = '{tmp_path}/weights/d2_r101'"
                         ": no converted weights there; convert them once with `python -m "
                         "maskrcnn_jax.weights.convert_detectron2 --input FILE.pkl")
  assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow  # The data check after main's start-up (TensorFlow's import).
def test_unknown_category_stops_the_run_in_one_line(tmp_path):
  from maskrcnn_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  root = tmp_path / "data"
  synthetic.write_synthetic(root, num_train=2, num_val=1, image_size=32, seed=0)
  path = root / "annotations" / "stuff_train2017.json"
  data = json.loads(path.read_text())
  data["annotations"][0]["category_id"] = 999
  path.write_text(json.dumps(data))
  assert exit_message(
      "--config", str(ROOT / "configs/tiny.py"), "--workdir", str(tmp_path / "run"),
      "--mode", "inspect", f"--config.data.root={root}", "--config.data.synthetic.enabled=False"
  ) == (f"Invalid data: {path}: unknown category_id in 1 of 7 annotations (ids 999; first "
        "annotation 10000000): not COCO-Stuff's, a wrong annotation file or class set")
