import collections
import functools
import json
import shutil
import time

from configs import default
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from maskrcnn_jax.data import builder
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import pipeline

S, M, SM = 64, 6, 16


def _config(root, **augment) -> ml_collections.ConfigDict:
  config = default.get_config().data
  config.root = str(root)
  config.image_size, config.max_instances, config.mask_size = S, M, SM
  config.augment.update(augment)
  return config


@pytest.fixture(scope="module")
def config(synthetic_root, tmp_path_factory):
  config = _config(synthetic_root)
  config.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  pipeline.prepare(config)
  return config


def _augmented(config, **kwargs):
  config = ml_collections.ConfigDict(config.to_dict())
  config.augment.update(hflip=True, scale_range=(0.75, 1.5), photometric=True)
  config.update(kwargs)
  return config


def _take(ds, n):
  return [b for b, _ in zip(ds.as_numpy_iterator(), range(n))]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


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
      decoded = tf.io.decode_jpeg(e["image"]).numpy()
      np.testing.assert_array_equal(batch["image"][i], decoded)
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


def test_shard_bounds():
  for n in range(12):
    for count in range(1, 5):
      parts = [pipeline.shard_bounds(n, p, count) for p in range(count)]
      assert parts[0][0] == 0 and parts[-1][1] == n
      assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
      assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


def test_epochs_follow_each_other_reshuffled(config):
  ids = np.concatenate([b["image_id"] for b in _take(
      pipeline.create_train_dataset(config, global_batch_size=3, seed=5), 6)])
  epochs = ids[:8], ids[8:16]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(1, 9))  # Batches span epochs.
  assert epochs[0].tolist() != epochs[1].tolist()


@pytest.mark.parametrize("class_balanced", [False, True])
def test_global_batches_are_the_same_for_every_process_count(config, class_balanced):
  """Process p's batch k is slice p of global batch k: same images, same augmentation."""
  augmented = _augmented(config, class_balanced=class_balanced, repeat_threshold=0.5)
  make = functools.partial(pipeline.create_train_dataset, augmented, global_batch_size=4, seed=2)
  single = _take(make(), 6)
  # Resumed at step 3 (12 images): inside the second epoch of 8.
  for count, start_step in ((1, 3), (2, 0), (4, 3)):
    parts = [_take(make(start_step=start_step, process_index=p, process_count=count), 3)
             for p in range(count)]
    joined = [{k: np.concatenate([part[i][k] for part in parts]) for k in parts[0][i]}
              for i in range(3)]
    _assert_batches_equal(single[start_step:start_step + 3], joined)
  with pytest.raises(ValueError, match="multiple of the 3 processes"):
    make(process_index=0, process_count=3)


def test_restore_resumes_the_same_sequence(config):
  augmented = _augmented(config, class_balanced=True, repeat_threshold=0.5)
  full = _take(pipeline.create_train_dataset(augmented, global_batch_size=3, seed=1), 7)
  resumed = _take(pipeline.create_train_dataset(augmented, global_batch_size=3, seed=1,
                                                start_step=4), 3)
  _assert_batches_equal(full[4:], resumed)


def test_deterministic_given_the_seed(config):
  augmented = _augmented(config)
  a = _take(pipeline.create_train_dataset(augmented, global_batch_size=2, seed=7), 3)
  b = _take(pipeline.create_train_dataset(augmented, global_batch_size=2, seed=7), 3)
  c = _take(pipeline.create_train_dataset(augmented, global_batch_size=2, seed=8), 3)
  _assert_batches_equal(a, b)
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_train_skips_images_without_instances(synthetic_root, tmp_path):
  root = tmp_path / "root"
  shutil.copytree(synthetic_root, root)
  path = root / "annotations" / "stuff_train2017.json"
  data = json.loads(path.read_text())
  data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]
  path.write_text(json.dumps(data))
  config = _config(root)
  built = pipeline.prepare(config)
  assert built.info.metadata["counts/train"]["no_instances"] == 1
  ids = np.concatenate([b["image_id"] for b in _take(
      pipeline.create_train_dataset(config, global_batch_size=7, seed=0), 3)])
  assert sorted(set(ids.tolist())) == [1, 3, 4, 5, 6, 7, 8]
  evaluated = pipeline.create_eval_dataset(config, batch_size=8, split="train")
  assert sorted(next(evaluated.as_numpy_iterator())["image_id"].tolist()) == list(range(1, 9))


