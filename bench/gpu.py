"""GPU benchmark: train step and inference of maskrcnn_jax next to torchvision, f32 and bf16.

  python -m bench.gpu [--depth 50,101] [--size 1024] [--batch 4] [--dtype float32,bfloat16]
                      [--steps 5] [--warmup 2]

Run by `bench/gpu.sh` on a machine with one GPU and an image that holds jax (CUDA),
flax, optax, torch and torchvision. Every case (side, train|infer, depth, dtype) runs in
its own subprocess, so peak GPU memory is its own: JAX
`memory_stats()["peak_bytes_in_use"]` with preallocation off, torch
`max_memory_allocated`. Configuration as `bench.run`: configs/default.py at depth and
size, synthetic S x S batches with a few GT boxes, torchvision with FrozenBN,
`min_size = max_size = S` and the same RPN / RoI counts.

Our train step is the one of `train.train_step` on one device (gradients of the `3+`
subset only, the study's optimiser, donated buffers) without the shard_map wrapper,
so the script needs neither TensorFlow nor clu. bf16 is `model.dtype = "bfloat16"`
(float32 parameters, bf16 compute); torchvision's is `torch.autocast(bfloat16)`.
"""

import argparse
import functools
import json
import os
import subprocess
import sys

from bench import common
from bench import run as bench_run


