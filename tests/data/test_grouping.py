"""`data.aspect_grouping`: batches of one orientation on its own static canvas, the same global
batches for any process count and after a resume, every evaluated image once, boxes and masks
exact on both canvases."""

import collections
import functools

import ml_collections
import numpy as np
import pytest

from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import predict_input
from maskrcnn_jax.data import sampler
from maskrcnn_jax.data import synthetic
from maskrcnn_jax.inspection import data as inspection_data
import tiny_data

# Two landscape images, then a portrait one, in turn: 4:3 at 48 x 64 and 3:4 at 64 x 48.
SIZES = [(48, 64), (48, 64), (64, 48)]
LANDSCAPE, PORTRAIT = (64, 128), (128, 64)  # Shorter side to 64 (85 x 64), canvases rounded.


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """(data config with grouping, its root): 9 train + 5 val images of both orientations."""
  root = tmp_path_factory.mktemp("mixed")
  synthetic.write_synthetic(root, num_train=9, num_val=5, image_size=SIZES, seed=3)
  config = tiny_data.config(root)
  config.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.resize, config.min_size, config.max_size = "shortest_edge", (64,), 128
  config.aspect_grouping = True
  build.prepare(config)
  return config, root


def _check_batch(batch):
  """One orientation per batch (`image_info`'s original sizes, padding images included; not
  prediction's empty rows), on that orientation's canvas."""
  info = batch["image_info"][batch["image_info"][:, 0] > 0]
  portrait = set((info[:, 0] > info[:, 1]).tolist())
  assert len(portrait) == 1
  assert batch["image"].shape[1:3] == (PORTRAIT if portrait.pop() else LANDSCAPE)


def test_grouped_stream_by_hand():
  """Per-group buffers filled in stream order; a batch when one holds 2; across epochs."""
  record_groups = np.array([0, 0, 1, 0, 1, 1])
  epochs = [(np.array([0, 2, 1, 4, 3, 5]), np.arange(6)), (np.array([3, 5, 0]), np.arange(3))]
  batches = [(r.tolist(), k.tolist()) for r, k in sampler.grouped(epochs, record_groups, 2)]
  # Stream groups 0 1 0 1 0 1 | 0 1 0: complete at positions 2, 3, 6, 7; record 0 left over.
  assert batches == [([0, 1], [0, 2]), ([2, 4], [1, 3]), ([3, 3], [4, 0]), ([5, 5], [5, 1])]
  ungrouped = sampler.grouped(epochs, np.zeros(6, np.int64), 4)
  assert [r.tolist() for r, _ in ungrouped] == [[0, 2, 1, 4], [3, 5, 3, 5]]


@pytest.mark.slow
def test_training_batches_for_any_process_count_and_resume(mixed):
  config, _ = mixed
  augmented = ml_collections.ConfigDict(config.to_dict())
  augmented.augment.update(hflip=True, scale_range=(0.75, 1.5), photometric=True)
  make = functools.partial(pipeline.create_train_dataset, augmented, global_batch_size=2, seed=2)
  single = tiny_data.take(make(), 7)
  for batch in single:
    _check_batch(batch)
  assert {b["image"].shape[1:3] for b in single} == {LANDSCAPE, PORTRAIT}
  # Process p's batch k is slice p of global batch k; started at step 4, inside epoch 2.
  parts = [tiny_data.take(make(start_step=4, process_index=p, process_count=2), 3)
           for p in range(2)]
  joined = [{k: np.concatenate([part[i][k] for part in parts]) for k in parts[0][i]}
            for i in range(3)]
  tiny_data.assert_batches_equal(single[4:], joined)


def test_every_eval_image_once_with_exact_boxes_and_masks(mixed):
  config, root = mixed
  counts = collections.Counter()
  expected = {e["image_id"]: e for e in coco_reader.read_examples(
      root, "validation", categories.get_class_set("stuff"), mask_size=tiny_data.SM,
      counts=counts)}
  for process_count in (1, 3):  # 3: [L L] [P L] [L], parts without portrait batches pad one.
    ids, canvases = [], set()
    for p in range(process_count):
      batches = list(pipeline.create_eval_dataset(
          config, batch_size=2, process_index=p, process_count=process_count)
          .as_numpy_iterator())
      canvases.add(tuple(b["image"].shape[1:3] for b in batches))  # The same steps everywhere.
      for batch in batches:
        _check_batch(batch)
        assert not batch["valid"][~batch["image_valid"]].any()
        for i in np.flatnonzero(batch["image_valid"]):
          e = expected[batch["image_id"][i]]
          ids.append(int(batch["image_id"][i]))
          order = np.argsort(-e["areas"], kind="stable")[:tiny_data.M]
          n = len(order)
          h, w = batch["image_info"][i, 3:5].astype(int)
          np.testing.assert_allclose(batch["image_info"][i, [3, 4]], [85, 64] if h > w
                                     else [64, 85])
          ratio = np.array([w / e["width"], h / e["height"]] * 2, np.float32)
          np.testing.assert_allclose(batch["boxes"][i, :n] / ratio, e["boxes"][order],
                                     atol=1e-4)
          np.testing.assert_array_equal(batch["masks"][i, :n], e["masks"][order])
          assert not batch["image"][i, h:].any() and not batch["image"][i, :, w:].any()
          if process_count == 1:  # inspect's GT pictures: masks pasted on the canvas.
            pasted = inspection_data.ground_truth(batch, i)["masks"]
            assert pasted.shape == (n,) + batch["image"].shape[1:3] and pasted.any((1, 2)).all()
    assert sorted(ids) == sorted(expected), process_count
    assert len(canvases) == 1, process_count


def test_loss_batches_for_any_process_count(mixed):
  config, _ = mixed
  reference = None
  for process_count in (1, 2):
    per_process = [list(pipeline.create_loss_dataset(
        config, global_batch_size=2, num_batches=3, process_index=p,
        process_count=process_count).as_numpy_iterator()) for p in range(process_count)]
    batches = [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
               for parts in zip(*per_process)]
    for batch in batches:
      _check_batch(batch)
    # Val orientations L L P L L: only the landscape buffer fills, at images 2 and 5.
    assert [b["image_id"].tolist() for b in batches] == [[10, 11], [13, 14]]
    reference = reference or batches
    tiny_data.assert_batches_equal(batches, reference)


def test_predict_batches_one_orientation(mixed):
  config, root = mixed
  paths = sorted(str(p) for p in (root / "val2017").glob("*.jpg"))
  chunks = predict_input.batches(paths, config, batch_size=2)
  assert chunks == [[0, 1], [3, 4], [2]]
  for chunk in chunks:
    batch = predict_input.load_images([paths[i] for i in chunk], config, batch_size=2)
    _check_batch(batch)
  with pytest.raises(ValueError, match="data.aspect_grouping puts a batch on one canvas"):
    predict_input.load_images(paths[1:3], config, batch_size=2)
