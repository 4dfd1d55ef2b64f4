"""Whole-model timings: one training step and one inference, JAX next to torchvision.

  python -m bench.model [--depths 50,101] [--sizes 512,1024] [--batches 1,2]
                        [--torch_python .venv-torch/bin/python]

Each (depth, image size, batch) runs in a fresh subprocess, so peak RSS is its own. The
JAX side builds `models.build(configs/default.py model)` at that depth (RoI and proposal
counts as the config: 2000/1000 proposals, `rois_per_image` RoIs) on random images with
`--instances` random GT boxes; "train" is `jax.grad` of the summed losses w.r.t. the
parameters, "infer" is `train=False`. Compile time is lowering + compilation; steady
state is the median of `--repeats` runs after one warm-up.

torchvision's side (never imported by this package: `--torch_python` runs a script)
is `MaskRCNN` on `resnet_fpn_backbone` (FrozenBatchNorm, layers from res3 trainable as
`freeze_at=2`), `min_size = max_size = S`, the same anchors, proposal and RoI counts,
`torch.set_num_threads(--torch_threads)`. Its train step is `sum(losses).backward()`;
its inference runs transform, backbone, RPN and RoI heads, without pasting masks into
the image (the JAX model returns 28x28 masks too). With untrained weights few class
scores pass 0.05 on either side, so inference times omit most of the final NMS.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

import bench
from bench import common

TORCH_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from torchvision.models.detection import backbone_utils, mask_rcnn, anchor_utils
    from torchvision.ops import misc
    from bench import common
    args = json.loads(sys.argv[1]); data = np.load(sys.argv[2])
    torch.set_num_threads(args["threads"])
    backbone = backbone_utils.resnet_fpn_backbone(
        backbone_name=f"resnet{args['depth']}", weights=None,
        norm_layer=misc.FrozenBatchNorm2d, trainable_layers=3)
    model = mask_rcnn.MaskRCNN(
        backbone, num_classes=args["num_classes"], min_size=args["size"], max_size=args["size"],
        rpn_anchor_generator=anchor_utils.AnchorGenerator(
            tuple((s,) for s in args["anchor_sizes"]), (tuple(args["aspect_ratios"]),) * 5),
        rpn_pre_nms_top_n_train=args["pre_train"], rpn_pre_nms_top_n_test=args["pre_test"],
        rpn_post_nms_top_n_train=args["post_train"], rpn_post_nms_top_n_test=args["post_test"],
        box_batch_size_per_image=args["rois"], box_positive_fraction=args["fg_fraction"],
        box_detections_per_img=args["detections"])
    images = [torch.from_numpy(x).permute(2, 0, 1).float() / 255 for x in data["image"]]
    targets = [{"boxes": torch.from_numpy(b[v]), "labels": torch.from_numpy(c[v]).long(),
                "masks": torch.from_numpy(m[v])}
               for b, c, m, v in zip(data["boxes"], data["classes"], data["full_masks"],
                                     data["valid"])]

    def train():
      model.train(); model.zero_grad()
      sum(model(images, targets).values()).backward()

    @torch.no_grad()
    def infer():
      model.eval()
      batch, _ = model.transform(images)
      features = model.backbone(batch.tensors)
      proposals, _ = model.rpn(batch, features)
      model.roi_heads(features, proposals, batch.image_sizes)

    out = {}
    for name, fn in (("train", train), ("infer", infer)):
      out[name + "_first_s"] = common.timed(fn)[1]
      out[name + "_s"] = common.step_times(fn, args["repeats"], 0)[0]
    out["peak_rss_mb"] = common.peak_rss_mb()
    print(json.dumps(out))
""")


def run_jax(depth: int, size: int, batch_size: int, args) -> dict:
  """Compile and steady-state seconds of a JAX train step and inference, this process."""
  import jax  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top

  config = common.default_config(depth, size)
  model = models.build(config.model, num_classes=args.num_classes)
  batch = common.synthetic_batch(batch_size, size, args.instances,
                                 mask_size=config.data.mask_size)
  variables = jax.jit(lambda k: model.init({"params": k, "sampling": k}, batch, train=True))(
      jax.random.key(0))

  def loss(params, batch, rng):
    out = model.apply({**variables, "params": params}, batch, train=True,
                      rngs={"sampling": rng})
    return sum(v for k, v in out.items() if k.endswith("_loss"))

  fns = {
      "train": (jax.jit(jax.grad(loss)), (variables["params"], batch, jax.random.key(1))),
      "infer": (jax.jit(lambda v, b: model.apply(v, b, train=False)), (variables, batch)),
  }
  out = {}
  for name, (fn, fn_args) in fns.items():
    compiled, out[name + "_compile_s"] = common.timed(lambda: fn.lower(*fn_args).compile())
    out[name + "_s"], _ = common.step_times(
        lambda: jax.block_until_ready(compiled(*fn_args)), args.repeats, 1)
  out["peak_rss_mb"] = common.peak_rss_mb()
  return out


