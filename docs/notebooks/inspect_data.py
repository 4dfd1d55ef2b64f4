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
# What the model is trained on: ground-truth masks and boxes of the config's class set,
# class and instance-size histograms, repeat factors and augmentation examples. The same
# functions write `WORKDIR/inspect/data/` in `python main.py --mode=inspect`.
#
# Open with jupytext (`jupytext --to notebook inspect_data.py`) or run as a script from
# the repository root: `python docs/notebooks/inspect_data.py`. The environment variables
# `INSPECT_CONFIG` (a config file), `INSPECT_DATA_ROOT` (overrides `data.root`) and
# `INSPECT_OUT` (where pictures are saved) choose what it looks at.

# %%
import numpy as np

from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import preprocess
from maskrcnn_jax.inspection import data as data_lib
from maskrcnn_jax.inspection import notebook

NUM_IMAGES = 4

config = notebook.load_config("configs/demo.py")
show = notebook.picture_saver("/tmp/maskrcnn_jax_inspect/data")
build.prepare(config.data)  # Builds the TFRecords on first use.
class_set = categories.get_class_set(config.data.class_set)
print(f"class set {class_set.name}: {class_set.num_classes} classes")

# %% [markdown]
# ## Ground truth as the model sees it
# The padded input image with its instances: box-cropped masks pasted back, coloured per
# class, largest first so small instances stay visible.

# %%
ds = pipeline.create_eval_dataset(config.data, batch_size=NUM_IMAGES, split="train",
                                  num_images=NUM_IMAGES, process_index=0, process_count=1)
batch = next(ds.as_numpy_iterator())
for b in range(NUM_IMAGES):
  picture = show(f"gt_{int(batch['image_id'][b])}", data_lib.gt_picture(batch, b, class_set))
picture

# %% [markdown]
# ## Class and size statistics
# Instances per class, images holding each class (the f_c of repeat-factor sampling),
# instance sizes against COCO's small/medium/large limits, and the resulting repeat factors.

# %%
stats = data_lib.Statistics(class_set)
ds = pipeline.create_eval_dataset(config.data, batch_size=config.data.eval_batch_size,
                                  split="train", num_images=config.inspect.num_stats_images,
                                  process_index=0, process_count=1)
for batch in ds.as_numpy_iterator():
  stats.add(batch)
for name, image in stats.pictures(repeat_threshold=config.data.repeat_threshold).items():
  picture = show(name, image)
rows = sorted(stats.table(), key=lambda r: -r["instances"])
for row in rows[:10]:
  print(f"{row['name']:>20s}  {row['instances']:6d} instances  {row['images']:6d} images")
print(f"{stats.num_images} images, {stats.num_truncated} instances truncated past "
      f"data.max_instances = {config.data.max_instances}")
assert stats.num_images > 0 and np.isfinite(stats.instances).all()
picture

# %% [markdown]
# ## Augmentation
# One training image without augmentation, then three draws of the config's augmentation.

# %%
examples = preprocess.augmentation_examples(config.data, index=0, num_draws=3, seed=config.seed)
show("augmentation", data_lib.augmentation_picture(
    examples[0], examples[1:], class_set, title=f"augmentation: {config.data.augment}"))
