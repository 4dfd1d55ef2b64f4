"""Evaluation speed with fake detections: host pasting (before) against device pasting.

  python -m maskrcnn_jax.evaluation.benchmark --num_images=100 --height=480 --width=640 \
      --detections=100 --out_dir=/tmp/eval_bench

Writes a stuff JSON of random rectangular regions and batches of random detections
(random boxes, smooth 28 × 28 mask probabilities, scores, classes), then times, on the same
detections:
  before  `Evaluator.add` pasting on the host: per image `paste`, `encode` (RLE) and the
          rest (`metrics`: painting, confusion, per-image precision/recall);
  after   `masks.paste_batch_device` jitted (`device`: on this machine's jax backend) and
          `Evaluator.add` of its output: per image `rle` (transitions → RLE) and the rest;
  and `result` (COCOeval with each backend) and `write`. Logs seconds per image, the
  after/before ratios and images/s of a whole evaluation (model forward excluded).
"""

import json
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import masks as masks_lib

_NUM_IMAGES = flags.DEFINE_integer("num_images", 100, "Evaluated images.")
_HEIGHT = flags.DEFINE_integer("height", 480, "Original image height.")
_WIDTH = flags.DEFINE_integer("width", 640, "Original image width.")
_SCALE = flags.DEFINE_float("scale", 1.6, "Padded-image pixels per original pixel.")
_DETECTIONS = flags.DEFINE_integer("detections", 100, "Valid detections per image.")
_BATCH = flags.DEFINE_integer("batch", 4, "Images per batch.")
_PICTURES = flags.DEFINE_integer("num_pictures", 0, "Images drawn by write().")
_CLASS_SET = flags.DEFINE_string("class_set", "stuff", "Class set.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/eval_bench", "Where files are written.")


DISTINCT_BATCHES = 3


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


def _timed(fn, *args, clock=time.process_time, **kwargs):
  t = clock()
  out = fn(*args, **kwargs)
  return out, clock() - t


def run(num_images: int, height: int, width: int, num_detections: int, batch_size: int,
        class_set_name: str, out_dir: str, *, scale: float = 1.6, num_pictures: int = 0
        ) -> dict[str, float]:
  """Times both paths on the same detections; returns seconds (keys in the module doc)."""
  rng = np.random.default_rng(0)
  class_set = categories.get_class_set(class_set_name)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  gt_path = str(epath.Path(out_dir) / "gt.json")
  fake_ground_truth(gt_path, num_images, height, width, class_set, rng)
  # A few distinct batches of detections, repeated with new image ids: the device pastes
  # each distinct one once (its output depends on the detections only).
  distinct = [fake_batch(range(batch_size), height, width, scale, num_detections,
                         class_set.num_classes, rng) for _ in range(DISTINCT_BATCHES)]
  batches = []
  for j, s in enumerate(range(0, num_images, batch_size)):
    batch, dets = distinct[j % DISTINCT_BATCHES]
    ids = np.arange(s + 1, s + batch_size + 1, dtype=np.int32)
    batches.append((dict(batch, image_id=ids, image_valid=ids <= num_images), dets))
  times = {}
  ev, times["load"] = _timed(evaluator_lib.Evaluator, [gt_path], class_set,
                             num_pictures=num_pictures)

  times["gt"] = sum(_timed(ev.ground_truth_flat, i)[1] for i in ev.coco_gt.imgs)

  # Before: per batch the parts of host pasting, then the whole `add` (interleaved: the
  # same load on a shared machine).
  for k in ("before/paste", "before/encode", "before/add"):
    times[k] = 0.0
  for batch, dets in batches:
    for b in np.flatnonzero(batch["image_valid"]):
      image_dets, t = _timed(evaluator_lib.image_detections, dets, b, batch["image_info"][b])
      times["before/paste"] += t
      times["before/encode"] += _timed(coco_eval.encode_masks, image_dets["masks"])[1]
    times["before/add"] += _timed(ev.add, batch, dets)[1]
  ev.coco_backend = "faster_coco_eval"
  before = ev.result()

  # After: device pasting, then `add` of its output.
  frame = ev.frame_size()
  paste = jax.jit(lambda d, i: masks_lib.paste_batch_device(
      d, i, frame=frame, capacity=masks_lib.RLE_CAPACITY_PER_SIDE * frame, threshold=0.5,
      fill=ev.fill))
  keys = ("boxes", "scores", "classes", "masks", "valid")
  pasted = []
  for batch, dets in distinct:
    out, t = _timed(lambda d, i: jax.device_get(paste(d, i)),
                    {k: dets[k] for k in keys}, batch["image_info"], clock=time.perf_counter)
    pasted.append({**dets, **out})
  times["device"] = t / batch_size * num_images  # The last batch's: compiled and warm.
  pasted = [pasted[j % DISTINCT_BATCHES] for j in range(len(batches))]
  ev.reset()
  times["after/rle"] = times["after/add"] = 0.0
  for (batch, _), dets in zip(batches, pasted):
    for b in np.flatnonzero(batch["image_valid"]):
      times["after/rle"] += _timed(evaluator_lib.pasted_image_detections, dets, b,
                                   batch["image_info"][b])[1]
    times["after/add"] += _timed(ev.add, batch, dets)[1]
  for backend in coco_eval.BACKENDS:
    ev.coco_backend = backend
    after, times[f"result/{backend}"] = _timed(ev.result)
  times["write"] = _timed(ev.write, str(epath.Path(out_dir) / "eval"))[1]
  for k, v in before.items():  # The same numbers (up to a pixel at mask boundaries).
    if not np.isclose(v, after[k], atol=1e-3, equal_nan=True):
      logging.warning("%s: %.6f before, %.6f after", k, v, after[k])
  return times


