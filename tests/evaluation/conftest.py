"""Tiny COCO-Stuff-format ground truth and matching detections for the evaluation tests."""

import json

import numpy as np
from pycocotools import mask as mask_utils
import pytest

from maskrcnn_jax.data import categories

MASK_SIZE = 28


# Per image: (id, height, width, [(coco id, (x1, y1, x2, y2)) disjoint rectangles]).
# Pixels outside every rectangle are unlabeled.
IMAGES = (
    (7, 40, 60, [(149, (0, 20, 60, 40)), (157, (0, 0, 40, 12)), (183, (40, 0, 60, 20))]),
    (9, 50, 30, [(169, (0, 0, 30, 25)), (149, (0, 30, 30, 50)), (183, (5, 25, 15, 30))]),
)


def rect_mask(height: int, width: int, box) -> np.ndarray:
  x1, y1, x2, y2 = box
  mask = np.zeros((height, width), bool)
  mask[y1:y2, x1:x2] = True
  return mask


def coco_json(images, anns, coco_ids) -> dict:
  return dict(images=[dict(id=i, height=h, width=w, file_name=f"{i:012d}.jpg")
                      for i, h, w in images],
              annotations=anns, categories=categories.coco_json_categories(coco_ids))


def rle_annotation(ann_id: int, image_id: int, coco_id: int, mask: np.ndarray,
                   iscrowd: int = 0) -> dict:
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle["counts"] = rle["counts"].decode("ascii")
  return dict(id=ann_id, image_id=image_id, category_id=coco_id, segmentation=rle,
              area=float(mask_utils.area(rle)), bbox=list(mask_utils.toBbox(rle)),
              iscrowd=iscrowd)


@pytest.fixture
def stuff_json(tmp_path) -> str:
  """A stuff JSON (ids 92-183) for IMAGES; annotation ids from 2e7 as the real one."""
  anns = []
  for image_id, h, w, regions in IMAGES:
    for coco_id, box in regions:
      anns.append(rle_annotation(20_000_000 + len(anns), image_id, coco_id,
                                 rect_mask(h, w, box)))
  path = tmp_path / "stuff.json"
  path.write_text(json.dumps(coco_json([i[:3] for i in IMAGES], anns,
                                       range(92, 184))))
  return str(path)


@pytest.fixture
def instances_json(tmp_path) -> str:
  """An instances JSON: a polygon person on image 7's `other` region and a crowd car."""
  person = dict(id=1, image_id=7, category_id=1, iscrowd=0, area=200.0,
                bbox=[40, 0, 20, 10],
                segmentation=[[40.0, 0.0, 60.0, 0.0, 60.0, 10.0, 40.0, 10.0]])
  crowd = rle_annotation(2, 9, 3, rect_mask(50, 30, (5, 25, 15, 30)), iscrowd=1)
  path = tmp_path / "instances.json"
  path.write_text(json.dumps(coco_json([i[:3] for i in IMAGES], [person, crowd],
                                       categories.THING_IDS)))
  return str(path)


def perfect_batch(class_set, *, scale: float = 1.6, side: int = 128,
                  num_detections: int = 6, pad_images: int = 1):
  """A batch of IMAGES (plus `pad_images` padding images) and detections equal to the GT.

  Rectangular GT regions pasted from all-ones 28 x 28 masks are reproduced exactly, so
  AP and mIoU are 1. Scores decrease with the detection index.
  """
  n = len(IMAGES) + pad_images
  batch = dict(image=np.random.default_rng(0).integers(0, 255, (n, side, side, 3), np.uint8),
               image_id=np.zeros(n, np.int32), image_info=np.zeros((n, 5), np.float32),
               image_valid=np.zeros(n, bool))
  dets = dict(boxes=np.zeros((n, num_detections, 4), np.float32),
              scores=np.zeros((n, num_detections), np.float32),
              classes=np.ones((n, num_detections), np.int32),
              masks=np.zeros((n, num_detections, MASK_SIZE, MASK_SIZE), np.float32),
              valid=np.zeros((n, num_detections), bool),
              num_detections=np.zeros(n, np.int32))
  batch["image_id"][len(IMAGES):] = 12345  # Padding: not in the GT, must be skipped.
  batch["image_info"][len(IMAGES):] = (10, 10, 1, 10, 10)
  for b, (image_id, h, w, regions) in enumerate(IMAGES):
    batch["image_id"][b] = image_id
    batch["image_info"][b] = (h, w, scale, round(h * scale), round(w * scale))
    batch["image_valid"][b] = True
    regions = [r for r in regions if class_set.contains(r[0])]
    for d, (coco_id, box) in enumerate(regions):
      dets["boxes"][b, d] = np.asarray(box, np.float32) * scale
      dets["scores"][b, d] = 0.9 - 0.1 * d
      dets["classes"][b, d] = class_set.to_train_id(coco_id)
      dets["masks"][b, d] = 1.0
      dets["valid"][b, d] = True
    dets["num_detections"][b] = len(regions)
  dets["proposals"] = np.tile(np.array([[4, 4, 60, 50], [10, 20, 30, 90]], np.float32),
                              (n, 5, 1))
  dets["proposal_scores"] = np.tile(np.linspace(1, 0.1, 10, dtype=np.float32), (n, 1))
  dets["proposal_valid"] = np.ones((n, 10), bool)
  return batch, dets


@pytest.fixture
def make_perfect_batch():
  return perfect_batch
