"""Config validation: a bad config fails before any compile, in one line naming the key.

Types are already enforced by the locked `ml_collections.ConfigDict` (an override of the
wrong type or an unknown key is refused while parsing flags); this module checks values,
ranges and the rules that tie fields together.
"""

import difflib
import re
from typing import Any

import ml_collections

from maskrcnn_jax.models import rpn
from maskrcnn_jax.weights import load

DEPTHS = (18, 34, 50, 101, 152)
DTYPES = ("float32", "bfloat16")
TRAINABLE_PRESETS = ("heads", "5+", "4+", "3+", "2+", "all")
PASTE_PLACES = ("auto", "device", "host")
RESIZE_MODES = ("longest", "shortest_edge", "square")  # maskrcnn_jax/data/images.py


class ConfigError(ValueError):
  """A config value outside what is allowed."""


def _fail(key: str, value: Any, allowed: str):
  raise ConfigError(f"config.{key} = {value!r}: {allowed}")


def _check(ok: bool, key: str, value: Any, allowed: str):
  if not ok:
    _fail(key, value, allowed)


def _in(config, key: str, choices):
  value = _get(config, key)
  _check(value in choices, key, value, f"must be one of {', '.join(map(str, choices))}")


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


def _positive(config, key: str, *, zero_ok: bool = False):
  value = _get(config, key)
  ok = value >= 0 if zero_ok else value > 0
  _check(ok, key, value, "must be >= 0" if zero_ok else "must be > 0")


def _fraction(config, key: str, *, closed: bool = True):
  value = _get(config, key)
  ok = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
  _check(ok, key, value, "must be in [0, 1]" if closed else "must be in (0, 1)")


def _check_trainable(key: str, trainable):
  if isinstance(trainable, str):
    _check(trainable in TRAINABLE_PRESETS, key, trainable,
           f"must be a preset ({', '.join(TRAINABLE_PRESETS)}) or a list of regexes")
    return
  _check(isinstance(trainable, (list, tuple)) and len(trainable) > 0, key, trainable,
         "must be a preset name or a non-empty list of regexes")
  for pattern in trainable:
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      _fail(key, pattern, f"not a valid regex ({e})")