def summary(times: dict[str, float], num_images: int) -> str:
  """A before/after table in ms per image, ratios and images/s of the host's work."""
  ms = {k: v / num_images * 1e3 for k, v in times.items()}
  rest_before = ms["before/add"] - ms["before/paste"] - ms["before/encode"]
  rest_after = ms["after/add"] - ms["after/rle"]
  rows = [  # (part, before, after)
      ("paste", ms["before/paste"], 0.0),
      ("encode (RLE)", ms["before/encode"], ms["after/rle"]),
      ("metrics: GT label maps", ms["gt"], 0.0),
      ("metrics: painting, confusion, P/R", rest_before, rest_after),
      ("metrics: COCOeval pycocotools", ms["result/pycocotools"], ms["result/pycocotools"]),
      ("write", ms["write"], ms["write"]),
  ]
  before = sum(r[1] for r in rows)
  after = sum(r[2] for r in rows)
  faster = after - ms["result/pycocotools"] + ms["result/faster_coco_eval"]
  lines = [f"{'host CPU ms/image':36s} {'before':>9s} {'after':>9s}"]
  lines += [f"{name:36s} {b:9.2f} {a:9.2f}" for name, b, a in rows]
  lines += [
      f"{'total':36s} {before:9.2f} {after:9.2f}",
      f"{'total, COCOeval faster_coco_eval':36s} {'':9s} {faster:9.2f}",
      f"host images/s: before {1e3 / before:.1f}, after {1e3 / after:.1f} (pycocotools), "
      f"{1e3 / faster:.1f} (faster_coco_eval); after/before {after / before:.3f}",
      f"device pasting on {jax.default_backend()}: {ms['device']:.1f} ms/image (wall)",
      "after: GT label maps decoded in an earlier evaluation of the run; model forward "
      "not included"]
  return "\n".join(lines)


def main(argv):
  del argv
  times = run(_NUM_IMAGES.value, _HEIGHT.value, _WIDTH.value, _DETECTIONS.value,
              _BATCH.value, _CLASS_SET.value, _OUT_DIR.value, scale=_SCALE.value,
              num_pictures=_PICTURES.value)
  print(f"Evaluation of {_NUM_IMAGES.value} images ({_HEIGHT.value}x{_WIDTH.value}, "
        f"{_DETECTIONS.value} detections):\n{summary(times, _NUM_IMAGES.value)}")
  print(json.dumps(times))


if __name__ == "__main__":
  app.run(main)
