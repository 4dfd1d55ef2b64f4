"""Regenerates tests/evaluation/goldens/panopticapi_pq.json with panopticapi's `pq_compute`.

  git clone https://github.com/cocodataset/panopticapi /tmp/panopticapi
  git -C /tmp/panopticapi checkout 7bb4655548f98f3fedc07bf37e9040a992b054b0  # The golden's.
  PYTHONPATH=. .venv/bin/python tests/evaluation/panopticapi_ref.py \
      --panopticapi=/tmp/panopticapi --python=.venv-torch/bin/python

A source tree without .git records its commit from PANOPTICAPI_COMMIT. panopticapi is no
dependency: it runs from its source tree in another Python (`--python`, which needs numpy
and Pillow only), on files this script writes with the project's evaluation.

The predictions: `Evaluator` with the class set `panoptic` and the default
`eval.panoptic` thresholds, on the two real val2017 samples of
../shared/coco_samples/panoptic_val2017, gets `detections` (GT segments made into 28 x 28
box masks, perturbed below), and writes them in the COCO panoptic format
(`official_export`: panoptic.json + panoptic/*.png). panopticapi's `pq_compute` scores these
files against the official GT files; the golden holds its results, the SHA-256 of the
scored files and the provenance. tests/evaluation/test_panoptic_coco.py makes the same
files and checks the project's PQ against the golden.
"""

import argparse
import hashlib
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile

import numpy as np

from maskrcnn_jax.data import categories
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import panoptic
from maskrcnn_jax.evaluation import panoptic_coco

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "coco_samples"
ANNOTATIONS = SAMPLES / "panoptic_val2017" / "annotations"
GT_JSON, GT_DIR = ANNOTATIONS / "panoptic_val2017.json", ANNOTATIONS / "panoptic_val2017"
GOLDEN = Path(__file__).parent / "goldens" / "panopticapi_pq.json"
MASK_SIDE, SCALE = 28, 0.75


def detections(coco_gt):
  """(batch, detections) of the GT's images for `Evaluator.add`: each GT segment (crowd
  ones too) a detection, its mask cropped to its box at 28 x 28, then perturbed: scores
  from a fixed RNG (some under the 0.5 of a thing segment), every 4th segment dropped,
  every 7th given the next category, every 5th box shifted by 1/5 of its size, one made-up
  dog per image."""
  cs = categories.get_class_set("panoptic")
  rng = np.random.default_rng(0)
  image_ids = sorted(coco_gt.imgs)
  per_image = []
  for image_id in image_ids:
    dets = []
    for k, ann in enumerate(coco_gt.imgToAnns[image_id]):
      if k % 4 == 3:
        continue
      x, y, w, h = ann["bbox"]
      box = np.array([x, y, x + w, y + h], np.float32)
      mask = coco_reader.crop_mask(coco_gt.annToMask(ann), box, MASK_SIDE)
      if k % 5 == 2:
        box += np.array([w, h, w, h], np.float32) / 5
      train_id = cs.to_train_id(ann["category_id"])
      if k % 7 == 5:
        train_id = train_id % cs.num_classes + 1
      dets.append((box, float(rng.uniform(0.3, 1.0)), train_id, mask.astype(np.float32)))
    dets.append((np.array([10, 20, 110, 140], np.float32), 0.8, cs.to_train_id(18),
                 np.ones((MASK_SIDE, MASK_SIDE), np.float32)))
    per_image.append(dets)
  n, d = len(image_ids), max(map(len, per_image))
  side = int(np.ceil(SCALE * max(max(i["height"], i["width"]) for i in coco_gt.imgs.values())))
  batch = dict(image=np.zeros((n, side, side, 3), np.uint8),
               image_id=np.array(image_ids, np.int64), image_info=np.zeros((n, 5), np.float32))
  out = dict(boxes=np.zeros((n, d, 4), np.float32), scores=np.zeros((n, d), np.float32),
             classes=np.ones((n, d), np.int32),
             masks=np.zeros((n, d, MASK_SIDE, MASK_SIDE), np.float32),
             valid=np.zeros((n, d), bool))
  for b, (image_id, dets) in enumerate(zip(image_ids, per_image)):
    h, w = coco_gt.imgs[image_id]["height"], coco_gt.imgs[image_id]["width"]
    batch["image_info"][b] = (h, w, SCALE, round(h * SCALE), round(w * SCALE))
    for i, (box, score, train_id, mask) in enumerate(dets):
      out["boxes"][b, i], out["scores"][b, i] = box * SCALE, score
      out["classes"][b, i], out["masks"][b, i], out["valid"][b, i] = train_id, mask, True
  return batch, out


def evaluate(out_dir) -> dict[str, float]:
  """The project's metrics of `detections`; the consumers' files (the official formats)
  written to `out_dir` (`Evaluator.write` without its tables and pictures)."""
  class_set = categories.get_class_set("panoptic")
  ev = evaluator_lib.Evaluator([str(GT_JSON)], class_set, num_pictures=0,
                               official_export=True)
  gt = panoptic_coco.GroundTruth([str(GT_JSON)], class_set)  # Its own: `ev` loads as it adds.
  gt.load(sorted(gt.coco.imgs))
  ev.add(*detections(gt.coco))
  for consumer in ev.consumers:
    consumer.write(out_dir)
  return ev.result()


def predictions_sha256(out_dir) -> str:
  """SHA-256 of panoptic.json and the segment ids of the PNGs of panoptic/ (not their
  bytes, which depend on the zlib)."""
  out_dir = Path(out_dir)
  digest = hashlib.sha256((out_dir / "panoptic.json").read_bytes())
  for path in sorted((out_dir / "panoptic").iterdir()):
    digest.update(path.name.encode() + panoptic.read_png(path).astype("<i8").tobytes())
  return digest.hexdigest()


_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from panopticapi.evaluation import pq_compute
results = pq_compute(*sys.argv[2:6])
with open(sys.argv[6], "w") as f:
  json.dump(results, f)
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--panopticapi", required=True, help="panopticapi source tree")
  parser.add_argument("--python", required=True, help="a Python with numpy and Pillow")
  args = parser.parse_args()
  src, python = Path(args.panopticapi).absolute(), str(Path(args.python).absolute())
  commit = os.environ.get("PANOPTICAPI_COMMIT") or subprocess.run(
      ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
      check=True).stdout.strip()
  with tempfile.TemporaryDirectory() as tmp:
    ours = evaluate(tmp)
    scored = Path(tmp) / "pq.json"
    subprocess.run([python, "-c", _RUN, str(src), str(GT_JSON),
                    str(Path(tmp) / "panoptic.json"), str(GT_DIR), str(Path(tmp) / "panoptic"),
                    str(scored)], check=True, cwd=tmp)
    golden = dict(
        provenance=dict(
            tool="panopticapi.evaluation.pq_compute", repository="cocodataset/panopticapi",
            commit=commit, script="tests/evaluation/panopticapi_ref.py",
            gt="../shared/coco_samples/panoptic_val2017 (panopticapi sample_data)",
            python=subprocess.run([python, "--version"], capture_output=True,
                                  text=True, check=True).stdout.strip()),
        predictions_sha256=predictions_sha256(tmp),
        results=json.loads(scored.read_text()))
  GOLDEN.parent.mkdir(exist_ok=True)
  GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
  print(f"{GOLDEN}: panopticapi PQ {golden['results']['All']['pq']:.6f}, "
        f"the project's {ours['panoptic_coco/PQ']:.6f}")


if __name__ == "__main__":
  sys.exit(main())
