"""RPN anchor matching of a batch: from the IoU matrix (`match`) and from IoU rows
(`match_boxes`), XLA temporaries and time.

  python -m bench.matching [--batch 8] [--image 1024] [--gt 100] [--repeats 3]

`--gt` random GT boxes per image against every anchor of an `--image`² input (261,888 at
1024²), vmapped over `--batch` images; times are medians after one warm-up.
"""

import argparse

import jax
import numpy as np

from bench import common
from maskrcnn_jax.ops import anchors as anchor_ops
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import sampling


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--image", type=int, default=1024)
  parser.add_argument("--gt", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  anchors = jax.numpy.asarray(anchor_ops.generate_anchors_concat(args.image))
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, args.image * 0.9, (args.batch, args.gt, 2))
  gt = np.concatenate([xy, xy + rng.uniform(8, args.image * 0.4, xy.shape)], -1)
  gt = jax.numpy.asarray(gt, jax.numpy.float32)
  kw = dict(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
  forms = {"IoU matrix (match)": lambda g: sampling.match(box_ops.box_iou(g, anchors), **kw)}
  if hasattr(sampling, "match_boxes"):
    forms["IoU rows (match_boxes)"] = lambda g: sampling.match_boxes(g, anchors, **kw)
  print(f"{args.batch} images x {args.gt} GT x {anchors.shape[0]} anchors")
  for name, fn in forms.items():
    compiled = jax.jit(jax.vmap(fn)).lower(gt).compile()
    median, _ = common.step_times(lambda: jax.block_until_ready(compiled(gt)), args.repeats, 1)
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    print(f"{name:<24} temp {temp:6.0f} MB  {1e3 * median:8.0f} ms", flush=True)


if __name__ == "__main__":
  main()
