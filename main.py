"""Train, evaluate or predict with Mask R-CNN on COCO-Stuff.

  python main.py --config configs/default.py --workdir DIR [--mode train_and_eval]
      [--config.model.depth=50 ...]

The logic lives in the library (`maskrcnn_jax.run`) so that tests can import it.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Quiet TensorFlow's C++ start-up notes.
import jax  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags
import tensorflow as tf

from maskrcnn_jax import distributed
from maskrcnn_jax import run
from maskrcnn_jax import validation

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, evaluation outputs.")
flags.DEFINE_enum("mode", "train_and_eval", run.MODES, "What to run.")
flags.DEFINE_integer("join_timeout", 300, "Seconds a multi-process job waits for all processes.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl's parsing, with an unknown `--config.` key reported in one line."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: no such field.
    key = str(e).strip("'\"")
    args = [a for a in argv if a.startswith("--config.") and key in a] or argv[1:]
    sys.exit(f"Invalid config: unknown key {key!r} in {args[0]}")
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf.config.set_visible_devices([], "GPU")  # TF only feeds data: keep it off the accelerators.
  try:
    run.validate(FLAGS.config, FLAGS.mode)  # Before any distributed set-up or compile.
    distributed.initialize(distributed.detect(), timeout_s=FLAGS.join_timeout)
    logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
                 jax.process_count(), jax.local_devices())
    run.write_config(FLAGS.config, FLAGS.workdir)
    run.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except validation.ConfigError as e:
    sys.exit(f"Invalid config: {e}")
  except distributed.ClusterError as e:
    sys.exit(f"Cannot join the cluster: {e}")
  except FloatingPointError as e:  # Too many non-finite steps in a row.
    sys.exit(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
