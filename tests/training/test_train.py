"""The training loop on the tiny config: end to end, resume, preemption, non-finite steps,
staged freezing, and data-parallel equivalence (1 x 4 devices against 4 x 1 processes,
preempted by SIGTERM and resumed as 2 x 2, started as the README's manual launch: train and
validation losses); a SIGTERM during a resumed job's start-up."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import main
from configs import tiny
from maskrcnn_jax.evaluation import run_eval
from maskrcnn_jax.training import optimizer
from maskrcnn_jax.training import train

# Slow: trainings and multi-process jobs (measured 16-170 s each on 2 cores).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).with_name("equivalence_worker.py")


def flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_stages_freeze_resume_and_preemption(tiny_run, tmp_path, monkeypatch):
  config, _, full = tiny_run
  config = config.copy_and_resolve_references()
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


def test_nonfinite_steps_are_skipped_then_stop(tiny_data, tmp_path, monkeypatch):
  config = tiny.get_config()
  config.data.root = tiny_data
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


def test_each_step_is_evaluated_once(tiny_data, tmp_path, monkeypatch):
  """Periodic evaluation on both stage boundaries, then a restart of the finished run."""
  config = tiny.get_config()
  config.data.root = tiny_data
  config.train.eval_every_steps = 2  # The stages end at steps 2 and 4.
  evaluated, val_losses, made = [], [], []

  class Evaluation:  # Made once per run (the predict step compiles once), called per step.
    def __init__(self, *args):
      made.append(args)

    def __call__(self, variables, workdir, step, **kwargs):
      evaluated.append(step)
      return {"segm/AP": float(step)}

  monkeypatch.setattr(run_eval, "validation_loss",
                      lambda *args, **kwargs: val_losses.append(1) or {"total_loss": 1.0})
  monkeypatch.setattr(run_eval, "Evaluation", Evaluation)
  result = train.train_and_evaluate(config, str(tmp_path), evaluate=True)
  assert evaluated == [2, 4] and len(val_losses) == 2 and len(made) == 1
  assert result["metrics"]["segm/AP"] == 4.0
  again = train.train_and_evaluate(config, str(tmp_path), evaluate=True)  # Trained: eval only.
  assert evaluated == [2, 4, 4] and again["metrics"]["segm/AP"] == 4.0 and len(made) == 2


def painted_batch(n: int, config) -> dict[str, np.ndarray]:
  """n copies of one 64² image with two painted instances."""
  batch = train.dummy_batch(config.data, n)
  rows = np.arange(64)[:, None, None]
  batch["image"][:] = (rows * 3 + np.arange(3) * 40).astype(np.uint8)
  batch["image"][:, 8:40, 8:40] = (200, 30, 30)
  batch["image"][:, 20:50, 30:60] = (30, 200, 30)
  batch["boxes"][:, :2] = [[8, 8, 40, 40], [30, 20, 60, 50]]
  batch["classes"][:, :2] = [1, 2]
  batch["masks"][:, :2] = 1
  batch["valid"][:, :2] = True
  return batch


def test_nonfinite_step_leaves_state_unchanged():
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
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
  step = train.make_train_step(mesh, model=model, tx=tx, mask=mask)
  batch = painted_batch(2, config)
  batch["boxes"][0, 0, 0] = np.nan
  batch["num_truncated"][:] = (3, 4)
  state, metrics = step(state, jax.device_put(batch, NamedSharding(mesh, P(train.AXIS))),
                        jax.random.key(1))
  assert float(metrics["skipped"]) == 1.0 and int(state.nonfinite_total) == 1
  assert int(metrics["num_truncated"]) == 7  # Summed over the global batch.
  after = flat(state.params)
  for path in before:
    np.testing.assert_array_equal(after[path], before[path], err_msg=path)


# The equivalence runs: heads 2 steps, then 4+ 4 steps, so that a run resumed at the stage
# boundary (step 2) can be preempted inside a stage and resumed again.
STEPS = 6
RESUME_AT = 2


def launch(workdir, data_root, *, processes: int, devices: int, sigterm_after: int | str = 0):
  """The README's manual launch of main.py on localhost (tiny config, global batch 4).

  Several processes run main.py through equivalence_worker.py, which compiles the job's
  programs once. sigterm_after: process 0 gets SIGTERM after that train step, or once
  restored (`"restore"`); every process must then exit with main.EXIT_PREEMPTED.
  """
  port = free_port()
  procs = []
  for i in range(processes):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_NUM", "JAX_PROCESS"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(i))
      # Each program compiles once, in process 0 (equivalence_worker.py); a program that
      # never arrives fails the run in minutes, not jax's default 20.
      env.update(JAX_SHARE_BINARY_BETWEEN_HOSTS="true",
                 JAX_SHARE_BINARY_BETWEEN_HOSTS_TIMEOUT_MS="300000")
    worker = processes > 1 or sigterm_after
    program = [str(WORKER), str(sigterm_after)] if worker else ["main.py"]
    procs.append(subprocess.Popen(
        [sys.executable, *program, "--config", "configs/tiny.py", "--workdir", str(workdir),
         "--mode", "train", f"--config.data.root={data_root}",
         "--config.train.global_batch_size=4", "--config.data.eval_batch_size=4",
         f"--config.train.stages[1].steps={STEPS - RESUME_AT}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  for proc in procs:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == (main.EXIT_PREEMPTED if sigterm_after else 0), out[-3000:]


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def val_loss_of(workdir):
  """{step: val/total_loss} of a run."""
  from maskrcnn_jax.evaluation import pictures  # pylint: disable=g-import-not-at-top
  steps, losses = pictures.read_scalars(str(workdir))["val/total_loss"]
  return dict(zip(steps.tolist(), losses.tolist()))


def run_of(workdir):
  """(train/total_loss per step, the last checkpoint's params, its step) of a run."""
  from maskrcnn_jax.evaluation import pictures  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.weights import checkpoint  # pylint: disable=g-import-not-at-top
  steps, losses = pictures.read_scalars(str(workdir))["train/total_loss"]
  state = checkpoint.load_variables(str(workdir))
  return dict(zip(steps.tolist(), losses.tolist())), flat(state["params"]), int(state["step"])


def assert_same_run(run, reference, name):
  """The run's steps (those after RESUME_AT) took the reference's losses and end in its
  parameters."""
  losses, params, step = run
  ref_losses, ref_params, ref_step = reference
  assert step == ref_step == STEPS, name
  assert sorted(losses) == list(range(RESUME_AT + 1, STEPS + 1)), name
  assert sorted(ref_losses) == list(range(1, STEPS + 1)), name
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [ref_losses[s] for s in sorted(losses)], rtol=1e-4, err_msg=name)
  assert params.keys() == ref_params.keys()
  for path in ref_params:
    np.testing.assert_allclose(params[path], ref_params[path], rtol=1e-4, atol=1e-6,
                               err_msg=f"{name}: {path}")


