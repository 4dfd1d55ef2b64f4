"""The resize rules against the references' sizes, their round trip through preprocessing and
evaluation, and EXIF orientation: the same pixels in the build and in prediction."""

import collections
import json

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import images
from maskrcnn_jax.data import pixels
from maskrcnn_jax.data import predict_input
from maskrcnn_jax.data import preprocess
from maskrcnn_jax.evaluation import masks as masks_lib

SM = 16


def _config(resize, min_size=(800,), max_size=1333, image_size=1024, aspect_grouping=False,
            **augment):
  aug = dict(hflip=False, scale_range=(1.0, 1.0), photometric=False)
  aug.update(augment)
  return ml_collections.ConfigDict(dict(
      resize=resize, min_size=min_size, max_size=max_size, image_size=image_size,
      aspect_grouping=aspect_grouping, max_instances=4, mask_size=SM, augment=aug))


def _size(config, height, width):
  new_h, new_w = images.resized_size(height, width, images.scale(height, width, config))
  return int(new_h), int(new_w)


@pytest.mark.parametrize("resize, min_size, max_size, cases, canvas", [
    # detectron2's ResizeShortestEdge(800, 1333): int(x + 0.5) of the scaled sides.
    ("shortest_edge", (800,), 1333,
     {(480, 640): (800, 1067), (640, 480): (1067, 800), (500, 1500): (444, 1333),
      (1200, 1000): (960, 800), (800, 800): (800, 800)}, (1344, 1344)),
    # matterport's square(800, 1024): never down to 800, the long side capped at 1024.
    ("square", (800,), 1024,
     {(480, 640): (768, 1024), (300, 350): (800, 933), (1000, 1100): (931, 1024),
      (900, 900): (900, 900)}, (1024, 1024)),
    ("longest", (800,), 1333, {(480, 640): (768, 1024), (641, 480): (1024, 767)},
     (1024, 1024)),
])
def test_sizes_and_canvas(resize, min_size, max_size, cases, canvas):
  config = _config(resize, min_size, max_size)
  assert {hw: _size(config, *hw) for hw in cases} == cases
  assert images.canvas(config) == canvas


def test_grouping_canvases():
  """Landscape max(min_size) x max_size and its transpose, rounded up to 64; one canvas
  where grouping is off (or refused: longest, square)."""
  grouped = _config("shortest_edge", (640, 800), 1333, aspect_grouping=True)
  assert images.canvas(grouped) == (832, 1344)
  assert images.canvas(grouped, portrait=True) == (1344, 832)
  for config in (_config("shortest_edge"), _config("square", max_size=1024, aspect_grouping=True),
                 _config("longest", aspect_grouping=True)):
    assert images.canvas(config) == images.canvas(config, portrait=True)


def _example(height, width, box, mask):
  image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
  return {
      "image": tf.io.encode_png(image),
      "image_id": tf.constant(1, tf.int64),
      "boxes": tf.constant([box], tf.float32),
      "classes": tf.constant([1], tf.int32),
      "is_crowd": tf.constant([False]),
      "areas": tf.constant([int(mask.sum())], tf.int32),
      "masks": tf.constant(coco_reader.pack_masks(mask[None])),
  }, image


@pytest.mark.parametrize("resize, limits, hw, resized, canvas", [
    ("shortest_edge", ((36,), 45), (30, 40), (34, 45), (64, 64)),  # 36 x 48, capped: 45 / 40.
    ("shortest_edge", ((36,), 45), (40, 30), (45, 34), (64, 64)),
    ("square", ((36,), 45), (20, 50), (18, 45), (64, 64)),  # Up to 36 gives 90 wide: capped.
    ("square", ((36,), 45), (30, 33), (36, 40), (64, 64)),  # Up to 36; 39.6 rounds to 40.
    # data.aspect_grouping (the third limit): each orientation on its canvas (128² without).
    ("shortest_edge", ((60,), 100, True), (30, 40), (60, 80), (64, 128)),
    ("shortest_edge", ((60,), 100, True), (40, 30), (80, 60), (128, 64)),
    ("shortest_edge", ((60,), 100, True), (25, 60), (42, 100), (64, 128)),  # Capped: 100 / 60.
    ("shortest_edge", ((60,), 100, True), (60, 25), (100, 42), (128, 64)),
])
def test_round_trip(resize, limits, hw, resized, canvas):
  """Image, box and mask through evaluation preprocessing and back to the original frame."""
  height, width = hw
  box = [3.0, 2.0, width - 5.0, height - 1.0]
  mask = np.zeros((SM, SM), np.uint8)
  mask[2:12, 4:15] = 1
  ex, image = _example(height, width, box, mask)
  min_size, max_size, *grouping = limits
  config = _config(resize, min_size, max_size, aspect_grouping=bool(grouping))
  out = {k: v.numpy() for k, v in preprocess.preprocess(
      ex, tf.constant(0, tf.int64), seed=0, data_config=config, train=False).items()}
  new_h, new_w = resized
  assert out["image"].shape == canvas + (3,)
  assert images.canvas(config, portrait=height > width) == canvas
  np.testing.assert_allclose(out["image_info"][[0, 1, 3, 4]], [height, width, new_h, new_w])
  want = np.clip(np.floor(tf.image.resize(image, resized).numpy() + 0.5), 0, 255)
  np.testing.assert_array_equal(out["image"][:new_h, :new_w], want)
  assert not out["image"][new_h:].any() and not out["image"][:, new_w:].any()
  ratio = np.array([new_w / width, new_h / height] * 2, np.float32)
  np.testing.assert_allclose(out["boxes"][0], np.array(box, np.float32) * ratio, rtol=1e-6)
  np.testing.assert_array_equal(out["masks"][0], mask)  # Box-relative: unchanged.
  back = masks_lib.boxes_to_original(out["boxes"][:1], out["image_info"])
  np.testing.assert_allclose(back[0], box, atol=1e-4)
  identity = np.array([height, width, 1, height, width], np.float32)
  prob = mask[None].astype(np.float32)
  np.testing.assert_allclose(  # Up to float32 rounding of the box.
      masks_lib.paste_masks(prob, out["boxes"][:1], out["image_info"]),
      masks_lib.paste_masks(prob, np.array([box], np.float32), identity), atol=1e-4)


