"""Train, evaluate or predict with Mask R-CNN on COCO-Stuff.

  python main.py --config configs/default.py --workdir DIR [--mode train_and_eval]
      [--config.model.depth=50 ...]

The logic lives in the library (`maskrcnn_jax.run`) so that tests can import it.
"""

import importlib.util
import os
import sys

from maskrcnn_jax import hostmem
from maskrcnn_jax.data import gcs
if __name__ == "__main__":  # Not on import (tests): a restart starts the process over.
  hostmem.restart_with_huge_pages()  # Before the heavy imports.
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Quiet TensorFlow's C++ start-up notes.
GCS_READS = gcs.configure()  # Before TensorFlow loads: it reads its GCS settings once.
import jax  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from maskrcnn_jax import data
from maskrcnn_jax import distributed
from maskrcnn_jax import run
from maskrcnn_jax import training
from maskrcnn_jax import validation

# Exit codes (README, "Exit codes"). Errors in the config or the launch exit with 1.
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as if killed by it: checkpoint saved, restart the job.
EXIT_DIVERGED = 3  # Non-finite steps in a row; checkpoints complete. A restart would repeat it.

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, evaluation outputs.")
flags.DEFINE_enum("mode", "train_and_eval", run.MODES, "What to run.")
flags.DEFINE_integer("join_timeout", 300, "Seconds a multi-process job waits for all processes.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl's parsing, with an override naming no config field reported in one line."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError, IndexError, TypeError) as e:  # ml_collections: no field.
    sys.exit(f"Invalid config: {_override_error(argv) or e}")
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}")


def _override_error(argv) -> str | None:
  """Finds the bad `--config.` override on a fresh copy of the config file."""
  specs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
  specs += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if not specs:
    return None
  path, _, arg = specs[0].partition(":")
  module_spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  overrides = (a for a in argv if a.startswith("--config."))
  return next(filter(None, (validation.override_error(config, a) for a in overrides)), None)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.mode not in run.TRAINING_MODES:
    return _main(None)
  # A SIGTERM from the first second on is kept until every process can stop at the same
  # point: exit 143 with the latest checkpoint complete.
  with distributed.Preemption() as preemption:
    return _main(preemption)


def _main(preemption: distributed.Preemption | None):
  try:
    run.validate(FLAGS.config, FLAGS.mode, FLAGS.workdir)  # Before any set-up or compile.
    if FLAGS.mode in run.TRAINING_MODES:
      run.check_resume(FLAGS.config, FLAGS.workdir)
    # Imported once the config is valid: a bad one is reported without TF's start-up.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")  # TF only feeds data: keep it off the accelerators.
    distributed.initialize(distributed.detect(), timeout_s=FLAGS.join_timeout)
    if preemption is not None:
      preemption.joined()
    distributed.check_backend()
    logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
                 jax.process_count(), jax.local_devices())
    logging.info("TensorFlow's %s", GCS_READS)
    run.write_config(FLAGS.config, FLAGS.workdir, FLAGS.mode)
    result = run.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, preemption=preemption)
  except validation.ConfigError as e:
    sys.exit(f"Invalid config: {e}")
  except distributed.ClusterError as e:
    sys.exit(f"Cannot join the cluster: {e}")
  except data.DataError as e:
    sys.exit(f"Invalid data: {e}")
  except training.DivergenceError as e:  # Other FloatingPointErrors are crashes (exit 1).
    print(e, file=sys.stderr)
    sys.exit(EXIT_DIVERGED)
  if isinstance(result, dict) and result.get("preempted"):
    logging.warning("Preempted, the latest checkpoint complete: exit code %d asks for a "
                    "restart.", EXIT_PREEMPTED)
    sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
