"""Checkpoints read back on another topology than the one that wrote them."""

import os
import pathlib
import subprocess
import sys

import numpy as np

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
