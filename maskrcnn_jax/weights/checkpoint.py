"""Checkpoints with orbax: the train state plus a small JSON of where training stands.

Orbax finishes a step by renaming its temporary directory on local disk, and on `gs://`
(no atomic rename) by writing `commit_success.txt` into it: only its own listing of
finished steps (`finished_steps`) tells a half-written step from a complete one.
"""

import json
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      epath.Path(workdir) / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
  """Saves state and meta (stage index, input position, counters) at `step`, once."""
  if step in mngr.all_steps():
    return  # E.g. a periodic save that falls on a stage boundary.
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)))


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores the state into the structure, shapes and shardings of `abstract_state`."""
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
  return mngr.restore(step, args=args)["state"]


def finished_steps(directory: str | epath.Path) -> list[int]:
  """The steps orbax finished writing under `directory`, ascending; [] if it is absent."""
  return sorted(ocp.utils.checkpoint_steps(directory))


def has_checkpoint(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints holds a finished step."""
  return bool(finished_steps(epath.Path(workdir) / "checkpoints"))


def state_dir(path: str) -> epath.Path:
  """The `state` item `load_variables` reads at `path`: PATH/state (converted weights, or a
  step directory), else that of the latest finished step of PATH/checkpoints or PATH.

  Raises:
    FileNotFoundError: no finished checkpoint there.
  """
  path = epath.Path(path)
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  if not (path / "state").exists():
    steps = finished_steps(path)
    if not steps:
      raise FileNotFoundError(f"no finished checkpoint in {path}")
    path = path / str(steps[-1])
  if not ocp.path.step.is_path_finalized(path / "state") or (
      path.name.isdigit() and not ocp.path.step.is_path_finalized(path)):
    raise FileNotFoundError(f"{path} is not a finished checkpoint")
  return path / "state"


def load_variables(path: str) -> dict[str, Any]:
  """Reads the `state` item of a checkpoint directory written by `save` as numpy arrays.

  `path` is a step directory (`WORKDIR/checkpoints/STEP`), converted weights
  (`save_variables`), or a workdir or checkpoints directory, in which case its latest
  finished step is read (`state_dir`).
  """
  path = state_dir(path)
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata
    # numpy targets: any topology reads it, whatever devices wrote it.
    return checkpointer.restore(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree))


def load_shapes(path: str) -> dict[str, Any]:
  """The shapes (tuples) of what `load_variables` reads at `path`, without reading arrays."""
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(state_dir(path)).item_metadata
  return jax.tree.map(lambda m: tuple(m.shape), tree)


METADATA = "metadata.json"


def save_variables(path: str, variables: dict[str, Any],
                   metadata: dict[str, Any] | None = None) -> None:
  """Writes `variables` (e.g. converted weights) as PATH/state, which `load_variables` reads.

  `metadata` (JSON data, e.g. `classifier_layout`, see `maskrcnn_jax.weights.load`) goes
  to PATH/metadata.json, which `load_metadata` reads.
  """
  path = epath.Path(path).resolve()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / "state", variables)
  if metadata:
    (path / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True))


def load_metadata(path: str) -> dict[str, Any]:
  """PATH/metadata.json of converted weights, else the `meta` item of the step
  `load_variables` reads (a training run's: stage, counters, model options); {} if none.

  Raises:
    FileNotFoundError: no finished checkpoint at `path`.
    ValueError: the JSON does not parse.
  """
  file = epath.Path(path) / METADATA
  if file.exists():
    return json.loads(file.read_text())
  meta = state_dir(path).parent / "meta"
  if not meta.exists():
    return {}
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
    return checkpointer.restore(meta)
