"""Checkpoints with orbax: the train state plus a small JSON of where training stands.

Orbax writes each step into a temporary directory and renames it when complete, so a
killed run never leaves a half-written checkpoint behind as the latest one.
"""

from typing import Any

from etils import epath
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


def load_variables(path: str) -> dict[str, Any]:
  """Reads the `state` item of a checkpoint directory written by `save` as plain arrays.

  `path` is a step directory (`WORKDIR/checkpoints/STEP`) or a workdir or checkpoints
  directory, in which case its latest step is read.
  """
  path = epath.Path(path)
  if (path / "checkpoints").exists():
    path = path / "checkpoints"
  if not (path / "state").exists():
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {path}")
    path = path / str(steps[-1])
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path / "state")


def save_variables(path: str, variables: dict[str, Any]) -> None:
  """Writes `variables` (e.g. converted weights) as PATH/state, which `load_variables` reads."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(epath.Path(path).resolve() / "state", variables)