def test_prepare_writes_synthetic_once(tmp_path):
  config = _config(tmp_path / "data")
  config.synthetic.update(enabled=True, num_train=3, num_val=2, image_size=32)
  built = pipeline.prepare(config)
  assert built.info.splits["train"].num_examples == 3
  stamp = (tmp_path / "data" / "annotations" / "stuff_train2017.json").stat().st_mtime_ns
  start = time.time()
  pipeline.prepare(config)
  assert time.time() - start < 1.0
  assert (tmp_path / "data" / "annotations" / "stuff_train2017.json").stat().st_mtime_ns == stamp
  assert pipeline.data_dir(config) == str(tmp_path / "data" / "tfds")


def test_prepare_without_data_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pipeline.prepare(_config(tmp_path / "missing"))


def test_annotation_files(config):
  root = config.root
  assert pipeline.annotation_files(config, "validation") == [
      f"{root}/annotations/stuff_val2017.json"]
  both = ml_collections.ConfigDict(dict(root=root, class_set="things_and_stuff"))
  assert pipeline.annotation_files(both, "train") == [
      f"{root}/annotations/stuff_train2017.json", f"{root}/annotations/instances_train2017.json"]


# ---------------------------------------------------------------- one example, by hand


def _example(height=32, width=48, areas=(300, 200), crowd=None, boxes=None, masks=None):
  n = len(areas)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
  if boxes is None:
    boxes = np.array([[2, 3, 20, 30], [10, 0, 47, 12]] * n, np.float32)[:n]
  if masks is None:
    masks = rng.integers(0, 2, (n, SM, SM), dtype=np.uint8)
  return {
      "image": tf.io.encode_png(image),  # decode_jpeg reads PNG too: lossless here.
      "image_id": tf.constant(9, tf.int64),
      "boxes": tf.constant(boxes),
      "classes": tf.range(1, n + 1, dtype=tf.int32),
      "is_crowd": tf.constant(np.zeros(n, bool) if crowd is None else np.array(crowd, bool)),
      "areas": tf.constant(np.array(areas, np.int32)),
      "masks": tf.constant(builder.pack_masks(masks)),
  }, image, boxes, masks


def _run(ex, key, *, image_size=48, max_instances=M, train=True, **augment):
  aug = ml_collections.ConfigDict(dict(hflip=False, scale_range=(1.0, 1.0), photometric=False))
  aug.update(augment)
  out = pipeline._preprocess(ex, tf.constant(key, tf.int64), seed=0, image_size=image_size,
                             max_instances=max_instances, mask_size=SM, augment=aug, train=train)
  return {k: v.numpy() for k, v in out.items()}


def test_unpack_masks_round_trip():
  masks = np.random.default_rng(1).integers(0, 2, (3, 7, 7), dtype=np.uint8)  # 49 bits: padded.
  packed = builder.pack_masks(masks)
  assert packed.shape == (3, builder.packed_mask_bytes(7)) == (3, 7)
  np.testing.assert_array_equal(pipeline._unpack_masks(tf.constant(packed), 7).numpy(), masks)


def test_hflip_moves_image_boxes_and_masks_together():
  ex, image, boxes, masks = _example()
  plain = _run(ex, 0)
  np.testing.assert_array_equal(plain["image"][:32], image)
  assert not plain["image"][32:].any()
  np.testing.assert_allclose(plain["image_info"], [32, 48, 1, 32, 48])
  outcomes = set()
  for key in range(12):
    out = _run(ex, key, hflip=True)
    flipped = not np.array_equal(out["image"], plain["image"])
    outcomes.add(flipped)
    if flipped:
      np.testing.assert_array_equal(out["image"][:32], image[:, ::-1])
      np.testing.assert_allclose(out["boxes"][:2], [[28, 3, 46, 30], [1, 0, 38, 12]])
      np.testing.assert_array_equal(out["masks"][:2], masks[:, :, ::-1])
    else:
      _assert_batches_equal([out], [plain])
  assert outcomes == {True, False}


def test_truncation_keeps_the_largest_and_counts_the_rest():
  areas = (10, 50, 30, 40, 20, 100)
  boxes = np.array([[i, i, i + 10, i + 10] for i in range(6)], np.float32)
  ex, _, _, masks = _example(areas=areas, crowd=[0, 0, 0, 0, 0, 1], boxes=boxes)
  out = _run(ex, 0, max_instances=3)
  np.testing.assert_array_equal(out["classes"], [2, 4, 3])  # Areas 50, 40, 30; crowd dropped.
  np.testing.assert_array_equal(out["boxes"], boxes[[1, 3, 2]])
  np.testing.assert_array_equal(out["masks"], masks[[1, 3, 2]])
  assert out["valid"].all() and out["num_truncated"] == 2
  padded = _run(ex, 0, max_instances=8)
  assert padded["valid"].tolist() == [True] * 5 + [False] * 3 and padded["num_truncated"] == 0
  assert not padded["boxes"][5:].any() and not padded["masks"][5:].any()


