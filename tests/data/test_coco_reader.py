import collections
import io
import json
import shutil

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import pytest

from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.data import DataError


def _read(root, split, class_set, mask_size=16):
  counts = collections.Counter()
  examples = list(coco_reader.read_examples(root, split, categories.get_class_set(class_set),
                                            mask_size=mask_size, counts=counts))
  return examples, counts


def _json(path):
  with open(path) as f:
    return json.load(f)


def _expected_instances(anns, height, width, mask_size):
  """(box, crop) per annotation from pycocotools directly: the reference for the reader."""
  out = []
  for a in anns:
    seg = a["segmentation"]
    if isinstance(seg, list):
      rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
      rle = mask_utils.frPyObjects(seg, height, width)
    else:
      rle = seg
    mask = mask_utils.decode(rle)
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    out.append((box, coco_reader.crop_mask(mask, box, mask_size), int(mask.sum())))
  return out


def _check_against_json(example, anns, class_set, mask_size):
  cs = categories.get_class_set(class_set)
  anns = [a for a in anns if cs.contains(a["category_id"])]
  expected = _expected_instances(anns, example["height"], example["width"], mask_size)
  np.testing.assert_array_equal(example["classes"],
                                [cs.to_train_id(a["category_id"]) for a in anns])
  np.testing.assert_array_equal(example["is_crowd"], [bool(a["iscrowd"]) for a in anns])
  np.testing.assert_array_equal(example["boxes"], np.array([e[0] for e in expected]).reshape(-1, 4))
  np.testing.assert_array_equal(example["masks"], np.array([e[1] for e in expected]).reshape(
      -1, mask_size, mask_size))
  np.testing.assert_array_equal(example["areas"], [e[2] for e in expected])
  # Box-to-JSON: COCO's own bbox is the tight box of the mask.
  np.testing.assert_allclose(example["boxes"][:, 2:] - example["boxes"][:, :2],
                             np.array([a["bbox"][2:] for a in anns]).reshape(-1, 2), atol=1e-3)


@pytest.mark.parametrize("class_set", [c for c in categories.CLASS_SET_NAMES if c != "panoptic"])
def test_synthetic(synthetic_root, class_set):
  examples, counts = _read(synthetic_root, "train", class_set)
  stuff = _json(synthetic_root / "annotations" / "stuff_train2017.json")
  things = _json(synthetic_root / "annotations" / "instances_train2017.json")
  coco = class_set == "coco"  # The instances file alone.
  assert [e["image_id"] for e in examples] == sorted(
      i["id"] for i in (things if coco else stuff)["images"])
  without_things = 8 - len({a["image_id"] for a in things["annotations"]})
  assert counts["images"] == 8 and counts["no_instances"] == (without_things if coco else 0)
  num_other = sum(a["category_id"] == 183 for a in stuff["annotations"])
  assert counts["dropped_category"] == (0 if class_set in ("stuff", "coco") else num_other)
  for e in examples:
    anns = [] if coco else [a for a in stuff["annotations"] if a["image_id"] == e["image_id"]]
    if class_set in ("things_and_stuff", "coco"):
      anns += [a for a in things["annotations"] if a["image_id"] == e["image_id"]]
    _check_against_json(e, anns, class_set, 16)
    assert e["image"] == (synthetic_root / "train2017" / f"{e['image_id']:012d}.jpg").read_bytes()


def test_crop_mask_is_the_mask_inside_the_box():
  mask = np.zeros((10, 12), np.uint8)
  mask[2:6, 3:11] = 1
  mask[2, 3] = 0
  crop = coco_reader.crop_mask(mask, np.array([3, 2, 11, 6]), 8)  # 8×4 box -> 8×8.
  expected = np.ones((8, 8), np.uint8)
  expected[:2, 0] = 0  # Pixel (2, 3) spans two rows at twice the height.
  np.testing.assert_array_equal(crop, expected)


def _fake_images(root, split, images):
  (root / f"{split}2017").mkdir(parents=True)
  for image in images:
    Image.new("RGB", (image["width"], image["height"]), (90, 120, 30)).save(
        root / f"{split}2017" / image["file_name"])


