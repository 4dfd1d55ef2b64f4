"""Evaluation and prediction loops: the jitted model on devices, metrics on the host.

`evaluate` is the one entry point for `--mode=eval`, the periodic evaluation during
training and the evaluation at the end of every stage.
"""

import json
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
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import pictures

AXIS = "data"


def make_predict_step(mesh: Mesh, model):
  """Detections (docs/design.md) for a global batch split over `data`."""
  def step(variables, batch):
    return model.apply(variables, batch, train=False)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                                       check_vma=False))


def _to_host(tree):
  """Global arrays → numpy on every process (all processes' rows, in order)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def _eval_batches(config: ml_collections.ConfigDict, sharding: NamedSharding, *,
                  num_images: int) -> Iterator[tuple[dict[str, np.ndarray], Any]]:
  """(process-local numpy batch, the same as global arrays) over the validation split."""
  ds = pipeline.create_eval_dataset(
      config.data, batch_size=config.data.eval_batch_size // jax.process_count(),
      split="validation", num_images=num_images)
  for batch in ds.as_numpy_iterator():
    yield batch, jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def validation_loss(config: ml_collections.ConfigDict, loss_step, variables,
                    sharding: NamedSharding, rng: jax.Array) -> dict[str, float]:
  """Mean losses over the first `train.val_loss_batches` full validation batches."""
  totals, count = {}, 0
  for local, batch in _eval_batches(config, sharding, num_images=-1):
    if count == config.train.val_loss_batches:
      break
    if not local["image_valid"].all():
      continue  # The padded last batch would add background-only images.
    losses = jax.device_get(loss_step(variables, batch, rng))
    for k, v in losses.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    count += 1
  return {k: v / max(count, 1) for k, v in totals.items()}


def evaluate(config: ml_collections.ConfigDict, model, variables, mesh: Mesh, workdir: str,
             step: int, *, writer: metric_writers.MetricWriter | None = None) -> dict[str, float]:
  """COCO AP and COCO-Stuff metrics on the validation split; files in WORKDIR/eval/STEP.

  Every validation image is evaluated exactly once; process 0 scores and writes.
  """
  class_set = categories.get_class_set(config.data.class_set)
  sharding = NamedSharding(mesh, P(AXIS))
  predict = make_predict_step(mesh, model)
  is_main = jax.process_index() == 0
  evaluator = evaluator_lib.Evaluator(
      pipeline.annotation_files(config.data, "validation"), class_set,
      mask_threshold=config.eval.mask_threshold, num_pictures=config.eval.num_pictures,
      score_threshold=config.eval.score_threshold)
  num_batches = 0
  for _, batch in _eval_batches(config, sharding, num_images=config.eval.num_images):
    detections = _to_host(predict(variables, batch))
    batch = _to_host(batch)
    if is_main:
      evaluator.add(batch, detections)
    num_batches += 1
    if num_batches % 10 == 0:
      logging.info("Evaluated %d batches.", num_batches)
  if not is_main:
    return {}
  out_dir = epath.Path(workdir) / "eval" / str(step)
  metrics = evaluator.write(str(out_dir), writer=writer, step=step, log_dir=workdir)
  logging.info("Evaluation at step %d (%d batches): %s", step, num_batches,
               ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())
                         if k in ("bbox/AP", "segm/AP", "stuff/mIoU", "stuff/fwIoU")))
  return metrics


def _load_variables(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, int]:
  from maskrcnn_jax.weights import checkpoint  # pylint: disable=g-import-not-at-top
  path = config.eval.checkpoint or workdir
  state = checkpoint.load_variables(path)
  return {"params": state["params"], "frozen_bn": state["frozen_bn"]}, int(state["step"])


def _build(config: ml_collections.ConfigDict):
  class_set = categories.get_class_set(config.data.class_set)
  model = models.build(config.model, num_classes=class_set.num_classes + 1)
  mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
  return class_set, model, mesh


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """`--mode=eval`: the latest checkpoint in `workdir` (or `config.eval.checkpoint`)."""
  pipeline.prepare(config.data)
  _, model, mesh = _build(config)
  variables, step = _load_variables(config, workdir)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  metrics = evaluate(config, model, variables, mesh, workdir, step, writer=writer)
  writer.flush()
  return metrics


def predict(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`--mode=predict`: overlays and a COCO results JSON for a folder of images.

  Returns the output directory, WORKDIR/predict. Runs in a single process.
  """
  if jax.process_count() > 1:
    raise ValueError("--mode=predict runs in one process; start it without a cluster")
  class_set, model, mesh = _build(config)
  variables, _ = _load_variables(config, workdir)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  predict_step = make_predict_step(mesh, model)
  sharding = NamedSharding(mesh, P(AXIS))
  out_dir = epath.Path(workdir) / "predict"
  out_dir.mkdir(parents=True, exist_ok=True)
  files = sorted(p for p in epath.Path(config.predict.input_dir).iterdir()
                 if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  if not files:
    raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {config.predict.input_dir}")
  batch_size = config.data.eval_batch_size
  results = []
  for start in range(0, len(files), batch_size):
    chunk = files[start:start + batch_size]
    local = pipeline.load_images([str(p) for p in chunk], config.data, batch_size=batch_size)
    inputs = {k: local[k] for k in ("image", "image_id", "image_info")}
    batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), inputs)
    detections = jax.device_get(predict_step(variables, batch))
    for i, path in enumerate(chunk):
      dets = evaluator_lib.image_detections(detections, i, local["image_info"][i],
                                            mask_threshold=config.eval.mask_threshold)
      overlay = evaluator_lib.draw_overlay(local["original"][i], dets, class_set,
                                           config.predict.score_threshold)
      pictures.save_png(str(out_dir / f"{path.stem}.png"), overlay)
      results += evaluator_lib.detections_to_coco(start + i, dets, class_set)
    logging.info("Predicted %d / %d images.", min(start + batch_size, len(files)), len(files))
  index = {start: str(p) for start, p in enumerate(files)}
  (out_dir / "coco_results.json").write_text(json.dumps(results))
  (out_dir / "image_ids.json").write_text(json.dumps(index, indent=1))
  return str(out_dir)

