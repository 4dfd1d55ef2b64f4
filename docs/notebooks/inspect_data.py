# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Inspect the data
#
# What the model is trained on, as `python main.py --mode=inspect` writes it to
# `WORKDIR/inspect/data/` (the same function, `inspection.run.inspect_data`).
#
# Open with jupytext (`jupytext --to notebook inspect_data.py`) or run as a script from
# the repository root: `python docs/notebooks/inspect_data.py`. The environment variables
# `INSPECT_CONFIG` (a config file), `INSPECT_DATA_ROOT` (overrides `data.root`) and
# `INSPECT_OUT` (where the files are written) choose what it looks at.

# %%
from maskrcnn_jax.inspection import notebook
from maskrcnn_jax.inspection import run as inspection

config = notebook.load_config("configs/demo.py")
out = notebook.output("/tmp/maskrcnn_jax_inspect")
class_set = inspection.prepare(config)  # Builds the TFRecords on first use.
print(f"class set {class_set.name}: {class_set.num_classes} classes")

# %% [markdown]
# ## Ground truth, class and size statistics, augmentation
# - `gt_*`: the first `inspect.num_images` padded input images with their instances:
#   box-cropped masks pasted back, coloured per class, largest first so small instances
#   stay visible.
# - Instances per class, images holding each class (the f_c of repeat-factor sampling),
#   instance sizes against COCO's small/medium/large limits, and the resulting repeat
#   factors, over `inspect.num_stats_images` images.
# - One training image without augmentation, then three draws of the config's augmentation.

# %%
notebook.Gallery(inspection.inspect_data(config, class_set, out))
