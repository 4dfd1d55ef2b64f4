import json

import pytest

from maskrcnn_jax.data import categories


def test_table_matches_the_released_label_space(samples):
  with open(samples / "cocostuff_categories.json") as f:
    released = json.load(f)["categories"]
  assert [(c["id"], c["name"], c["supercategory"]) for c in released] == list(categories.CATEGORIES)
  assert tuple(c["id"] for c in released if not c["annotated"]) == categories.UNANNOTATED_THING_IDS


def test_table_shape():
  assert [c[0] for c in categories.CATEGORIES] == list(range(1, 184))
  assert len(categories.THING_IDS) == 80
  assert categories.CATEGORIES[-1] == (183, "other", "other")


@pytest.mark.parametrize("name, first, last, k", [
    ("coco", 1, 90, 80),
    ("stuff", 92, 183, 92),
    ("stuff_no_other", 92, 182, 91),
    ("things_and_stuff", 1, 182, 171),
    ("panoptic", 1, 200, 133),
])
def test_class_sets(name, first, last, k):
  cs = categories.get_class_set(name)
  assert cs.name == name and cs.num_classes == k
  assert (cs.coco_ids[0], cs.coco_ids[-1]) == (first, last)
  assert [cs.to_train_id(c) for c in cs.coco_ids] == list(range(1, k + 1))
  assert [cs.to_coco_id(i) for i in range(1, k + 1)] == list(cs.coco_ids)
  assert list(cs.coco_id_lut()) == [0, *cs.coco_ids]
  assert len(cs.names) == len(cs.supercategories) == k


def test_things_and_stuff_order():
  cs = categories.get_class_set("things_and_stuff")
  assert cs.to_train_id(1) == 1 and cs.to_train_id(90) == 80  # person, toothbrush
  assert cs.to_train_id(92) == 81 and cs.names[80] == "banner"
  assert not cs.contains(12) and not cs.contains(183)  # never annotated; other


def test_out_of_set_ids_raise():
  cs = categories.get_class_set("stuff_no_other")
  with pytest.raises(KeyError, match="183"):
    cs.to_train_id(183)
  with pytest.raises(ValueError):
    cs.to_coco_id(0)
  with pytest.raises(ValueError, match="coco, stuff, stuff_no_other, things_and_stuff, panoptic"):
    categories.get_class_set("things")


def test_panoptic_is_panopticapis_category_list(samples):
  """The 133 categories of panoptic_coco_categories.json, in its order (80 things, 53 stuff)."""
  released = json.loads((samples / "panoptic_val2017" / "annotations" /
                         "panoptic_coco_categories.json").read_text())
  cs = categories.get_class_set("panoptic")
  assert list(zip(cs.coco_ids, cs.names, cs.supercategories)) == [
      (c["id"], c["name"], c["supercategory"]) for c in released]
  assert [c < categories.FIRST_STUFF_ID for c in cs.coco_ids] == [
      c["isthing"] == 1 for c in released]
  assert categories.is_known(200) and not categories.is_known(201)