def test_real_stuff_rle(samples, tmp_path):
  """The official stuff example GT (images absent: stand-ins of the right size)."""
  gt = _json(samples / "stuff_examples" / "annotations" / "stuff_examples.json")
  (tmp_path / "annotations").mkdir()
  shutil.copy(samples / "stuff_examples" / "annotations" / "stuff_examples.json",
              tmp_path / "annotations" / "stuff_train2017.json")
  _fake_images(tmp_path, "train", gt["images"])
  for class_set in ("stuff", "stuff_no_other"):
    examples, counts = _read(tmp_path, "train", class_set, mask_size=32)
    assert [e["image_id"] for e in examples] == [934, 13715]
    assert [(e["height"], e["width"]) for e in examples] == [(480, 640), (500, 335)]
    for e in examples:
      anns = [a for a in gt["annotations"] if a["image_id"] == e["image_id"]]
      _check_against_json(e, anns, class_set, 32)
      kept = [a for a in anns if class_set == "stuff" or a["category_id"] != 183]
      np.testing.assert_array_equal(e["areas"], [a["area"] for a in kept])
  stuff, _ = _read(tmp_path, "train", "stuff", mask_size=56)
  assert [len(e["classes"]) for e in stuff] == [10, 7]
  for e, image_anns in zip(stuff, ([a for a in gt["annotations"] if a["image_id"] == i]
                                   for i in (934, 13715))):
    for box, crop, ann in zip(e["boxes"].astype(int), e["masks"], image_anns):
      # Pasted back into its box, the 56² crop covers the mask it came from.
      x1, y1, x2, y2 = box
      pasted = np.asarray(Image.fromarray(crop * 255).resize((x2 - x1, y2 - y1))) >= 128
      inside = mask_utils.decode(ann["segmentation"])[y1:y2, x1:x2].astype(bool)
      iou = (pasted & inside).sum() / (pasted | inside).sum()
      assert iou > (0.8 if ann["area"] > 1000 else 0.5), (ann["id"], iou)
  assert stuff[0]["classes"].max() == 92  # 183 other is the last stuff training id.


def test_real_val_images_and_instances(samples, tmp_path):
  """Real val2017 JPEGs with their (panoptic-derived) instance RLEs, crowds included."""
  src = samples / "panoptic_val2017"
  instances = _json(src / "annotations" / "instances_val2017_from_panoptic.json")
  (tmp_path / "annotations").mkdir()
  shutil.copytree(src / "images" / "val2017", tmp_path / "val2017")
  shutil.copy(src / "annotations" / "instances_val2017_from_panoptic.json",
              tmp_path / "annotations" / "instances_val2017.json")
  stuff = dict(instances, annotations=[],
               categories=categories.coco_json_categories(range(92, 184)))
  (tmp_path / "annotations" / "stuff_val2017.json").write_text(json.dumps(stuff))
  examples, counts = _read(tmp_path, "validation", "things_and_stuff", mask_size=28)
  assert [e["image_id"] for e in examples] == [142238, 439180]
  assert counts["converted_image"] == 0 and counts["images"] == 2
  for e in examples:
    assert e["image"] == (tmp_path / "val2017" / f"{e['image_id']:012d}.jpg").read_bytes()
    anns = [a for a in instances["annotations"] if a["image_id"] == e["image_id"]]
    _check_against_json(e, anns, "things_and_stuff", 28)
  assert sum(e["is_crowd"].sum() for e in examples) == 3
  stuff_only, _ = _read(tmp_path, "validation", "stuff")
  assert [len(e["classes"]) for e in stuff_only] == [0, 0]


@pytest.fixture
def bad_root(synthetic_root, tmp_path):
  """A copy of the synthetic root to damage."""
  root = tmp_path / "root"
  shutil.copytree(synthetic_root, root)
  return root


def _image_file(root, index, split="train"):
  return sorted((root / f"{split}2017").iterdir())[index]


def _edit_json(root, kind, edit, split="train"):
  path = root / "annotations" / f"{kind}_{split}2017.json"
  data = _json(path)
  edit(data)
  path.write_text(json.dumps(data))