@pytest.fixture(scope="module")
def equivalence_reference(tiny_data, tmp_path_factory):
  """(data root, the run of 1 process x 4 devices the other topologies must match, its
  workdir).

  Every device gets another image (global batch 4 of 8 distinct synthetic images), read by
  the real input pipeline: a wrongly assembled global batch changes the losses.
  """
  from maskrcnn_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("1x4")
  launch(workdir, tiny_data, processes=1, devices=4)
  config = tiny.get_config()
  config.data.root = tiny_data
  for batch, _ in zip(pipeline.create_train_dataset(
      config.data, global_batch_size=4, seed=config.seed).as_numpy_iterator(), range(4)):
    pixels = {batch["image"][i].tobytes() for i in range(4)}
    assert len(set(batch["image_id"].tolist())) == len(pixels) == 4
  run = run_of(workdir)
  assert run[0][STEPS] < run[0][1]
  return tiny_data, run, workdir


def resumed_at_stage_boundary(reference, workdir):
  """`workdir` as the reference run left it at step RESUME_AT (the end of its heads stage):
  its config and that checkpoint. The layouts resume there, so that each run compiles and
  takes the 4+ stage only."""
  _, _, ref_workdir = reference
  shutil.copytree(ref_workdir / "configs", workdir / "configs")
  shutil.copy(ref_workdir / "config.json", workdir / "config.json")
  shutil.copytree(ref_workdir / "checkpoints" / str(RESUME_AT),
                  workdir / "checkpoints" / str(RESUME_AT))


@pytest.mark.slow(seconds=180)
def test_preempted_four_processes_resume_as_two_and_train_as_one(equivalence_reference,
                                                                 tmp_path):
  """4 processes x 1 device from the stage boundary, SIGTERM, then 2 processes x 2 devices
  to the end: every step after the boundary is taken by one of the two layouts, and the
  resume crosses topologies, so each step's loss and the final parameters check both. The
  final validation loss is the reference's too."""
  root, expected, ref_workdir = equivalence_reference
  resumed_at_stage_boundary(equivalence_reference, tmp_path)
  launch(tmp_path, root, processes=4, devices=1, sigterm_after=RESUME_AT + 1)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  # The step all processes agreed on, before the end: the 2 x 2 run takes 1 or 2 steps.
  assert saved[-1] in (RESUME_AT + 2, RESUME_AT + 3), saved
  launch(tmp_path, root, processes=2, devices=2)
  assert_same_run(run_of(tmp_path), expected, "4 x 1 preempted, resumed as 2 x 2")
  np.testing.assert_allclose(val_loss_of(tmp_path)[STEPS], val_loss_of(ref_workdir)[STEPS],
                             rtol=1e-4)


@pytest.mark.slow(seconds=31)
def test_sigterm_before_the_first_step_stops_every_process(equivalence_reference, tmp_path):
  """2 processes resumed at the stage boundary; process 0 gets SIGTERM once restored: both
  exit 143 (`launch` checks), before any step, the boundary still the latest checkpoint.
  (Counted in steps, jax's sync point would be step 1, never reached after step 2.)"""
  resumed_at_stage_boundary(equivalence_reference, tmp_path)
  launch(tmp_path, equivalence_reference[0], processes=2, devices=1, sigterm_after="restore")
  assert ocp.utils.checkpoint_steps(tmp_path / "checkpoints") == [RESUME_AT]


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
