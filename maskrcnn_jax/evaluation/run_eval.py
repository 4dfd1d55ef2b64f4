"""Evaluation and prediction loops: the jitted model and the mask pasting on devices,
metrics on the host.

`Evaluation` is the one entry point for `--mode=eval`, the periodic evaluation during
training and the evaluation at the end of every stage: made once per run (ground truth
loaded, predict step compiled once per canvas), called per evaluation. Each process scores its own
images; process 0 merges the processes' scores through files in the evaluation folder
(the workdir is shared, as for checkpoints) and writes.
"""

import functools
import json
import pickle
from typing import Any, Iterator

from absl import logging
from clu import metric_writers
from etils import epath
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from maskrcnn_jax import models
from maskrcnn_jax.data import build as build_lib
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import predict_input
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import masks as masks_lib
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.weights import load

AXIS = "data"


def make_predict_step(mesh: Mesh, model, *, paste: dict[str, Any] | None = None):
  """Detections (docs/design.md) for a global batch split over `data`.

  With `paste` (the keyword arguments of `masks.paste_batch_device`), the masks are also
  pasted, painted and run-length coded on the device (its output keys added).
  """
  return _predict_step(mesh, model, None if paste is None else tuple(sorted(paste.items())))


@functools.cache  # Evaluations in one process (each of a run's, later runs') share the step.
def _predict_step(mesh: Mesh, model, paste: tuple[tuple[str, Any], ...] | None):
  def step(variables, batch):
    detections = model.apply(variables, batch, train=False)
    if paste is not None:
      detections.update(masks_lib.paste_batch_device(detections, batch["image_info"],
                                                     **dict(paste)))
    return detections
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                               check_vma=False))


def _to_local(tree, mesh: Mesh):
  """Global arrays split over `data` → numpy of this process's rows."""
  if jax.process_count() > 1:
    tree = multihost_utils.global_array_to_host_local_array(tree, mesh, P(AXIS))
  return jax.device_get(tree)


def _eval_batches(config: ml_collections.ConfigDict, sharding: NamedSharding, *,
                  num_images: int) -> Iterator[tuple[dict[str, np.ndarray], Any]]:
  """(process-local numpy batch, the same as global arrays) over the validation split."""
  return _global(pipeline.create_eval_dataset(
      config.data, batch_size=config.data.eval_batch_size // jax.process_count(),
      split="validation", num_images=num_images), sharding)


def _global(ds, sharding: NamedSharding) -> Iterator[tuple[dict[str, np.ndarray], Any]]:
  """(process-local numpy batch, the same as global arrays) of each batch of `ds`."""
  for batch in ds.as_numpy_iterator():
    yield batch, jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


@jax.jit
def _all(x: jax.Array) -> jax.Array:
  return x.all()


def mean_losses(batches, loss_step, variables, rng: jax.Array, max_batches: int
                ) -> dict[str, float]:
  """Mean losses over the first `max_batches` batches in which every image is real.

  Whether a batch is used is decided from the global `image_valid` (a reduction on the
  devices, the same result on every process), never from the local part: processes with
  uneven shards skip the same batches and run the same collectives.

  Args:
    batches: (process-local numpy batch, the same as global arrays) pairs.
    loss_step: (variables, global batch, rng) → {name: scalar}.
    variables: the model variables.
    rng: the loss step's key.
    max_batches: batches to average.
  """
  totals, count = {}, 0
  for _, batch in batches:
    if count == max_batches:
      break
    if not bool(_all(batch["image_valid"])):
      continue  # A padded batch would add background-only images.
    losses = jax.device_get(loss_step(variables, batch, rng))
    for k, v in losses.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    count += 1
  return {k: v / max(count, 1) for k, v in totals.items()}


def validation_loss(config: ml_collections.ConfigDict, loss_step, variables,
                    sharding: NamedSharding, rng: jax.Array) -> dict[str, float]:
  """Mean losses over the first `train.val_loss_batches` full validation batches.

  The batches are the same for any process count (`pipeline.create_loss_dataset`).
  """
  ds = pipeline.create_loss_dataset(config.data, global_batch_size=config.data.eval_batch_size,
                                    num_batches=config.train.val_loss_batches)
  return mean_losses(_global(ds, sharding), loss_step, variables, rng,
                     config.train.val_loss_batches)


