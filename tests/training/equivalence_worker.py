"""main.py, preempted: process 0 sends itself SIGTERM after train step STEP.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I \
      python tests/training/equivalence_worker.py STEP --config configs/tiny.py ...

Started by test_train.py the way the README's manual launch starts main.py; only the
signal is added, at a known step, as a scheduler's would arrive at an unknown one.
"""

import os
import signal
import sys

from absl import app
import jax

import main
from maskrcnn_jax.training import train


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


if __name__ == "__main__":
  sigterm_after(int(sys.argv.pop(1)))
  app.run(main.main, flags_parser=main.parse_flags)
