"""Start from a checkpoint: converted torchvision or detectron2 weights, or another run.

`config.init.scope` picks what is replaced: `backbone` (the `backbone/...` leaves of
`params` and `frozen_bn`) or `full` (everything). Any difference outside the class-sized
layers fails, listing every missing or unexpected key and every shape that differs: a
silently partial load would spoil a fine-tuning stage.

The class-sized layers (box classifier, class-specific box deltas, mask logits) follow the
checkpoint's `classifier_layout` (its metadata.json, written by the converters): the COCO
id of each output row, one of

  torchvision91   91 rows for background and COCO ids 1-90 (row i = id i, the 11 unused
                  ids included), the same for box deltas and mask logits
  detectron2_81   class logits: the 80 thing ids in order, then background (row 80); box
                  deltas and mask logits: the 80 thing ids, no background row
  a class set     (`maskrcnn_jax.data.categories`): background, then its ids, our layout

With `full` and a known layout, every row of the model's class set is taken from the row
of the checkpoint with the same COCO id (the background too); classes the checkpoint lacks
keep the model's initialisation, and when it has none of them all three layers do. Rows of
classes the model lacks are dropped: for torchvision91 onto `coco`, the 10 never-annotated
ids, so the softmax runs over 81 logits instead of 91, which changes no score as long as
those logits are far below the others, as in trained weights (they are never a target). Without
a layout the layers load as they are when their shapes fit, else keep the model's own.

The checkpoint's model options (`maskrcnn_jax.weights.options`: input format, pixel mean
and std, stride_in_1x1, anchor rounding) must equal `config.model`'s (`check_options`, which
`maskrcnn_jax.run.validate` calls before any data build or compile; the loaders do not repeat
it).
"""

from typing import Any, Mapping

from absl import logging
from flax import traverse_util
import jax
import numpy as np

from maskrcnn_jax.data import categories
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import options

RANDOM_INIT = "random"  # init.checkpoint of a run that starts from random weights.
SCOPES = ("backbone", "full")
COLLECTIONS = ("params", "frozen_bn")
# Layers sized by K + 1: box classifier, box deltas, mask logits.
CLASS_DEPENDENT = ("roi_heads/box_head/cls_score/", "roi_heads/box_head/bbox_pred/",
                   "roi_heads/mask_head/mask_logits/")
_CLASS_COUNT_KEY = "roi_heads/box_head/cls_score/bias"
# Class-sized layer -> (index in a layout's row ids, outputs per class).
_CLASS_LAYERS = {"roi_heads/box_head/cls_score/": (0, 1),
                 "roi_heads/box_head/bbox_pred/": (1, 4),
                 "roi_heads/mask_head/mask_logits/": (2, 1)}
# Layout -> COCO id per row of (class logits, box deltas, mask logits); 0 = background.
LAYOUTS = {
    "torchvision91": (tuple(range(91)),) * 3,
    "detectron2_81": (categories.THING_IDS + (0,), categories.THING_IDS, categories.THING_IDS),
}


def layout_rows(layout: str) -> tuple[tuple[int, ...], ...]:
  """COCO ids of the rows of (class logits, box deltas, mask logits) of `layout`."""
  if layout in LAYOUTS:
    return LAYOUTS[layout]
  if layout in categories.CLASS_SET_NAMES:
    return ((0,) + categories.get_class_set(layout).coco_ids,) * 3
  raise ValueError(f"unknown classifier_layout {layout!r}; known: "
                   f"{', '.join(tuple(LAYOUTS) + categories.CLASS_SET_NAMES)}")