def validate(config: ml_collections.ConfigDict, *, needs_data: bool = True) -> None:
  """Raises ConfigError (one line: key, value, what is allowed) for an invalid config.

  `needs_data`: whether `data.root` must be set (not for `--mode=predict`).
  """
  from maskrcnn_jax.data import categories  # pylint: disable=g-import-not-at-top

  _in(config, "data.class_set", categories.CLASS_SET_NAMES)
  _in(config, "data.resize", RESIZE_MODES)
  if config.data.resize == "longest":
    size, stride = config.data.image_size, rpn.STRIDES[-1]
    _check(size > 0 and size % stride == 0, "data.image_size", size,
           f"must be a positive multiple of {stride} (data.resize longest)")
  else:
    min_size, max_size = config.data.min_size, config.data.max_size
    _check(len(min_size) > 0 and all(isinstance(s, int) and s > 0 for s in min_size),
           "data.min_size", min_size,
           f"must be one or more positive integers (data.resize {config.data.resize})")
    _check(max_size >= max(min_size), "data.max_size", max_size,
           f"must be >= the largest data.min_size ({max(min_size)})")
  _check(not config.data.aspect_grouping or config.data.resize == "shortest_edge",
         "data.aspect_grouping", config.data.aspect_grouping,
         f"needs data.resize shortest_edge (with {config.data.resize} a square image fills the "
         "square canvas in either orientation: a second canvas would save nothing)")
  _positive(config, "data.max_instances")
  _positive(config, "data.mask_size")
  _positive(config, "data.eval_batch_size")
  _positive(config, "data.read_parallelism")
  _positive(config, "data.build_workers", zero_ok=True)
  lo, hi = config.data.augment.scale_range
  _check(0 < lo <= hi, "data.augment.scale_range", (lo, hi), "must be (lo, hi) with 0 < lo <= hi")
  _positive(config, "data.repeat_threshold")
  synthetic = config.data.synthetic
  if synthetic.enabled:
    for key in ("num_train", "num_val", "image_size"):
      _positive(config, f"data.synthetic.{key}")

  model = config.model
  _in(config, "model.depth", DEPTHS)
  _in(config, "model.dtype", DTYPES)
  _check(0 <= model.freeze_at <= 5, "model.freeze_at", model.freeze_at,
         "must be in 0..5 (0: nothing, 1: stem, N: stem and res2..resN)")
  _positive(config, "model.fpn_channels")
  _in(config, "model.input_format", ("RGB", "BGR"))
  _positive(config, "model.rpn.min_size", zero_ok=True)
  _positive(config, "model.roi_heads.min_size", zero_ok=True)
  _positive(config, "model.roi_heads.sampling_ratio", zero_ok=True)
  _check(len(model.anchor_sizes) == 5 and all(s > 0 for s in model.anchor_sizes),
         "model.anchor_sizes", model.anchor_sizes, "must be 5 positive sizes (P2..P6)")
  _check(len(model.aspect_ratios) > 0 and all(r > 0 for r in model.aspect_ratios),
         "model.aspect_ratios", model.aspect_ratios, "must be positive ratios")
  _check(len(model.pixel_std) == 3 and all(s > 0 for s in model.pixel_std),
         "model.pixel_std", model.pixel_std, "must be 3 positive values")
  for key in ("rpn.fg_iou", "rpn.bg_iou", "rpn.positive_fraction", "rpn.nms_threshold",
              "roi_heads.fg_iou", "roi_heads.positive_fraction", "roi_heads.score_threshold",
              "roi_heads.nms_threshold"):
    _fraction(config, f"model.{key}")
  _check(model.rpn.bg_iou <= model.rpn.fg_iou, "model.rpn.bg_iou", model.rpn.bg_iou,
         f"must be <= model.rpn.fg_iou ({model.rpn.fg_iou})")
  for key in ("rpn.samples_per_image", "rpn.pre_nms_topk_train", "rpn.pre_nms_topk_test",
              "rpn.post_nms_topk_train", "rpn.post_nms_topk_test", "roi_heads.rois_per_image",
              "roi_heads.max_sampling_ratio", "roi_heads.fc_dim", "roi_heads.mask_convs",
              "roi_heads.detections_per_image", "roi_heads.topk_candidates"):
    _positive(config, f"model.{key}")
  candidates = model.rpn.post_nms_topk_train + config.data.max_instances
  _check(model.roi_heads.rois_per_image <= candidates, "model.roi_heads.rois_per_image",
         model.roi_heads.rois_per_image,
         f"must be <= model.rpn.post_nms_topk_train + data.max_instances ({candidates}): "
         "RoIs are sampled from the proposals and the GT boxes")
  _check(len(model.roi_heads.box_weights) == 4, "model.roi_heads.box_weights",
         model.roi_heads.box_weights, "must be 4 weights (wx, wy, ww, wh)")

  train = config.train
  _positive(config, "train.global_batch_size")
  _positive(config, "train.steps_per_epoch")
  _check(len(train.stages) > 0, "train.stages", train.stages, "must list at least one stage")
  names = set()
  for i, stage in enumerate(train.stages):
    key = f"train.stages[{i}]"
    _check(set(stage.keys()) == {"name", "trainable", "steps", "lr"}, key, dict(stage),
           "must have exactly the keys name, trainable, steps, lr")
    _check(isinstance(stage.name, str) and stage.name and stage.name not in names,
           f"{key}.name", stage.name, "must be a non-empty name, unique among stages")
    names.add(stage.name)
    _check_trainable(f"{key}.trainable", stage.trainable)
    _check(isinstance(stage.steps, int) and stage.steps > 0, f"{key}.steps", stage.steps,
           "must be a positive integer")
    _check(stage.lr > 0, f"{key}.lr", stage.lr, "must be > 0")
  _check(0 <= train.momentum < 1, "train.momentum", train.momentum, "must be in [0, 1)")
  for key in ("weight_decay", "grad_clip_norm", "warmup_steps", "eval_every_steps",
              "val_loss_batches", "profile_steps"):
    _positive(config, f"train.{key}", zero_ok=True)
  for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
              "max_nonfinite_steps"):
    _positive(config, f"train.{key}")

  _check(bool(config.init.checkpoint), "init.checkpoint", config.init.checkpoint,
         f"must name converted weights (a directory) or be {load.RANDOM_INIT!r}")
  _in(config, "init.scope", load.SCOPES)
  _fraction(config, "eval.mask_threshold", closed=False)
  _fraction(config, "eval.score_threshold")
  _positive(config, "eval.num_pictures", zero_ok=True)
  from maskrcnn_jax.evaluation import coco_eval  # pylint: disable=g-import-not-at-top
  _in(config, "eval.coco_backend", coco_eval.BACKENDS)
  _in(config, "eval.paste", PASTE_PLACES)
  _fraction(config, "eval.panoptic.overlap_threshold")
  _positive(config, "eval.panoptic.stuff_area_threshold", zero_ok=True)
  _fraction(config, "eval.panoptic.instances_score_threshold")
  _check(config.eval.num_images == -1 or config.eval.num_images > 0, "eval.num_images",
         config.eval.num_images, "must be -1 (all) or > 0")
  _fraction(config, "predict.score_threshold")
  _positive(config, "inspect.num_images")
  _check(config.inspect.num_stats_images == -1 or config.inspect.num_stats_images > 0,
         "inspect.num_stats_images", config.inspect.num_stats_images, "must be -1 (all) or > 0")
  # Last: the study's default.py names no data, and a value error elsewhere comes first.
  if needs_data:
    _check(bool(config.data.root), "data.root", config.data.root,
           "must name the COCO-Stuff root (train2017/, val2017/, annotations/)")