def run_torch(depth: int, size: int, batch_size: int, args) -> dict:
  """The torchvision numbers, from a subprocess of `--torch_python`."""
  config = common.default_config(depth, size).model
  batch = common.synthetic_batch(batch_size, size, args.instances, full_masks=True)
  spec = {"depth": depth, "size": size, "threads": args.torch_threads, "repeats": args.repeats,
          "num_classes": args.num_classes, "anchor_sizes": list(config.anchor_sizes),
          "aspect_ratios": list(config.aspect_ratios),
          "pre_train": config.rpn.pre_nms_topk_train, "pre_test": config.rpn.pre_nms_topk_test,
          "post_train": config.rpn.post_nms_topk_train,
          "post_test": config.rpn.post_nms_topk_test, "rois": config.roi_heads.rois_per_image,
          "fg_fraction": config.roi_heads.positive_fraction,
          "detections": config.roi_heads.detections_per_image}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "batch.npz")
    np.savez(path, **batch)
    result = subprocess.run([args.torch_python, "-c", TORCH_SCRIPT, json.dumps(spec), path],
                            capture_output=True, text=True, check=False, cwd=bench.ROOT)
  if result.returncode:
    raise RuntimeError(f"torch side failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", default="50,101")
  parser.add_argument("--sizes", default="512")
  parser.add_argument("--batches", default="1,2")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--instances", type=int, default=8)
  parser.add_argument("--num_classes", type=int, default=93, help="with the background")
  parser.add_argument("--torch_python", default="", help="python of a torch virtualenv")
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--single", default="", help=argparse.SUPPRESS)  # jax|torch,d,s,b
  args = parser.parse_args()

  if args.single:
    side, depth, size, batch = args.single.split(",")
    run = run_jax if side == "jax" else run_torch
    print(json.dumps(run(int(depth), int(size), int(batch), args)))
    return

  header = (f"{'model':>6} {'size':>5} {'B':>2} | {'compile s tr/inf':>16} {'jax step s':>10} "
            f"{'torch s':>8} {'ratio':>6} | {'jax infer s':>11} {'torch s':>8} {'ratio':>6} | "
            f"{'jax/torch RSS MB':>16}")
  print(header, flush=True)
  for depth in map(int, args.depths.split(",")):
    for size in map(int, args.sizes.split(",")):
      for batch in map(int, args.batches.split(",")):
        results = {}
        for side in ("jax", "torch") if args.torch_python else ("jax",):
          cmd = [sys.executable, "-m", "bench.model", "--single", f"{side},{depth},{size},{batch}"]
          cmd += [f"--{k}={v}" for k, v in vars(args).items()
                  if k not in ("single", "depths", "sizes", "batches") and v != ""]
          proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
          if proc.returncode:
            print(f"R{depth} {size} B{batch} {side} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
          results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        if "jax" not in results:
          continue
        j = results["jax"]
        t = results.get("torch", {})
        ratio = lambda k: f"{j[k] / t[k]:6.2f}" if k in t else f"{'-':>6}"
        torch_s = lambda k: f"{t[k]:8.3f}" if k in t else f"{'-':>8}"
        rss = f"{j['peak_rss_mb']:.0f}/" + (f"{t['peak_rss_mb']:.0f}" if t else "-")
        print(f"{'R' + str(depth):>6} {size:>5} {batch:>2} | "
              f"{j['train_compile_s']:8.1f}/{j['infer_compile_s']:<7.1f} {j['train_s']:10.3f} "
              f"{torch_s('train_s')} {ratio('train_s')} | {j['infer_s']:11.3f} "
              f"{torch_s('infer_s')} {ratio('infer_s')} | {rss:>16}", flush=True)


if __name__ == "__main__":
  main()
