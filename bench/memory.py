"""XLA's memory and FLOP analysis of the compiled train and inference steps, per part.

  python -m bench.memory --config configs/default.py --batch 8 --dtype bfloat16
                         [--image_size 1024] [--depth 101] [--parts all|whole|none]
                         [--set model.KEY=VALUE] [--json FILE] [--keep_barriers]

Nothing runs: every function is lowered on abstract shapes (`jax.ShapeDtypeStruct`) and
compiled for the default backend (CPU here, GPU/TPU unchanged), then
`Compiled.memory_analysis()` and `cost_analysis()` are read. Per device (the batch is the
per-device batch; one device's shard of `train.make_train_step`):

  train        the whole training step at stage `3+` (forward, backward, SGD update)
  infer        the whole inference step (`train=False`)
  and, separately compiled, the parts (`--parts`; gradients w.r.t. the part's own
  parameters and its input features, as the whole step needs them):
  train/features  backbone + FPN, forward and backward of the `3+` trainable subset
  train/rpn       RPN head, proposals, anchor matching and losses, backward
  train/roi_heads RoI sampling, RoIAlign, box and mask heads, mask targets, backward
  infer/features, infer/rpn, infer/roi_heads  the same parts at inference

Columns: arguments, outputs, temporaries (XLA's buffer assignment) and peak = arguments
+ outputs - aliased + temporaries in MB; GFLOP and GB accessed from the cost analysis
(XLA counts loop bodies once: while loops such as NMS are under-counted); compile seconds.

Rematerialisation (`model.remat`) needs --keep_barriers on CPU: XLA:CPU removes the
optimization barriers that `jax.checkpoint` places around the recomputed forward before
it assigns buffers (its `cse_barrier_expander` pass), so CSE merges the recomputation back
into the forward and the numbers come out as without remat. The flag disables that pass
(`XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander`; the program is only compiled,
never run); GPU compilers keep the barriers until after their own scheduling.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bench import common
from maskrcnn_jax import models
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import images
from maskrcnn_jax.training import optimizer, train

MB = 2.0**20


def analyse(fn, *args) -> dict:
  """Lower + compile `fn` on the abstract `args`; its memory and cost analysis."""
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  compiled, compile_s = common.timed(lambda: jitted.lower(*args).compile())
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  return {"args_mb": mem.argument_size_in_bytes / MB, "out_mb": mem.output_size_in_bytes / MB,
          "alias_mb": mem.alias_size_in_bytes / MB, "temp_mb": mem.temp_size_in_bytes / MB,
          "peak_mb": peak / MB, "gflop": cost.get("flops", float("nan")) / 1e9,
          "gb_accessed": cost.get("bytes accessed", float("nan")) / 1e9, "compile_s": compile_s}


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def whole_steps(model, config, variables, batch_size: int) -> dict:
  """{name: analysis thunk}: the real training step (shard_map, donation), the inference."""
  mesh = train.make_mesh()
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(train.AXIS))
  stage = config.train.stages[-1]
  mask = optimizer.trainable_mask(variables["params"], stage.trainable,
                                  freeze_at=config.model.freeze_at)
  tx = optimizer.make_optimizer(config.train, stage)
  state = jax.eval_shape(lambda v: train.create_state(v, tx, mask, replicated), variables)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                       state)
  n = mesh.size
  data = train.dummy_batch(config.data, batch_size * n)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharded), data)
  step = train.make_train_step(mesh, model=model, tx=tx, mask=mask)
  infer_batch = {k: abstract(data[k][:batch_size]) for k in ("image", "image_id", "image_info")}
  return {"train": lambda: analyse(step, state, batch, jax.random.key(1)),
          "infer": lambda: analyse(lambda v, b: model.apply(v, b, train=False), variables,
                                   infer_batch)}


def part_steps(model, config, variables, batch_size: int) -> dict:
  """{name: analysis thunk}: backbone + FPN, RPN and RoI heads, train and inference.

  Every input is an argument (`d`: image size, GT, proposals), none a constant.
  """
  data = abstract(train.dummy_batch(config.data, batch_size))
  mask = optimizer.trainable_mask(variables["params"], config.train.stages[-1].trainable,
                                  freeze_at=config.model.freeze_at)
  d = {"hw": jax.ShapeDtypeStruct((batch_size, 2), jnp.float32),
       "gt": {k: data[k] for k in ("boxes", "classes", "masks", "valid")}}
  image = jax.ShapeDtypeStruct(data["image"].shape, jnp.dtype(config.model.dtype))

  def apply(v, method, *args, **kwargs):
    return model.apply(v, *args, method=method, rngs={"sampling": jax.random.key(0)}, **kwargs)

  features_fn = lambda m, x: m.fpn(m.backbone(x))
  rpn_train = lambda m, f, d: m.rpn(f, d["hw"], (d["gt"]["boxes"], d["gt"]["valid"]),
                                    train=True)
  rpn_infer = lambda m, f, d: m.rpn(f, d["hw"], train=False)[0]
  roi_train = lambda m, f, d: m.roi_heads(f, d["proposals"], d["hw"], d["gt"], train=True)
  roi_infer = lambda m, f, d: m.roi_heads(f, d["proposals"], d["hw"], train=False)
  features = jax.eval_shape(lambda v, x: apply(v, features_fn, x), variables, image)
  train_d = {**d, "proposals": jax.eval_shape(lambda v, f, d: apply(v, rpn_train, f, d)[0],
                                              variables, features, d)}
  infer_d = {**d, "proposals": jax.eval_shape(lambda v, f, d: apply(v, rpn_infer, f, d),
                                              variables, features, d)}

  def features_grad(v, x):
    trainable, frozen = optimizer.split(v["params"], mask)
    out, vjp = jax.vjp(lambda t: apply({**v, "params": optimizer.merge(t, frozen)},
                                       features_fn, x), trainable)
    return vjp(jax.tree.map(jnp.ones_like, out))

  def losses_grad(method, part):
    def total(own, f, v, d):
      out = apply({**v, "params": {**v["params"], part: own}}, method, f, d)
      return train.total_loss(out[1] if isinstance(out, tuple) else out)
    return lambda v, f, d: jax.grad(total, argnums=(0, 1))(v["params"][part], f, v, d)

  forward = lambda method: lambda v, f, d: apply(v, method, f, d)
  return {
      "train/features": lambda: analyse(features_grad, variables, image),
      "train/rpn": lambda: analyse(losses_grad(rpn_train, "rpn"), variables, features, train_d),
      "train/roi_heads": lambda: analyse(losses_grad(roi_train, "roi_heads"), variables,
                                         features[:4], train_d),
      "infer/features": lambda: analyse(lambda v, x: apply(v, features_fn, x), variables, image),
      "infer/rpn": lambda: analyse(forward(rpn_infer), variables, features, infer_d),
      "infer/roi_heads": lambda: analyse(forward(roi_infer), variables, features[:4], infer_d),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--batch", type=int, default=8, help="images per device")
  parser.add_argument("--dtype", default="", help="model.dtype (float32 | bfloat16)")
  parser.add_argument("--image_size", type=int, default=0, help="data.image_size")
  parser.add_argument("--depth", type=int, default=0, help="model.depth")
  parser.add_argument("--parts", default="all", choices=("all", "whole", "none"),
                      help="all: whole steps and parts; whole: whole steps; none: parts only")
  parser.add_argument("--only", default="", help="comma list of the steps to analyse, "
                      "e.g. train,train/rpn (default: all that --parts names)")
  parser.add_argument("--set", action="append", default=[], dest="raw_set",
                      help="config override, e.g. model.roi_heads.rois_per_image=512")
  parser.add_argument("--json", default="", help="also write the numbers to this file")
  parser.add_argument("--keep_barriers", action="store_true",
                      help="keep XLA:CPU's optimization barriers (needed to see model.remat)")
  args = parser.parse_args()
  if args.keep_barriers:  # Before the first backend starts: XLA reads its flags then.
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_disable_hlo_passes=cse_barrier_expander"]).strip()

  config = common.load_config(args.config)
  overrides = [tuple(s.split("=", 1)) for s in args.raw_set]
  overrides += [(k, str(v)) for k, v in (("model.dtype", args.dtype),
                                         ("data.resize", args.image_size and "longest"),
                                         ("data.image_size", args.image_size),
                                         ("model.depth", args.depth)) if v]
  common.override(config, overrides)
  num_classes = categories.get_class_set(config.data.class_set).num_classes + 1
  model = models.build(config.model, num_classes=num_classes)
  variables = jax.eval_shape(lambda k: model.init(
      {"params": k, "sampling": k}, train.dummy_batch(config.data, 1), train=True),
                             jax.random.key(0))
  print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}); {args.config} "
        f"R{config.model.depth} {'x'.join(map(str, images.canvas(config.data)))} batch "
        f"{args.batch} per device "
        f"{config.model.dtype}; RoIs {config.model.roi_heads.rois_per_image}; "
        f"overrides {overrides}", flush=True)
  print(f"{'step':<16} {'args MB':>8} {'out MB':>8} {'temp MB':>9} {'peak MB':>9} "
        f"{'GFLOP':>9} {'GB acc.':>8} {'compile s':>9}", flush=True)
  results = {}
  steps = []
  if args.parts in ("all", "whole"):
    steps.append(whole_steps)
  if args.parts in ("all", "none"):
    steps.append(part_steps)
  only = set(args.only.split(",")) if args.only else None
  for fn in steps:
    for name, run in fn(model, config, variables, args.batch).items():
      if only and name not in only:
        continue
      results[name] = r = run()
      print(f"{name:<16} {r['args_mb']:8.0f} {r['out_mb']:8.0f} {r['temp_mb']:9.0f} "
            f"{r['peak_mb']:9.0f} {r['gflop']:9.0f} {r['gb_accessed']:8.1f} "
            f"{r['compile_s']:9.1f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"config": args.config, "batch": args.batch, "overrides": overrides,
                 "device": jax.devices()[0].device_kind, "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
