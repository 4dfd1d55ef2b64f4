# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Inspect the model
#
# A trained run, step by step: anchors, RPN targets and proposals, the RoI heads' samples
# and mask targets, predictions against the ground truth, and the weights. The same
# functions write `WORKDIR/inspect/` in `python main.py --mode=inspect`.
#
# Run as a script from the repository root (`python docs/notebooks/inspect_model.py`) or
# open with jupytext. `INSPECT_CONFIG`, `INSPECT_DATA_ROOT`, `INSPECT_WORKDIR` (the run to
# inspect: its latest checkpoint) and `INSPECT_OUT` choose what it looks at.

# %%
import os

import jax
import numpy as np

from maskrcnn_jax import models
from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.inspection import model as model_lib
from maskrcnn_jax.inspection import notebook
from maskrcnn_jax.inspection import weights as weights_lib
from maskrcnn_jax.training import optimizer
from maskrcnn_jax.weights import load

WORKDIR = os.environ.get("INSPECT_WORKDIR", "/tmp/maskrcnn_jax_demo/workdir")
NUM_IMAGES = 2

config = notebook.load_config("configs/demo.py")
show = notebook.picture_saver("/tmp/maskrcnn_jax_inspect/model")
build.prepare(config.data)
class_set = categories.get_class_set(config.data.class_set)
model = models.build(config.model, num_classes=class_set.num_classes + 1)
variables, step = load.inference_variables(model, WORKDIR, class_set)
print(f"step {step} of {WORKDIR}")

ds = pipeline.create_eval_dataset(config.data, batch_size=NUM_IMAGES, split="train",
                                  num_images=NUM_IMAGES, process_index=0, process_count=1)
batch = next(ds.as_numpy_iterator())
inputs = {k: v for k, v in batch.items() if k != "image_valid"}
rng = jax.random.key(0)
test = jax.device_get(model_lib.forward(model, variables, inputs, rng, train=False))
train = jax.device_get(model_lib.forward(model, variables, inputs, rng, train=True))
image, gt_valid = batch["image"][0], batch["valid"][0].astype(bool)
gt_boxes = batch["boxes"][0][gt_valid]

# %% [markdown]
# ## Anchors and RPN targets
# The anchors of each level at the image centre; then the anchors the RPN loss labels
# positive (green) with the RPN's own refinement of them (yellow, dashed), some negatives
# (red) and the GT (white).

# %%
level_anchors = model_lib.anchors(model, config.data.image_size)
all_anchors = np.concatenate(level_anchors)
show("anchors", model_lib.anchors_picture(image, level_anchors, len(model.rpn.aspect_ratios)))
_, labels = model_lib.anchor_labels(model, all_anchors, batch["boxes"][0], gt_valid)
show("rpn_targets", model_lib.rpn_targets_picture(image, all_anchors, labels, test["deltas"][0],
                                                  gt_boxes))

# %% [markdown]
# ## Proposals before and after NMS, and their recall of the GT

# %%
boxes, scores = model_lib.pre_nms_proposals(all_anchors, test["objectness"][0], test["deltas"][0],
                                            batch["image_info"][0, 3:5], 50)
show("before_nms", pictures.proposals_picture(image, boxes, scores, title="before NMS"))
valid = test["proposal_valid"][0]
show("after_nms", pictures.proposals_picture(image, test["proposals"][0][valid],
                                             test["proposal_scores"][0][valid], title="after NMS"))
recall = model_lib.ProposalRecall()
for b in range(NUM_IMAGES):
  recall.add(batch["boxes"][b][batch["valid"][b]], test["proposals"][b][test["proposal_valid"][b]])
print(recall.result())

# %% [markdown]
# ## The RoI heads' training sample and mask targets

# %%
sample = model_lib.sample_rois(model, train, batch, 0, rng)
show("rois", model_lib.rois_picture(image, sample, gt_boxes, class_set,
                                    model.roi_heads.box_weights))
show("mask_targets", model_lib.mask_targets_picture(
    model_lib.mask_targets(sample, batch, 0, max_rois=6), class_set))

# %% [markdown]
# ## Predictions on validation images

# %%
evaluator = evaluator_lib.Evaluator(build.annotation_files(config.data, "validation"),
                                    class_set, num_pictures=NUM_IMAGES)
ds = pipeline.create_eval_dataset(config.data, batch_size=NUM_IMAGES, split="validation",
                                  num_images=NUM_IMAGES, process_index=0, process_count=1)
for val in ds.as_numpy_iterator():
  evaluator.add(val, jax.device_get(model_lib.forward(
      model, variables, {k: v for k, v in val.items() if k != "image_valid"}, rng, train=False)))
for name, picture in evaluator.pictures().items():
  if name.startswith("collage"):
    show(name, picture)
show("segm_ap", model_lib.per_class_ap_picture(evaluator.per_class(), "segm"))
print({k: round(v, 4) for k, v in evaluator.result().items() if k.startswith(("segm/AP", "stuff/"))})

# %% [markdown]
# ## Weights: norms, histograms, and what each stage trains

# %%
params = variables["params"]
show("norms", weights_lib.norms_picture(weights_lib.layer_table(params)))
show("histograms", weights_lib.histograms_picture(params))
stages = config.train.stages
masks = [optimizer.trainable_mask(params, s.trainable, freeze_at=config.model.freeze_at)
         for s in stages]
table = weights_lib.stage_table(params, masks, [s.name for s in stages])
show("stages", weights_lib.stages_picture(table, [s.name for s in stages]))
