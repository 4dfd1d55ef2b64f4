"""Where a step's time goes: backbone + FPN alone vs the whole model, JAX and torchvision.

  python -m bench.parts [--depth 50] [--size 512] [--steps 3] [--set model.KEY=VALUE]

Times (median of `--steps` after one warm-up), each side in its own subprocess:
  feat     backbone + FPN forward (inference)
  feat_bw  backbone + FPN forward and backward of the `3+` trainable subset (training)
  resL, resL_bw  one identity-shortcut bottleneck block of stage L at its map size
           (S / 2^L), forward; forward and backward (parameters and input)
and, for ours, XLA's cost analysis (GFLOP) of each compiled function. The rest of the
model (RPN, proposal NMS, RoIAlign, box and mask heads, losses) is the difference to
`bench.run`'s full numbers.
"""

import argparse
import json
import subprocess
import sys

import numpy as np

import bench
from bench import common
from bench import run as bench_run


def jax_parts(depth: int, size: int, args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.models import resnet  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import optimizer  # pylint: disable=g-import-not-at-top

  config = common.default_config(depth, size)
  common.override(config, args.override)
  model = models.build(config.model, num_classes=args.num_classes)
  variables = bench_run.init_small(model)
  mask = optimizer.trainable_mask(variables["params"], "3+", freeze_at=config.model.freeze_at)
  trainable, frozen = optimizer.split(variables["params"], mask)
  x = jax.random.normal(jax.random.key(1), (1, size, size, 3), jnp.float32)
  feats = lambda m, x: m.fpn(m.backbone(x))

  def forward(trainable, x):
    v = {"params": optimizer.merge(trainable, frozen), "frozen_bn": variables["frozen_bn"]}
    return model.apply(v, x, method=feats)

  def loss(trainable, x):
    return sum(jnp.sum(f) for f in forward(trainable, x))

  cases = [("feat", forward, trainable, x), ("feat_bw", jax.grad(loss), trainable, x)]
  for level, (side, channels) in _blocks(size).items():
    block = resnet.Bottleneck(channels // 4)
    bx = jax.random.normal(jax.random.key(2), (1, side, side, channels), jnp.float32)
    bv = block.init(jax.random.key(3), bx)
    apply = lambda p, x, block=block, bv=bv: block.apply(
        {"params": p, "frozen_bn": bv["frozen_bn"]}, x)
    block_loss = lambda p, x, apply=apply: jnp.sum(apply(p, x) ** 2)
    cases += [(level, apply, bv["params"], bx),
              (level + "_bw", jax.grad(block_loss, argnums=(0, 1)), bv["params"], bx)]
  out = {}
  for name, fn, params, inputs in cases:
    compiled = jax.jit(fn).lower(params, inputs).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out[name + "_gflop"] = cost.get("flops", float("nan")) / 1e9
    out[name + "_s"], _ = common.step_times(
        lambda: jax.block_until_ready(compiled(params, inputs)), args.steps, 1)
  return out


def _blocks(size: int) -> dict[str, tuple[int, int]]:
  """{stage: (map side, block channels)} of the bottleneck stages at image side `size`."""
  return {f"res{l}": (size // 2**l, 256 * 2**(l - 2)) for l in range(2, 6)}


def torch_parts(depth: int, size: int, args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.models.detection import backbone_utils  # pylint: disable=g-import-not-at-top
  from torchvision.models import resnet  # pylint: disable=g-import-not-at-top
  from torchvision.ops import misc  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.torch_threads)
  backbone = backbone_utils.resnet_fpn_backbone(
      backbone_name=f"resnet{depth}", weights=None, norm_layer=misc.FrozenBatchNorm2d,
      trainable_layers=3)
  x = torch.randn(1, 3, size, size)

  @torch.no_grad()
  def feat():
    backbone(x)

  def feat_bw():
    backbone.zero_grad()
    sum(f.sum() for f in backbone(x).values()).backward()

  cases = [("feat", feat), ("feat_bw", feat_bw)]
  for level, (side, channels) in _blocks(size).items():
    block = resnet.Bottleneck(channels, channels // 4, norm_layer=misc.FrozenBatchNorm2d)
    bx = torch.randn(1, channels, side, side, requires_grad=True)

    @torch.no_grad()
    def block_fw(block=block, bx=bx):
      block(bx)

    def block_bw(block=block, bx=bx):
      block.zero_grad()
      bx.grad = None
      (block(bx) ** 2).sum().backward()
    cases += [(level, block_fw), (level + "_bw", block_bw)]
  return {name + "_s": common.step_times(fn, args.steps, 1)[0] for name, fn in cases}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=50)
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--num_classes", type=int, default=93)
  parser.add_argument("--torch_python", default=bench.TORCH_PYTHON)
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--set", action="append", default=[], dest="raw_set")
  parser.add_argument("--single", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.override = [tuple(s.split("=", 1)) for s in args.raw_set]
  if args.single:
    fn = jax_parts if args.single == "jax" else torch_parts
    print(json.dumps(fn(args.depth, args.size, args)))
    return
  res = {}
  for side, python in (("jax", sys.executable), ("torch", args.torch_python)):
    cmd = [python, "-m", "bench.parts", f"--single={side}", f"--depth={args.depth}",
           f"--size={args.size}", f"--steps={args.steps}", f"--num_classes={args.num_classes}",
           f"--torch_threads={args.torch_threads}"] + [f"--set={s}" for s in args.raw_set]
    proc, wall_s = common.timed(subprocess.run, cmd, capture_output=True, text=True,
                                check=False)
    if proc.returncode:
      print(f"{side} failed:\n{proc.stderr[-2000:]}")
      continue
    res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    res[side]["wall_s"] = wall_s
  j, t = res.get("jax", {}), res.get("torch", {})
  names = ["feat", "feat_bw"] + [f"{l}{bw}" for l in _blocks(args.size) for bw in ("", "_bw")]
  for name in names:
    js, ts = j.get(name + "_s", np.nan), t.get(name + "_s", np.nan)
    print(f"R{args.depth} {args.size} {name:<8} ours {js:7.3f} s ({j.get(name + '_gflop', np.nan):.0f}"
          f" GFLOP)  torchvision {ts:7.3f} s  tv/ours {ts / js:5.2f}", flush=True)


if __name__ == "__main__":
  main()
