"""Host-side evaluation speed with fake detections.

  python -m maskrcnn_jax.evaluation.benchmark --num_images=500 --out_dir=/tmp/eval_bench

Writes a stuff JSON of random rectangular regions, feeds `Evaluator` batches of random
detections (random boxes, 28 × 28 mask probabilities, scores, classes) and logs the time
of `add`, `result` and `write`.
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import evaluator as evaluator_lib

_NUM_IMAGES = flags.DEFINE_integer("num_images", 500, "Evaluated images.")
_SIZE = flags.DEFINE_integer("size", 256, "Image side (original and padded).")
_DETECTIONS = flags.DEFINE_integer("detections", 20, "Valid detections per image.")
_BATCH = flags.DEFINE_integer("batch", 4, "Images per batch.")
_PICTURES = flags.DEFINE_integer("num_pictures", 8, "Images drawn by write().")
_CLASS_SET = flags.DEFINE_string("class_set", "stuff", "Class set.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/eval_bench", "Where files are written.")


def fake_ground_truth(path: str, num_images: int, size: int, class_set, rng) -> None:
  """A COCO JSON: per image a 3 × 3 grid of rectangles of random classes (some unlabeled)."""
  anns, cuts = [], np.linspace(0, size, 4).astype(int)
  for image_id in range(1, num_images + 1):
    label = np.zeros((size, size), np.int64)
    for i in range(3):
      for j in range(3):
        if rng.uniform() < 0.9:
          label[cuts[i]:cuts[i + 1], cuts[j]:cuts[j + 1]] = rng.choice(class_set.coco_ids)
    for coco_id in np.unique(label[label > 0]):
      rle = coco_eval.encode_masks((label == coco_id)[None])[0]
      anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=int(coco_id),
                       segmentation=rle, area=float((label == coco_id).sum()),
                       bbox=[0, 0, size, size], iscrowd=0))
  images = [dict(id=i, height=size, width=size) for i in range(1, num_images + 1)]
  with open(path, "w") as f:
    json.dump(dict(images=images, annotations=anns,
                   categories=categories.coco_json_categories(class_set.coco_ids)), f)


def fake_batch(image_ids, size: int, num_detections: int, num_classes: int, rng):
  """A batch of images with random detections (all valid) and proposals."""
  b, d = len(image_ids), num_detections
  xy = rng.uniform(0, size * 0.7, (b, d, 2))
  wh = rng.uniform(8, size * 0.5, (b, d, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, size)], -1).astype(np.float32)
  batch = dict(image=rng.integers(0, 255, (b, size, size, 3), np.uint8),
               image_id=np.asarray(image_ids, np.int32),
               image_info=np.tile(np.array([size, size, 1, size, size], np.float32), (b, 1)),
               image_valid=np.ones(b, bool))
  dets = dict(boxes=boxes, scores=rng.uniform(0.05, 1, (b, d)).astype(np.float32),
              classes=rng.integers(1, num_classes + 1, (b, d)).astype(np.int32),
              masks=rng.uniform(0, 1, (b, d, 28, 28)).astype(np.float32),
              valid=np.ones((b, d), bool), num_detections=np.full(b, d, np.int32),
              proposals=np.tile(boxes, (1, 5, 1)),
              proposal_scores=rng.uniform(size=(b, 5 * d)).astype(np.float32),
              proposal_valid=np.ones((b, 5 * d), bool))
  return batch, dets


def run(num_images: int, size: int, num_detections: int, batch_size: int,
        class_set_name: str, out_dir: str, num_pictures: int = 8) -> dict[str, float]:
  """Times the evaluator; returns seconds of `load`, `add`, `result`, `write`."""
  rng = np.random.default_rng(0)
  class_set = categories.get_class_set(class_set_name)
  os.makedirs(out_dir, exist_ok=True)
  gt_path = os.path.join(out_dir, "gt.json")
  fake_ground_truth(gt_path, num_images, size, class_set, rng)
  batches = [fake_batch(range(s + 1, min(s + batch_size, num_images) + 1), size,
                        num_detections, class_set.num_classes, rng)
             for s in range(0, num_images, batch_size)]
  times = {}
  t = time.perf_counter()
  ev = evaluator_lib.Evaluator([gt_path], class_set, num_pictures=num_pictures)
  times["load"] = time.perf_counter() - t
  t = time.perf_counter()
  for batch, dets in batches:
    ev.add(batch, dets)
  times["add"] = time.perf_counter() - t
  t = time.perf_counter()
  ev.result()
  times["result"] = time.perf_counter() - t
  t = time.perf_counter()
  ev.write(os.path.join(out_dir, "eval"))
  times["write"] = time.perf_counter() - t
  return times


def main(argv):
  del argv
  times = run(_NUM_IMAGES.value, _SIZE.value, _DETECTIONS.value, _BATCH.value,
              _CLASS_SET.value, _OUT_DIR.value, _PICTURES.value)
  logging.info("Evaluation of %d images (%d², %d detections): %s; total %.1f s",
               _NUM_IMAGES.value, _SIZE.value, _DETECTIONS.value,
               ", ".join(f"{k} {v:.2f} s" for k, v in times.items()), sum(times.values()))


if __name__ == "__main__":
  app.run(main)
