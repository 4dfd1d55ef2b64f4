"""Checkpoints read back on another topology than the one that wrote them; unfinished steps."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from orbax.checkpoint._src.path import gcs_utils
import pytest

from maskrcnn_jax.weights import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SAVE_ON_FOUR_DEVICES = """
import sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from maskrcnn_jax.weights import checkpoint
mesh = Mesh(np.asarray(jax.devices()), ("data",))
assert len(mesh.devices) == 4
state = {"params": {"w": np.arange(8.0).reshape(4, 2)}, "step": np.int32(7)}
state = jax.device_put(state, {"params": NamedSharding(mesh, P("data")), "step": NamedSharding(mesh, P())})
mngr = checkpoint.manager(sys.argv[1], keep=1)
checkpoint.save(mngr, 7, state, {"stage": 0})
mngr.wait_until_finished()
"""


def test_load_variables_on_another_device_count(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  subprocess.run([sys.executable, "-c", _SAVE_ON_FOUR_DEVICES, str(tmp_path)], cwd=ROOT,
                 env=env, check=True, timeout=300)
  state = checkpoint.load_variables(str(tmp_path))  # This process: one device.
  assert isinstance(state["params"]["w"], np.ndarray) and int(state["step"]) == 7
  np.testing.assert_array_equal(state["params"]["w"], np.arange(8.0).reshape(4, 2))


def test_unfinished_steps_are_skipped_on_gcs(tmp_path, monkeypatch):
  """On gs:// orbax marks a finished step with commit_success.txt, not a rename: a
  digit-named step without it is half-written."""
  mngr = checkpoint.manager(str(tmp_path), keep=3)
  checkpoint.save(mngr, 3, {"params": {"w": np.ones(2)}}, {"stage": 0})
  mngr.wait_until_finished()
  steps = tmp_path / "checkpoints"
  shutil.copytree(steps / "3", steps / "5")
  (steps / "5" / "commit_success.txt").unlink()
  assert checkpoint.finished_steps(steps) == [3, 5]  # Local disk: a rename finishes a step.
  monkeypatch.setattr(gcs_utils, "is_gcs_path", lambda path: True)  # As if under gs://.
  assert checkpoint.finished_steps(steps) == [3]
  assert checkpoint.state_dir(str(tmp_path)) == steps / "3" / "state"
  assert checkpoint.load_metadata(str(tmp_path)) == {"stage": 0}
  np.testing.assert_array_equal(checkpoint.load_variables(str(tmp_path))["params"]["w"], 1.0)
  with pytest.raises(FileNotFoundError, match=r"checkpoints/5 is not a finished checkpoint"):
    checkpoint.load_variables(str(steps / "5"))
  shutil.rmtree(steps / "3")
  assert not checkpoint.has_checkpoint(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no finished checkpoint in"):
    checkpoint.load_variables(str(tmp_path))