def check_options(path: str, model: Mapping[str, Any], *, scope: str = "full") -> None:
  """Raises ValueError (one line) unless the checkpoint at `path` was made with `model`'s
  options (`config.model`).

  Options the metadata lacks (files written before they were recorded) are those of
  detectron2 for `convert_detectron2`'s files, else torchvision's; the log says so.
  Anchor rounding is compared only for scope `full` (the RPN is loaded).
  """
  meta = checkpoint.load_metadata(path)
  recorded = options.of(meta)
  defaults = (options.DETECTRON2 if meta.get("converter") == "convert_detectron2"
              else options.TORCHVISION)
  missing = [k for k in options.KEYS if k not in recorded]
  if missing:
    logging.info("%s records no %s: read as %s's", path, ", ".join(missing),
                 "detectron2" if defaults is options.DETECTRON2 else "torchvision")
  theirs = {**defaults, **recorded}
  ours = options.of(model)
  for k in options.KEYS:
    if k == "round_anchors" and scope != "full":
      continue
    if theirs[k] != ours[k]:
      helper = next((f"{name}(config.model) (configs/default.py) in the config"
                     for name, values in options.HELPERS if values == theirs),
                    ", ".join(f"config.model.{k} = {v!r}" for k, v in theirs.items()))
      raise ValueError(f"config.model.{k} = {ours[k]!r}: the weights at {path!r} were made "
                       f"with {theirs[k]!r}; set their options with {helper}")


def init_from_checkpoint(variables: Mapping[str, Any], path: str, *, scope: str,
                         class_set: categories.ClassSet | None = None,
                         require_classes: bool = False) -> dict[str, Any]:
  """`variables` with the leaves in `scope` read from the checkpoint at `path`.

  Args:
    variables: the model's `params` and `frozen_bn` (numpy or jax arrays, any sharding).
    path: a directory `maskrcnn_jax.weights.checkpoint.load_variables` reads (converted
      weights, a training workdir or one of its step directories).
    scope: `backbone` or `full`.
    class_set: the model's classes; with the checkpoint's `classifier_layout` it maps the
      class-sized layers row by row (module docstring).
    require_classes: fail unless every class of the model comes from the checkpoint
      (inference: a class layer left at its initialisation predicts noise).

  Returns:
    The same tree, leaves in scope replaced; jax arrays keep their dtype and sharding.

  Raises:
    ValueError: unknown scope, or the checkpoint does not fit the model.
  """
  if scope not in SCOPES:
    raise ValueError(f"init scope must be one of {', '.join(SCOPES)}, got {scope!r}")
  layout = checkpoint.load_metadata(path).get("classifier_layout")
  return merge(variables, checkpoint.load_variables(path), scope=scope, source=path,
               layout=layout, class_set=class_set, require_classes=require_classes)


def init_inference(model, rng: jax.Array) -> dict[str, Any]:
  """`model.init` of the inference path (random weights), on a 64² dummy image: the
  variables' shapes do not depend on the image. Jitted: one compile, not one per op."""
  batch = {"image": np.zeros((1, 64, 64, 3), np.uint8),
           "image_info": np.array([[64, 64, 1, 64, 64]], np.float32)}
  k1, k2 = jax.random.split(rng)
  return jax.jit(lambda k1, k2: model.init({"params": k1, "sampling": k2}, batch,
                                           train=False))(k1, k2)


def inference_variables(model, path: str, class_set: categories.ClassSet
                        ) -> tuple[dict[str, Any], int]:
  """(`params` and `frozen_bn` for `model`, training step or 0) from the checkpoint at `path`.

  A training run's checkpoint or converted weights (mapped by their `classifier_layout`);
  every class of `class_set` must come from the checkpoint. Leaves the checkpoint does not
  fill (detectron2's unused background rows of box deltas and mask logits) are zero.
  """
  shapes = jax.eval_shape(lambda: init_inference(model, jax.random.key(0)))
  zeros = {c: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes[c]) for c in COLLECTIONS}
  loaded = checkpoint.load_variables(path)
  variables = merge(zeros, loaded, scope="full", source=path,
                    layout=checkpoint.load_metadata(path).get("classifier_layout"),
                    class_set=class_set, require_classes=True)
  return {c: variables[c] for c in COLLECTIONS}, int(loaded.get("step", 0))


