"""One markdown report over the workdirs of `experiments.run`.

  python -m experiments.report --root /tmp/experiments --out docs/experiments.md

Tables: box/mask AP, mIoU and fwIoU (with and without `other`), final loss per stage,
skipped (non-finite) steps, divergence, wall time. Plots beside the report: all runs' loss
curves on one figure, each run's confusion matrix, and the RoI-count comparison. Runs of
full scale only (`experiments.run.FULL_SCALE_RUNS`) get their docstring: what they change
and why.
"""

import argparse
import csv
import importlib
import json
import pathlib
import shutil

from matplotlib import figure as mfigure
import ml_collections
import numpy as np

from experiments import run as run_lib
from maskrcnn_jax.data import images
from maskrcnn_jax.evaluation import pictures

METRICS = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("stuff/mIoU", "mIoU"),
           ("stuff/fwIoU", "fwIoU"), ("stuff_no_other/mIoU", "mIoU w/o other"),
           ("stuff/pAcc", "pixel acc"))


def final_eval_dir(workdir: pathlib.Path) -> pathlib.Path | None:
  steps = [p for p in (workdir / "eval").glob("*") if p.name.isdigit()]
  return max(steps, key=lambda p: int(p.name)) if steps else None


def read_run(workdir: pathlib.Path) -> dict:
  """What the report needs from one run's workdir."""
  info = json.loads((workdir / "run.json").read_text()) if (workdir / "run.json").exists() else {}
  config = json.loads((workdir / "config.json").read_text())
  scalars = pictures.read_scalars(str(workdir)) if list(workdir.glob("events.out.*")) else {}
  eval_dir = final_eval_dir(workdir)
  metrics = json.loads((eval_dir / "metrics.json").read_text()) if eval_dir else {}
  stage_losses, blew_up = [], False
  if "train/total_loss" in scalars and "train/stage" in scalars:
    steps, loss = scalars["train/total_loss"]
    stage_steps, stage = scalars["train/stage"]
    by_step = dict(zip(stage_steps, stage))
    for i in range(len(config["train"]["stages"])):
      values = [v for s, v in zip(steps, loss) if by_step.get(s) == i]
      stage_losses.append(values[-1] if values else float("nan"))
      blew_up |= bool(values) and max(values) > 3 * values[0]
  skipped = scalars.get("train/skipped_steps_total", ([0], [0.0]))[1][-1]
  losses = scalars.get("train/total_loss", ([], []))[1]
  # Diverged: the run failed, skipped non-finite steps, or a stage's loss rose to over 3x
  # where it started (the study's "gradients exploded").
  diverged = (info.get("exit_code", 0) != 0 or skipped > 0 or blew_up
              or (len(losses) and not np.all(np.isfinite(losses))))
  return dict(name=workdir.name, info=info, config=config, scalars=scalars, metrics=metrics,
              eval_dir=eval_dir, stage_losses=stage_losses, skipped=int(skipped),
              diverged=bool(diverged))


