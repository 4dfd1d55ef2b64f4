"""Staged fine-tuning: which parameters a stage trains, and that stage's optimiser.

A stage's `trainable` is a preset or a list of regexes, fully matched against
'/'-joined parameter paths such as `backbone/res4/block0/conv1/kernel`:

  heads  fpn, rpn and roi_heads (the study's first stage)
  N+     ResNet stage N and above (backbone/resN .. res5) plus the heads
  all    every parameter

Parameters frozen by `model.freeze_at` (the stem and res2..resN) never train. Frozen
parameters are not differentiated at all: the step takes gradients of the trainable
subset only, and the optimiser holds state (momentum) for that subset only.
"""

import re
from typing import Any, Sequence

from absl import logging
from flax import traverse_util
import ml_collections
import optax

Params = Any

HEADS = ("fpn/.*", "rpn/.*", "roi_heads/.*")


def trainable_patterns(trainable: str | Sequence[str]) -> tuple[str, ...]:
  """A stage's `trainable` (preset or regexes) as regexes over parameter paths."""
  if not isinstance(trainable, str):
    return tuple(trainable)
  if trainable == "heads":
    return HEADS
  if trainable == "all":
    return (".*",)
  if re.fullmatch(r"[2-5]\+", trainable):
    first = int(trainable[0])
    return tuple(f"backbone/res{i}/.*" for i in range(first, 6)) + HEADS
  raise ValueError(f"unknown trainable preset {trainable!r}: heads, 2+..5+, all, or regexes")


def _always_frozen(path: str, freeze_at: int) -> bool:
  frozen = ["backbone/stem/"] if freeze_at >= 1 else []
  frozen += [f"backbone/res{i}/" for i in range(2, freeze_at + 1)]
  return any(path.startswith(prefix) for prefix in frozen)


def trainable_mask(params: Params, trainable: str | Sequence[str], *, freeze_at: int) -> Params:
  """A tree of bools like `params`: True where the stage trains the parameter.

  Raises ValueError when a pattern matches no parameter (a typo would silently freeze
  the model) or when nothing is left to train.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  patterns = trainable_patterns(trainable)
  selected = set()
  for pattern in patterns:
    matched = {path for path in flat if re.fullmatch(pattern, path)}
    if not matched:
      raise ValueError(f"trainable pattern {pattern!r} matches no parameter "
                       f"(paths look like {next(iter(flat))!r})")
    selected |= matched
  mask = {path: path in selected and not _always_frozen(path, freeze_at) for path in flat}
  if not any(mask.values()):
    raise ValueError(f"trainable {trainable!r} with model.freeze_at={freeze_at} leaves no "
                     "parameter to train")
  return traverse_util.unflatten_dict(mask, sep="/")


def describe_mask(mask: Params) -> str:
  """One line per top-level module: trained / total parameter arrays."""
  flat = traverse_util.flatten_dict(mask, sep="/")
  groups: dict[str, list[bool]] = {}
  for path, value in flat.items():
    parts = path.split("/")
    group = "/".join(parts[:2]) if parts[0] == "backbone" else parts[0]
    groups.setdefault(group, []).append(value)
  return ", ".join(f"{g} {sum(v)}/{len(v)}" for g, v in sorted(groups.items()))


def split(params: Params, mask: Params) -> tuple[Params, Params]:
  """Splits params into (trainable, frozen) nested dicts holding only their own leaves."""
  flat = traverse_util.flatten_dict(params)
  flat_mask = traverse_util.flatten_dict(mask)
  trainable = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable: Params, frozen: Params) -> Params:
  """The inverse of `split`."""
  flat = traverse_util.flatten_dict(trainable)
  flat.update(traverse_util.flatten_dict(frozen))
  return traverse_util.unflatten_dict(flat)


def stage_boundaries(stages: Sequence[ml_collections.ConfigDict]) -> list[int]:
  """The global step at which each stage starts, plus the final step."""
  bounds = [0]
  for stage in stages:
    bounds.append(bounds[-1] + stage.steps)
  return bounds


def stage_index(stages: Sequence[ml_collections.ConfigDict], step: int) -> int:
  """The stage that runs global step `step` (len(stages) once training is done)."""
  bounds = stage_boundaries(stages)
  for i in range(len(stages)):
    if step < bounds[i + 1]:
      return i
  return len(stages)


def learning_rate(train_config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict):
  """The stage's LR over steps counted from the stage's start: linear warm-up, then flat."""
  warmup = min(train_config.warmup_steps, stage.steps)
  if warmup == 0:
    return optax.constant_schedule(stage.lr)
  return optax.join_schedules(
      [optax.linear_schedule(stage.lr * 1e-3, stage.lr, warmup),
       optax.constant_schedule(stage.lr)], [warmup])


def _decay_mask(params: Params) -> Params:
  """Weight decay on conv and dense kernels only, not on biases (norms are not params)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def make_optimizer(train_config: ml_collections.ConfigDict,
                   stage: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum, L2 weight decay on kernels and global-norm clipping, for a stage.

  Applied to the stage's trainable subset (see `split`); the decay is added to the
  gradient before momentum, as torch.optim.SGD's `weight_decay` does.
  """
  chain = []
  if train_config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(train_config.grad_clip_norm))
  if train_config.weight_decay > 0:
    chain.append(optax.add_decayed_weights(train_config.weight_decay, mask=_decay_mask))
  chain.append(optax.sgd(learning_rate(train_config, stage), momentum=train_config.momentum))
  return optax.chain(*chain)


def log_stage(stage: ml_collections.ConfigDict, mask: Params) -> None:
  logging.info("Stage %s (trainable %s, %d steps, lr %g): %s", stage.name, stage.trainable,
               stage.steps, stage.lr, describe_mask(mask))