def merge(variables: Mapping[str, Any], loaded: Mapping[str, Any], *, scope: str,
          source: str = "checkpoint", layout: str | None = None,
          class_set: categories.ClassSet | None = None,
          require_classes: bool = False) -> dict[str, Any]:
  """`init_from_checkpoint` on an already read tree `loaded` ({"params", "frozen_bn", ...}).

  `source` names the checkpoint in errors and logs; `layout` is its classifier layout.
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

  mapped, note = {}, ""
  if scope == "full" and layout is not None and class_set is not None:
    mapped, note = _map_classes(targets["params"], sources["params"], layout, class_set,
                                source)
    kept = {k for k in targets["params"].keys() | sources["params"].keys()
            if k.startswith(CLASS_DEPENDENT)}
  else:
    kept = _class_dependent_keys(targets["params"], sources["params"])
  if require_classes and note:
    raise ValueError(note)
  if require_classes and not mapped and kept:
    raise ValueError(f"{source} has no classifier for the model's classes: its class layers "
                     "have other shapes and no classifier_layout maps them")
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
    if c == "params":
      for key, value in mapped.items():
        flat[key] = _like(value, flat[key])
    out[c] = traverse_util.unflatten_dict(flat, sep="/")
  count = sum(len(s) for s in sources.values()) - len(kept) + len(mapped)
  kept -= mapped.keys()
  logging.info("init from %s (scope %s): %d arrays loaded%s%s", source, scope, count,
               f" (classifier_layout {layout} mapped onto {class_set.name})" if mapped else "",
               f", kept the model's {', '.join(sorted(kept))}" if kept else "")
  if note:
    logging.warning("%s", note)
  return out


def _map_classes(target: Mapping[str, Any], source: Mapping[str, Any], layout: str,
                 class_set: categories.ClassSet, name: str) -> tuple[dict[str, np.ndarray], str]:
  """The class-sized leaves of the model, rows taken from `source` by COCO id.

  Returns ({key: array in the model's shape}, a warning naming the classes the checkpoint
  lacks, or ""). Empty when the checkpoint has none of the model's classes.
  """
  rows = layout_rows(layout)
  wanted = (0,) + class_set.coco_ids
  present = [c for c in class_set.coco_ids if c in rows[0]]
  if not present:
    return {}, (f"{name} (classifier_layout {layout}) has none of the classes of "
                f"{class_set.name!r}: its class layers keep the model's initialisation")
  out = {}
  for prefix, (which, group) in _CLASS_LAYERS.items():
    for leaf in ("kernel", "bias"):
      key = prefix + leaf
      if key not in target or key not in source:
        raise ValueError(f"{name}: no {key} in the " + ("model" if key not in target
                                                         else "checkpoint"))
      t, s = np.asarray(target[key]), np.asarray(source[key])
      ids = rows[which]
      if t.shape[:-1] != s.shape[:-1] or s.shape[-1] != group * len(ids):
        raise ValueError(f"{name}: {key} has shape {s.shape}, classifier_layout {layout} "
                         f"needs (..., {group * len(ids)}) beside the model's {t.shape}")
      t = t.reshape(*t.shape[:-1], len(wanted), group).copy()
      s = s.reshape(*s.shape[:-1], len(ids), group)
      index = {c: i for i, c in enumerate(ids)}
      for j, c in enumerate(wanted):
        if c in index:
          t[..., j, :] = s[..., index[c], :]
      out[key] = t.reshape(np.shape(target[key]))
  absent = [n for c, n in zip(class_set.coco_ids, class_set.names) if c not in rows[0]]
  note = ""
  if absent:
    note = (f"{name} (classifier_layout {layout}) lacks {len(absent)} of the "
            f"{class_set.num_classes} classes of {class_set.name!r}, which keep the model's "
            f"initialisation: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}")
  return out, note


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
