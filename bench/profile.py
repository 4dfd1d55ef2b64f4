"""Where our step's time goes: per-op profile of the compiled train or inference step.

  python -m bench.profile --what train --depth 101 --size 800 [--steps 2] [--top 25]
                          [--set model.KEY=VALUE] [--trace_dir DIR]

Runs `bench.run`'s step under `jax.profiler.trace`, reads the XLA ops' host events back
from the trace (`*.xplane.pb`), and maps each op to the Flax module and the primitive that
produced it through the compiled HLO's `op_name` metadata. Prints seconds per step:

  by part   backbone stage / FPN / RPN / RoI box / mask head / loss / optimiser, each
            split into forward and backward (ops under `transpose(...)`)
  by kind   convolutions, matmuls (the 1x1 convs, FC layers), loops, layout copies, the rest
  by op     the `--top` most expensive ops with their module path and primitive
"""

import argparse
import collections
import glob
import re
import tempfile

from bench import run as bench_run
from maskrcnn_jax import hostmem

# HLO instruction name -> op_name metadata, from the compiled module's text.
_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"")
_PARTS = ("res2", "res3", "res4", "res5", "stem", "fpn", "rpn", "box_head", "box_predictor",
          "mask_head", "mask_predictor")


def op_names(hlo_text: str) -> dict[str, str]:
  """{instruction name: op_name} for every instruction with metadata."""
  names = {}
  for line in hlo_text.splitlines():
    m = _HLO_LINE.match(line)
    if m:
      names[m.group(1)] = m.group(2)
  return names


def part_of(op_name: str) -> str:
  """A coarse label such as `res4 bwd` for an op_name path."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  for part in _PARTS:
    if f"/{part}/" in op_name or op_name.endswith(f"/{part}"):
      return f"{part} {direction}"
  for word, label in (("optimizer", "optimiser"), ("sgd", "optimiser"), ("clip", "optimiser"),
                      ("nms", "nms"), ("roi_align", "roi_align"), ("loss", "loss")):
    if word in op_name.lower():
      return f"{label} {direction}"
  return f"other {direction}"


def kind_of(op: str, op_name: str) -> str:
  """A coarse label such as `conv bwd` for an HLO op and its op_name path."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  if "conv_general_dilated" in op_name and op.startswith(("ynn", "convolution", "onednn")):
    return f"conv {direction}"
  if "dot_general" in op_name and op.startswith(("ynn", "dot", "onednn")):
    return f"matmul {direction}"
  if op.startswith("while"):
    return "loops (NMS, top-k, sampling)"
  if op.startswith(("copy", "transpose")):
    return "layout copies"
  return f"elementwise and other {direction}"


def host_op_times(trace_dir: str) -> dict[str, float]:
  """Total seconds per XLA op name over every event line of the CPU trace."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  totals = collections.Counter()
  for path in glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True):
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
      space.ParseFromString(f.read())
    for plane in space.planes:
      names = {k: v.name for k, v in plane.event_metadata.items()}
      for line in plane.lines:
        for event in line.events:
          totals[names.get(event.metadata_id, "?")] += event.duration_ps * 1e-12
  return totals


def main():
  hostmem.restart_with_huge_pages()  # As main.py and bench.run run.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--what", default="train", choices=("train", "infer"))
  parser.add_argument("--depth", type=int, default=101)
  parser.add_argument("--size", type=int, default=800)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--instances", type=int, default=8)
  parser.add_argument("--num_classes", type=int, default=93)
  parser.add_argument("--set", action="append", default=[], dest="raw_set")
  parser.add_argument("--trace_dir", default="")
  args = parser.parse_args()
  args.override = [tuple(s.split("=", 1)) for s in args.raw_set]

  import jax  # pylint: disable=g-import-not-at-top
  _, run, compiled = bench_run.jax_step(args.what, args.depth, args.size, args.batch, args)
  names = op_names(compiled.as_text())
  run()
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="bench_profile_")
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      run()
  times = {k: v / args.steps for k, v in host_op_times(trace_dir).items() if k in names}
  total = sum(times.values())
  print(f"# {args.what} R{args.depth} {args.size}² B{args.batch}: {total:.2f} s of XLA ops per "
        f"step (summed over threads), trace in {trace_dir}")
  for label in (lambda op, op_name: part_of(op_name), kind_of):
    groups = collections.Counter()
    for op, t in times.items():
      groups[label(op, names[op])] += t
    for group, t in groups.most_common():
      print(f"{group:<30} {t:7.3f} s {100 * t / total:5.1f}%")
    print()
  for op, t in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
    path = re.sub(r"(jvp|transpose|jit|shard_map)\(|\)", "", names[op])
    print(f"{t:7.3f} s  {op:<28} {path[-110:]}")


if __name__ == "__main__":
  main()
