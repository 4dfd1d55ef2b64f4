"""`--mode=inspect`: every inspection picture of a run, in WORKDIR/inspect/ and TensorBoard.

The model sections use the weights `--mode=eval` uses (`eval.checkpoint`, else the latest
in WORKDIR, else `init.checkpoint`); with `init.checkpoint="random"` and no checkpoint
they show the untrained initialisation and say so.
Runs in one process; `inspect.num_images` images are drawn, `inspect.num_stats_images`
counted for the histograms.
"""

import json
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from etils import epath
import jax
import ml_collections
import numpy as np

from maskrcnn_jax import models
from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import preprocess
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.evaluation import run_eval
from maskrcnn_jax.inspection import data as data_lib
from maskrcnn_jax.inspection import model as model_lib
from maskrcnn_jax.inspection import weights as weights_lib
from maskrcnn_jax.weights import load

NUM_AUGMENTATIONS = 3
TOP_PROPOSALS = 50


class _Output:
  """Writes pictures, tables and JSON under WORKDIR/inspect/<section>/, images also to TB."""

  def __init__(self, workdir: str, writer: metric_writers.MetricWriter, step: int):
    self.root = epath.Path(workdir) / "inspect"
    self.writer, self.step = writer, step
    self.written: list[str] = []

  def _path(self, section: str, name: str) -> epath.Path:
    folder = self.root / section if section else self.root
    folder.mkdir(parents=True, exist_ok=True)
    self.written.append(f"{section}/{name}" if section else name)
    return folder / name

  def picture(self, section: str, name: str, image: np.ndarray) -> None:
    pictures.save_png(str(self._path(section, f"{name}.png")), image)
    self.writer.write_images(self.step, {f"inspect/{section}/{name}": image[None]})

  def table(self, section: str, name: str, rows: list[dict[str, Any]]) -> None:
    pictures.write_csv(str(self._path(section, f"{name}.csv")), rows)

  def json(self, section: str, name: str, value: dict[str, Any]) -> None:
    self._path(section, f"{name}.json").write_text(json.dumps(value, indent=2))


def load_or_init(config: ml_collections.ConfigDict, workdir: str, model, class_set
                 ) -> tuple[dict[str, Any], int, bool]:
  """(variables, step, trained): what `--mode=eval` reads, or the model's initialisation."""
  try:
    path = run_eval.checkpoint_path(config, workdir)
  except ValueError as e:  # No checkpoint and a random start: show the initialisation.
    logging.warning("Inspecting the untrained model: %s", e)
  else:
    variables, step = load.inference_variables(model, path, class_set)
    return variables, step, True
  batch = {k: v for k, v in _first_batch(config, "train", 1).items() if k != "image_valid"}
  k1, k2 = jax.random.split(jax.random.key(config.seed))
  return model.init({"params": k1, "sampling": k2}, batch, train=True), 0, False


def _first_batch(config, split: str, num_images: int) -> dict[str, np.ndarray]:
  ds = pipeline.create_eval_dataset(config.data, batch_size=num_images, split=split,
                                    num_images=num_images, process_index=0, process_count=1)
  return next(ds.as_numpy_iterator())


def _batches(config, split: str, num_images: int):
  ds = pipeline.create_eval_dataset(config.data, batch_size=config.data.eval_batch_size,
                                    split=split, num_images=num_images, process_index=0,
                                    process_count=1)
  return ds.as_numpy_iterator()


def inspect_data(config, out: _Output, class_set) -> None:
  """GT pictures, histograms, repeat factors and augmentation examples of the train split."""
  stats = data_lib.Statistics(class_set)
  drawn = 0
  for batch in _batches(config, "train", config.inspect.num_stats_images):
    stats.add(batch)
    for b in np.flatnonzero(batch["image_valid"]):
      if drawn < config.inspect.num_images:
        out.picture("data", f"gt_{int(batch['image_id'][b])}",
                    data_lib.gt_picture(batch, b, class_set))
        drawn += 1
  for name, image in stats.pictures(repeat_threshold=config.data.repeat_threshold).items():
    out.picture("data", name, image)
  out.table("data", "classes", stats.table())
  examples = preprocess.augmentation_examples(config.data, index=0, num_draws=NUM_AUGMENTATIONS,
                                              seed=config.seed)
  augment = config.data.augment
  out.picture("data", "augmentation", data_lib.augmentation_picture(
      examples[0], examples[1:], class_set,
      title=f"augmentation: hflip {augment.hflip}, scale {tuple(augment.scale_range)}, "
            f"photometric {augment.photometric}"))
  out.json("data", "statistics", {"num_images": stats.num_images,
                                  "num_instances": int(stats.instances.sum()),
                                  "num_truncated": stats.num_truncated})


