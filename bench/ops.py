"""Timings of the detection ops next to torchvision's on the same data.

  python -m bench.ops [--torch_python .venv-torch/bin/python] [--boxes 1000]

RoIAlign: `--boxes` boxes pooled from P2-P5 of an `--image`² image with `--channels`
channels, sampling ratio 2, outputs 7x7 and 14x14, forward and forward + backward
(gradient w.r.t. the maps), for each JAX formulation:
  gather        `multilevel_roi_align` (default): one flat buffer, each box sampled once;
  level_select  `roi_align` of every box on every level, then the box's level selected;
  einsum        one-hot contraction per level, timed on `--einsum_boxes` boxes only
                (its cost grows with the map area) and scaled to `--boxes`.
torchvision's `MultiScaleRoIAlign` (aligned=False; the JAX side runs aligned=True, same
cost), `nms` and `batched_nms` run in a subprocess of the torch virtualenv with
`--torch_threads` threads, so this package never imports torch. NMS: 2000 RPN-like boxes
-> 1000 at IoU 0.7; batched NMS: 8768 boxes of 5 levels -> 2000, per level, IoU 0.7.
Detection NMS: 1000 proposals x 92 classes as `RoIHeads` sees them (`--det_spread` sets
how many class scores pass 0.05), per-class NMS 0.5 -> 100: all candidates, then capped
to the best `--topk` (the `model.roi_heads.topk_candidates` cap); torchvision filters the
scores > 0.05 and runs `batched_nms`.
rpn_targets: IoU of 100 GT with all anchors, matching and sampling 256 (JAX only), from
the IoU matrix (`match`) and from IoU rows (`match_boxes`).
Times are medians in ms, compile time excluded.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import bench
from bench import common
from maskrcnn_jax.ops import anchors as anchor_ops
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops
from maskrcnn_jax.ops import roi_align as ra
from maskrcnn_jax.ops import sampling

LEVELS = (2, 3, 4, 5)
OUTPUT_SIZES = (7, 14)

TORCH_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, torchvision
    from bench import common
    data = np.load(sys.argv[1])
    repeats = int(sys.argv[2])
    torch.set_num_threads(int(sys.argv[3]))
    median_ms = lambda fn: 1e3 * common.step_times(fn, repeats, 1)[0]
    maps = {f"p{l}": torch.from_numpy(data[f"p{l}"].transpose(0, 3, 1, 2).copy())
            for l in (2, 3, 4, 5)}
    for m in maps.values():
      m.requires_grad_(True)
    boxes = [torch.from_numpy(data["boxes"][0])]
    image = int(data["image"])
    result = {}
    for size in (7, 14):
      pool = torchvision.ops.MultiScaleRoIAlign(list(maps), size, 2)
      def forward():
        with torch.no_grad():
          pool(maps, boxes, [(image, image)])
      def forward_backward():
        for m in maps.values():
          m.grad = None
        out = pool(maps, boxes, [(image, image)])
        out.backward(torch.ones_like(out))
      result[f"roi_align_{size}_fwd"] = median_ms(forward)
      result[f"roi_align_{size}_fwd_bwd"] = median_ms(forward_backward)
    nms_boxes = torch.from_numpy(data["nms_boxes"])
    nms_scores = torch.from_numpy(data["nms_scores"])
    result["nms"] = median_ms(lambda: torchvision.ops.nms(nms_boxes, nms_scores, 0.7)[:1000])
    result["nms_kept"] = int(min(len(torchvision.ops.nms(nms_boxes, nms_scores, 0.7)), 1000))
    rpn = [torch.from_numpy(data[k]) for k in ("rpn_boxes", "rpn_scores", "rpn_levels")]
    result["batched_nms"] = median_ms(lambda: torchvision.ops.batched_nms(*rpn, 0.7)[:2000])
    # Detection: torchvision's postprocess_detections (score > 0.05, per-class NMS 0.5).
    det_boxes = torch.from_numpy(data["det_boxes"]).reshape(-1, 4)
    det_scores = torch.from_numpy(data["det_scores"]).reshape(-1)
    det_classes = torch.arange(data["det_scores"].shape[1]).repeat(data["det_scores"].shape[0])
    def detect():
      keep = torch.where(det_scores > 0.05)[0]
      return torchvision.ops.batched_nms(det_boxes[keep], det_scores[keep], det_classes[keep],
                                         0.5)[:100]
    result["detection_nms"] = median_ms(detect)
    print(json.dumps(result))
""")


def median_ms(fn, *args, repeats):
  """Median milliseconds of `fn(*args)` and its wait, over `repeats` calls after the first."""
  return 1e3 * common.step_times(lambda: jax.block_until_ready(fn(*args)), repeats, 1)[0]


