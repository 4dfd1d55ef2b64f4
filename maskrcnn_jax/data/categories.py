"""The COCO-Stuff 2017 label space and the class sets trained on it.

COCO ids: 1-91 things (80 annotated in COCO; 11 ids never used), 92-182 the 91 stuff
classes, 183 `other` (every pixel under a non-crowd thing mask, only in the stuff JSON).
COCO panoptic (`panoptic_{train,val}2017.json`) keeps the 80 things and 36 of the stuff
ids, adds 17 merged stuff classes 184-200 (e.g. 199 wall-other-merged = wall-other,
wall-concrete, wall-panel) and voids the rest. Training ids are 1..K in the order of a
class set's `coco_ids`; 0 is background.
"""

import dataclasses

import numpy as np

# (coco id, name, supercategory) for ids 1-183, as in the COCO-Stuff release.
CATEGORIES = (
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"),
    (7, "train", "vehicle"),
    (8, "truck", "vehicle"),
    (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"),
    (11, "fire hydrant", "outdoor"),
    (12, "street sign", "outdoor"),
    (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"),
    (15, "bench", "outdoor"),
    (16, "bird", "animal"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (19, "horse", "animal"),
    (20, "sheep", "animal"),
    (21, "cow", "animal"),
    (22, "elephant", "animal"),
    (23, "bear", "animal"),
    (24, "zebra", "animal"),
    (25, "giraffe", "animal"),
    (26, "hat", "accessory"),
    (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"),
    (29, "shoe", "accessory"),
    (30, "eye glasses", "accessory"),
    (31, "handbag", "accessory"),
    (32, "tie", "accessory"),
    (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"),
    (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"),
    (38, "kite", "sports"),
    (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"),
    (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"),
    (45, "plate", "kitchen"),
    (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"),
    (48, "fork", "kitchen"),
    (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"),
    (52, "banana", "food"),
    (53, "apple", "food"),
    (54, "sandwich", "food"),
    (55, "orange", "food"),
    (56, "broccoli", "food"),
    (57, "carrot", "food"),
    (58, "hot dog", "food"),
    (59, "pizza", "food"),
    (60, "donut", "food"),
    (61, "cake", "food"),
    (62, "chair", "furniture"),
    (63, "couch", "furniture"),
    (64, "potted plant", "furniture"),
    (65, "bed", "furniture"),
    (66, "mirror", "furniture"),
    (67, "dining table", "furniture"),
    (68, "window", "furniture"),
    (69, "desk", "furniture"),
    (70, "toilet", "furniture"),
    (71, "door", "furniture"),
    (72, "tv", "electronic"),
    (73, "laptop", "electronic"),
    (74, "mouse", "electronic"),
    (75, "remote", "electronic"),
    (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"),
    (79, "oven", "appliance"),
    (80, "toaster", "appliance"),
    (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"),
    (83, "blender", "appliance"),
    (84, "book", "indoor"),
    (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
    (91, "hair brush", "indoor"),
    (92, "banner", "textile"),
    (93, "blanket", "textile"),
    (94, "branch", "plant"),
    (95, "bridge", "building"),
    (96, "building-other", "building"),
    (97, "bush", "plant"),
    (98, "cabinet", "furniture-stuff"),
    (99, "cage", "structural"),
    (100, "cardboard", "raw-material"),
    (101, "carpet", "floor"),
    (102, "ceiling-other", "ceiling"),
    (103, "ceiling-tile", "ceiling"),
    (104, "cloth", "textile"),
    (105, "clothes", "textile"),
    (106, "clouds", "sky"),
    (107, "counter", "furniture-stuff"),
    (108, "cupboard", "furniture-stuff"),
    (109, "curtain", "textile"),
    (110, "desk-stuff", "furniture-stuff"),
    (111, "dirt", "ground"),
    (112, "door-stuff", "furniture-stuff"),
    (113, "fence", "structural"),
    (114, "floor-marble", "floor"),
    (115, "floor-other", "floor"),
    (116, "floor-stone", "floor"),
    (117, "floor-tile", "floor"),
    (118, "floor-wood", "floor"),
    (119, "flower", "plant"),
    (120, "fog", "water"),
    (121, "food-other", "food-stuff"),
    (122, "fruit", "food-stuff"),
    (123, "furniture-other", "furniture-stuff"),
    (124, "grass", "plant"),
    (125, "gravel", "ground"),
    (126, "ground-other", "ground"),
    (127, "hill", "solid"),
    (128, "house", "building"),
    (129, "leaves", "plant"),
    (130, "light", "furniture-stuff"),
    (131, "mat", "textile"),
    (132, "metal", "raw-material"),
    (133, "mirror-stuff", "furniture-stuff"),
    (134, "moss", "plant"),
    (135, "mountain", "solid"),
    (136, "mud", "ground"),
    (137, "napkin", "textile"),
    (138, "net", "structural"),
    (139, "paper", "raw-material"),
    (140, "pavement", "ground"),
    (141, "pillow", "textile"),
    (142, "plant-other", "plant"),
    (143, "plastic", "raw-material"),
    (144, "platform", "ground"),
    (145, "playingfield", "ground"),
    (146, "railing", "structural"),
    (147, "railroad", "ground"),
    (148, "river", "water"),
    (149, "road", "ground"),
    (150, "rock", "solid"),
    (151, "roof", "building"),
    (152, "rug", "textile"),
    (153, "salad", "food-stuff"),
    (154, "sand", "ground"),
    (155, "sea", "water"),
    (156, "shelf", "furniture-stuff"),
    (157, "sky-other", "sky"),
    (158, "skyscraper", "building"),
    (159, "snow", "ground"),
    (160, "solid-other", "solid"),
    (161, "stairs", "furniture-stuff"),
    (162, "stone", "solid"),
    (163, "straw", "plant"),
    (164, "structural-other", "structural"),
    (165, "table", "furniture-stuff"),
    (166, "tent", "building"),
    (167, "textile-other", "textile"),
    (168, "towel", "textile"),
    (169, "tree", "plant"),
    (170, "vegetable", "food-stuff"),
    (171, "wall-brick", "wall"),
    (172, "wall-concrete", "wall"),
    (173, "wall-other", "wall"),
    (174, "wall-panel", "wall"),
    (175, "wall-stone", "wall"),
    (176, "wall-tile", "wall"),
    (177, "wall-wood", "wall"),
    (178, "water-other", "water"),
    (179, "waterdrops", "water"),
    (180, "window-blind", "window"),
    (181, "window-other", "window"),
    (182, "wood", "solid"),
    (183, "other", "other"),
)

# (id, name, supercategory) of the merged stuff classes of COCO panoptic, as in
# panopticapi's panoptic_coco_categories.json.
PANOPTIC_MERGED = (
    (184, "tree-merged", "plant"),
    (185, "fence-merged", "structural"),
    (186, "ceiling-merged", "ceiling"),
    (187, "sky-other-merged", "sky"),
    (188, "cabinet-merged", "furniture-stuff"),
    (189, "table-merged", "furniture-stuff"),
    (190, "floor-other-merged", "floor"),
    (191, "pavement-merged", "ground"),
    (192, "mountain-merged", "solid"),
    (193, "grass-merged", "plant"),
    (194, "dirt-merged", "ground"),
    (195, "paper-merged", "raw-material"),
    (196, "food-other-merged", "food-stuff"),
    (197, "building-other-merged", "building"),
    (198, "rock-merged", "solid"),
    (199, "wall-other-merged", "wall"),
    (200, "rug-merged", "textile"),
)

# The COCO-Stuff ids COCO panoptic keeps as they are.
PANOPTIC_KEPT_STUFF_IDS = (
    92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145,
    147, 148, 149, 151, 154, 155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181)

# Thing ids listed by COCO-Stuff that COCO never annotated.
UNANNOTATED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

FIRST_STUFF_ID = 92
OTHER_ID = 183

_NAMES = {cid: name for cid, name, _ in CATEGORIES + PANOPTIC_MERGED}
_SUPERCATEGORIES = {cid: sup for cid, _, sup in CATEGORIES + PANOPTIC_MERGED}

THING_IDS = tuple(cid for cid in range(1, FIRST_STUFF_ID) if cid not in UNANNOTATED_THING_IDS)
STUFF_IDS = tuple(range(FIRST_STUFF_ID, OTHER_ID))
PANOPTIC_STUFF_IDS = PANOPTIC_KEPT_STUFF_IDS + tuple(c for c, _, _ in PANOPTIC_MERGED)


def is_known(coco_id: int) -> bool:
  """Whether `coco_id` is one of the 183 COCO-Stuff ids or a merged panoptic one (184-200)."""
  return coco_id in _NAMES


@dataclasses.dataclass(frozen=True)
class ClassSet:
  """The classes one model is trained on: training id `i + 1` is `coco_ids[i]`."""

  name: str
  coco_ids: tuple[int, ...]
  names: tuple[str, ...]
  supercategories: tuple[str, ...]
  _train_ids: dict[int, int] = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "_train_ids", {cid: i + 1 for i, cid in enumerate(self.coco_ids)})

  @property
  def num_classes(self) -> int:
    """K, the number of classes without background."""
    return len(self.coco_ids)

  def contains(self, coco_id: int) -> bool:
    return coco_id in self._train_ids

  def to_train_id(self, coco_id: int) -> int:
    """COCO id -> training id in [1, K]; raises KeyError for ids outside the set."""
    try:
      return self._train_ids[coco_id]
    except KeyError:
      raise KeyError(f"COCO id {coco_id} is not in class set {self.name!r}") from None

  def to_coco_id(self, train_id: int) -> int:
    """Training id in [1, K] -> COCO id."""
    if not 1 <= train_id <= self.num_classes:
      raise ValueError(f"training id {train_id} outside [1, {self.num_classes}] of {self.name!r}")
    return self.coco_ids[train_id - 1]

  def coco_id_lut(self) -> np.ndarray:
    """[K + 1] int32: training id -> COCO id (index 0, background, maps to 0)."""
    return np.array((0,) + self.coco_ids, np.int32)


def _class_set(name: str, coco_ids) -> ClassSet:
  coco_ids = tuple(coco_ids)
  return ClassSet(
      name=name,
      coco_ids=coco_ids,
      names=tuple(_NAMES[c] for c in coco_ids),
      supercategories=tuple(_SUPERCATEGORIES[c] for c in coco_ids),
  )


_CLASS_SETS = {
    "coco": THING_IDS,
    "stuff": STUFF_IDS + (OTHER_ID,),
    "stuff_no_other": STUFF_IDS,
    "things_and_stuff": THING_IDS + STUFF_IDS,
    "panoptic": THING_IDS + PANOPTIC_STUFF_IDS,
}
CLASS_SET_NAMES = tuple(_CLASS_SETS)


def get_class_set(name: str) -> ClassSet:
  """The class set `name`: coco (the 80 things, ids 1-90), stuff (92-183), stuff_no_other
  (92-182), things_and_stuff (the 80 things, then 92-182), panoptic (the 133 categories of
  COCO panoptic in its order: the 80 things, then the 53 stuff ids up to 200)."""
  if name not in _CLASS_SETS:
    raise ValueError(f"unknown class set {name!r}; allowed: {', '.join(CLASS_SET_NAMES)}")
  return _class_set(name, _CLASS_SETS[name])


def coco_json_categories(coco_ids) -> list[dict]:
  """The `categories` list of a COCO JSON for `coco_ids`: [{id, name, supercategory}]."""
  return [{"id": c, "name": _NAMES[c], "supercategory": _SUPERCATEGORIES[c]} for c in coco_ids]
