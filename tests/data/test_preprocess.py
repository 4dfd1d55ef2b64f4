import ml_collections
import numpy as np
import tensorflow as tf

from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import preprocess
import tiny_data

M, SM = tiny_data.M, tiny_data.SM


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
      "masks": tf.constant(coco_reader.pack_masks(masks)),
  }, image, boxes, masks


def _run(ex, key, *, image_size=48, max_instances=M, train=True, resize="longest",
         min_size=(800,), max_size=1333, **augment):
  aug = ml_collections.ConfigDict(dict(hflip=False, scale_range=(1.0, 1.0), photometric=False))
  aug.update(augment)
  data_config = ml_collections.ConfigDict(dict(
      resize=resize, image_size=image_size, min_size=min_size, max_size=max_size,
      max_instances=max_instances, mask_size=SM, augment=aug, aspect_grouping=False))
  out = preprocess.preprocess(ex, tf.constant(key, tf.int64), seed=0, data_config=data_config,
                              train=train)
  return {k: v.numpy() for k, v in out.items()}


def test_unpack_masks_round_trip():
  masks = np.random.default_rng(1).integers(0, 2, (3, 7, 7), dtype=np.uint8)  # 49 bits: padded.
  packed = coco_reader.pack_masks(masks)
  assert packed.shape == (3, coco_reader.packed_mask_bytes(7)) == (3, 7)
  np.testing.assert_array_equal(preprocess.unpack_masks(tf.constant(packed), 7).numpy(), masks)


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
      tiny_data.assert_batches_equal([out], [plain])
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


def test_rounding_of_the_resized_size_keeps_masks():
  # 29 × 48 -> 24.17 × 40 rounds to 24 × 40: the full-image box is cut by 0.17 px only.
  ex, _, _, masks = _example(height=29, areas=(1392,), boxes=np.array([[0, 0, 48, 29]], np.float32))
  out = _run(ex, 0, image_size=40)
  np.testing.assert_allclose(out["image_info"], [29, 48, 40 / 48, 24, 40], rtol=1e-6)
  np.testing.assert_allclose(out["boxes"][0], [0, 0, 40, 24])
  np.testing.assert_array_equal(out["masks"][0], masks[0])
