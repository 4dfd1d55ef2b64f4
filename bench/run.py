"""CPU benchmark of maskrcnn_jax next to torchvision's Mask R-CNN: one table, one run.

  python -m bench.run --what train,infer,pipeline --depth 50,101 --size 512,800,1024
                      [--batch 1,2] [--infer_batch 1] [--steps 3] [--warmup 1]
                      [--torch_python .venv-torch/bin/python]

Every case (side, train|infer, depth, size, batch) runs in a fresh subprocess, so its
peak RSS is its own. Both sides see the same synthetic batch (random pixels, a few random
GT boxes with box-filled masks, `bench.common.synthetic_batch`) and the configuration of
`configs/default.py`: FrozenBN, S x S images (torchvision `min_size = max_size = S`, so
it does not resize), RPN pre/post-NMS top-n, RoIs per image and detections as configured.

  train  ours: `train.make_train_step` (shard_map over this host's devices, buffer
         donation) with the study's optimiser (SGD momentum, L2 decay, clipping) at stage
         `3+`; torchvision: `trainable_backbone_layers=3`, losses, backward,
         `clip_grad_norm_` and `torch.optim.SGD` with the same settings.
  infer  ours: `model.apply(train=False)` under jit; torchvision: transform, backbone, RPN,
         RoI heads (28x28 masks, not pasted into the image, like ours).
  pipeline  the augmented input pipeline's images/s (`bench.data`) next to
         the train step's images/s at that size.

Times are the median of `--steps` timed steps after `--warmup` untimed ones ("best":
the ratio of the fastest steps, less sensitive to other jobs on a shared machine); "compile"
is JAX lowering + XLA compilation (torchvision: its first step). torchvision runs with
`torch.set_num_threads(--torch_threads)`, JAX with XLA's CPU default (all cores). The
ratio is torchvision time / ours: above 1 we are faster. The default `--torch_python`,
`.venv-torch` in the checkout, is made or repaired by `make torch-venv` first.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from typing import Any

import bench
from bench import common
from maskrcnn_jax import hostmem


def jax_case(what: str, depth: int, size: int, batch_size: int, args) -> dict:
  """Our step: compile seconds, steady-state seconds, peak RSS of this process."""
  out = {}
  out["compile_s"], run, _ = jax_step(what, depth, size, batch_size, args)
  out["step_s"], out["best_s"] = common.step_times(run, args.steps, args.warmup)
  out["peak_rss_mb"] = common.peak_rss_mb()
  return out


def jax_step(what: str, depth: int, size: int, batch_size: int, args):
  """Our compiled train or inference step on the bench batch.

  Returns (compile seconds, a function that runs one step and waits for it, the
  `jax.stages.Compiled`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import train  # pylint: disable=g-import-not-at-top

  config = common.default_config(depth, size)
  common.override(config, args.override)
  model = models.build(config.model, num_classes=args.num_classes)
  data = common.synthetic_batch(batch_size, size, args.instances,
                                mask_size=config.data.mask_size,
                                max_instances=config.data.max_instances)
  mesh = train.make_mesh()
  variables = train.init_variables(model, config.data, jax.random.key(0),
                                   NamedSharding(mesh, P()))
  if what != "train":
    return compiled_inference(model, variables, data)
  # The study's last stage: 3+.
  return compiled_train_step(model, variables, config, config.train.stages[-1], mesh, data)


def compiled_train_step(model, variables, config, stage, mesh, data):
  """`train.make_train_step` at `stage` (fresh optimiser state), compiled for `data`.

  Returns (compile seconds, a function that runs one step and waits for it, compiled).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import optimizer, train  # pylint: disable=g-import-not-at-top

  mask = optimizer.trainable_mask(variables["params"], stage.trainable,
                                  freeze_at=config.model.freeze_at)
  tx = optimizer.make_optimizer(config.train, stage)
  state = train.create_state(variables, tx, mask, NamedSharding(mesh, P()))
  step = train.make_train_step(mesh, model=model, tx=tx, mask=mask)
  batch = jax.device_put(data, NamedSharding(mesh, P(train.AXIS)))
  rng = jax.random.key(1)
  compiled, compile_s = common.timed(lambda: step.lower(state, batch, rng).compile())
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch, rng)
    jax.block_until_ready(metrics)
  return compile_s, run, compiled


def init_small(model):
  """`model`'s variables, initialised on one small image: parameter shapes do not depend
  on the batch's shapes. Needs no mesh and no input pipeline (TensorFlow)."""
  import jax  # pylint: disable=g-import-not-at-top
  tiny = common.synthetic_batch(1, 128, 2)
  return jax.jit(lambda k: model.init({"params": k, "sampling": k}, tiny, train=True))(
      jax.random.key(0))


def compiled_inference(model, variables, data) -> tuple[float, Any, Any]:
  """(compile seconds, a function that runs one inference step and waits for it, compiled)."""
  import jax  # pylint: disable=g-import-not-at-top
  fn = jax.jit(lambda v, b: model.apply(v, b, train=False))
  batch = {k: data[k] for k in ("image", "image_id", "image_info")}
  compiled, compile_s = common.timed(lambda: fn.lower(variables, batch).compile())
  return compile_s, lambda: jax.block_until_ready(compiled(variables, batch)), compiled


def torchvision_model(depth: int, size: int, args):
  """torchvision's Mask R-CNN in the configuration of `args.spec` (FrozenBN, S x S input).

  Returns (model, (model, rpn, roi_heads, train) config namespaces).
  """
  from torchvision.models.detection import anchor_utils, backbone_utils, mask_rcnn  # pylint: disable=g-import-not-at-top
  from torchvision.ops import misc  # pylint: disable=g-import-not-at-top

  m, rpn, roi, tr = (argparse.Namespace(**v) for v in json.loads(args.spec))
  backbone = backbone_utils.resnet_fpn_backbone(
      backbone_name=f"resnet{depth}", weights=None, norm_layer=misc.FrozenBatchNorm2d,
      trainable_layers=3)
  model = mask_rcnn.MaskRCNN(
      backbone, num_classes=args.num_classes, min_size=size, max_size=size,
      image_mean=[v / 255 for v in m.pixel_mean], image_std=[v / 255 for v in m.pixel_std],
      rpn_anchor_generator=anchor_utils.AnchorGenerator(
          tuple((s,) for s in m.anchor_sizes), (tuple(m.aspect_ratios),) * 5),
      rpn_pre_nms_top_n_train=rpn.pre_nms_topk_train, rpn_pre_nms_top_n_test=rpn.pre_nms_topk_test,
      rpn_post_nms_top_n_train=rpn.post_nms_topk_train,
      rpn_post_nms_top_n_test=rpn.post_nms_topk_test, rpn_nms_thresh=rpn.nms_threshold,
      rpn_batch_size_per_image=rpn.samples_per_image,
      box_batch_size_per_image=roi.rois_per_image, box_positive_fraction=roi.positive_fraction,
      box_score_thresh=roi.score_threshold, box_nms_thresh=roi.nms_threshold,
      box_detections_per_img=roi.detections_per_image)
  return model, (m, rpn, roi, tr)


def prepare_torchvision(model, images) -> list[int]:
  """Makes torchvision's model do the work ours always does; returns its mask-RoI counts.

  With random weights and unit FrozenBN statistics the features grow to ~1e5, the RPN's
  boxes degenerate and torchvision keeps no proposals, skipping the RoI heads. Each
  FrozenBN's statistics are therefore set to those of its input on `images` (one
  forward pass), and at inference `score_thresh` is 0, so that it returns its full 100
  detections (random logits score ~1/num_classes) and runs the mask head on them, as our
  static-shape model does. The returned list receives the number of RoIs of each mask
  head call (`train`: its positives; ours always computes the full positive quota).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.ops import misc  # pylint: disable=g-import-not-at-top

  def set_statistics(module, inputs):
    x = inputs[0]
    module.running_mean.copy_(x.mean((0, 2, 3)))
    module.running_var.copy_(x.var((0, 2, 3)) + module.eps)

  hooks = [m.register_forward_pre_hook(set_statistics) for m in model.backbone.modules()
           if isinstance(m, misc.FrozenBatchNorm2d)]
  with torch.no_grad():
    model.backbone(model.transform(images)[0].tensors)
  for hook in hooks:
    hook.remove()
  model.roi_heads.score_thresh = 0.0
  counts = []
  model.roi_heads.mask_head.register_forward_hook(lambda m, i, o: counts.append(i[0].shape[0]))
  return counts


def torchvision_step(what: str, model, images, targets, tr, autocast=contextlib.nullcontext):
  """One torchvision step as a function: `train` (losses, backward, clipping, SGD with the
  study's settings in `tr`) or `infer` (transform, backbone, RPN, RoI heads)."""
  import torch  # pylint: disable=g-import-not-at-top

  if what == "train":
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)

    def step():
      opt.zero_grad()
      with autocast():
        loss = sum(model(images, targets).values())
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, tr.grad_clip_norm)
      opt.step()
    return step
  model.eval()

  @torch.no_grad()
  def step():
    with autocast():
      batch, _ = model.transform(images)
      features = model.backbone(batch.tensors)
      proposals, _ = model.rpn(batch, features)
      model.roi_heads(features, proposals, batch.image_sizes)
  return step


