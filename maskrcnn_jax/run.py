"""What main.py calls: validation, the resolved config, and the modes."""

import datetime
import functools
import json
import re
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from maskrcnn_jax import validation
from maskrcnn_jax.weights import load

MODES = ("train", "eval", "train_and_eval", "predict", "inspect")
TRAINING_MODES = ("train", "train_and_eval")


def validate(config: ml_collections.ConfigDict, mode: str, workdir: str | None = None) -> None:
  """Raises ConfigError with one line naming the bad key; needs no devices, builds no data
  and compiles nothing.

  With `workdir`, also checks the weights the run reads when they are not the workdir's own
  checkpoint (`weights_key`): `init.checkpoint` or `eval.checkpoint` must hold a finished
  checkpoint of the model's parameter shapes and options (`validation.validate_weights`);
  eval, predict and inspect of the workdir's own checkpoint check its options. The loaders
  (`weights.load`) leave these checks to this.
  """
  if mode not in MODES:
    raise validation.ConfigError(f"mode {mode!r}: must be one of {', '.join(MODES)}")
  validation.validate(config, needs_data=mode != "predict")
  if mode == "predict" and not config.predict.input_dir:
    raise validation.ConfigError(
        "config.predict.input_dir = '': --mode=predict needs a folder of images")
  if mode != "predict" and not config.data.synthetic.enabled:
    if not epath.Path(config.data.root).is_dir():
      raise validation.ConfigError(
          f"config.data.root = {config.data.root!r}: no such directory (the COCO-Stuff root: "
          "train2017/, val2017/, annotations/)")
  training = mode in TRAINING_MODES
  shapes = functools.cache(lambda: param_shapes(config))
  key = weights_key(config, mode, workdir) if workdir is not None else None
  if key == "init.checkpoint":
    validation.validate_init_checkpoint(config, inference=mode in ("eval", "predict"))
  path = config.init.checkpoint if key == "init.checkpoint" else config.eval.checkpoint
  if key and path != load.RANDOM_INIT:
    validation.validate_weights(config, key, shapes,
                                scope=config.init.scope if training else "full")
  elif workdir is not None and key is None and not training:
    try:
      load.check_options(workdir, config.model)
    except (OSError, ValueError) as e:
      raise validation.ConfigError(" ".join(str(e).split())) from e
  if training:
    check_trainable(config, shapes())


def weights_key(config: ml_collections.ConfigDict, mode: str, workdir: str) -> str | None:
  """The config key of the weights a run of `mode` starts from or evaluates, or None for
  the workdir's own checkpoint (as `evaluation.run_eval.checkpoint_path` resolves them)."""
  from maskrcnn_jax.weights import checkpoint  # pylint: disable=g-import-not-at-top
  if mode not in TRAINING_MODES and config.eval.checkpoint:
    return "eval.checkpoint"
  return None if checkpoint.has_checkpoint(workdir) else "init.checkpoint"


def param_shapes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model's parameters as shapes (`jax.eval_shape` of the init): no compile, no device."""
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import categories  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import train  # pylint: disable=g-import-not-at-top
  num_classes = categories.get_class_set(config.data.class_set).num_classes + 1
  model = models.build(config.model, num_classes=num_classes)
  batch = train.dummy_batch(config.data, 1)
  def init():
    rngs = {"params": jax.random.key(0), "sampling": jax.random.key(1)}
    return model.init(rngs, batch, train=True)["params"]
  return jax.eval_shape(init)


def check_trainable(config: ml_collections.ConfigDict, params: dict[str, Any]) -> None:
  """Each stage's `trainable` selects parameters of `params` (`param_shapes`) the stage may
  train (ConfigError if not)."""
  from maskrcnn_jax.training import optimizer  # pylint: disable=g-import-not-at-top
  for i, stage in enumerate(config.train.stages):
    try:
      optimizer.trainable_mask(params, stage.trainable, freeze_at=config.model.freeze_at)
    except ValueError as e:
      raise validation.ConfigError(f"config.train.stages[{i}].trainable = {stage.trainable!r}: "
                                   f"{e}") from e


# What a resumed run must keep: the data order and examples, the RNG streams and what a
# step count means. (A new process count is fine: every topology reads the same batches.)
_RESUME_KEYS = ("seed", "train.global_batch_size", "data", "train.stages")
# Free: evaluation's batch, where the data lives, how fast it is built and read, learning rates.
_RESUME_FREE = ("data.eval_batch_size", "data.tfds_data_dir", "data.root",
                "data.read_parallelism", "data.build_workers", "train.stages[*].lr")
