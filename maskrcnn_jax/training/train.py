"""The training loop: data-parallel steps, staged fine-tuning, checkpoints, evaluation.

The step is written per device (pmap semantics: a per-device batch, `lax.pmean` of
gradients and metrics over the mesh axis `data`) with `jax.shard_map` inside `jax.jit`.
The same code runs on one CPU, on fake CPU devices, on a GPU and on a TPU pod, where the
global batch is split over all devices of all processes.
"""

import dataclasses
import functools
import time
from typing import Any, Iterator

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from maskrcnn_jax import distributed
from maskrcnn_jax import models
from maskrcnn_jax import training
from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import images
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.evaluation import run_eval
from maskrcnn_jax.training import optimizer
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import load
from maskrcnn_jax.weights import options

AXIS = "data"


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the config and the checkpoint's meta."""
  step: jax.Array  # Global step: the number of batches consumed.
  params: Any  # All parameters; the stage's mask picks those it trains.
  frozen_bn: Any  # FrozenBatchNorm statistics: never trained.
  opt_state: Any  # Over the current stage's trainable subset only.
  nonfinite_total: jax.Array  # Steps skipped for a non-finite loss or gradient.
  nonfinite_run: jax.Array  # ... of which in a row, up to now.


@dataclasses.dataclass
class StageSummary:
  name: str
  first_step: int
  last_step: int = -1
  first_loss: float = float("nan")
  last_loss: float = float("nan")


def make_mesh() -> Mesh:
  """One axis, `data`, over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (AXIS,))


def total_loss(outputs: dict[str, jax.Array]) -> jax.Array:
  return sum(v for k, v in outputs.items() if k.endswith("_loss"))


def dummy_batch(data_config: ml_collections.ConfigDict, batch_size: int) -> dict[str, Any]:
  """Zeros in the shapes and dtypes of a training batch (docs/design.md)."""
  (h, w), m, sm = images.canvas(data_config), data_config.max_instances, data_config.mask_size
  return {
      "image": np.zeros((batch_size, h, w, 3), np.uint8),
      "image_id": np.zeros((batch_size,), np.int32),
      "image_info": np.tile(np.array([h, w, 1.0, h, w], np.float32), (batch_size, 1)),
      "boxes": np.zeros((batch_size, m, 4), np.float32),
      "classes": np.zeros((batch_size, m), np.int32),
      "masks": np.zeros((batch_size, m, sm, sm), np.uint8),
      "valid": np.zeros((batch_size, m), bool),
      "num_truncated": np.zeros((batch_size,), np.int32),
  }


def init_variables(model, data_config: ml_collections.ConfigDict, rng: jax.Array,
                   sharding: NamedSharding) -> dict[str, Any]:
  """Model variables (`params`, `frozen_bn`), created replicated on every device."""
  batch = dummy_batch(data_config, 1)
  init = functools.partial(model.init, train=True)
  k1, k2 = jax.random.split(rng)
  return jax.jit(lambda a, b: init({"params": a, "sampling": b}, batch),
                 out_shardings=sharding)(k1, k2)


def create_state(variables: dict[str, Any], tx: optax.GradientTransformation, mask,
                 sharding: NamedSharding) -> TrainState:
  def make(variables):
    trainable, _ = optimizer.split(variables["params"], mask)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=variables["params"], frozen_bn=variables["frozen_bn"],
                      opt_state=tx.init(trainable), nonfinite_total=zero, nonfinite_run=zero)
  return jax.jit(make, out_shardings=sharding)(variables)


def new_stage_state(state: TrainState, tx: optax.GradientTransformation, mask,
                    sharding: NamedSharding) -> TrainState:
  """Fresh optimiser state (no momentum) over a new stage's trainable subset."""
  trainable, _ = optimizer.split(state.params, mask)
  return state.replace(opt_state=jax.jit(tx.init, out_shardings=sharding)(trainable))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, model,
               tx: optax.GradientTransformation, mask):
  """One SGD step on this device's batch; gradients and metrics averaged over `data`.

  A step whose loss or gradient is not finite leaves params and optimiser state as
  they were and is counted.
  """
  rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS))
  trainable, frozen = optimizer.split(state.params, mask)
  variables = {"frozen_bn": state.frozen_bn}

  def loss_fn(trainable):
    params = optimizer.merge(trainable, frozen)
    outputs = model.apply({**variables, "params": params}, batch, train=True,
                          rngs={"sampling": rng})
    return total_loss(outputs), outputs

  (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  grads = lax.pmean(grads, AXIS)
  metrics = lax.pmean({**outputs, "total_loss": loss}, AXIS)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics["total_loss"]) & jnp.isfinite(grad_norm)

  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  new_trainable = optax.apply_updates(trainable, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  skipped = (~finite).astype(jnp.int32)
  state = state.replace(
      step=state.step + 1,
      params=optimizer.merge(keep(new_trainable, trainable), frozen),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_total=state.nonfinite_total + skipped,
      nonfinite_run=(state.nonfinite_run + 1) * skipped)
  metrics.update(grad_norm=grad_norm, skipped=skipped.astype(jnp.float32),
                 nonfinite_run=state.nonfinite_run,
                 num_truncated=lax.psum(jnp.sum(batch["num_truncated"]), AXIS))
  return state, metrics


def make_train_step(mesh: Mesh, **kwargs):
  # check_vma=False: pmap semantics. The detection ops' loops carry per-device values
  # from constant initial states, which shard_map's replication typing would reject.
  step = functools.partial(train_step, **kwargs)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()),
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