def merge_processes(evaluator: evaluator_lib.Evaluator, out_dir: epath.PathLike) -> None:
  """Process 0's `evaluator` gets every process's scores (`Evaluator.state`).

  Each other process writes its state (with its COCO matching done) into
  OUT_DIR/process_states (a folder all processes see); after a barrier process 0 merges
  them and removes the folder.
  """
  count = jax.process_count()
  if count == 1:
    return
  index = jax.process_index()
  states = epath.Path(out_dir) / "process_states"
  states.mkdir(parents=True, exist_ok=True)
  if index > 0:  # Pickle: the states hold numpy arrays, and only this run reads them.
    (states / f"{index}.pkl").write_bytes(pickle.dumps(evaluator.state()))
  multihost_utils.sync_global_devices(f"maskrcnn_jax.evaluation {out_dir}")
  if index == 0:
    evaluator.merge([pickle.loads((states / f"{i}.pkl").read_bytes())
                     for i in range(1, count)])
    states.rmtree()


class Evaluation:
  """COCO AP and COCO-Stuff metrics on the validation split; files in WORKDIR/eval/STEP.

  Made once per run: loads the ground truth and builds the predict step, which compiles
  at its first call on each canvas only (two with `data.aspect_grouping`). `eval.paste`
  says where masks are pasted: `device` (in the predict step), `host` (`masks.paste_crops`:
  within each box only, cheaper where the device is this CPU) or `auto` (the device unless
  jax runs on the CPU).
  """

  def __init__(self, config: ml_collections.ConfigDict, model, mesh: Mesh):
    self.config = config
    self.mesh = mesh
    self.sharding = NamedSharding(mesh, P(AXIS))
    self.evaluator = evaluator_lib.Evaluator(
        build_lib.annotation_files(config.data, "validation"),
        categories.get_class_set(config.data.class_set),
        mask_threshold=config.eval.mask_threshold,
        # Process 0 draws its own first images: no input image crosses processes.
        num_pictures=config.eval.num_pictures if jax.process_index() == 0 else 0,
        score_threshold=config.eval.score_threshold, coco_backend=config.eval.coco_backend,
        panoptic=config.eval.panoptic.to_dict(), official_export=config.eval.official_export,
        draw=config.eval.pictures)
    frame = self.evaluator.frame_size()
    paste = None
    if config.eval.paste == "device" or (config.eval.paste == "auto"
                                         and jax.default_backend() != "cpu"):
      paste = dict(frame=frame, capacity=masks_lib.RLE_CAPACITY_PER_SIDE * frame,
                   threshold=config.eval.mask_threshold, fill=self.evaluator.fill)
    self.predict = make_predict_step(mesh, model, paste=paste)

  def __call__(self, variables, workdir: str, step: int, *,
               writer: metric_writers.MetricWriter | None = None) -> dict[str, float]:
    """Evaluates `variables`; returns the metrics on process 0, {} on the others.

    Every validation image is evaluated exactly once, by the process that loads it.
    """
    evaluator = self.evaluator
    evaluator.reset()
    num_batches, pending = 0, None
    for local, batch in _eval_batches(self.config, self.sharding,
                                      num_images=self.config.eval.num_images):
      detections = self.predict(variables, batch)  # Runs while the host scores `pending`.
      if pending is not None:
        evaluator.add(pending[0], _to_local(pending[1], self.mesh))
      pending = (local, detections)
      num_batches += 1
      if num_batches % 10 == 0:
        logging.info("Evaluated %d batches.", num_batches)
    if pending is not None:
      evaluator.add(pending[0], _to_local(pending[1], self.mesh))
    out_dir = epath.Path(workdir) / "eval" / str(step)
    merge_processes(evaluator, out_dir)
    if jax.process_index() > 0:
      return {}
    metrics = evaluator.write(str(out_dir), writer=writer, step=step, log_dir=workdir)
    expected = len(evaluator.coco_gt.imgs)
    if self.config.eval.num_images > 0:
      expected = min(expected, self.config.eval.num_images)
    if evaluator.num_images != expected:
      logging.warning("Scored %d images, but the ground truth has %d to score: the data and "
                      "the annotation files disagree.", evaluator.num_images, expected)
    logging.info("Evaluation at step %d (%d batches): %s", step, num_batches,
                 ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())
                           if k in ("bbox/AP", "segm/AP", "stuff/mIoU", "stuff/fwIoU")))
    return metrics


def evaluate(config: ml_collections.ConfigDict, model, variables, mesh: Mesh, workdir: str,
             step: int, *, writer: metric_writers.MetricWriter | None = None) -> dict[str, float]:
  """One evaluation (`Evaluation`); a run that evaluates often makes one `Evaluation`."""
  return Evaluation(config, model, mesh)(variables, workdir, step, writer=writer)


