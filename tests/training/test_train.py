"""The training loop on the tiny config: end to end, resume, preemption, non-finite steps,
staged freezing, and data-parallel equivalence (1 vs 8 devices, 1 vs 2 processes)."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

from flax import traverse_util
import jax
import numpy as np
import pytest

from configs import tiny
from maskrcnn_jax.evaluation import run_eval
from maskrcnn_jax.training import optimizer
from maskrcnn_jax.training import train

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).with_name("equivalence_worker.py")


def tiny_config(tmp_path):
  config = tiny.get_config()
  config.data.root = str(tmp_path / "data")
  return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return tmp_path_factory.mktemp("tiny_data")


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_stages_freeze_resume_and_preemption(data_root, tmp_path, monkeypatch):
  config = tiny.get_config()
  config.data.root = str(data_root / "data")
  full = train.train_and_evaluate(config, str(tmp_path / "full"), evaluate=False)
  assert [s.name for s in full["stages"]] == ["heads", "4+"]
  assert int(full["state"].step) == 4
  assert all(np.isfinite(s.last_loss) for s in full["stages"])

  # Stage 1 trains the heads only; res2 and the stem (freeze_at=0 here, but "4+" does not
  # include them) never change; res4 changes in stage 2 only.
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import categories  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  model = models.build(config.model, num_classes=categories.get_class_set(
      config.data.class_set).num_classes + 1)
  mesh = train.make_mesh()
  init = flat(train.init_variables(model, config.data, jax.random.split(
      jax.random.key(config.seed), 3)[0], NamedSharding(mesh, P()))["params"])
  final = flat(full["state"].params)
  for path, value in final.items():
    if path.startswith(("backbone/stem", "backbone/res2", "backbone/res3")):
      np.testing.assert_array_equal(value, init[path], err_msg=path)
  assert any(not np.array_equal(final[p], init[p]) for p in final if p.startswith("backbone/res4"))
  assert any(not np.array_equal(final[p], init[p]) for p in final if p.startswith("rpn/"))

  # Preempted (a real SIGTERM) after step 3, then resumed: the same as uninterrupted.
  real_make = train.make_train_step

  def make_with_sigterm(mesh, **kwargs):
    step_fn = real_make(mesh, **kwargs)
    def wrapped(state, batch, rng):
      out = step_fn(state, batch, rng)
      if int(out[0].step) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return out
    return wrapped

  monkeypatch.setattr(train, "make_train_step", make_with_sigterm)
  workdir = str(tmp_path / "resumed")
  first = train.train_and_evaluate(config, workdir, evaluate=False)
  assert first["preempted"] and int(first["state"].step) == 3
  assert (pathlib.Path(workdir) / "checkpoints" / "3").exists()
  monkeypatch.setattr(train, "make_train_step", real_make)
  second = train.train_and_evaluate(config, workdir, evaluate=False)
  assert int(second["state"].step) == 4
  resumed = flat(second["state"].params)
  for path in final:
    np.testing.assert_allclose(resumed[path], final[path], rtol=1e-6, atol=1e-7, err_msg=path)
  assert second["stages"][-1].last_loss == pytest.approx(full["stages"][-1].last_loss, rel=1e-5)


def test_nonfinite_steps_are_skipped_then_stop(data_root, tmp_path, monkeypatch):
  config = tiny.get_config()
  config.data.root = str(data_root / "data")
  config.train.max_nonfinite_steps = 2
  real = train.global_batches

  def poisoned(ds, sharding):  # Every batch after the first has NaN boxes.
    for i, batch in enumerate(real(ds, sharding)):
      if i >= 1:
        batch["boxes"] = batch["boxes"] * np.nan
      yield batch

  monkeypatch.setattr(train, "global_batches", poisoned)
  with pytest.raises(FloatingPointError, match="2 steps in a row had a non-finite"):
    train.train_and_evaluate(config, str(tmp_path / "nan"), evaluate=False)
  # Saved (asynchronously) at step 2, complete on disk before the error reaches main.
  assert (tmp_path / "nan" / "checkpoints" / "2" / "state").is_dir()


def test_each_step_is_evaluated_once(data_root, tmp_path, monkeypatch):
  """Periodic evaluation on both stage boundaries, then a restart of the finished run."""
  config = tiny.get_config()
  config.data.root = str(data_root / "data")
  config.train.eval_every_steps = 2  # The stages end at steps 2 and 4.
  evaluated, val_losses = [], []
  monkeypatch.setattr(run_eval, "validation_loss",
                      lambda *args, **kwargs: val_losses.append(1) or {"total_loss": 1.0})
  monkeypatch.setattr(run_eval, "evaluate",
                      lambda config, model, variables, mesh, workdir, step, **kwargs:
                      evaluated.append(step) or {"segm/AP": float(step)})
  result = train.train_and_evaluate(config, str(tmp_path), evaluate=True)
  assert evaluated == [2, 4] and len(val_losses) == 2
  assert result["metrics"]["segm/AP"] == 4.0
  again = train.train_and_evaluate(config, str(tmp_path), evaluate=True)  # Trained: eval only.
  assert evaluated == [2, 4, 4] and again["metrics"]["segm/AP"] == 4.0


def test_nonfinite_step_leaves_state_unchanged():
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(WORKER.parent))
  import equivalence_worker  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  model = models.build(config.model, num_classes=3)
  mesh = train.make_mesh()
  replicated = NamedSharding(mesh, P())
  variables = train.init_variables(model, config.data, jax.random.key(0), replicated)
  stage = config.train.stages[0]
  mask = optimizer.trainable_mask(variables["params"], "heads", freeze_at=0)
  tx = optimizer.make_optimizer(config.train, stage)
  state = train.create_state(variables, tx, mask, replicated)
  before = flat(state.params)
  step = train.make_train_step(mesh, model=model, tx=tx, mask=mask,
                               lr_fn=optimizer.learning_rate(config.train, stage), stage_start=0)
  batch = equivalence_worker.batch_of(2, config)
  batch["boxes"][0, 0, 0] = np.nan
  state, metrics = step(state, jax.device_put(batch, NamedSharding(mesh, P(train.AXIS))),
                        jax.random.key(1))
  assert float(metrics["skipped"]) == 1.0 and int(state.nonfinite_total) == 1
  after = flat(state.params)
  for path in before:
    np.testing.assert_array_equal(after[path], before[path], err_msg=path)


def run_worker(*args, devices=1):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result_of(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])  # Gloo may print before it.


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_one_device_eight_devices_two_processes_agree():
  """Same losses and parameters (rtol 1e-4: only float summation order differs)."""
  single = result_of(run_worker(devices=1))
  eight = result_of(run_worker(devices=8))
  port = free_port()
  procs = [run_worker("--process_id", str(i), "--num_processes", "2", "--port", str(port))
           for i in range(2)]
  two = [result_of(p) for p in procs]
  assert (single["devices"], eight["devices"], two[0]["devices"]) == (1, 8, 2)
  for other in (eight, *two):
    np.testing.assert_allclose(other["losses"], single["losses"], rtol=1e-4)
    np.testing.assert_allclose(other["params"], single["params"], rtol=1e-4)
  assert single["losses"][-1] < single["losses"][0]


def test_resume_on_other_topology_is_logged(caplog):
  n = jax.device_count()
  with caplog.at_level("INFO"):
    train._log_topology_change({"process_count": jax.process_count(), "device_count": n})
  assert not caplog.records
  with caplog.at_level("INFO"):
    train._log_topology_change({"process_count": 4, "device_count": 2 * n})
  assert f"Resuming with {jax.process_count()} processes (saved with 4): same data order" \
      in caplog.text
  assert f"Resuming on {n} devices (saved on {2 * n})" in caplog.text
