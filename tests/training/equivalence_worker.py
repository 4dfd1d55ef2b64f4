"""main.py in one process of a localhost job; process 0 sends itself SIGTERM after train
step WHEN > 0, or once the checkpoint is restored (WHEN = restore), before the first step.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I \
      python tests/training/equivalence_worker.py WHEN --config configs/tiny.py ...

Started by test_train.py the way the README's manual launch starts main.py; only the
signal is added, at a known step, as a scheduler's would arrive at an unknown one, and
the job's programs are compiled once (`share_compiled_programs`).
"""

import os
import signal
import sys
import time

from absl import app
import jax
from jax._src import cache_key

import main
from maskrcnn_jax.training import train
from maskrcnn_jax.weights import checkpoint


def sigterm_after(step: int) -> None:
  real = train.make_train_step

  def make(mesh, **kwargs):
    step_fn = real(mesh, **kwargs)

    def wrapped(state, batch, rng):
      out = step_fn(state, batch, rng)
      if jax.process_index() == 0 and int(out[0].step) == step:
        os.kill(os.getpid(), signal.SIGTERM)
      return out
    return wrapped

  train.make_train_step = make


def sigterm_after_restore() -> None:
  """Process 0 sends itself SIGTERM as the restore ends; every process then takes 5 s more,
  as a slower restore would, so that jax's service (it polls for SIGTERM each second) has
  told all of them before their first check."""
  real = checkpoint.restore_state

  def restore(*args):
    state = real(*args)
    if jax.process_index() == 0:
      os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    return state

  checkpoint.restore_state = restore


def share_compiled_programs() -> None:
  """Process 0 compiles each program of the job and hands it to the others (with
  JAX_SHARE_BINARY_BETWEEN_HOSTS=true), which would otherwise compile it too: 4 compiles
  on 2 cores for 4 processes.

  jax finds the shared program by its compile-cache key, which hashes the CPU topology as
  each process sees it, so the processes' keys differ. Here the key hashes the layout all
  processes agree on instead: every device's id, process and kind. jax 0.10.2 has no public
  hook for that key, so this replaces the private `jax._src.cache_key._hash_accelerator_config`
  (the only private jax API the tests use); the check below fails at start if it moves.
  """
  if not hasattr(cache_key, "_hash_accelerator_config"):  # Else: a 5-minute wait, then a timeout.
    raise RuntimeError("jax's compile-cache key has changed: update share_compiled_programs")

  def hash_layout(hash_obj, devices):
    for d in devices.flat:
      cache_key._hash_string(hash_obj, f"{d.id}:{d.process_index}:{d.device_kind}")

  cache_key._hash_accelerator_config = hash_layout


if __name__ == "__main__":
  share_compiled_programs()
  when = sys.argv.pop(1)
  if when == "restore":
    sigterm_after_restore()
  elif int(when):
    sigterm_after(int(when))
  app.run(main.main, flags_parser=main.parse_flags)