def checkpoint_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """What `--mode=eval` / `predict` read: `eval.checkpoint`, else the workdir's latest
  checkpoint, else `init.checkpoint` (converted weights)."""
  from maskrcnn_jax.weights import checkpoint  # pylint: disable=g-import-not-at-top
  if config.eval.checkpoint:
    return config.eval.checkpoint
  if checkpoint.has_checkpoint(workdir):
    return workdir
  if config.init.checkpoint == load.RANDOM_INIT:
    raise ValueError(f"nothing to evaluate: {workdir} has no checkpoint, config.eval.checkpoint "
                     "is empty and config.init.checkpoint is 'random'")
  return config.init.checkpoint


def _load_variables(config: ml_collections.ConfigDict, workdir: str, model, class_set,
                    mesh: Mesh) -> tuple[dict, int]:
  path = checkpoint_path(config, workdir)
  logging.info("Variables from %s", path)
  variables, step = load.inference_variables(model, path, class_set)
  return jax.device_put(variables, NamedSharding(mesh, P())), step


def build(config: ml_collections.ConfigDict):
  """(class set, model, mesh) of an evaluation of `config`."""
  class_set = categories.get_class_set(config.data.class_set)
  model = models.build(config.model, num_classes=class_set.num_classes + 1)
  mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
  return class_set, model, mesh


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """`--mode=eval`: the latest checkpoint in `workdir` (or `config.eval.checkpoint`)."""
  build_lib.prepare(config.data)
  class_set, model, mesh = build(config)
  variables, step = _load_variables(config, workdir, model, class_set, mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  metrics = evaluate(config, model, variables, mesh, workdir, step, writer=writer)
  writer.flush()
  return metrics


def predict(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`--mode=predict`: overlays and a COCO results JSON for a folder of images.

  Needs no data root. Image ids in coco_results.json are the file names' numbers when
  all of them are distinct numbers (COCO's 000000142238.jpg is image 142238, so the
  results score against COCO's JSON), else positions in name order; image_ids.json maps
  them to the files. Category ids are COCO ids. With `data.aspect_grouping` the landscape
  images are predicted first, then the portrait ones. Returns the output directory,
  WORKDIR/predict. Runs in a single process.
  """
  if jax.process_count() > 1:
    raise ValueError("--mode=predict runs in one process; start it without a cluster")
  class_set, model, mesh = build(config)
  variables, _ = _load_variables(config, workdir, model, class_set, mesh)
  predict_step = make_predict_step(mesh, model)
  sharding = NamedSharding(mesh, P(AXIS))
  out_dir = epath.Path(workdir) / "predict"
  out_dir.mkdir(parents=True, exist_ok=True)
  files = sorted(p for p in epath.Path(config.predict.input_dir).iterdir()
                 if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  if not files:
    raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {config.predict.input_dir}")
  numbers = {int(p.stem) for p in files if p.stem.isdigit()}
  ids = ([int(p.stem) for p in files] if len(numbers) == len(files)
         else list(range(len(files))))
  batch_size = config.data.eval_batch_size
  results, done = [], 0
  for chunk in predict_input.batches([str(p) for p in files], config.data,
                                     batch_size=batch_size):
    local = predict_input.load_images([str(files[j]) for j in chunk], config.data,
                                      batch_size=batch_size)
    inputs = {k: local[k] for k in ("image", "image_id", "image_info")}
    batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), inputs)
    detections = jax.device_get(predict_step(variables, batch))
    for i, j in enumerate(chunk):
      dets = evaluator_lib.image_detections(detections, i, local["image_info"][i],
                                            mask_threshold=config.eval.mask_threshold)
      overlay = evaluator_lib.draw_overlay(local["original"][i], dets, class_set,
                                           config.predict.score_threshold)
      pictures.save_png(str(out_dir / f"{files[j].stem}.png"), overlay)
      results += evaluator_lib.detections_to_coco(ids[j], dets, class_set)
    done += len(chunk)
    logging.info("Predicted %d / %d images.", done, len(files))
  index = {image_id: str(p) for image_id, p in zip(ids, files)}
  (out_dir / "coco_results.json").write_text(json.dumps(results))
  (out_dir / "image_ids.json").write_text(json.dumps(index, indent=1))
  return str(out_dir)

