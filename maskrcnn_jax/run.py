"""What main.py calls: validation, the resolved config, and the modes."""

from absl import logging
from etils import epath
import jax
import ml_collections

from maskrcnn_jax import validation

MODES = ("train", "eval", "train_and_eval", "predict", "inspect")


def validate(config: ml_collections.ConfigDict, mode: str) -> None:
  """Raises ConfigError with one line naming the bad key; needs no devices."""
  if mode not in MODES:
    raise validation.ConfigError(f"mode {mode!r}: must be one of {', '.join(MODES)}")
  validation.validate(config)
  if mode == "predict" and not config.predict.input_dir:
    raise validation.ConfigError(
        "config.predict.input_dir = '': --mode=predict needs a folder of images")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config to WORKDIR/config.json (process 0)."""
  if jax.process_index() == 0:
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config.to_json_best_effort(indent=2))


def run(config: ml_collections.ConfigDict, workdir: str, mode: str):
  """Runs `mode`; returns what the mode's library function returns (used by tests)."""
  from maskrcnn_jax.evaluation import run_eval  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import train  # pylint: disable=g-import-not-at-top

  validation.validate_devices(config, jax.device_count())
  logging.info("Mode %s, workdir %s", mode, workdir)
  if mode in ("train", "train_and_eval"):
    return train.train_and_evaluate(config, workdir, evaluate=mode == "train_and_eval")
  if mode == "eval":
    return run_eval.evaluate_checkpoint(config, workdir)
  if mode == "inspect":
    from maskrcnn_jax.inspection import run as inspection  # pylint: disable=g-import-not-at-top
    from maskrcnn_jax.training import optimizer  # pylint: disable=g-import-not-at-top
    return inspection.inspect(config, workdir, trainable_mask=optimizer.trainable_mask)
  return run_eval.predict(config, workdir)