def test_scale_jitter_crops_boxes_and_masks_consistently():
  left_half = np.zeros((SM, SM), np.uint8)
  left_half[:, :SM // 2] = 1
  ex, _, _, _ = _example(areas=(500,), boxes=np.array([[0, 0, 48, 32]], np.float32),
                         masks=left_half[None])
  offsets = set()
  for key in range(6):
    out = _run(ex, key, scale_range=(2.0, 2.0))
    h, w, scale, valid_h, valid_w = out["image_info"]
    assert (h, w, scale) == (32, 48, 2) and valid_h == 48 and valid_w == 48
    box = out["boxes"][0]
    np.testing.assert_allclose(box, [0, 0, 48, 48])  # The window lies inside the 96×64 box.
    # Window offset: the mask's ones are the columns left of x = 48 in resized pixels.
    ones = out["masks"][0].sum(0) > 0
    ox = 48 - ones.sum() * 48 / SM
    offsets.add(round(ox))
    centres = ox + (np.arange(SM) + 0.5) * 48 / SM
    far = np.abs(centres - 48) > 3  # Columns clear of the edge's bilinear blur.
    np.testing.assert_array_equal(ones[far], (centres < 48)[far])
    assert out["valid"][0] and (out["masks"][0] == out["masks"][0][:1]).all()  # Rows alike.
  assert len(offsets) > 1  # The window moves.


def test_photometric_changes_only_the_pixels():
  ex, *_ = _example()
  plain, jittered = _run(ex, 3), _run(ex, 3, photometric=True)
  assert not np.array_equal(plain["image"], jittered["image"])
  assert not jittered["image"][32:].any()  # Padding stays zero.
  for k in ("boxes", "masks", "classes", "valid", "image_info"):
    np.testing.assert_array_equal(plain[k], jittered[k])


def test_repeat_factors_by_hand():
  # Class 1 in 3 of 4 images, class 2 in 1: f = 0.75, 0.25; t = 0.5.
  factors = pipeline.repeat_factors([[1], [1], [1, 2], [1]], 0.5)
  np.testing.assert_allclose(factors, [1, 1, np.sqrt(2), 1])
  assert pipeline.repeat_factors([[1], []], 0.4).tolist() == [1.0, 1.0]  # sqrt(0.8) < 1.
  candidates = np.arange(4)
  counts = np.zeros(4)
  for epoch in range(400):
    order = pipeline.epoch_order(candidates, factors, seed=0, epoch=epoch)
    counts += np.bincount(order, minlength=4)
    assert set(order.tolist()) == {0, 1, 2, 3}
  np.testing.assert_allclose(counts / 400, factors, atol=0.06)
  np.testing.assert_array_equal(pipeline.epoch_order(candidates, factors, seed=0, epoch=3),
                                pipeline.epoch_order(candidates, factors, seed=0, epoch=3))


def test_class_balanced_training_repeats_rare_images(config):
  balanced = ml_collections.ConfigDict(config.to_dict())
  balanced.update(class_balanced=True, repeat_threshold=0.9)
  ids = np.concatenate([b["image_id"] for b in _take(
      pipeline.create_train_dataset(balanced, global_batch_size=8, seed=0), 10)])
  assert len(np.unique(ids)) == 8 and np.bincount(ids).max() > 10  # Some images repeated.


def test_load_images(tmp_path, config):
  from PIL import Image
  Image.new("L", (20, 10), 200).save(tmp_path / "a.png")
  batch = pipeline.load_images([str(tmp_path / "a.png")], config, batch_size=2)
  assert batch["image"].shape == (2, S, S, 3) and batch["image_valid"].tolist() == [True, False]
  np.testing.assert_allclose(batch["image_info"][0], [10, 20, 64 / 20, 32, 64])
  assert (batch["image"][0, :32] == 200).all() and not batch["image"][0, 32:].any()
  assert batch["original"][0].shape == (10, 20, 3)


def test_datasets_need_prepare(synthetic_root, tmp_path):
  config = _config(synthetic_root)
  config.tfds_data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="prepare"):
    pipeline.create_train_dataset(config, global_batch_size=1, seed=0)


def test_rounding_of_the_resized_size_keeps_masks():
  # 29 × 48 -> 24.17 × 40 rounds to 24 × 40: the full-image box is cut by 0.17 px only.
  ex, _, _, masks = _example(height=29, areas=(1392,), boxes=np.array([[0, 0, 48, 29]], np.float32))
  out = _run(ex, 0, image_size=40)
  np.testing.assert_allclose(out["image_info"], [29, 48, 40 / 48, 24, 40], rtol=1e-6)
  np.testing.assert_allclose(out["boxes"][0], [0, 0, 40, 24])
  np.testing.assert_array_equal(out["masks"][0], masks[0])