def test_multi_scale_draws_per_image_and_evaluates_at_the_largest():
  config = _config("shortest_edge", (20, 24, 32), 64)
  ex, _ = _example(40, 50, [0.0, 0.0, 10.0, 10.0], np.ones((SM, SM), np.uint8))
  run = lambda key, train: preprocess.preprocess(
      ex, tf.constant(key, tf.int64), seed=0, data_config=config, train=train)["image_info"]
  drawn = {int(run(key, True)[3]) for key in range(8)}
  assert drawn == {20, 24, 32}  # The short side: one of min_size per image key.
  assert int(run(3, True)[3]) == int(run(3, True)[3])  # Fixed by the key.
  assert int(run(0, False)[3]) == int(run(1, False)[3]) == 32


@pytest.fixture(scope="module")
def exif_root(tmp_path_factory):
  """A COCO-Stuff root of three camera JPEGs stored 24 x 32 with EXIF orientations 3, 6 and 8;
  the JSON gives their sizes as shown."""
  root = tmp_path_factory.mktemp("exif")
  (root / "val2017").mkdir()
  (root / "annotations").mkdir()
  stored = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
  entries, anns = [], []
  for image_id, orientation in enumerate((3, 6, 8), 1):
    exif = Image.Exif()
    exif[pixels.EXIF_ORIENTATION] = orientation
    Image.fromarray(stored).save(root / "val2017" / f"{image_id}.jpg", exif=exif, quality=90)
    height, width = (24, 32) if orientation == 3 else (32, 24)
    entries.append(dict(id=image_id, file_name=f"{image_id}.jpg", height=height, width=width))
    anns.append(dict(id=image_id, image_id=image_id, category_id=categories.FIRST_STUFF_ID,
                     iscrowd=0, segmentation=[[2, 2, 12, 2, 12, 12, 2, 12]]))
  (root / "annotations" / "stuff_val2017.json").write_text(json.dumps(dict(
      images=entries, annotations=anns, categories=[])))
  return root


def test_exif_orientation_same_pixels_in_build_and_predict(exif_root):
  counts = collections.Counter()
  examples = list(coco_reader.read_examples(exif_root, "validation",
                                            categories.get_class_set("stuff"), mask_size=SM,
                                            counts=counts))
  assert [e["image_id"] for e in examples] == [1, 2, 3]
  assert {k: v for k, v in counts.items() if k.startswith("exif")} == {
      "exif_orientation_3": 1, "exif_orientation_6": 1, "exif_orientation_8": 1}
  config = _config("shortest_edge", (40,), 48)
  paths = [str(exif_root / "val2017" / f"{e['image_id']}.jpg") for e in examples]
  predicted = predict_input.load_images(paths, config, batch_size=3)
  for i, e in enumerate(examples):
    built = images.decode_tf(e["image"]).numpy()
    np.testing.assert_array_equal(built, predicted["original"][i])
    ex = {"image": tf.constant(e["image"]), "image_id": tf.constant(e["image_id"], tf.int64),
          **{k: tf.constant(e[k]) for k in ("boxes", "classes", "is_crowd", "areas")},
          "masks": tf.constant(coco_reader.pack_masks(e["masks"]))}
    evaluated = preprocess.preprocess(ex, tf.constant(0, tf.int64), seed=0, data_config=config,
                                      train=False)
    np.testing.assert_array_equal(evaluated["image"].numpy(), predicted["image"][i])
    np.testing.assert_array_equal(evaluated["image_info"].numpy(), predicted["image_info"][i])
