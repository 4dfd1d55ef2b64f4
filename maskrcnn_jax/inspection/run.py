"""`--mode=inspect`: every inspection picture of a run, in WORKDIR/inspect/ and TensorBoard.

One public function per section (`inspect_data`, `inspect_anchors`, `inspect_rpn`,
`inspect_roi_heads`, `inspect_predictions`, `inspect_weights`) writes OUT/<section>/ and
returns what it wrote; `inspect` runs them all, the notebooks in docs/notebooks one by one.

The model sections use the weights `--mode=eval` uses (`eval.checkpoint`, else the latest
in WORKDIR, else `init.checkpoint`); with `init.checkpoint="random"` and no checkpoint
they show the untrained initialisation and say so. The model sections draw the first
`inspect.num_images` images of a split; `inspect.num_stats_images` are counted for the
histograms. Runs in one process.
"""

import dataclasses
import json
from typing import Any, Callable, Iterator

from absl import logging
from clu import metric_writers
from etils import epath
from flax import linen as nn
import jax
import ml_collections
import numpy as np

from maskrcnn_jax import models
from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import preprocess
from maskrcnn_jax.data import sampler
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.evaluation import run_eval
from maskrcnn_jax.inspection import data as data_lib
from maskrcnn_jax.inspection import model as model_lib
from maskrcnn_jax.inspection import weights as weights_lib
from maskrcnn_jax.weights import load

NUM_AUGMENTATIONS = 3
TOP_PROPOSALS = 50


class Output:
  """Writes sections' files under ROOT/<section>/; pictures also to TensorBoard if given a
  writer."""

  def __init__(self, root: epath.PathLike,
               writer: metric_writers.MetricWriter | None = None, step: int = 0):
    self.root = epath.Path(root)
    self.writer, self.step = writer, step

  def write(self, section: str, files: dict[str, Any]) -> dict[str, Any]:
    """Writes NAME.png pictures ([H, W, 3] uint8), NAME.csv tables (dict rows) and
    NAME.json values; returns them as {"section/NAME.ext": content}."""
    folder = self.root / section
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
      path = folder / name
      if name.endswith(".png"):
        pictures.save_png(str(path), value)
        if self.writer:
          tag = f"inspect/{section}/{name.removesuffix('.png')}"
          self.writer.write_images(self.step, {tag: value[None]})
      elif name.endswith(".csv"):
        pictures.write_csv(str(path), value)
      elif name.endswith(".json"):
        path.write_text(json.dumps(value, indent=2))
      else:
        raise ValueError(f"{name}: not a .png, .csv or .json file")
    return {f"{section}/{name}" if section else name: v for name, v in files.items()}


@dataclasses.dataclass(frozen=True)
class ModelState:
  """The inspected model and its variables; `rng` drives its sampling."""
  model: nn.Module
  variables: dict[str, Any]
  step: int
  trained: bool  # False: the initialisation, no checkpoint.
  rng: jax.Array

  @property
  def note(self) -> str:
    """What picture titles append."""
    return "" if self.trained else " (untrained)"


def prepare(config: ml_collections.ConfigDict) -> categories.ClassSet:
  """Builds the data on first use (`build.prepare`); returns the class set."""
  build.prepare(config.data)
  return categories.get_class_set(config.data.class_set)


def load_model(config: ml_collections.ConfigDict, workdir: str,
               class_set: categories.ClassSet) -> ModelState:
  """The model with what `--mode=eval` reads, or its initialisation without a checkpoint."""
  model = models.build(config.model, num_classes=class_set.num_classes + 1)
  rng = jax.random.key(config.seed)
  try:
    path = run_eval.checkpoint_path(config, workdir)
  except ValueError as e:  # No checkpoint and a random start: show the initialisation.
    logging.warning("Inspecting the untrained model: %s", e)
    return ModelState(model, load.init_inference(model, rng), 0, False, rng)
  variables, step = load.inference_variables(model, path, class_set)
  return ModelState(model, variables, step, True, rng)


def batches(config: ml_collections.ConfigDict, split: str,
            num_images: int) -> Iterator[dict[str, np.ndarray]]:
  """The first `num_images` images of `split` in evaluation batches (`image_valid` flags
  the padding)."""
  ds = pipeline.create_eval_dataset(config.data, batch_size=config.data.eval_batch_size,
                                    split=split, num_images=num_images, process_index=0,
                                    process_count=1)
  return ds.as_numpy_iterator()