def validate_init_checkpoint(config: ml_collections.ConfigDict, *, inference: bool) -> None:
  """`init.checkpoint` is what a run starts from: it must exist, or be 'random' to train.

  Call it only when the run reads it: a fresh training run, or evaluation/prediction with
  no checkpoint in the workdir and no `eval.checkpoint`.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top

  path = config.init.checkpoint
  if path == load.RANDOM_INIT:
    _check(not inference, "init.checkpoint", path, "evaluation and prediction need weights: a "
           "checkpoint in the workdir, config.eval.checkpoint or converted weights")
    return
  _check(epath.Path(path).exists(), "init.checkpoint", path,
         "no converted weights there; convert them once with `python -m "
         "maskrcnn_jax.weights.convert_detectron2 --input FILE.pkl --output "
         f"{path}` (README: Pretrained weights, the file of each config), or set "
         f"{load.RANDOM_INIT!r} to start from random weights")


_CONVERTERS = {".pkl": "convert_detectron2", ".pth": "convert_torchvision",
               ".npz": "convert_torchvision"}


def validate_weights(config: ml_collections.ConfigDict, key: str, param_shapes, *,
                     scope: str) -> None:
  """`config.KEY` (init.checkpoint or eval.checkpoint) holds weights the model can use.

  In order: the path exists and is not a weight file to convert first; it holds a finished
  checkpoint (orbax's listing) with readable metadata; the weights' model options are
  `config.model`'s (`load.check_options`); their parameters in `scope` have the shapes of
  `param_shapes()` (`run.param_shapes`: `jax.eval_shape`, no compile), class-sized layers
  aside. Raises ConfigError, one line.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.weights import checkpoint  # pylint: disable=g-import-not-at-top

  path = _get(config, key)
  suffix = epath.Path(path).suffix
  if suffix in _CONVERTERS:
    _fail(key, path, f"a weight file, not converted weights; convert it once with `python -m "
          f"maskrcnn_jax.weights.{_CONVERTERS[suffix]} --input {path} --output "
          f"{path[:-len(suffix)]}` and set config.{key} = {path[:-len(suffix)]!r}")
  _check(epath.Path(path).exists(), key, path, "no such file or directory")
  try:
    load.check_options(path, config.model, scope=scope)
    shapes = checkpoint.load_shapes(path)
  except (OSError, ValueError) as e:  # No finished step, damaged JSON, other options.
    _fail(key, path, " ".join(str(e).split()))
  if "params" not in shapes:
    _fail(key, path, f"holds no params (it holds {', '.join(map(str, shapes))})")
  ours = {k: tuple(v.shape) for k, v in
          traverse_util.flatten_dict(param_shapes(), sep="/").items()}
  theirs = traverse_util.flatten_dict(shapes["params"], sep="/")
  in_scope = lambda k: ((scope == "full" or k.startswith("backbone/"))
                        and not k.startswith(load.CLASS_DEPENDENT))
  differ = sorted({k for k in ours.keys() | theirs.keys()
                   if in_scope(k) and ours.get(k) != theirs.get(k)})
  if not differ:
    return
  show = lambda d, k: str(d[k]) if k in d else "absent"
  first = "; ".join(f"{k}: model {show(ours, k)}, weights {show(theirs, k)}"
                    for k in differ[:3])
  _fail(key, path, f"its parameters do not fit the model ({len(differ)} differ, first "
        f"{first}){_likely_cause(config, theirs, scope)}")


def _likely_cause(config, theirs, scope: str) -> str:
  """Why `theirs` does not fit: another ResNet depth, or only a backbone (as a suffix)."""
  from maskrcnn_jax.models import resnet  # pylint: disable=g-import-not-at-top

  counts = tuple(len({k.split("/")[2] for k in theirs if k.startswith(f"backbone/res{i}/")})
                 for i in range(2, 6))
  bottleneck = any("/conv3/" in k for k in theirs if k.startswith("backbone/"))
  depth = next((d for d, (block, c) in resnet.SPECS.items()
                if c == counts and (block is resnet.Bottleneck) == bottleneck), None)
  if depth is not None and depth != config.model.depth:
    return (f"; likely cause: the weights hold a ResNet-{depth}, config.model.depth = "
            f"{config.model.depth}")
  if scope == "full" and not any(k.startswith(("fpn/", "rpn/", "roi_heads/")) for k in theirs):
    return "; likely cause: the weights hold a backbone only: set config.init.scope = 'backbone'"
  return ""


def validate_devices(config: ml_collections.ConfigDict, device_count: int) -> None:
  """The global batches must split evenly over all devices of all processes."""
  for key in ("train.global_batch_size", "data.eval_batch_size"):
    batch = _get(config, key)
    _check(batch % device_count == 0, key, batch,
           f"must be divisible by the device count ({device_count})")


def override_error(config: ml_collections.ConfigDict, override: str) -> str | None:
  """Why `--config.a.b[i].c=value` names no field of `config`, in one line; None if it does.

  `unknown key 'detph' (did you mean 'depth'?) in --config.model.detph=1`, or
  `config.train.stages[7]: out of range, config.train.stages has 3 stages (0..2) in ...`.
  """
  path = override.split("=", 1)[0].removeprefix("--config.")
  node, where = config, "config"
  for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
    if index:
      i = int(index)
      if not isinstance(node, (list, tuple)):
        return f"{where} is not a list: [{i}] in {override}"
      if i >= len(node):
        noun = "stages" if where.endswith("stages") else "entries"
        return (f"{where}[{i}]: out of range, {where} has {len(node)} {noun} "
                f"(0..{len(node) - 1}) in {override}")
      node, where = node[i], f"{where}[{i}]"
      continue
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{where} has no field {name!r}: it is a value in {override}"
    if name not in node:
      close = difflib.get_close_matches(name, list(node.keys()), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      return f"unknown key {name!r}{hint} in {override}"
    node, where = node[name], f"{where}.{name}"
  return None