def inspect_model(config, out: _Output, class_set, model, variables, note: str) -> None:
  """Anchors, RPN targets and proposals, sampled RoIs and mask targets on train images."""
  rng = jax.random.key(config.seed)
  level_anchors = model_lib.anchors(model, config.data.image_size)
  all_anchors = np.concatenate(level_anchors)
  recall = model_lib.ProposalRecall()
  drawn = 0
  for batch in _batches(config, "train", config.inspect.num_images):
    inputs = {k: v for k, v in batch.items() if k != "image_valid"}
    test = jax.device_get(model_lib.forward(model, variables, inputs, rng, train=False))
    train = jax.device_get(model_lib.forward(model, variables, inputs, rng, train=True))
    for b in np.flatnonzero(batch["image_valid"]):
      image_id = int(batch["image_id"][b])
      image = batch["image"][b]
      gt_valid = batch["valid"][b].astype(bool)
      gt_boxes = batch["boxes"][b][gt_valid]
      recall.add(gt_boxes, test["proposals"][b][test["proposal_valid"][b]])
      if drawn == 0:
        out.picture("anchors", "levels", model_lib.anchors_picture(
            image, level_anchors, len(model.rpn.aspect_ratios)))
      _, labels = model_lib.anchor_labels(model, all_anchors, batch["boxes"][b], gt_valid)
      out.picture("anchors", f"targets_{image_id}", model_lib.rpn_targets_picture(
          image, all_anchors, labels, test["deltas"][b], gt_boxes))
      pre_boxes, pre_scores = model_lib.pre_nms_proposals(
          all_anchors, test["objectness"][b], test["deltas"][b], batch["image_info"][b, 3:5],
          TOP_PROPOSALS)
      out.picture("rpn", f"before_nms_{image_id}", pictures.proposals_picture(
          image, pre_boxes, pre_scores, top_n=TOP_PROPOSALS,
          title=f"image {image_id}: top {TOP_PROPOSALS} anchors refined, before NMS{note}"))
      valid = test["proposal_valid"][b]
      out.picture("rpn", f"after_nms_{image_id}", pictures.proposals_picture(
          image, test["proposals"][b][valid], test["proposal_scores"][b][valid],
          top_n=TOP_PROPOSALS, title=f"image {image_id}: top {TOP_PROPOSALS} proposals after "
                                     f"NMS{note}"))
      sample = model_lib.sample_rois(model, train, batch, b, jax.random.fold_in(rng, image_id))
      out.picture("roi_heads", f"rois_{image_id}", model_lib.rois_picture(
          image, sample, gt_boxes, class_set, model.roi_heads.box_weights))
      out.picture("roi_heads", f"mask_targets_{image_id}", model_lib.mask_targets_picture(
          model_lib.mask_targets(sample, batch, b, max_rois=8), class_set))
      drawn += 1
  out.json("rpn", "recall", {"num_gt": recall.num_gt, **recall.result()})


def inspect_predictions(config, out: _Output, class_set, model, variables) -> None:
  """Detections with masks, per-class AP bars and the confusion on validation images."""
  evaluator = evaluator_lib.Evaluator(
      build.annotation_files(config.data, "validation"), class_set,
      mask_threshold=config.eval.mask_threshold, num_pictures=config.inspect.num_images,
      score_threshold=config.eval.score_threshold)
  rng = jax.random.key(config.seed)
  for batch in _batches(config, "validation", config.inspect.num_images):
    inputs = {k: v for k, v in batch.items() if k != "image_valid"}
    evaluator.add(batch, jax.device_get(model_lib.forward(model, variables, inputs, rng,
                                                          train=False)))
  for name, image in evaluator.pictures().items():
    if name.startswith(("collage", "confusion")):
      out.picture("predictions", name, image)
  rows = evaluator.per_class()
  for iou_type in ("bbox", "segm"):
    out.picture("predictions", f"{iou_type}_ap", model_lib.per_class_ap_picture(rows, iou_type))
  out.table("predictions", "per_class", rows)
  metrics = evaluator.result()
  out.json("predictions", "metrics",
           {k: None if np.isnan(v) else v for k, v in metrics.items()})


def inspect_weights(config, out: _Output, params, trainable_mask: Callable) -> None:
  """Statistics and histograms per layer, and what each stage trains."""
  rows = weights_lib.layer_table(params)
  out.table("weights", "layers", rows)
  out.picture("weights", "norms", weights_lib.norms_picture(rows))
  out.picture("weights", "histograms", weights_lib.histograms_picture(params))
  stages = config.train.stages
  masks = [trainable_mask(params, s.trainable, freeze_at=config.model.freeze_at) for s in stages]
  names = [s.name for s in stages]
  table = weights_lib.stage_table(params, masks, names)
  out.table("weights", "stages", table)
  out.picture("weights", "stages", weights_lib.stages_picture(table, names))


def inspect(config: ml_collections.ConfigDict, workdir: str, *,
            trainable_mask: Callable) -> list[str]:
  """Writes WORKDIR/inspect/; returns the files written (`section/name`).

  trainable_mask: (params, trainable, freeze_at=) → a stage's bool tree, from the caller,
  which owns the optimiser (`training.optimizer.trainable_mask`).
  """
  if jax.process_count() > 1:
    raise ValueError("--mode=inspect runs in one process; start it without a cluster")
  build.prepare(config.data)
  class_set = categories.get_class_set(config.data.class_set)
  model = models.build(config.model, num_classes=class_set.num_classes + 1)
  variables, step, trained = load_or_init(config, workdir, model, class_set)
  note = "" if trained else " (untrained)"
  writer = metric_writers.create_default_writer(workdir)
  out = _Output(workdir, writer, step)
  inspect_data(config, out, class_set)
  inspect_model(config, out, class_set, model, variables, note)
  inspect_predictions(config, out, class_set, model, variables)
  inspect_weights(config, out, variables["params"], trainable_mask)
  out.json("", "summary", {"step": step, "trained": trained, "files": sorted(out.written)})
  writer.flush()
  logging.info("Inspection of step %d%s: %d files in %s", step, note, len(out.written), out.root)
  return out.written