def forward(state: ModelState, batch: dict[str, np.ndarray], *,
            train: bool) -> dict[str, np.ndarray]:
  """`inspection.model.forward` of an evaluation batch (padding included), as numpy."""
  inputs = {k: v for k, v in batch.items() if k != "image_valid"}
  return jax.device_get(model_lib.forward(state.model, state.variables, inputs, state.rng,
                                          train=train))


def _train_images(config, state: ModelState, *, train: bool):
  """(batch, index, forward outputs) of each of the first `inspect.num_images` train images."""
  for batch in batches(config, "train", config.inspect.num_images):
    outputs = forward(state, batch, train=train)
    for b in np.flatnonzero(batch["image_valid"]):
      yield batch, b, outputs


def _gt_boxes(batch: dict[str, np.ndarray], index: int) -> np.ndarray:
  return batch["boxes"][index][batch["valid"][index].astype(bool)]


def inspect_data(config: ml_collections.ConfigDict, class_set: categories.ClassSet,
                 out: Output) -> dict[str, Any]:
  """data/: GT pictures, histograms, repeat factors and augmentation examples (train split)."""
  stats = data_lib.Statistics(class_set)
  gt = {}
  for batch in batches(config, "train", config.inspect.num_stats_images):
    stats.add(batch)
    for b in np.flatnonzero(batch["image_valid"])[:config.inspect.num_images - len(gt)]:
      gt[f"gt_{int(batch['image_id'][b])}.png"] = data_lib.gt_picture(batch, b, class_set)
  # Histograms of the first `inspect.num_stats_images`; repeat factors of the whole split.
  records = pipeline.training_records(config.data, build.built(config.data))
  factors = sampler.training_factors(records, config.data.repeat_threshold)
  histograms = stats.pictures(factors=factors, repeat_threshold=config.data.repeat_threshold)
  examples = preprocess.augmentation_examples(config.data, index=0,
                                              num_draws=NUM_AUGMENTATIONS, seed=config.seed)
  augment = config.data.augment
  return out.write("data", {
      **gt,
      **{f"{name}.png": image for name, image in histograms.items()},
      "classes.csv": stats.table(),
      "augmentation.png": data_lib.augmentation_picture(
          examples[0], examples[1:], class_set,
          title=f"augmentation: hflip {augment.hflip}, scale {tuple(augment.scale_range)}, "
                f"photometric {augment.photometric}"),
      "statistics.json": {"num_images": stats.num_images,
                          "num_instances": int(stats.instances.sum()),
                          "num_truncated": stats.num_truncated,
                          "repeat_factors": {"images": len(factors),
                                             "repeated": float(np.mean(factors > 1)),
                                             "mean": float(factors.mean())}},
  })


def inspect_anchors(config: ml_collections.ConfigDict, state: ModelState,
                    out: Output) -> dict[str, Any]:
  """anchors/: the anchors per level; per image the RPN's positive and negative anchors,
  refined by its deltas."""
  files = {}
  for batch, b, test in _train_images(config, state, train=False):
    image = batch["image"][b]
    level_anchors = model_lib.anchors(state.model, image.shape[:2])  # The batch's canvas.
    all_anchors = np.concatenate(level_anchors)
    if not files:
      files["levels.png"] = model_lib.anchors_picture(
          image, level_anchors, len(state.model.rpn.aspect_ratios))
    _, labels = model_lib.anchor_labels(state.model, all_anchors, batch["boxes"][b],
                                        batch["valid"][b].astype(bool))
    files[f"targets_{int(batch['image_id'][b])}.png"] = model_lib.rpn_targets_picture(
        image, all_anchors, labels, test["deltas"][b], _gt_boxes(batch, b))
  return out.write("anchors", files)


def inspect_rpn(config: ml_collections.ConfigDict, state: ModelState,
                out: Output) -> dict[str, Any]:
  """rpn/: per image the top proposals before and after NMS; their recall of the GT."""
  recall = model_lib.ProposalRecall()
  files = {}
  for batch, b, test in _train_images(config, state, train=False):
    image_id, image = int(batch["image_id"][b]), batch["image"][b]
    all_anchors = np.concatenate(model_lib.anchors(state.model, image.shape[:2]))
    valid = test["proposal_valid"][b]
    recall.add(_gt_boxes(batch, b), test["proposals"][b][valid])
    boxes, scores = model_lib.pre_nms_proposals(
        all_anchors, test["objectness"][b], test["deltas"][b], batch["image_info"][b, 3:5],
        TOP_PROPOSALS)
    files[f"before_nms_{image_id}.png"] = pictures.proposals_picture(
        image, boxes, scores, top_n=TOP_PROPOSALS,
        title=f"image {image_id}: top {TOP_PROPOSALS} anchors refined, before NMS{state.note}")
    files[f"after_nms_{image_id}.png"] = pictures.proposals_picture(
        image, test["proposals"][b][valid], test["proposal_scores"][b][valid],
        top_n=TOP_PROPOSALS,
        title=f"image {image_id}: top {TOP_PROPOSALS} proposals after NMS{state.note}")
  files["recall.json"] = {"num_gt": recall.num_gt, **recall.result()}
  return out.write("rpn", files)


