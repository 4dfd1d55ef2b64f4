import collections
import json
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import pixels
from maskrcnn_jax.data import pipeline
import tiny_data

S, M, SM = tiny_data.S, tiny_data.M, tiny_data.SM


def test_batch_format(config):
  spec = pipeline.create_train_dataset(config, global_batch_size=3, seed=0).element_spec
  shapes = {k: (tuple(v.shape), v.dtype) for k, v in spec.items()}
  assert shapes == {
      "image": ((3, S, S, 3), tf.uint8), "image_id": ((3,), tf.int32),
      "image_info": ((3, 5), tf.float32), "boxes": ((3, M, 4), tf.float32),
      "classes": ((3, M), tf.int32), "masks": ((3, M, SM, SM), tf.uint8),
      "valid": ((3, M), tf.bool), "num_truncated": ((3,), tf.int32)}
  eval_spec = pipeline.create_eval_dataset(config, batch_size=2).element_spec
  assert eval_spec.keys() == spec.keys() | {"image_valid"}
  assert eval_spec["image_valid"].shape == (2,) and eval_spec["masks"].shape == (2, M, SM, SM)


def test_eval_matches_the_reader(config, synthetic_root):
  """Boxes go back to original pixels with image_info; masks and classes are the reader's."""
  counts = collections.Counter()
  expected = {e["image_id"]: e for e in coco_reader.read_examples(
      synthetic_root, "validation", categories.get_class_set("stuff"), mask_size=SM, counts=counts)}
  batches = list(pipeline.create_eval_dataset(config, batch_size=2).as_numpy_iterator())
  assert len(batches) == 3  # 5 images, the last batch padded.
  seen = []
  for batch in batches:
    for i in np.flatnonzero(batch["image_valid"]):
      e = expected[batch["image_id"][i]]
      seen.append(int(batch["image_id"][i]))
      np.testing.assert_allclose(batch["image_info"][i], [64, 64, 1, 64, 64])
      order = np.argsort(-e["areas"], kind="stable")[:M]
      n = len(order)
      assert batch["valid"][i].sum() == n
      assert batch["num_truncated"][i] == max(len(e["areas"]) - M, 0)
      scale = batch["image_info"][i, 2]
      np.testing.assert_allclose(batch["boxes"][i, :n] / scale, e["boxes"][order], atol=1e-4)
      np.testing.assert_array_equal(batch["classes"][i, :n], e["classes"][order])
      np.testing.assert_array_equal(batch["masks"][i, :n], e["masks"][order])
      assert not batch["classes"][i, n:].any() and not batch["masks"][i, n:].any()
      np.testing.assert_array_equal(batch["image"][i], pixels.decode(e["image"]))  # PIL's.
  assert sorted(seen) == sorted(expected)
  last = batches[-1]
  assert last["image_valid"].tolist() == [True, False] and not last["valid"][1].any()


def test_eval_resize_and_pad(synthetic_root, config):
  small = ml_collections.ConfigDict(config.to_dict())
  small.image_size = 40
  batch = next(pipeline.create_eval_dataset(small, batch_size=2).as_numpy_iterator())
  np.testing.assert_allclose(batch["image_info"][0], [64, 64, 40 / 64, 40, 40])
  counts = collections.Counter()
  first = next(coco_reader.read_examples(synthetic_root, "validation",
                                         categories.get_class_set("stuff"), mask_size=SM,
                                         counts=counts))
  order = np.argsort(-first["areas"], kind="stable")
  valid = batch["valid"][0]
  np.testing.assert_allclose(batch["boxes"][0][valid] / batch["image_info"][0, 2],
                             first["boxes"][order], atol=1e-4)


