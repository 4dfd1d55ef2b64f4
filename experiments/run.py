"""Runs a set of experiments one after another, each in its own workdir.

  python -m experiments.run --runs baseline,lr_0005 --scale cpu --root /tmp/experiments
  python -m experiments.report --root /tmp/experiments --out docs/experiments.md

Each run is `main.py --config experiments/NAME.py[:cpu] --workdir ROOT/NAME` with any extra
`--config.key=value` overrides passed through; its wall time and exit code are written to
ROOT/NAME/run.json. A run that exits non-zero (e.g. diverged) does not stop the others.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
RUNS = ("baseline", "lr_0005", "lr_001", "rois_256", "rois_512", "no_other",
        "augment_balanced", "things_and_stuff")
FULL_SCALE_RUNS = ("coco_start",)  # Pretrained weights the CPU-sized model has none of.


def runs(scale: str) -> tuple[str, ...]:
  """The runs of `scale` ("" full, "cpu")."""
  return RUNS if scale else RUNS + FULL_SCALE_RUNS


def command(name: str, scale: str, workdir: pathlib.Path, overrides: list[str]) -> list[str]:
  config = f"experiments/{name}.py" + (f":{scale}" if scale else "")
  return [sys.executable, "main.py", "--config", config, "--workdir", str(workdir),
          "--mode", "train_and_eval", *overrides]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", help="comma-separated run names; default: all of the scale")
  parser.add_argument("--scale", default="", choices=["", "cpu"])
  parser.add_argument("--root", required=True, help="one workdir per run is made under it")
  args, overrides = parser.parse_known_args()
  known = runs(args.scale)
  names = args.runs.split(",") if args.runs else list(known)
  unknown = sorted(set(names) - set(known))
  if unknown:
    parser.error(f"unknown runs {unknown} at scale {args.scale!r}; known: {', '.join(known)}")
  root = pathlib.Path(args.root)
  for name in names:
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = command(name, args.scale, workdir, overrides)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.time()
    with open(workdir / "log.txt", "w") as log:
      code = subprocess.call(cmd, cwd=HERE.parent, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    (workdir / "run.json").write_text(json.dumps(
        {"name": name, "command": " ".join(cmd[1:]), "exit_code": code, "wall_seconds": wall},
        indent=2))
    print(f"[{name}] exit {code} after {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
  main()