@functools.cache  # Runs in one process (tests, notebooks) share the traced step.
def make_loss_step(mesh: Mesh, model):
  """Validation losses (train=True targets, no update) averaged over `data`."""
  def step(variables, batch, rng):
    rng = jax.random.fold_in(rng, lax.axis_index(AXIS))
    outputs = model.apply(variables, batch, train=True, rngs={"sampling": rng})
    return lax.pmean({**outputs, "total_loss": total_loss(outputs)}, AXIS)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P(),
                                       check_vma=False))


def global_batches(ds, sharding: NamedSharding) -> Iterator[dict[str, jax.Array]]:
  """Process-local numpy batches → global arrays split over the `data` axis."""
  for batch in ds.as_numpy_iterator():
    yield jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  stacked = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, evaluate: bool = True,
                       preemption: distributed.Preemption | None = None) -> dict[str, Any]:
  """Trains all stages of `config.train.stages` (resuming from WORKDIR's latest checkpoint).

  A SIGTERM (`preemption`, main.py's since start-up; else one entered here) stops the run
  at the next check: after the restore, at each stage's start (nothing new to save), or
  after a step (saved). Returns a summary: per-stage first/last total loss, skipped steps,
  final metrics, whether it was preempted, and the final `state` (for tests).
  """
  if preemption is None:
    with distributed.Preemption() as preemption:
      return train_and_evaluate(config, workdir, evaluate=evaluate, preemption=preemption)
  build.prepare(config.data)
  class_set = categories.get_class_set(config.data.class_set)
  model = models.build(config.model, num_classes=class_set.num_classes + 1)
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P(AXIS))
  stages = config.train.stages
  bounds = optimizer.stage_boundaries(stages)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)

  latest = mngr.latest_step()
  rng = jax.random.key(config.seed)
  init_rng, step_rng, val_rng = jax.random.split(rng, 3)
  init = functools.partial(init_variables, model, config.data, sharding=replicated)
  if latest is None:
    variables = init(init_rng)
    if config.init.checkpoint != load.RANDOM_INIT:
      variables = load.init_from_checkpoint(variables, config.init.checkpoint,
                                            scope=config.init.scope, class_set=class_set)
  else:  # The checkpoint holds every value: shapes suffice, and no init is compiled.
    variables = jax.eval_shape(init, init_rng)
  masks = [optimizer.trainable_mask(variables["params"], s.trainable,
                                    freeze_at=config.model.freeze_at) for s in stages]
  txs = [optimizer.make_optimizer(config.train, s) for s in stages]

  if latest is None:
    opt_stage = 0
    state = create_state(variables, txs[0], masks[0], replicated)
    writer.write_hparams(_flat_config(config))
  else:
    meta = checkpoint.restore_meta(mngr, latest)
    opt_stage = meta["stage"]
    abstract = jax.eval_shape(
        lambda v: create_state(v, txs[opt_stage], masks[opt_stage], replicated), variables)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    state = checkpoint.restore_state(mngr, latest, abstract)
    logging.info("Resumed from step %d (stage %s).", latest, stages[opt_stage].name)
    _log_topology_change(meta)
  del variables
  summaries, final_metrics = [], {}
  preempted = preemption.check()  # Restored: stop before the evaluation's set-up.

  step = int(state.step)
  ds = pipeline.create_train_dataset(config.data, global_batch_size=config.train.global_batch_size,
                                     seed=config.seed, start_step=step)
  batches = global_batches(ds, data_sharding)
  loss_step = make_loss_step(mesh, model)
  evaluation = run_eval.Evaluation(config, model, mesh) if evaluate and not preempted else None

  def meta(stage_idx):
    return {"step": int(state.step), "stage": stage_idx, "stage_name": stages[stage_idx].name,
            "input_position": int(state.step), "seed": config.seed,
            "nonfinite_total": int(state.nonfinite_total),
            "process_count": jax.process_count(), "device_count": jax.device_count(),
            **options.of(config.model)}  # What the weights compute their features with.

  def diverged(message):
    mngr.wait_until_finished()  # The last good checkpoint is complete before the exit.
    return training.DivergenceError(message)

  evaluated = {}  # {step: metrics} of the latest evaluation: each step is evaluated once.

  def run_evaluation():
    if int(state.step) not in evaluated:
      evaluated.clear()
      evaluated[int(state.step)] = evaluate_now()
    return evaluated[int(state.step)]

  def evaluate_now():
    variables = {"params": state.params, "frozen_bn": state.frozen_bn}
    val = run_eval.validation_loss(config, loss_step, variables, data_sharding, val_rng)
    writer.write_scalars(int(state.step), {f"val/{k}": v for k, v in val.items()})
    if not evaluate:
      return {}
    result = evaluation(variables, workdir, int(state.step), writer=writer)
    return {**{f"val/{k}": v for k, v in val.items()}, **result}

  report = periodic_actions.ReportProgress(num_train_steps=bounds[-1], writer=writer,
                                           every_steps=config.train.log_every_steps)
  hooks = [report]
  if config.train.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=config.train.profile_steps,
                                          logdir=workdir))
  for stage_idx in range(optimizer.stage_index(stages, step), len(stages)):
    if preempted or preemption.check():  # At the stage's start: saved, or no step taken.
      preempted = True
      break
    stage, mask, tx = stages[stage_idx], masks[stage_idx], txs[stage_idx]
    if opt_stage != stage_idx:
      state = new_stage_state(state, tx, mask, replicated)
      opt_stage = stage_idx
    optimizer.log_stage(stage, mask)
    # The learning rate is logged from the host, computed once per stage: a step that held
    # the stage's start as a constant would compile again for a later stage with the same
    # trainables and schedule.
    stage_lrs = np.asarray(optimizer.learning_rate(config.train, stage)(np.arange(stage.steps)))
    train_fn = make_train_step(mesh, model=model, tx=tx, mask=mask)
    summary = StageSummary(stage.name, first_step=step)
    history, last_run, t0 = [], None, time.time()
    while step < bounds[stage_idx + 1]:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = train_fn(state, next(batches), step_rng)
      step += 1
      history.append(metrics)
      if last_run is not None and int(last_run) >= config.train.max_nonfinite_steps:
        raise diverged(
            f"{int(last_run)} steps in a row had a non-finite loss or gradient (up to step "
            f"{step - 1}); stopping. The last good checkpoint is in {workdir}/checkpoints.")
      last_run = metrics["nonfinite_run"]  # Read one step late: keeps the device busy.
      for hook in hooks:
        hook(step)
      if step % config.train.log_every_steps == 0 or step == bounds[stage_idx + 1]:
        scalars = _mean_metrics(history)
        elapsed = time.time() - t0
        # GT instances past data.max_instances, dropped since the last log (all processes).
        scalars["num_truncated"] = round(scalars["num_truncated"] * len(history))
        stage_steps = np.arange(step - len(history), step) - bounds[stage_idx]
        scalars.update(stage=stage_idx, lr=float(np.mean(stage_lrs[stage_steps])),
                       step_time=elapsed / len(history),
                       images_per_sec=len(history) * config.train.global_batch_size / elapsed,
                       skipped_steps_total=float(state.nonfinite_total))
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        if np.isnan(summary.first_loss):
          summary.first_loss = scalars["total_loss"]
        summary.last_loss, summary.last_step = scalars["total_loss"], step
        history, t0 = [], time.time()
      if step % config.train.checkpoint_every_steps == 0:
        checkpoint.save(mngr, step, state, meta(stage_idx))
      if preemption.check():
        checkpoint.save(mngr, step, state, meta(stage_idx))
        preempted = True
        break
      if config.train.eval_every_steps and step % config.train.eval_every_steps == 0:
        final_metrics = run_evaluation()
    if last_run is not None and int(last_run) >= config.train.max_nonfinite_steps:
      raise diverged(
          f"{int(last_run)} steps in a row had a non-finite loss or gradient; stopping. "
          f"The last good checkpoint is in {workdir}/checkpoints.")
    summaries.append(summary)
    if preempted:
      break
    checkpoint.save(mngr, step, state, meta(stage_idx))  # Stage boundary.
    final_metrics = run_evaluation()
  if not summaries and not preempted:
    logging.info("Already trained to step %d: evaluating only.", step)
    final_metrics = run_evaluation()
  mngr.wait_until_finished()
  writer.flush()
  result = {"state": state, "stages": summaries, "metrics": final_metrics,
            "preempted": preempted, "nonfinite_total": int(state.nonfinite_total)}
  _log_summary(result, workdir)
  return result


