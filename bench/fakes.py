"""Fake evaluation inputs: stuff ground truth of random regions, random detections.

The workload of `bench.evaluation`, which the evaluation tests score too: kept with the
benchmarks, which import nothing from tests/, and out of the package, whose users never need
them.
"""

import json

from etils import epath
import numpy as np

from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval


def fake_ground_truth(path: str, num_images: int, height: int, width: int, class_set,
                      rng) -> None:
  """A COCO JSON: per image a 3 × 3 grid of rectangles of random classes (some unlabeled)."""
  anns = []
  rows, cols = np.linspace(0, height, 4).astype(int), np.linspace(0, width, 4).astype(int)
  for image_id in range(1, num_images + 1):
    label = np.zeros((height, width), np.int64)
    for i in range(3):
      for j in range(3):
        if rng.uniform() < 0.9:
          label[rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = rng.choice(class_set.coco_ids)
    for coco_id in np.unique(label[label > 0]):
      rle = coco_eval.encode_masks((label == coco_id)[None])[0]
      anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=int(coco_id),
                       segmentation=rle, area=float((label == coco_id).sum()),
                       bbox=[0, 0, width, height], iscrowd=0))
  images = [dict(id=i, height=height, width=width) for i in range(1, num_images + 1)]
  epath.Path(path).write_text(json.dumps(dict(
      images=images, annotations=anns,
      categories=categories.coco_json_categories(class_set.coco_ids))))


def blob_masks(rng, shape: tuple[int, ...], m: int = 28) -> np.ndarray:
  """[*shape, m, m] float32 smooth mask probabilities: blobs as a mask head predicts."""
  g = np.linspace(-1, 1, m)
  centre = rng.uniform(-0.4, 0.4, shape + (2, 1, 1))
  width = rng.uniform(0.15, 0.8, shape + (1, 1))
  d2 = (g[:, None] - centre[..., 0, :, :]) ** 2 + (g[None] - centre[..., 1, :, :]) ** 2
  return np.exp(-d2 / width).astype(np.float32)


def fake_batch(image_ids, height: int, width: int, scale: float, num_detections: int,
               num_classes: int, rng):
  """A batch of images with random detections (all valid) and proposals."""
  b, d = len(image_ids), num_detections
  size = int(np.ceil(max(height, width) * scale / 64) * 64)
  extent = np.array([width, height], np.float64) * scale
  xy = rng.uniform(0, 0.8, (b, d, 2)) * extent
  wh = rng.uniform(0.03, 0.5, (b, d, 2)) * extent
  boxes = np.concatenate([xy, np.minimum(xy + wh, extent)], -1).astype(np.float32)
  info = [height, width, scale, round(height * scale), round(width * scale)]
  batch = dict(image=rng.integers(0, 255, (b, size, size, 3), np.uint8),
               image_id=np.asarray(image_ids, np.int32),
               image_info=np.tile(np.array(info, np.float32), (b, 1)),
               image_valid=np.ones(b, bool))
  dets = dict(boxes=boxes, scores=rng.uniform(0.05, 1, (b, d)).astype(np.float32),
              classes=rng.integers(1, num_classes + 1, (b, d)).astype(np.int32),
              masks=blob_masks(rng, (b, d)),
              valid=np.ones((b, d), bool), num_detections=np.full(b, d, np.int32),
              proposals=np.tile(boxes, (1, 5, 1)),
              proposal_scores=rng.uniform(size=(b, 5 * d)).astype(np.float32),
              proposal_valid=np.ones((b, 5 * d), bool))
  return batch, dets