def jax_case(whats: str, depth: int, size: int, batch_size: int, dtype: str, args) -> dict:
  """Inference, then the train step, in this process: {what: {compile_s, step_s, peak_gb}}.

  Peak memory is a high-water mark: inference runs first, and training's peak (the
  larger) is the process's overall peak.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top

  config = common.default_config(depth, size)
  config.model.dtype = dtype
  model = models.build(config.model, num_classes=args.num_classes)
  data = jax.device_put(common.synthetic_batch(batch_size, size, args.instances,
                                               mask_size=config.data.mask_size,
                                               max_instances=config.data.max_instances))
  variables = bench_run.init_small(model)
  results = {}
  for what in sorted(whats.split("+"), key=lambda w: w != "infer"):
    results[what] = _jax_what(what, model, variables, data, config, args)
    results[what].update(device=str(jax.devices()[0].device_kind))
  return results


def _jax_what(what, model, variables, data, config, args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import optimizer  # pylint: disable=g-import-not-at-top

  out = {}
  if what == "train":
    stage = config.train.stages[-1]
    mask = optimizer.trainable_mask(variables["params"], stage.trainable,
                                    freeze_at=config.model.freeze_at)
    tx = optimizer.make_optimizer(config.train, stage)
    trainable, frozen = optimizer.split(variables["params"], mask)
    frozen_bn = variables["frozen_bn"]
    opt_state = jax.jit(tx.init)(trainable)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(trainable, opt_state, frozen, frozen_bn, batch, rng):
      def loss_fn(trainable):
        outputs = model.apply({"params": optimizer.merge(trainable, frozen),
                               "frozen_bn": frozen_bn}, batch, train=True, rngs={"sampling": rng})
        return sum(v for k, v in outputs.items() if k.endswith("_loss"))
      loss, grads = jax.value_and_grad(loss_fn)(trainable)
      updates, opt_state = tx.update(grads, opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state, loss

    rng = jax.random.key(1)
    compiled, out["compile_s"] = common.timed(
        lambda: step.lower(trainable, opt_state, frozen, frozen_bn, data, rng).compile())
    holder = [trainable, opt_state]

    def run():
      holder[0], holder[1], loss = compiled(*holder, frozen, frozen_bn, data, rng)
      jax.block_until_ready(loss)
  else:
    out["compile_s"], run, _ = bench_run.compiled_inference(model, variables, data)
  out["step_s"], _ = common.step_times(run, args.steps, args.warmup)
  stats = jax.devices()[0].memory_stats() or {}  # None on CPU (smoke tests).
  out["peak_gb"] = stats.get("peak_bytes_in_use", float("nan")) / 2**30
  return out


def torch_case(what: str, depth: int, size: int, batch_size: int, dtype: str, args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  model, (_, _, _, tr) = bench_run.torchvision_model(depth, size, args)
  model = model.cuda()
  data = common.synthetic_batch(batch_size, size, args.instances, full_masks=True)
  images, targets = bench_run.torch_inputs(data, "cuda")
  mask_rois = bench_run.prepare_torchvision(model, images)
  autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  step = bench_run.torchvision_step(what, model, images, targets, tr, autocast)

  def run():
    step()
    torch.cuda.synchronize()

  _, compile_s = common.timed(run)
  out = {"device": torch.cuda.get_device_name(), "compile_s": compile_s}
  out["step_s"], _ = common.step_times(run, args.steps, args.warmup)
  out["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
  out["mask_rois"] = mask_rois[-1]
  return out


def _child(side, what, depth, size, batch, dtype, args) -> dict:
  """torch: one case; jax: every `what` of `args.what` (a dict of them)."""
  cmd = [sys.executable, "-m", "bench.gpu", "--single", f"{side},{what.replace(',', '+')},{depth},{size},{batch},{dtype}",
         f"--steps={args.steps}", f"--warmup={args.warmup}", f"--instances={args.instances}",
         f"--num_classes={args.num_classes}"]
  if side == "torch":
    spec = bench_run.torch_spec(common.default_config(depth, size))
    cmd.append("--spec=" + json.dumps(spec))
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env,
                        timeout=args.case_timeout)
  if proc.returncode:
    return {"error": proc.stderr[-2000:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--what", default="train,infer")
  parser.add_argument("--depth", default="50,101")
  parser.add_argument("--size", default="1024")
  parser.add_argument("--batch", default="4")
  parser.add_argument("--dtype", default="float32,bfloat16")
  parser.add_argument("--side", default="jax,torch")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--instances", type=int, default=8)
  parser.add_argument("--num_classes", type=int, default=93)
  parser.add_argument("--case_timeout", type=int, default=240)
  parser.add_argument("--single", default="", help=argparse.SUPPRESS)
  parser.add_argument("--spec", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.single:
    side, what, depth, size, batch, dtype = args.single.split(",")
    case = jax_case if side == "jax" else torch_case
    print(json.dumps(case(what, int(depth), int(size), int(batch), dtype, args)))
    return
  cached = {}

  def result(side, what, depth, size, batch, dtype):
    key = (side, depth, size, batch, dtype, what if side == "torch" else args.what)
    if key not in cached:
      try:
        cached[key] = _child(side, key[-1], depth, size, batch, dtype, args)
      except subprocess.TimeoutExpired:
        cached[key] = {"error": "timeout"}
    res = cached[key]
    return res if side == "torch" or "error" in res else res[what]

  print(f"{'case':<6} {'model':<5} {'size':>4} {'B':>2} {'dtype':<8} | {'ours s':>7} "
        f"{'img/s':>7} {'compile':>7} {'GB':>5} | {'tv s':>7} {'img/s':>7} {'1st s':>6} "
        f"{'GB':>5} | {'tv/ours':>7}", flush=True)
  for depth in map(int, args.depth.split(",")):
    for size in map(int, args.size.split(",")):
      for batch in map(int, args.batch.split(",")):
        for dtype in args.dtype.split(","):
          for what in args.what.split(","):
            res = {}
            for side in args.side.split(","):
              res[side] = result(side, what, depth, size, batch, dtype)
              if "error" in res[side]:
                print(f"# {what} R{depth} {size} B{batch} {dtype} {side} failed: "
                      f"{res[side]['error']}", flush=True)
            o, t = res.get("jax", {}), res.get("torch", {})
            f = bench_run._fmt  # pylint: disable=protected-access
            os_, ts = o.get("step_s"), t.get("step_s")
            print(f"{what:<6} R{depth:<4} {size:>4} {batch:>2} {dtype[:8]:<8} | "
                  f"{f(os_, '7.3f', 7)} {f(os_ and batch / os_, '7.1f', 7)} "
                  f"{f(o.get('compile_s'), '7.1f', 7)} {f(o.get('peak_gb'), '5.1f', 5)} | "
                  f"{f(ts, '7.3f', 7)} {f(ts and batch / ts, '7.1f', 7)} "
                  f"{f(t.get('compile_s'), '6.1f', 6)} {f(t.get('peak_gb'), '5.1f', 5)} | "
                  f"{f(os_ and ts and ts / os_, '7.2f', 7)}  [{o.get('device', t.get('device'))}]",
                  flush=True)


if __name__ == "__main__":
  main()