def _log_topology_change(meta: dict[str, Any]) -> None:
  """A resume on other hosts reads the same batches; other devices draw other samples."""
  if meta.get("process_count", jax.process_count()) != jax.process_count():
    logging.info("Resuming with %d processes (saved with %d): same data order.",
                 jax.process_count(), meta["process_count"])
  if meta.get("device_count", jax.device_count()) != jax.device_count():
    logging.warning("Resuming on %d devices (saved on %d): same batches, but the per-device "
                    "sampling streams (RPN/RoI sampling) change.", jax.device_count(),
                    meta["device_count"])


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}
  def visit(prefix, node):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        visit(f"{prefix}{key}.", value)
      elif isinstance(value, (int, float, str, bool)):
        flat[f"{prefix}{key}"] = value
  visit("", config)
  return flat


def _log_summary(result: dict[str, Any], workdir: str) -> None:
  lines = ["Training summary" + (" (preempted)" if result["preempted"] else "") + ":"]
  for s in result["stages"]:
    lines.append(f"  stage {s.name}: steps {s.first_step}..{s.last_step}, total loss "
                 f"{s.first_loss:.4f} -> {s.last_loss:.4f}")
  lines.append(f"  skipped (non-finite) steps: {result['nonfinite_total']}")
  for key in sorted(result["metrics"]):
    if isinstance(result["metrics"][key], float):
      lines.append(f"  {key}: {result['metrics'][key]:.4f}")
  lines.append(f"  workdir: {workdir} (TensorBoard logs, checkpoints/, eval/)")
  logging.info("\n".join(lines))
