"""The training step's images/s on 4:3 images at `data.resize` shortest_edge, with and
without `data.aspect_grouping`, timed in turns in one process.

  python -m bench.grouping [--depth 50] [--min_size 400] [--max_size 667] [--batch 1]
                           [--rounds 3] [--steps 2] [--height 480 --width 640]

A `--height` × `--width` image is resized by the rule (`images.scale`), and the same
resized pixels and GT boxes are put on the canvas without grouping (max_size² rounded up
to a multiple of 64) and on the landscape canvas with it (max(min_size) × max_size, each
rounded up). Both train steps (`bench.run.compiled_train_step`: configs/default.py's model
and optimiser at its last stage, as `bench.run`) are compiled first; then each round times
`--steps` steps of one canvas and then of the other (which goes first alternates), after
one warm-up step each. Each row is one round: median step seconds and images/s per canvas,
and their ratio; then the medians over the rounds, and the fastest step of each canvas over
all rounds ("best": less sensitive to other jobs on a shared machine). The defaults are the
references' 800/1333 halved, so that it runs in minutes on 2 cores (canvases 704² and
448 × 704; at 800/1333 they are 1344² and 832 × 1344).
"""

import argparse
import os

import numpy as np

from bench import common
from maskrcnn_jax import hostmem


def batch_on(canvas, valid, info, args, config) -> dict[str, np.ndarray]:
  """`common.synthetic_batch` with its image and boxes inside the resized `valid` (h, w)
  region of a `canvas` (H, W), zero-padded, and `info` (orig_h, orig_w, scale) as the
  pipeline's `image_info`; the same pixels and boxes for any canvas."""
  h, w = valid
  data = common.synthetic_batch(args.batch, min(valid), args.instances,
                                mask_size=config.data.mask_size,
                                max_instances=config.data.max_instances)
  pixels = np.random.default_rng(1).integers(0, 256, (args.batch, h, w, 3), dtype=np.uint8)
  data["image"] = np.zeros((args.batch, *canvas, 3), np.uint8)
  data["image"][:, :h, :w] = pixels
  data["image_info"] = np.tile(np.array([[*info, h, w]], np.float32), (args.batch, 1))
  return data


def main():
  hostmem.restart_with_huge_pages()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=50)
  parser.add_argument("--min_size", type=int, default=400)
  parser.add_argument("--max_size", type=int, default=667)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--instances", type=int, default=8, help="GT boxes per image")
  parser.add_argument("--num_classes", type=int, default=93, help="with the background")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2, help="timed steps per canvas and round")
  args = parser.parse_args()

  from bench import run  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import images  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import train  # pylint: disable=g-import-not-at-top

  config = common.default_config(args.depth, 64)
  config.data.resize = "shortest_edge"
  config.data.min_size, config.data.max_size = (args.min_size,), args.max_size
  scale = images.scale(args.height, args.width, config.data)
  valid = tuple(int(s) for s in images.resized_size(args.height, args.width, scale))
  info = (args.height, args.width, float(scale))
  model = models.build(config.model, num_classes=args.num_classes)
  mesh = train.make_mesh()
  variables = run.init_small(model)
  steps = {}
  for grouping in (False, True):
    config.data.aspect_grouping = grouping
    canvas = images.canvas(config.data)
    compile_s, steps[grouping], _ = run.compiled_train_step(
        model, variables, config, config.train.stages[-1], mesh,
        batch_on(canvas, valid, info, args, config))
    print(f"# grouping {'on ' if grouping else 'off'}: canvas {canvas[0]} x {canvas[1]}, "
          f"compiled in {compile_s:.1f} s", flush=True)
  print(f"# R{args.depth} batch {args.batch}, {args.height} x {args.width} resized to "
        f"{valid[0]} x {valid[1]} (shortest_edge {args.min_size}/{args.max_size}); "
        f"{os.cpu_count()} CPUs, load at start {os.getloadavg()}", flush=True)
  print(f"{'round':>5} | {'off s':>6} {'img/s':>6} | {'on s':>6} {'img/s':>6} | "
        f"{'on/off img/s':>12} | load", flush=True)
  rows, best = [], [float("inf")] * 2
  for r in range(args.rounds):
    order = (False, True) if r % 2 == 0 else (True, False)  # Neither always runs first.
    timed = {g: common.step_times(steps[g], args.steps, 1) for g in order}
    times = {g: t[0] for g, t in timed.items()}
    rows.append((times[False], times[True]))
    best = [min(b, timed[g][1]) for b, g in zip(best, (False, True))]
    print(f"{r:>5} | {times[False]:6.2f} {args.batch / times[False]:6.2f} | "
          f"{times[True]:6.2f} {args.batch / times[True]:6.2f} | "
          f"{times[False] / times[True]:12.2f} | {os.getloadavg()[0]:.1f}", flush=True)
  off, on = np.median(rows, 0)
  ratio = np.median([a / b for a, b in rows])
  print(f"{'med':>5} | {off:6.2f} {args.batch / off:6.2f} | {on:6.2f} {args.batch / on:6.2f} | "
        f"{ratio:12.2f} |", flush=True)
  print(f"{'best':>5} | {best[0]:6.2f} {args.batch / best[0]:6.2f} | {best[1]:6.2f} "
        f"{args.batch / best[1]:6.2f} | {best[0] / best[1]:12.2f} |", flush=True)


if __name__ == "__main__":
  main()