def test_bad_images(bad_root):
  data = _image_file(bad_root, 0).read_bytes()
  _image_file(bad_root, 0).write_bytes(data[:len(data) // 2])  # Truncated.
  _image_file(bad_root, 1).unlink()  # Missing.
  with Image.open(_image_file(bad_root, 1)) as im:  # Now the third file.
    rgb = np.asarray(im)
  Image.fromarray(rgb).convert("L").save(_image_file(bad_root, 1), format="JPEG")
  Image.fromarray(rgb).convert("CMYK").save(_image_file(bad_root, 2), format="JPEG")
  Image.fromarray(rgb).save(_image_file(bad_root, 3), format="PNG")
  Image.fromarray(rgb[:, :40]).save(_image_file(bad_root, 4), format="JPEG")  # Wrong size.
  _image_file(bad_root, 5).write_bytes(b"not an image")
  examples, counts = _read(bad_root, "train", "stuff")
  assert (counts["corrupt_image"], counts["missing_image"], counts["image_size_mismatch"],
          counts["converted_image"], counts["images"]) == (2, 1, 1, 3, 4)
  for e in examples:  # Converted: stored losslessly (ids 3-5), the RGB JPEG as it is.
    with Image.open(io.BytesIO(e["image"])) as im:
      assert (im.format, im.mode, im.size) == (
          "PNG" if 3 <= e["image_id"] <= 5 else "JPEG", "RGB", (64, 64))
  gray = next(e for e in examples if e["image_id"] == 3)
  decoded = np.asarray(Image.open(io.BytesIO(gray["image"])))
  np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])  # Gray in RGB.


def test_bad_annotations(bad_root):
  def edit(data):
    anns = data["annotations"]
    anns[0]["segmentation"]["size"] = [63, 64]  # RLE size mismatch.
    anns[1]["segmentation"] = mask_utils.encode(np.asfortranarray(np.zeros((64, 64), np.uint8)))
    anns[1]["segmentation"]["counts"] = anns[1]["segmentation"]["counts"].decode()  # Zero area.
    anns.append(dict(anns[2], id=99, image_id=12345))  # Image not in the JSON.
    image_1 = [a for a in anns if a["image_id"] == data["images"][-1]["id"]]
    for a in image_1:
      anns.remove(a)  # The last image has no annotation left.

  _edit_json(bad_root, "stuff", edit)
  _edit_json(bad_root, "instances", lambda d: d["annotations"].append(dict(
      d["annotations"][0], id=77, segmentation=[[100, 100, 120, 100, 120, 130]])))  # Outside.
  examples, counts = _read(bad_root, "train", "things_and_stuff")
  assert (counts["rle_size_mismatch"], counts["empty_instance"], counts["orphan_annotation"],
          counts["no_instances"], counts["images"]) == (1, 2, 1, 1, 8)
  assert len(examples[-1]["classes"]) == 0 and examples[-1]["masks"].shape == (0, 16, 16)


def test_unknown_category_stops_before_any_image_is_decoded(bad_root, monkeypatch):
  def edit(data):
    for ann in data["annotations"][4:7]:
      ann["category_id"] = 999
    data["annotations"][9]["category_id"] = 201
  _edit_json(bad_root, "stuff", edit)
  decoded = []
  monkeypatch.setattr(coco_reader, "_example", lambda task: decoded.append(task))
  with pytest.raises(DataError) as e:
    _read(bad_root, "train", "stuff")
  assert str(e.value) == (
      f"{bad_root}/annotations/stuff_train2017.json: unknown category_id in 4 of 29 annotations "
      "(ids 201, 999; first annotation 10000004): not COCO-Stuff's, a wrong annotation file or "
      "class set")
  assert not decoded


def test_duplicates_and_missing_files_are_skipped_counted_and_named(bad_root, caplog):
  def edit(data):
    data["annotations"].append(dict(data["annotations"][0]))  # Same id.
    data["images"].append(dict(data["images"][1]))  # Same id, same file.
  _edit_json(bad_root, "stuff", edit)
  missing = _image_file(bad_root, 2)
  missing.unlink()
  with caplog.at_level("WARNING"):
    examples, counts = _read(bad_root, "train", "stuff")
  assert (counts["duplicate_annotation"], counts["duplicate_image"], counts["missing_image"],
          counts["images"]) == (1, 1, 1, 7)
  assert f"{missing}: image 3 has no file: skipped" in caplog.text
  assert len(examples) == 7


def test_rle_counts_matches_pycocotools():
  rng = np.random.default_rng(0)
  for t in range(40):
    height, width = rng.integers(1, 40, 2)
    mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
    if t % 4 == 0:  # Long runs: multi-character numbers and large differences.
      mask = np.zeros((height * 9, width * 9), np.uint8)
      mask[height:, width * 2:width * 5] = 1
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    if flat[0]:
      runs = np.concatenate([[0], runs])
    counts = mask_utils.encode(np.asfortranarray(mask))["counts"]
    np.testing.assert_array_equal(coco_reader.rle_counts(counts), runs)
    np.testing.assert_array_equal(coco_reader.rle_counts(runs.tolist()), runs)