def make_data(args):
  rng = np.random.default_rng(0)
  maps = {f"p{l}": rng.normal(size=(1, -(-args.image // 2**l), -(-args.image // 2**l),
                                     args.channels)).astype(np.float32) for l in LEVELS}
  # Log-uniform sides from 8 to 600 pixels: every level gets boxes.
  xy = rng.uniform(0, args.image * 0.9, (1, args.boxes, 2))
  wh = np.exp(rng.uniform(np.log(8), np.log(600), (1, args.boxes, 2)))
  boxes = np.concatenate([xy, np.minimum(xy + wh, args.image)], -1).astype(np.float32)
  # RPN-like NMS input: jittered copies of 200 objects, so that many boxes overlap.
  centres = rng.uniform(0, args.image, (200, 2))
  sides = np.exp(rng.uniform(np.log(16), np.log(400), (200, 2)))
  pick = rng.integers(0, 200, 2000)
  c = centres[pick] + rng.normal(scale=0.15, size=(2000, 2)) * sides[pick]
  s = sides[pick] * np.exp(rng.normal(scale=0.2, size=(2000, 2)))
  nms_boxes = np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)
  nms_scores = rng.uniform(size=2000).astype(np.float32)
  # RPN proposals of 5 levels (2000 + 2000 + 2000 + 2000 + 768), NMS per level.
  rpn_boxes = (np.concatenate([nms_boxes] * 4 + [nms_boxes[:768]])
               + rng.normal(size=(8768, 4))).astype(np.float32)
  rpn_scores = rng.uniform(size=8768).astype(np.float32)
  rpn_levels = np.repeat(np.arange(5), [2000] * 4 + [768])
  # Detection input: 1000 proposals x `--classes` class-specific boxes and softmax scores,
  # `--det_spread` the logit scale of the classes other than each proposal's own: larger
  # spreads pass more candidates over the 0.05 score threshold.
  det_boxes = (np.concatenate([nms_boxes[:1000, None]] * args.classes, 1)
               + rng.normal(scale=4.0, size=(1000, args.classes, 4))).astype(np.float32)
  logits = rng.normal(scale=args.det_spread, size=(1000, args.classes + 1))
  logits[np.arange(1000), rng.integers(1, args.classes + 1, 1000)] += 4.0
  probs = np.exp(logits - logits.max(1, keepdims=True))
  det_scores = (probs / probs.sum(1, keepdims=True))[:, 1:].astype(np.float32)
  return dict(maps, boxes=boxes, nms_boxes=nms_boxes, nms_scores=nms_scores,
              rpn_boxes=rpn_boxes, rpn_scores=rpn_scores, rpn_levels=rpn_levels,
              det_boxes=det_boxes, det_scores=det_scores, image=args.image)


def detection_nms(boxes, scores, *, topk):
  """`RoIHeads._detect`'s candidates -> 100 detections: the best `topk` (0: all) class
  scores above 0.05, per-class NMS at 0.5. Returns (kept indices, valid)."""
  p, k = scores.shape
  boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
  classes = jnp.tile(jnp.arange(k), p)
  candidate = scores > 0.05
  if topk:
    _, top = jax.lax.top_k(jnp.where(candidate, scores, -jnp.inf), topk)
    boxes, scores, classes, candidate = boxes[top], scores[top], classes[top], candidate[top]
  keep, valid = nms_ops.batched_nms(boxes, scores, classes, iou_threshold=0.5,
                                    max_outputs=100, valid=candidate)
  return (top[keep] if topk else keep), valid


def level_select(features, boxes, *, output_size):
  """Every box pooled on every level, then each box's own level kept."""
  level = ra.assign_levels(boxes, min_level=LEVELS[0], max_level=LEVELS[-1])
  out = 0.0
  for l, f in zip(LEVELS, features):
    pooled = ra.roi_align(f, boxes, output_size=output_size, spatial_scale=2.0**-l,
                          sampling_ratio=2, aligned=True)
    out += jnp.where((level == l)[..., None, None, None], pooled, 0.0)
  return out