# Guarded keys added since runs were saved, with the value that reproduces such a run: a
# saved config without the key resumes with that value as if it had been saved.
_RESUME_ADDED = {"data.aspect_grouping": False}


def _flatten(node, prefix: str = "") -> dict[str, Any]:
  """JSON-like config → {"data.image_size": 1024, "train.stages[1].steps": 60000, ...}."""
  if isinstance(node, dict):
    return {k: v for key, value in node.items()
            for k, v in _flatten(value, f"{prefix}.{key}" if prefix else key).items()}
  if isinstance(node, (list, tuple)) and any(isinstance(v, dict) for v in node):
    return {k: v for i, value in enumerate(node) for k, v in _flatten(value, f"{prefix}[{i}]").items()}
  return {prefix: list(node) if isinstance(node, tuple) else node}


def _guarded(key: str) -> bool:
  pattern = re.sub(r"\[\d+\]", "[*]", key)
  if pattern in _RESUME_FREE:
    return False
  return any(key == k or key.startswith((k + ".", k + "[")) for k in _RESUME_KEYS)


def config_changes(saved: dict[str, Any],
                   config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """Keys that differ from the saved config: (those a resume must keep, the others)."""
  old, new = _flatten(saved), _flatten(json.loads(config.to_json_best_effort()))
  old = {**{k: v for k, v in _RESUME_ADDED.items() if k in new}, **old}
  changed = sorted(k for k in old.keys() | new.keys() if k not in old or k not in new
                   or old[k] != new[k])
  show = lambda d, k: repr(d[k]) if k in d else "absent"
  describe = lambda k: f"{k} ({show(old, k)} -> {show(new, k)})"
  return ([describe(k) for k in changed if _guarded(k)],
          [describe(k) for k in changed if not _guarded(k)])


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """On resume, refuses (ConfigError) a config that changes the data order, RNG or steps.

  `config.train.allow_config_change=True` resumes anyway, with a warning. Other changes
  are logged.
  """
  saved_path = epath.Path(workdir) / "config.json"
  if not saved_path.exists() or not ocp.utils.checkpoint_steps(epath.Path(workdir) / "checkpoints"):
    return
  guarded, other = config_changes(json.loads(saved_path.read_text()), config)
  if other:
    logging.info("Resuming %s with config changes: %s", workdir, "; ".join(other))
  if not guarded:
    return
  if config.train.allow_config_change:
    logging.warning("Resuming %s with config.train.allow_config_change=True despite changes "
                    "to the data order, RNG or schedule: %s", workdir, "; ".join(guarded))
    return
  raise validation.ConfigError(
      f"resuming {workdir} would change the data order, RNG or schedule: {'; '.join(guarded)}. "
      "Use a new workdir, or --config.train.allow_config_change=True")


def write_config(config: ml_collections.ConfigDict, workdir: str, mode: str = "train") -> None:
  """Writes the resolved config where `mode` writes its outputs (process 0 only).

  Training modes: WORKDIR/config.json, the latest training run's (what a resume is checked
  against), and WORKDIR/configs/config-UTC.json, every training run's, never overwritten.
  eval, predict and inspect: WORKDIR/MODE/config.json, beside their outputs.
  """
  if jax.process_index() != 0:
    return
  text = config.to_json_best_effort(indent=2)
  if mode not in TRAINING_MODES:
    out = epath.Path(workdir) / mode
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(text)
    return
  history = epath.Path(workdir) / "configs"
  history.mkdir(parents=True, exist_ok=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  path, n = history / f"config-{stamp}.json", 1
  while path.exists():
    path, n = history / f"config-{stamp}-{n}.json", n + 1
  path.write_text(text)
  (epath.Path(workdir) / "config.json").write_text(text)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str, *, preemption=None):
  """Runs `mode`; returns what the mode's library function returns (used by tests).

  preemption: training's `distributed.Preemption`, entered before the join (main.py).
  """
  from maskrcnn_jax.evaluation import run_eval  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import train  # pylint: disable=g-import-not-at-top

  validation.validate_devices(config, jax.device_count())
  logging.info("Mode %s, workdir %s", mode, workdir)
  if mode in TRAINING_MODES:
    return train.train_and_evaluate(config, workdir, evaluate=mode == "train_and_eval",
                                    preemption=preemption)
  if mode == "eval":
    return run_eval.evaluate_checkpoint(config, workdir)
  if mode == "inspect":
    from maskrcnn_jax.inspection import run as inspection  # pylint: disable=g-import-not-at-top
    from maskrcnn_jax.training import optimizer  # pylint: disable=g-import-not-at-top
    return inspection.inspect(config, workdir, trainable_mask=optimizer.trainable_mask)
  return run_eval.predict(config, workdir)