def torch_inputs(data: dict, device: str) -> tuple[list, list]:
  """`common.synthetic_batch` with `full_masks` as torchvision's (images, targets) on `device`."""
  import torch  # pylint: disable=g-import-not-at-top
  images = [torch.from_numpy(x).to(device).permute(2, 0, 1).float() / 255 for x in data["image"]]
  targets = [{"boxes": torch.from_numpy(b).to(device),
              "labels": torch.from_numpy(c).long().to(device),
              "masks": torch.from_numpy(f).to(device)}
             for b, c, f in zip(data["boxes"], data["classes"], data["full_masks"])]
  return images, targets


def torch_case(what: str, depth: int, size: int, batch_size: int, args) -> dict:
  """torchvision's Mask R-CNN in the same configuration, in this (torch venv) process."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.torch_threads)
  torch.manual_seed(0)
  model, (_, _, _, tr) = torchvision_model(depth, size, args)
  data = common.synthetic_batch(batch_size, size, args.instances, full_masks=True)
  images, targets = torch_inputs(data, "cpu")
  mask_rois = prepare_torchvision(model, images)
  run = torchvision_step(what, model, images, targets, tr)
  out = {}
  _, out["compile_s"] = common.timed(run)  # First step: allocator and kernel warm-up.
  out["step_s"], out["best_s"] = common.step_times(run, args.steps, max(args.warmup - 1, 0))
  out["peak_rss_mb"] = common.peak_rss_mb()
  out["mask_rois"] = mask_rois[-1]
  return out


def pipeline_rate(size: int, args) -> tuple[float, str]:
  """Augmented input-pipeline images/s at S (all cores), and the line it printed."""
  cmd = [sys.executable, "-m", "bench.data", f"--sizes={size}",
         f"--num_images={args.pipeline_images}", "--batch_size=2",
         f"--steps={args.pipeline_steps}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"pipeline bench failed:\n{proc.stderr[-2000:]}")
  line = next(l for l in proc.stdout.splitlines() if l.startswith("train pipeline"))
  return float(re.search(r": ([\d.]+) images/s", line).group(1)), line


def ensure_torch_python(path: str) -> str:
  """`path`; the default (the checkout's `.venv-torch`) is made or repaired first."""
  if path == bench.TORCH_PYTHON:
    subprocess.run(["make", "-C", bench.ROOT, "--no-print-directory", "torch-venv"], check=True)
  elif not os.path.exists(path):
    raise SystemExit(f"--torch_python {path} does not exist")
  return path


def torch_spec(config) -> list[dict]:
  """The config values torchvision's side needs: model, rpn, roi_heads, optimiser."""
  m, rpn, roi, tr = config.model, config.model.rpn, config.model.roi_heads, config.train
  return [{k: list(m[k]) for k in ("pixel_mean", "pixel_std", "anchor_sizes", "aspect_ratios")},
          rpn.to_dict(), roi.to_dict(),
          {"lr": tr.stages[-1].lr, "momentum": tr.momentum, "weight_decay": tr.weight_decay,
           "grad_clip_norm": tr.grad_clip_norm}]


def _child(side: str, what: str, depth: int, size: int, batch: int, args) -> dict:
  python = sys.executable if side == "jax" else args.torch_python
  cmd = [python, "-m", "bench.run", "--single", f"{side},{what},{depth},{size},{batch}",
         f"--steps={args.steps}", f"--warmup={args.warmup}", f"--instances={args.instances}",
         f"--num_classes={args.num_classes}", f"--torch_threads={args.torch_threads}"]
  cmd += [f"--set={k}={v}" for k, v in args.override]
  if side == "torch":  # The torch venv has no ml_collections: pass the config as JSON.
    config = common.default_config(depth, size)
    cmd.append("--spec=" + json.dumps(torch_spec(config)))
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?",
            "stderr": proc.stderr[-3000:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _mask_rois(what: str, depth: int, size: int, batch: int, args) -> int:
  """RoIs our mask head computes per step: the positive quota, or every detection slot."""
  config = common.default_config(depth, size)
  common.override(config, args.override)
  roi = config.model.roi_heads
  per_image = (int(roi.rois_per_image * roi.positive_fraction) if what == "train"
               else roi.detections_per_image)
  return per_image * batch


def _fmt(x, spec: str, width: int) -> str:
  return format(x, spec) if isinstance(x, (int, float)) else f"{'-':>{width}}"


def main():
  hostmem.restart_with_huge_pages()  # Both sides' processes inherit the tunable.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--what", default="train,infer")
  parser.add_argument("--depth", default="50,101")
  parser.add_argument("--size", default="512,800")
  parser.add_argument("--batch", default="1", help="training batch sizes")
  parser.add_argument("--infer_batch", type=int, default=1)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--instances", type=int, default=8, help="GT boxes per image")
  parser.add_argument("--num_classes", type=int, default=93, help="with the background")
  parser.add_argument("--torch_python", default=bench.TORCH_PYTHON)
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--pipeline_images", type=int, default=48)
  parser.add_argument("--pipeline_steps", type=int, default=10)
  parser.add_argument("--set", action="append", default=[], dest="raw_set",
                      help="config override for our side, e.g. model.remat=true")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--single", default="", help=argparse.SUPPRESS)
  parser.add_argument("--spec", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.override = [tuple(s.split("=", 1)) for s in args.raw_set]

  if args.single:
    side, what, depth, size, batch = args.single.split(",")
    case = jax_case if side == "jax" else torch_case
    print(json.dumps(case(what, int(depth), int(size), int(batch), args)))
    return

  whats = args.what.split(",")
  if not args.no_torch:
    args.torch_python = ensure_torch_python(args.torch_python)
  print(f"# load average at start {os.getloadavg()}; {os.cpu_count()} CPUs; steps "
        f"{args.steps} timed after {args.warmup} warm-up; overrides {args.override}; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}", flush=True)
  header = (f"{'case':<6} {'model':<5} {'size':>4} {'B':>2} | {'ours s':>7} {'img/s':>6} "
            f"{'compile s':>9} {'RSS MB':>7} | {'tv s':>7} {'img/s':>6} {'1st s':>6} "
            f"{'RSS MB':>7} {'masks':>7} | {'tv/ours':>7} {'best':>5} | load")
  print(header, flush=True)
  train_rates = {}
  for depth in map(int, args.depth.split(",")):
    for size in map(int, args.size.split(",")):
      cases = [("train", b) for b in map(int, args.batch.split(",")) if "train" in whats]
      cases += [("infer", args.infer_batch)] if "infer" in whats else []
      for what, batch in cases:
        ours = _child("jax", what, depth, size, batch, args)
        tv = {} if args.no_torch else _child("torch", what, depth, size, batch, args)
        for side, res in (("ours", ours), ("torchvision", tv)):
          if "error" in res:
            print(f"# {what} R{depth} {size} B{batch} {side} failed: {res['stderr']}", flush=True)
        o, t = ours.get("step_s"), tv.get("step_s")
        masks = f"{_mask_rois(what, depth, size, batch, args)}/{tv.get('mask_rois', '-')}"
        if o and what == "train":
          train_rates[(depth, size)] = max(train_rates.get((depth, size), 0), batch / o)
        print(f"{what:<6} R{depth:<4} {size:>4} {batch:>2} | {_fmt(o, '7.2f', 7)} "
              f"{_fmt(o and batch / o, '6.2f', 6)} {_fmt(ours.get('compile_s'), '9.1f', 9)} "
              f"{_fmt(ours.get('peak_rss_mb'), '7.0f', 7)} | {_fmt(t, '7.2f', 7)} "
              f"{_fmt(t and batch / t, '6.2f', 6)} {_fmt(tv.get('compile_s'), '6.1f', 6)} "
              f"{_fmt(tv.get('peak_rss_mb'), '7.0f', 7)} {masks:>7} | "
              f"{_fmt(o and t and t / o, '7.2f', 7)} "
              f"{_fmt(t and o and tv['best_s'] / ours['best_s'], '5.2f', 5)} | "
              f"{os.getloadavg()[0]:.1f}", flush=True)
  if "pipeline" in whats:
    for size in map(int, args.size.split(",")):
      rate, line = pipeline_rate(size, args)
      uses = ", ".join(f"R{d} {r:.2f}" for (d, s), r in sorted(train_rates.items()) if s == size)
      print(f"# pipeline S={size}: {rate:.1f} images/s (train step consumes {uses or '-'} "
            f"images/s) [{line}]", flush=True)


if __name__ == "__main__":
  main()