def test_malformed_rle_and_entries_are_skipped_and_counted(bad_root, caplog):
  def edit(data):
    anns = data["annotations"]
    full = anns[0]["segmentation"]["counts"]
    anns[0]["segmentation"]["counts"] = full[:len(full) // 2]  # Truncated: sums short.
    anns[1]["segmentation"]["counts"] = "\x7f\x7f"  # Outside the code.
    anns[2]["segmentation"]["counts"] = [4096, -5]  # Negative run (uncompressed).
    anns[3]["segmentation"]["size"] = "64x64"
    del anns[4]["category_id"]
    anns[5]["segmentation"] = 17
    anns.append("not an annotation")
    anns.append(dict(anns[6], id=98, segmentation=[["a", "b", "c", "d", "e", "f"]]))
    data["images"][-1].pop("file_name")  # Image 8; anns[:8] are not on it.
    data["images"].append({"id": "7", "file_name": 7})

  _edit_json(bad_root, "stuff", edit)
  with caplog.at_level("WARNING"):
    examples, counts = _read(bad_root, "train", "stuff")
  assert (counts["malformed_rle"], counts["malformed_entry"], counts["images"]) == (4, 6, 7)
  assert [e["image_id"] for e in examples] == list(range(1, 8))
  log = caplog.text
  for ident in ("annotation 10000000 has a malformed RLE (run lengths sum to",
                "annotation 10000001 has a malformed RLE", "annotation 10000002", "10000003",
                "annotation 10000004 field 'category_id'", "annotation #",
                "annotation 98 has a malformed polygon", "image entry 8 field 'file_name'",
                "image entry 7 field 'id'"):
    assert ident in log, ident
  assert "stuff_train2017.json" in log


def test_json_that_is_not_coco_raises(bad_root):
  (bad_root / "annotations" / "stuff_train2017.json").write_text('{"images": [')
  with pytest.raises(ValueError, match="stuff_train2017.json: not valid JSON"):
    _read(bad_root, "train", "stuff")
  (bad_root / "annotations" / "stuff_train2017.json").write_text('{"images": []}')
  with pytest.raises(ValueError, match="stuff_train2017.json: not COCO JSON"):
    _read(bad_root, "train", "stuff")


def test_partial_annotations_are_counted_and_reported(bad_root, caplog):
  def drop(image_id):
    def edit(data):
      data["images"] = [i for i in data["images"] if i["id"] != image_id]
      data["annotations"] = [a for a in data["annotations"] if a["image_id"] != image_id]
    return edit

  _edit_json(bad_root, "stuff", drop(2))
  _edit_json(bad_root, "instances", drop(5))
  counts, partial = collections.Counter(), set()
  with caplog.at_level("WARNING"):
    examples = list(coco_reader.read_examples(
        bad_root, "train", categories.get_class_set("things_and_stuff"), mask_size=16,
        counts=counts, partial=partial))
  assert counts["partial_annotations"] == 2 and partial == {2, 5}
  assert len(examples) == 8  # Kept: training decides.
  assert "stuff_train2017.json: 1 images of the other annotation file" in caplog.text
  _, stuff_only = _read(bad_root, "train", "stuff")
  assert stuff_only["partial_annotations"] == 0


def test_workers_give_the_same_examples(synthetic_root):
  class_set = categories.get_class_set("things_and_stuff")
  counts = collections.Counter()
  one = list(coco_reader.read_examples(synthetic_root, "train", class_set, mask_size=16,
                                       counts=counts))
  tasks = coco_reader.index(synthetic_root, "train", class_set, mask_size=16,
                            counts=collections.Counter())
  with coco_reader.worker_pool(2) as pool:  # One chunk of 3 images in flight at a time.
    two = list(coco_reader.decode(tasks, pool=pool, max_pending_bytes=1, chunk_images=3))
  assert counts == sum((c for _, c, _ in two), collections.Counter()) and len(two) == 8
  for a, (b, _, _) in zip(one, two):
    np.testing.assert_array_equal(coco_reader.pack_masks(a["masks"]), b["masks"])
    for k in a.keys() - {"masks"}:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