def jax_rows(data, args):
  features = [jnp.asarray(data[f"p{l}"], args.dtype) for l in LEVELS]
  boxes = jnp.asarray(data["boxes"])
  forms = {
      "gather": functools.partial(ra.multilevel_roi_align, sampling_ratio=2, aligned=True),
      "level_select": level_select,
      "einsum": functools.partial(ra.multilevel_roi_align, sampling_ratio=2, aligned=True,
                                  impl="einsum"),
  }
  rows = {}
  for size in OUTPUT_SIZES:
    for name, form in forms.items():
      n = args.einsum_boxes if name == "einsum" else args.boxes
      if n <= 0:
        continue
      fwd = jax.jit(functools.partial(form, output_size=size))
      cotangent = jnp.ones((1, n, size, size, args.channels), jnp.float32)
      loss = lambda f, b, fwd=fwd, ct=cotangent: jnp.vdot(fwd(f, b), ct)
      fwd_bwd = jax.jit(jax.value_and_grad(loss))  # Gradient w.r.t. the maps.
      for kind, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        ms = median_ms(fn, features, boxes[:, :n], repeats=args.repeats)
        rows[(f"roi_align_{size}_{kind}", name)] = ms * args.boxes / n
  nms_fn = jax.jit(functools.partial(nms_ops.nms, iou_threshold=0.7, max_outputs=1000))
  rows[("nms", "tiled")] = median_ms(nms_fn, jnp.asarray(data["nms_boxes"]),
                                          jnp.asarray(data["nms_scores"]), repeats=args.repeats)
  kept = int(nms_fn(data["nms_boxes"], data["nms_scores"])[1].sum())
  batched_fn = jax.jit(functools.partial(nms_ops.batched_nms, iou_threshold=0.7,
                                         max_outputs=2000))
  rows[("batched_nms", "tiled")] = median_ms(
      batched_fn, *(jnp.asarray(data[k]) for k in ("rpn_boxes", "rpn_scores", "rpn_levels")),
      repeats=args.repeats)
  det = (jnp.asarray(data["det_boxes"]), jnp.asarray(data["det_scores"]))
  num_candidates = int((data["det_scores"] > 0.05).sum())
  full = None
  for topk in [0] + [int(k) for k in args.topk.split(",")]:
    fn = jax.jit(functools.partial(detection_nms, topk=topk))
    keep, valid = fn(*det)
    keep = np.asarray(keep)[np.asarray(valid)].tolist()
    full = keep if not topk else full
    name = f"top {topk}" if topk else f"all {data['det_scores'].size}"
    name += "" if keep == full else " (differs)"
    rows[("detection_nms", name)] = median_ms(fn, *det, repeats=args.repeats)
  # RPN targets for one image: IoU of 100 GT with all anchors, match, sample 256.
  anchors = jnp.asarray(anchor_ops.generate_anchors_concat(args.image))
  gt = jnp.asarray(data["boxes"][0, :100])

  def rpn_targets(gt, anchors, key, rows_only):
    kw = dict(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    _, labels = (sampling.match_boxes(gt, anchors, **kw) if rows_only
                 else sampling.match(box_ops.box_iou(gt, anchors), **kw))
    return sampling.sample_mask(labels, jnp.ones_like(labels, bool), num_samples=256,
                                positive_fraction=0.5, rng=key)

  for rows_only in (False, True) if hasattr(sampling, "match_boxes") else (False,):
    fn = jax.jit(functools.partial(rpn_targets, rows_only=rows_only))
    form = f"{'IoU rows' if rows_only else 'IoU matrix'}, {anchors.shape[0]}"
    rows[("rpn_targets", form)] = median_ms(fn, gt, anchors, jax.random.key(0),
                                            repeats=args.repeats)
  return rows, kept, num_candidates


def torch_rows(data, args):
  if not os.path.exists(args.torch_python):
    print(f"{args.torch_python} not found: torchvision columns skipped")
    return {}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "data.npz")
    np.savez(path, **data)
    proc = subprocess.run([args.torch_python, "-c", TORCH_SCRIPT, path, str(args.repeats),
                           str(args.torch_threads)], capture_output=True, text=True, check=False,
                          cwd=bench.ROOT)
  if proc.returncode:
    print(f"torchvision run failed, columns skipped:\n{proc.stderr[-2000:]}")
    return {}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--torch_python", default=bench.TORCH_PYTHON)
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--image", type=int, default=1024)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--boxes", type=int, default=1000)
  parser.add_argument("--einsum_boxes", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--classes", type=int, default=92, help="detection classes (no bg)")
  parser.add_argument("--det_spread", type=float, default=1.0)
  parser.add_argument("--topk", default="1024,2048,4096,8192", help="detection caps")
  parser.add_argument("--dtype", default="float32", help="dtype of the maps on the JAX side")
  args = parser.parse_args(argv)
  data = make_data(args)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs; image {args.image}, {args.boxes} boxes, C={args.channels}")
  reference = torch_rows(data, args)
  rows, kept, num_candidates = jax_rows(data, args)
  print(f"\n{'op':<22} {'jax form':<18} {'jax ms':>10} {'torch ms':>10} {'torch/jax':>10}")
  for (op, form), ms in rows.items():
    ref = reference.get(op)
    ratio = f"{ref / ms:10.2f}" if ref else f"{'-':>10}"
    ref = f"{ref:10.1f}" if ref else f"{'-':>10}"
    print(f"{op:<22} {form:<18} {ms:10.1f} {ref} {ratio}")
  print(f"\nNMS kept {kept} boxes (torchvision {reference.get('nms_kept', '-')}). Detection: "
        f"{num_candidates} class scores > 0.05; '(differs)': not the uncapped selection.")
  if args.einsum_boxes:
    print(f"einsum rows: {args.einsum_boxes} boxes timed, scaled to {args.boxes}.")


if __name__ == "__main__":
  main(sys.argv[1:])