def test_eval_sharding_is_disjoint_and_covering(config):
  for num_images, process_count in ((-1, 3), (4, 2)):
    ids, num_batches = [], set()
    for p in range(process_count):
      batches = list(pipeline.create_eval_dataset(
          config, batch_size=2, num_images=num_images, process_index=p,
          process_count=process_count).as_numpy_iterator())
      num_batches.add(len(batches))
      ids += [int(i) for b in batches for i in b["image_id"][b["image_valid"]]]
    total = 5 if num_images < 0 else num_images
    assert len(ids) == len(set(ids)) == total
    assert len(num_batches) == 1  # Every process runs the same number of steps.


def test_loss_batches_are_the_same_for_any_process_count(config):
  """Global batch k: images [kG, (k + 1)G) in image-id order, split over the processes."""
  ordered = [int(i) for b in pipeline.create_eval_dataset(config, batch_size=5)
             .as_numpy_iterator() for i in b["image_id"]]
  for global_batch, expected_batches in ((2, 2), (4, 1)):  # 5 images: full batches only.
    for process_count in (1, 2):
      per_process = [list(pipeline.create_loss_dataset(
          config, global_batch_size=global_batch, num_batches=3, process_index=p,
          process_count=process_count).as_numpy_iterator()) for p in range(process_count)]
      batches = [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
                 for parts in zip(*per_process)]
      assert len(batches) == expected_batches
      ids = [int(i) for b in batches for i in b["image_id"]]
      assert ids == ordered[:global_batch * expected_batches], (global_batch, process_count)
      assert all(b["image_valid"].all() for b in batches)
      if process_count == 1:
        reference = batches
      for b, ref in zip(batches, reference):
        np.testing.assert_array_equal(b["image"], ref["image"])


def test_train_skips_images_without_instances(synthetic_root, tmp_path):
  root = tmp_path / "root"
  shutil.copytree(synthetic_root, root)
  path = root / "annotations" / "stuff_train2017.json"
  data = json.loads(path.read_text())
  data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
  path.write_text(json.dumps(data))
  config = tiny_data.config(root)
  built = build.prepare(config)
  assert built.info.metadata["counts/train"]["no_instances"] == 1
  ids = np.concatenate([b["image_id"] for b in tiny_data.take(
      pipeline.create_train_dataset(config, global_batch_size=7, seed=0), 3)])
  assert sorted(set(ids.tolist())) == [1, 3, 4, 5, 6, 7, 8]
  evaluated = pipeline.create_eval_dataset(config, batch_size=8, split="train")
  assert sorted(next(evaluated.as_numpy_iterator())["image_id"].tolist()) == list(range(1, 9))


def test_partial_annotations_leave_training(synthetic_root, tmp_path, caplog):
  root = tmp_path / "root"
  shutil.copytree(synthetic_root, root)
  path = root / "annotations" / "stuff_train2017.json"
  data = json.loads(path.read_text())
  data["images"] = [i for i in data["images"] if i["id"] != 2]  # Things only.
  data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
  path.write_text(json.dumps(data))
  config = tiny_data.config(root, hflip=False)
  config.class_set, config.max_instances, config.build_workers = "things_and_stuff", 2, 2
  with caplog.at_level("WARNING"):
    built = build.prepare(config)
  assert built.info.metadata["counts/train"]["partial_annotations"] == 1
  assert "hold more than data.max_instances = 2 instances" in caplog.text
  for allow, expected in ((False, [1, 3, 4, 5, 6, 7, 8]), (True, list(range(1, 9)))):
    config.allow_partial_annotations = allow
    ids = np.concatenate([b["image_id"] for b in tiny_data.take(
        pipeline.create_train_dataset(config, global_batch_size=len(expected), seed=0), 2)])
    assert sorted(set(ids.tolist())) == expected
    assert ids.tolist()[:len(expected)] != expected  # Shuffled, yet only these.


def test_datasets_need_prepare(synthetic_root, tmp_path):
  config = tiny_data.config(synthetic_root)
  config.tfds_data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="prepare"):
    pipeline.create_train_dataset(config, global_batch_size=1, seed=0)
