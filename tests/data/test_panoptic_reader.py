"""The COCO panoptic reader on the real val2017 samples, against panopticapi's converter."""

import collections
import json
import shutil

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import pytest

from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import panoptic_reader
from maskrcnn_jax.evaluation import panoptic
import tiny_data

CLASS_SET = categories.get_class_set("panoptic")
# In the samples: image 142238 has 13 persons + 1 crowd, a sports ball and 184 tree, 187 sky,
# 193 grass; 439180 persons, 2 trucks, 11 horses + 1 crowd, 125 gravel, 184, 187, 193.
TREE, PERSON = 2330219, 3937500  # Segment ids in 142238 (the person is also in 439180).


@pytest.fixture
def root(samples, tmp_path):
  """A COCO panoptic root of the two val2017 samples (annotations copied: tests edit them)."""
  src = samples / "panoptic_val2017"
  (tmp_path / "val2017").mkdir()
  for image in (src / "images" / "val2017").iterdir():
    (tmp_path / "val2017" / image.name).symlink_to(image)
  shutil.copytree(src / "annotations" / "panoptic_val2017", tmp_path / "annotations" /
                  "panoptic_val2017")
  shutil.copy(src / "annotations" / "panoptic_val2017.json", tmp_path / "annotations")
  return tmp_path


def _read(root, mask_size=28):
  counts = collections.Counter()
  examples = list(panoptic_reader.read_examples(root, "validation", CLASS_SET,
                                                mask_size=mask_size, counts=counts))
  return examples, counts


def _edit(root, change):
  path = root / "annotations" / "panoptic_val2017.json"
  data = json.loads(path.read_text())
  change(data)
  path.write_text(json.dumps(data))


def _segments(data, image_id):
  return next(a for a in data["annotations"] if a["image_id"] == image_id)["segments_info"]


def test_samples_equal_panopticapi_detection_format(root, samples):
  """Every segment as panopticapi's panoptic2detection_coco_format wrote it (the samples'
  stuff has one segment per category and image, so one region each)."""
  examples, counts = _read(root, mask_size=28)
  assert counts == {"images": 2}
  detection = json.loads((samples / "panoptic_val2017" / "annotations" /
                          "panoptic_val2017_detection_format.json").read_text())
  assert [e["image_id"] for e in examples] == [142238, 439180]
  for e in examples:
    anns = [a for a in detection["annotations"] if a["image_id"] == e["image_id"]]
    assert len(anns) == len(e["classes"]) and e["image"] == (
        root / "val2017" / f"{e['image_id']:012d}.jpg").read_bytes()
    for i, ann in enumerate(anns):
      mask = mask_utils.decode(ann["segmentation"])
      x, y, w, h = ann["bbox"]
      box = np.array([x, y, x + w, y + h], np.float32)
      assert (CLASS_SET.to_coco_id(e["classes"][i]), e["is_crowd"][i], e["areas"][i]) == (
          ann["category_id"], bool(ann["iscrowd"]), ann["area"])
      np.testing.assert_array_equal(e["boxes"][i], box)
      np.testing.assert_array_equal(e["masks"][i], coco_reader.crop_mask(mask, box, 28))
  assert [int(e["is_crowd"].sum()) for e in examples] == [1, 2]


def test_stuff_segments_of_a_category_are_one_region(root):
  pan = panoptic.read_png(root / "annotations" / "panoptic_val2017" / "000000142238.png")
  split = 7  # A second sky segment: the tree's left columns relabelled.
  pan[(pan == TREE) & (np.arange(pan.shape[1]) < 200)] = split
  Image.fromarray(panoptic.id_to_rgb(pan)).save(
      root / "annotations" / "panoptic_val2017" / "000000142238.png")
  _edit(root, lambda d: _segments(d, 142238).append(
      dict(id=split, category_id=184, iscrowd=0, area=0, bbox=[0, 0, 0, 0])))
  (e, _), counts = _read(root)
  assert counts == {"images": 2}
  tree = e["classes"] == CLASS_SET.to_train_id(184)
  assert tree.sum() == 1 and e["areas"][tree][0] == 130_762  # The tree's pixels, both parts.


