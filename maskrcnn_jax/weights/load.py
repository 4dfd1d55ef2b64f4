"""Start training from a checkpoint: converted torchvision weights or another run.

`config.init.scope` picks what is replaced: `backbone` (the `backbone/...` leaves of
`params` and `frozen_bn`) or `full` (everything). With `full`, the layers whose shape
follows the class count (box classifier, box deltas, mask logits) keep the model's own
initialisation when the checkpoint has another class count. Any other difference fails,
listing every missing or unexpected key and every shape that differs: a silently partial
load would spoil a fine-tuning stage.
"""

from typing import Any, Mapping

from absl import logging
from flax import traverse_util
import jax
import numpy as np

from maskrcnn_jax.weights import checkpoint

SCOPES = ("backbone", "full")
COLLECTIONS = ("params", "frozen_bn")
# Layers sized by K + 1: box classifier, box deltas, mask logits.
CLASS_DEPENDENT = ("roi_heads/box_head/cls_score/", "roi_heads/box_head/bbox_pred/",
                   "roi_heads/mask_head/mask_logits/")
_CLASS_COUNT_KEY = "roi_heads/box_head/cls_score/bias"


def init_from_checkpoint(variables: Mapping[str, Any], path: str, *,
                         scope: str) -> dict[str, Any]:
  """`variables` with the leaves in `scope` read from the checkpoint at `path`.

  Args:
    variables: the model's `params` and `frozen_bn` (numpy or jax arrays, any sharding).
    path: a directory `maskrcnn_jax.weights.checkpoint.load_variables` reads (converted
      weights, a training workdir or one of its step directories).
    scope: `backbone` or `full`.

  Returns:
    The same tree, leaves in scope replaced; jax arrays keep their dtype and sharding.

  Raises:
    ValueError: unknown scope, or the checkpoint does not fit the model.
  """
  if scope not in SCOPES:
    raise ValueError(f"init scope must be one of {', '.join(SCOPES)}, got {scope!r}")
  return merge(variables, checkpoint.load_variables(path), scope=scope, source=path)


def merge(variables: Mapping[str, Any], loaded: Mapping[str, Any], *, scope: str,
          source: str = "checkpoint") -> dict[str, Any]:
  """`init_from_checkpoint` on an already read tree `loaded` ({"params", "frozen_bn", ...}).

  `source` names the checkpoint in errors and logs.
  """
  if scope not in SCOPES:
    raise ValueError(f"init scope must be one of {', '.join(SCOPES)}, got {scope!r}")
  missing_collections = [c for c in COLLECTIONS if c not in loaded]
  if missing_collections:
    raise ValueError(f"{source} has no {', '.join(missing_collections)} "
                     f"(it holds {', '.join(map(str, loaded))})")
  targets = {c: traverse_util.flatten_dict(variables[c], sep="/") for c in COLLECTIONS}
  sources = {c: traverse_util.flatten_dict(loaded[c], sep="/") for c in COLLECTIONS}
  if scope == "backbone":
    in_scope = lambda key: key.startswith("backbone/")
    targets = {c: {k: v for k, v in t.items() if in_scope(k)} for c, t in targets.items()}
    sources = {c: {k: v for k, v in s.items() if in_scope(k)} for c, s in sources.items()}

  kept = _class_dependent_keys(targets["params"], sources["params"])
  missing, unexpected, shapes = [], [], []
  for c in COLLECTIONS:
    target = {k: v for k, v in targets[c].items() if k not in kept}
    source_c = {k: v for k, v in sources[c].items() if k not in kept}
    missing += [f"{c}/{k}" for k in sorted(target.keys() - source_c.keys())]
    unexpected += [f"{c}/{k}" for k in sorted(source_c.keys() - target.keys())]
    shapes += [f"{c}/{k}: model {tuple(np.shape(target[k]))}, checkpoint "
               f"{tuple(np.shape(source_c[k]))}"
               for k in sorted(target.keys() & source_c.keys())
               if np.shape(target[k]) != np.shape(source_c[k])]
  if missing or unexpected or shapes:
    parts = [f"{name} ({len(keys)}): {'; '.join(keys)}"
             for name, keys in (("missing", missing), ("unexpected", unexpected),
                                ("shape differs", shapes)) if keys]
    raise ValueError(f"{source} does not fit the model (init scope {scope!r}): "
                     + " | ".join(parts))

  out = dict(variables)
  for c in COLLECTIONS:
    flat = traverse_util.flatten_dict(variables[c], sep="/")
    for key, value in sources[c].items():
      if key not in kept:
        flat[key] = _like(np.asarray(value), flat[key])
    out[c] = traverse_util.unflatten_dict(flat, sep="/")
  count = sum(len(s) for s in sources.values()) - len(kept)
  logging.info("init from %s (scope %s): %d arrays loaded%s", source, scope, count,
               f", kept the model's {', '.join(sorted(kept))}" if kept else "")
  return out


def _class_dependent_keys(target: Mapping[str, Any], source: Mapping[str, Any]) -> set[str]:
  """The class-dependent leaves to keep from the model when the class counts differ."""
  if _CLASS_COUNT_KEY not in target or _CLASS_COUNT_KEY not in source:
    return set()
  if np.shape(target[_CLASS_COUNT_KEY]) == np.shape(source[_CLASS_COUNT_KEY]):
    return set()
  return {k for k in target.keys() | source.keys() if k.startswith(CLASS_DEPENDENT)}


def _like(value: np.ndarray, old: Any) -> Any:
  """`value` in the dtype of `old`, and with its sharding when `old` is a jax array."""
  value = value.astype(old.dtype)
  if isinstance(old, jax.Array):
    return jax.make_array_from_callback(old.shape, old.sharding, lambda index: value[index])
  return value