def _fmt(value) -> str:
  if value is None or (isinstance(value, float) and not np.isfinite(value)):
    return "–"
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def loss_figure(runs: list[dict]) -> np.ndarray:
  fig = mfigure.Figure(figsize=(9, 4.5), dpi=100)
  ax = fig.subplots()
  for r in runs:
    if "train/total_loss" in r["scalars"]:
      ax.plot(*r["scalars"]["train/total_loss"], label=r["name"], lw=1)
  bounds = np.cumsum([s["steps"] for s in runs[0]["config"]["train"]["stages"]])[:-1]
  for b in bounds:
    ax.axvline(b, color="gray", ls="--", lw=0.8)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("total training loss")
  ax.set_title("training loss, all runs (dashed: stage boundaries of the baseline)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def rois_figure(runs: list[dict]) -> np.ndarray | None:
  """Predictions per class and metrics for 128 / 256 / 512 RoIs per image."""
  chosen = [r for r in runs if r["name"] in ("baseline", "rois_256", "rois_512") and r["eval_dir"]]
  if len(chosen) < 2:
    return None
  fig = mfigure.Figure(figsize=(12, 4), dpi=100)
  left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
  width = 0.8 / len(chosen)
  for k, r in enumerate(chosen):
    rows = _read_csv(r["eval_dir"] / "per_class.csv")
    counts = [int(row["predictions"]) for row in rows]
    x = np.arange(len(rows))
    rois = r["config"]["model"]["roi_heads"]["rois_per_image"]
    left.bar(x + k * width, counts, width, label=f"{rois} RoIs")
    right.bar(np.arange(2) + k * width,
              [r["metrics"].get("segm/AP") or 0.0, r["metrics"].get("stuff/mIoU") or 0.0],
              width, label=f"{rois} RoIs")
  present = [i for i, row in enumerate(_read_csv(chosen[0]["eval_dir"] / "per_class.csv"))
             if int(row["gt_instances"]) > 0]
  left.set_xticks(present)
  left.set_xticklabels([_read_csv(chosen[0]["eval_dir"] / "per_class.csv")[i]["name"]
                        for i in present], rotation=90, fontsize=6)
  left.set_ylabel("predictions")
  left.set_title("predictions per class (classes with ground truth labelled)")
  left.legend(fontsize=7)
  right.set_xticks(np.arange(2) + width)
  right.set_xticklabels(["mask AP", "mIoU"])
  right.set_title("metrics")
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def _read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_report(runs: list[dict], out: pathlib.Path, *, missing: list[str]) -> None:
  assets = out.with_suffix("")
  assets.mkdir(parents=True, exist_ok=True)
  config = runs[0]["config"]
  data = ml_collections.ConfigDict({"resize": "longest", **config["data"]})  # Older runs: longest.
  height, width = images.canvas(data)
  stages = " → ".join(f"{s['name']} {s['steps']} steps at {s['lr']:g}"
                      for s in config["train"]["stages"])
  lines = ["# Experiments: the study and its proposals", "",
           f"Scale: ResNet-{config['model']['depth']} FPN, `{data.resize}` resize to "
           f"{height}×{width}, "
           f"global batch {config['train']['global_batch_size']}, data root "
           f"`{config['data']['root']}`; baseline schedule {stages}. Regenerate with "
           "`python -m experiments.run --scale cpu --root ROOT` then "
           "`python -m experiments.report --root ROOT --out docs/experiments.md`; each row's "
           "command is in the table.", "",
           "What transfers from the synthetic set: whether a setting trains stably (LR "
           "divergence), how losses move at stage boundaries, how RoI counts and class sets "
           "change what the heads see, and that every metric and picture is computed as on "
           "COCO-Stuff. What does not: absolute AP/mIoU (the synthetic classes are textures "
           "that a small model separates easily; COCO-Stuff's 91 classes are not), the size "
           "of the `other` class's effect (here `other` is a few thing shapes, in COCO it is "
           "every thing pixel), and anything that depends on ImageNet initialisation, which "
           "the CPU runs do not use.", ""]
  for name in run_lib.FULL_SCALE_RUNS:
    doc = importlib.import_module(f"experiments.{name}").__doc__.strip()
    lines += [f"## {name} (full scale only, not in the table)", ""]
    lines += [" ".join(p.split()) + "\n" for p in doc.split("\n\n")]
  num_stages = max(len(r["stage_losses"]) for r in runs)
  stage_names = [s["name"] for s in runs[0]["config"]["train"]["stages"]]
  header = (["run", "command"] + [label for _, label in METRICS]
            + [f"final loss {n}" for n in stage_names[:num_stages]]
            + ["skipped steps", "diverged", "wall (min)"])
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in runs:
    cells = [r["name"], f"`{r['info'].get('command', '')}`"]
    cells += [_fmt(r["metrics"].get(key)) for key, _ in METRICS]
    cells += [_fmt(float(v)) for v in r["stage_losses"]] + ["–"] * (num_stages - len(r["stage_losses"]))
    cells += [str(r["skipped"]), "yes" if r["diverged"] else "no",
              _fmt(r["info"].get("wall_seconds", float("nan")) / 60)]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  if missing:
    lines += [f"Not run (no finished workdir): {', '.join(missing)}.", ""]
  pictures.save_png(str(assets / "loss_curves.png"), loss_figure(runs))
  lines += ["## Training loss", "", f"![loss curves]({assets.name}/loss_curves.png)", ""]
  rois = rois_figure(runs)
  if rois is not None:
    pictures.save_png(str(assets / "rois.png"), rois)
    lines += ["## RoIs per image: 128 / 256 / 512", "", f"![RoI comparison]({assets.name}/rois.png)", ""]
  lines += ["## Confusion matrices (rows: ground truth, normalised)", ""]
  for r in runs:
    if r["eval_dir"] and (r["eval_dir"] / "confusion.png").exists():
      name = f"confusion_{r['name']}.png"
      shutil.copy(r["eval_dir"] / "confusion.png", assets / name)
      lines += [f"### {r['name']}", "", f"![confusion {r['name']}]({assets.name}/{name})", ""]
  out.write_text("\n".join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--out", required=True, help="the markdown file; PNGs go beside it")
  args = parser.parse_args()
  root = pathlib.Path(args.root)
  done = [n for n in run_lib.runs("") if (root / n / "run.json").exists()]
  if not done:
    raise SystemExit(f"no finished experiment (ROOT/NAME/run.json) under {root}")
  runs = [read_run(root / n) for n in done]
  write_report(runs, pathlib.Path(args.out), missing=[n for n in run_lib.RUNS if n not in done])
  print(f"wrote {args.out} ({len(runs)} runs)")


if __name__ == "__main__":
  main()