def test_bad_input_is_counted(root):
  pngs = root / "annotations" / "panoptic_val2017"
  def change(data):
    del _segments(data, 142238)[0]          # A listed person: its pixels become VOID.
    _segments(data, 142238).append(dict(id=99, category_id=1))  # No pixels.
    _segments(data, 142238).append(dict(id="x", category_id=1))  # Malformed.
    _segments(data, 439180).clear()         # Every segment unlisted: no instances.
    data["annotations"].append(dict(image_id=5, file_name="5.png", segments_info=[]))
  _edit(root, change)
  examples, counts = _read(root)
  assert counts == dict(images=2, unlisted_segment=1 + 32, empty_instance=1,
                        malformed_entry=1, orphan_annotation=1, no_instances=1)
  assert [len(e["classes"]) for e in examples] == [17, 0]
  (pngs / "000000439180.png").write_bytes(b"not a png")
  Image.new("RGB", (10, 10)).save(pngs / "000000142238.png")
  examples, counts = _read(root)
  assert not examples and counts["corrupt_png"] == 1 and counts["png_size_mismatch"] == 1
  (pngs / "000000439180.png").unlink()
  _edit(root, lambda d: d["annotations"].pop(0))  # 142238 has no annotation.
  examples, counts = _read(root)
  assert not examples and counts["missing_png"] == 1 and counts["unannotated_image"] == 1


def test_category_outside_the_class_set_raises(root):
  _edit(root, lambda d: _segments(d, 439180)[0].update(category_id=183))
  with pytest.raises(ValueError, match=r"panoptic_val2017.json: image 439180, segment "
                     r"3937500 has category_id 183, not one of class set 'panoptic'"):
    _read(root)


def test_build_reads_the_panoptic_root(root, tmp_path):
  config = tiny_data.config(root)
  config.class_set, config.tfds_data_dir = "panoptic", str(tmp_path / "tfds")
  config.build_workers = 2  # Its tasks decoded by `panoptic_reader.decode_task` in workers.
  assert build.annotation_files(config, "validation") == [
      str(root / "annotations" / "panoptic_val2017.json")]
  builder = build.prepare(config)
  assert list(builder.info.splits) == ["validation"]
  assert builder.info.metadata["counts/validation"] == {"images": 2}


def test_duplicate_images_and_annotations_are_skipped_counted_and_named(tmp_path, caplog):
  """As coco_reader's: the first entry of an id is kept, the others counted and logged."""
  image = lambda i, name: dict(id=i, file_name=name, height=2, width=2)
  ann = lambda i, name, cid: dict(image_id=i, file_name=name,
                                  segments_info=[dict(id=1, category_id=cid)])
  path = tmp_path / "panoptic_val2017.json"
  path.write_text(json.dumps(dict(
      images=[image(1, "a.jpg"), image(2, "b.jpg"), image(1, "c.jpg")],
      annotations=[ann(1, "a.png", 1), ann(2, "b.png", 2), ann(1, "c.png", 3)])))
  counts = collections.Counter()
  with caplog.at_level("WARNING"):
    images, anns = panoptic_reader.index_json(path, CLASS_SET, counts)
  assert counts == dict(duplicate_image=1, duplicate_annotation=1)
  assert [images[i]["file_name"] for i in (1, 2)] == ["a.jpg", "b.jpg"]
  assert [anns[i]["file_name"] for i in (1, 2)] == ["a.png", "b.png"]
  assert f"{path}: 1 image entries repeat an earlier id: skipped (first: [1])" in caplog.text
  assert "1 annotation entries repeat an earlier image_id: skipped" in caplog.text
