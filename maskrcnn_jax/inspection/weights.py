"""The parameters: statistics and a histogram per layer, and what each stage trains.

Layers are '/'-joined parameter paths (`backbone/res4/block0/conv1/kernel`, see
maskrcnn_jax/models/__init__.py).
"""

from typing import Any, Sequence

from flax import traverse_util
from matplotlib import figure as mfigure
import numpy as np

from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.inspection import data as data_lib


def layer_table(params: Any) -> list[dict[str, Any]]:
  """One row per parameter array: path, shape, size, mean, std, min, max, L2 norm."""
  rows = []
  for path, value in traverse_util.flatten_dict(params, sep="/").items():
    x = np.asarray(value, np.float64)
    rows.append(dict(path=path, shape="x".join(map(str, x.shape)), size=int(x.size),
                     mean=float(x.mean()), std=float(x.std()), min=float(x.min()),
                     max=float(x.max()), norm=float(np.sqrt(np.sum(x * x)))))
  return rows


def norms_picture(rows: Sequence[dict[str, Any]]) -> np.ndarray:
  """The L2 norm of every kernel (log scale), in parameter order."""
  kernels = [r for r in rows if r["path"].endswith("kernel")]
  return data_lib.bar_figure([r["norm"] for r in kernels],
                             [r["path"].removesuffix("/kernel") for r in kernels], log=True,
                             ylabel="L2 norm", title=f"kernel norms ({len(kernels)} layers)")


def histograms_picture(params: Any, *, max_layers: int = 16) -> np.ndarray:
  """Value histograms of up to `max_layers` kernels spread evenly over the network."""
  flat = {p: v for p, v in traverse_util.flatten_dict(params, sep="/").items()
          if p.endswith("kernel")}
  paths = list(flat)
  chosen = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, max_layers).round()
                                        .astype(int))] if paths else []
  cols = 4
  rows = max(-(-len(chosen) // cols), 1)
  fig = mfigure.Figure(figsize=(3.2 * cols, 2.4 * rows), dpi=110)
  axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
  for ax, path in zip(axes, chosen):
    x = np.asarray(flat[path], np.float32).reshape(-1)
    ax.hist(x, bins=50, color="tab:blue")
    ax.set_title(f"{path.removesuffix('/kernel')}\nstd {x.std():.3g}", fontsize=6)
    ax.tick_params(labelsize=6)
  for ax in axes[len(chosen):]:
    ax.axis("off")
  fig.tight_layout()
  return pictures.figure_to_array(fig)


def module_group(path: str) -> str:
  """The module a parameter belongs to, at the grain of the stage presets."""
  parts = path.split("/")
  return "/".join(parts[:2]) if parts[0] in ("backbone", "roi_heads") else parts[0]


def stage_table(params: Any, stage_masks: Sequence[Any], stage_names: Sequence[str]
                ) -> list[dict[str, Any]]:
  """One row per module group: per stage, the trained share of its parameter values.

  stage_masks: per stage a bool tree like `params` (True = trained).
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  sizes = {p: int(np.size(v)) for p, v in flat.items()}
  groups: dict[str, dict[str, float]] = {}
  for path in flat:
    groups.setdefault(module_group(path), {"total": 0})["total"] += sizes[path]
  for name, mask in zip(stage_names, stage_masks):
    for path, on in traverse_util.flatten_dict(mask, sep="/").items():
      row = groups[module_group(path)]
      row[name] = row.get(name, 0) + (sizes[path] if on else 0)
  return [dict(module=g, parameters=row["total"],
               **{n: row.get(n, 0) / row["total"] for n in stage_names})
          for g, row in groups.items()]


def stages_picture(table: Sequence[dict[str, Any]], stage_names: Sequence[str]) -> np.ndarray:
  """A module × stage grid: the share of each module's parameters the stage trains."""
  share = np.array([[row[n] for n in stage_names] for row in table], np.float64)
  fig = mfigure.Figure(figsize=(1.2 * len(stage_names) + 3.5, 0.28 * len(table) + 1.5), dpi=110)
  ax = fig.subplots()
  ax.imshow(share, cmap="Greens", vmin=0, vmax=1, aspect="auto")
  for (i, j), v in np.ndenumerate(share):
    ax.text(j, i, "-" if v == 0 else f"{v:.0%}", ha="center", va="center", fontsize=7,
            color="white" if v > 0.5 else "black")
  ax.set_xticks(np.arange(len(stage_names)), stage_names)
  ax.set_yticks(np.arange(len(table)),
                [f"{row['module']} ({row['parameters'] / 1e6:.2f}M)" for row in table],
                fontsize=7)
  ax.set_title("share of each module's parameters trained per stage")
  fig.tight_layout()
  return pictures.figure_to_array(fig)