def inspect_roi_heads(config: ml_collections.ConfigDict, class_set: categories.ClassSet,
                      state: ModelState, out: Output) -> dict[str, Any]:
  """roi_heads/: per image the sampled RoIs with their targets, and mask targets."""
  files = {}
  for batch, b, train in _train_images(config, state, train=True):
    image_id = int(batch["image_id"][b])
    sample = model_lib.sample_rois(state.model, train, batch, b,
                                   jax.random.fold_in(state.rng, image_id))
    files[f"rois_{image_id}.png"] = model_lib.rois_picture(
        batch["image"][b], sample, _gt_boxes(batch, b), class_set,
        state.model.roi_heads.box_weights)
    files[f"mask_targets_{image_id}.png"] = model_lib.mask_targets_picture(
        model_lib.mask_targets(sample, batch, b, max_rois=8), class_set)
  return out.write("roi_heads", files)


def inspect_predictions(config: ml_collections.ConfigDict, class_set: categories.ClassSet,
                        state: ModelState, out: Output) -> dict[str, Any]:
  """predictions/: detections with masks, per-class AP bars and the confusion on the first
  validation images, at the `eval` thresholds."""
  evaluator = evaluator_lib.Evaluator(
      build.annotation_files(config.data, "validation"), class_set,
      mask_threshold=config.eval.mask_threshold, num_pictures=config.inspect.num_images,
      score_threshold=config.eval.score_threshold, coco_backend=config.eval.coco_backend)
  for batch in batches(config, "validation", config.inspect.num_images):
    evaluator.add(batch, forward(state, batch, train=False))
  files = {f"{name}.png": image for name, image in evaluator.pictures().items()
           if name.startswith(("collage", "confusion"))}
  rows = evaluator.per_class()
  for iou_type in ("bbox", "segm"):
    files[f"{iou_type}_ap.png"] = model_lib.per_class_ap_picture(rows, iou_type)
  files["per_class.csv"] = rows
  files["metrics.json"] = {k: None if np.isnan(v) else v for k, v in evaluator.result().items()}
  return out.write("predictions", files)


def inspect_weights(config: ml_collections.ConfigDict, params: Any, trainable_mask: Callable,
                    out: Output) -> dict[str, Any]:
  """weights/: statistics and histograms per layer, and what each stage trains.

  trainable_mask: (params, trainable, freeze_at=) → a stage's bool tree
  (`training.optimizer.trainable_mask`: the caller owns the optimiser).
  """
  rows = weights_lib.layer_table(params)
  stages = config.train.stages
  masks = [trainable_mask(params, s.trainable, freeze_at=config.model.freeze_at) for s in stages]
  names = [s.name for s in stages]
  table = weights_lib.stage_table(params, masks, names)
  return out.write("weights", {
      "layers.csv": rows,
      "norms.png": weights_lib.norms_picture(rows),
      "histograms.png": weights_lib.histograms_picture(params),
      "stages.csv": table,
      "stages.png": weights_lib.stages_picture(table, names),
  })


def inspect(config: ml_collections.ConfigDict, workdir: str, *,
            trainable_mask: Callable) -> list[str]:
  """Writes every section to WORKDIR/inspect/; returns the files written (`section/name`).

  trainable_mask: as `inspect_weights` takes it.
  """
  if jax.process_count() > 1:
    raise ValueError("--mode=inspect runs in one process; start it without a cluster")
  class_set = prepare(config)
  state = load_model(config, workdir, class_set)
  writer = metric_writers.create_default_writer(workdir)
  out = Output(epath.Path(workdir) / "inspect", writer, state.step)
  written = [*inspect_data(config, class_set, out),
             *inspect_anchors(config, state, out),
             *inspect_rpn(config, state, out),
             *inspect_roi_heads(config, class_set, state, out),
             *inspect_predictions(config, class_set, state, out),
             *inspect_weights(config, state.variables["params"], trainable_mask, out)]
  written += out.write("", {"summary.json": {"step": state.step, "trained": state.trained,
                                             "files": sorted(written)}})
  writer.flush()
  logging.info("Inspection of step %d%s: %d files in %s", state.step, state.note, len(written),
               out.root)
  return written
