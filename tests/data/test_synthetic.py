import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import pytest

from maskrcnn_jax.data import categories
from maskrcnn_jax.data import synthetic


def _load(root, kind, split):
  with open(root / "annotations" / f"{kind}_{split}2017.json") as f:
    return json.load(f)


def test_deterministic(synthetic_root, tmp_path):
  synthetic.write_synthetic(tmp_path / "a", num_train=8, num_val=5, image_size=64, seed=3)
  synthetic.write_synthetic(tmp_path / "b", num_train=8, num_val=5, image_size=64, seed=4)
  for path in synthetic_root.rglob("*.*"):
    relative = path.relative_to(synthetic_root)
    assert (tmp_path / "a" / relative).read_bytes() == path.read_bytes(), relative
  assert ((tmp_path / "b" / "annotations" / "stuff_train2017.json").read_bytes()
          != (synthetic_root / "annotations" / "stuff_train2017.json").read_bytes())


def test_layout_and_format(synthetic_root):
  for split, first_id in (("train", 10_000_000), ("val", 20_000_000)):
    stuff = _load(synthetic_root, "stuff", split)
    things = _load(synthetic_root, "instances", split)
    assert [c["id"] for c in stuff["categories"]] == list(range(92, 184))
    assert stuff["categories"][-1] == {"id": 183, "name": "other", "supercategory": "other"}
    assert len(things["categories"]) == 80
    assert [a["id"] for a in stuff["annotations"]] == list(
        range(first_id, first_id + len(stuff["annotations"])))
    for image in stuff["images"]:
      with Image.open(synthetic_root / f"{split}2017" / image["file_name"]) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))


def test_stuff_labels_tile_the_image_and_things_are_other(synthetic_root):
  stuff = _load(synthetic_root, "stuff", "train")
  things = _load(synthetic_root, "instances", "train")
  used = {c for c, _ in synthetic.STUFF_TEXTURES[:8]} | {categories.OTHER_ID}
  for image in stuff["images"]:
    anns = [a for a in stuff["annotations"] if a["image_id"] == image["id"]]
    cids = [a["category_id"] for a in anns]
    assert len(cids) == len(set(cids)) and set(cids) <= used  # One annotation per class.
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns)
    masks = {a["category_id"]: mask_utils.decode(a["segmentation"]) for a in anns}
    np.testing.assert_array_equal(sum(masks.values()), 1)  # Every pixel exactly once.
    thing_union = np.zeros((64, 64), np.uint8)
    for a in things["annotations"]:
      if a["image_id"] == image["id"]:
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 64, 64))
        thing_union |= mask_utils.decode(rle)
    np.testing.assert_array_equal(masks.get(183, np.zeros_like(thing_union)), thing_union)
  assert things["annotations"], "the seed should draw some things"


def test_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="num_stuff_classes"):
    synthetic.write_synthetic(tmp_path, num_train=1, num_val=1, image_size=64, seed=0,
                              num_stuff_classes=13)
