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
# and mask targets, predictions against the ground truth, and the weights. Each cell calls
# the function `python main.py --mode=inspect` calls for one folder of `WORKDIR/inspect/`
# (`inspection.run.inspect_<section>`).
#
# Run as a script from the repository root (`python docs/notebooks/inspect_model.py`) or
# open with jupytext. `INSPECT_CONFIG`, `INSPECT_DATA_ROOT`, `INSPECT_WORKDIR` (the run to
# inspect: the checkpoint `--mode=eval` reads) and `INSPECT_OUT` choose what it looks at.

# %%
from maskrcnn_jax.inspection import notebook
from maskrcnn_jax.inspection import run as inspection
from maskrcnn_jax.training import optimizer

config = notebook.load_config("configs/demo.py")
out = notebook.output("/tmp/maskrcnn_jax_inspect")
class_set = inspection.prepare(config)
state = inspection.load_model(config, notebook.workdir("/tmp/maskrcnn_jax_demo/workdir"),
                              class_set)
print(f"step {state.step}{state.note}")

# %% [markdown]
# ## Anchors and RPN targets
# The anchors of each level at the image centre; then the anchors the RPN loss labels
# positive (green) with the RPN's own refinement of them (yellow, dashed), some negatives
# (red) and the GT (white).

# %%
notebook.Gallery(inspection.inspect_anchors(config, state, out))

# %% [markdown]
# ## Proposals before and after NMS, and their recall of the GT

# %%
notebook.Gallery(inspection.inspect_rpn(config, state, out))

# %% [markdown]
# ## The RoI heads' training sample and mask targets
# Positive RoIs coloured by their target class with the box their target deltas reach
# (dashed), background RoIs grey, the GT white; below, each positive RoI's mask target
# next to its GT's mask.

# %%
notebook.Gallery(inspection.inspect_roi_heads(config, class_set, state, out))

# %% [markdown]
# ## Predictions on validation images
# At the `eval` score and mask thresholds: image | GT | prediction collages, the
# confusion of the pixels' classes, per-class AP and COCO metrics.

# %%
notebook.Gallery(inspection.inspect_predictions(config, class_set, state, out))

# %% [markdown]
# ## Weights: norms, histograms, and what each stage trains

# %%
notebook.Gallery(inspection.inspect_weights(config, state.variables["params"],
                                            optimizer.trainable_mask, out))
