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


def command(name: str, scale: str, workdir: pathlib.Path, overrides: list[str]) -> list[str]:
  config = f"experiments/{name}.py" + (f":{scale}" if scale else "")
  return [sys.executable, "main.py", "--config", config, "--workdir", str(workdir),
          "--mode", "train_and_eval", *overrides]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated run names")
  parser.add_argument("--scale", default="", choices=["", "cpu"])
  parser.add_argument("--root", required=True, help="one workdir per run is made under it")
  args, overrides = parser.parse_known_args()
  names = args.runs.split(",")
  unknown = sorted(set(names) - set(RUNS))
  if unknown:
    parser.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
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
