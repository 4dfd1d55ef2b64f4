"""Done means: a converted torchvision R50-FPN through `main.py --mode=predict` detects what
torchvision detects on the same images.

torchvision's `maskrcnn_resnet50_fpn` with seeded random weights (calibrated FrozenBN;
predict_parity_ref.py, in the torch venv) is saved as a state dict, converted with
`maskrcnn_jax.weights.convert_torchvision` and run by main.py with
configs/torchvision_r50_fpn.py and the class set `coco`, on a folder of a 4:3 (360 x 480)
and a 3:4 (480 x 360) image cut from the real val2017 images of the shared samples
(synthetic ones where those are absent). Both sides resize them as the config does, shortest
edge, with both limits scaled down and both at work (the shorter side to 130 would make the
longer 173, above 160: the scale is exactly 1/3, where both bilinear resizes pick the same
pixels), pad them to 192 x 192 and report boxes in original pixels. Every one of
torchvision's top 20 detections per image must have a match among ours of the same class
with box IoU >= 0.9 and a score within 1e-3 (measured: IoU >= 0.9996, scores within 3e-5).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax.data import synthetic
from maskrcnn_jax.weights import convert_torchvision

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF = "tests/predict_parity_ref.py"
SAMPLES = ROOT.parent / "shared" / "coco_samples" / "panoptic_val2017" / "images" / "val2017"
MIN_SIZE, MAX_SIZE, CANVAS = 130, 160, 192
SIZES = ((360, 480), (480, 360))
TOP = 20


def iou(a, b):
  """IoU of xywh box a [4] with xywh boxes b [N, 4]."""
  lo = np.maximum(a[:2], b[:, :2])
  hi = np.minimum(a[:2] + a[2:], b[:, :2] + b[:, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  return inter / (np.prod(a[2:]) + np.prod(b[:, 2:], -1) - inter)


@pytest.fixture
def images(tmp_path):
  sources = sorted(SAMPLES.glob("*.jpg"))[:2]
  if sources:  # 4:3 from the first (427 x 640), 3:4 from the second turned (640 x 360).
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in sources]
    pixels[1] = np.ascontiguousarray(np.rot90(pixels[1]))
    names = [p.stem for p in sources]
  else:  # No shared samples (CI): synthetic images.
    pixels, names = [], []
    for i, size in enumerate(SIZES):
      synthetic.write_synthetic(tmp_path / f"synthetic{i}", num_train=1, num_val=1,
                                image_size=size, seed=i)
      pixels.append(np.asarray(Image.open(next((tmp_path / f"synthetic{i}" / "val2017")
                                               .glob("*.jpg")))))
      names.append(str(i + 1))
  folder = tmp_path / "images"
  folder.mkdir()
  for image, name, (h, w) in zip(pixels, names, SIZES):
    Image.fromarray(image[:h, :w]).save(folder / f"{name}.png")
  return sorted(folder.glob("*.png"))


@pytest.mark.slow
def test_predict_matches_torchvision(images, tmp_path, torch_reference):
  ref = torch_reference(REF, seed=0, min_size=MIN_SIZE, max_size=MAX_SIZE,
                        size_divisible=CANVAS, images=[str(p) for p in images])
  np.savez(tmp_path / "tv.npz", **{k[6:]: v for k, v in ref.items() if k.startswith("state/")})
  convert_torchvision.convert_file(str(tmp_path / "tv.npz"), str(tmp_path / "tv"))
  workdir = tmp_path / "run"
  # Optimised: R50's forward compiles and runs in half the time.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_DISABLE_MOST_OPTIMIZATIONS="0")
  subprocess.run([sys.executable, "main.py", "--config", "configs/torchvision_r50_fpn.py",
                  "--mode=predict", f"--workdir={workdir}",
                  f"--config.predict.input_dir={images[0].parent}",
                  f"--config.init.checkpoint={tmp_path / 'tv'}",
                  f"--config.data.min_size={MIN_SIZE}", f"--config.data.max_size={MAX_SIZE}"],
                 cwd=ROOT, env=env, check=True, capture_output=True, timeout=1200)
  results = json.loads((workdir / "predict" / "coco_results.json").read_text())
  for i, path in enumerate(images):
    ours = sorted((r for r in results if r["image_id"] == int(path.stem)),
                  key=lambda r: -r["score"])
    boxes = np.array([r["bbox"] for r in ours])
    scores = np.array([r["score"] for r in ours])
    classes = np.array([r["category_id"] for r in ours])
    assert len(ref[f"{i}/boxes"]) >= TOP, (path.name, len(ref[f"{i}/boxes"]))  # Detections.
    theirs = ref[f"{i}/boxes"][:TOP]
    theirs = np.concatenate([theirs[:, :2], theirs[:, 2:] - theirs[:, :2]], -1)  # xywh
    worst_iou, worst_score = 1.0, 0.0
    for box, score, label in zip(theirs, ref[f"{i}/scores"][:TOP], ref[f"{i}/labels"][:TOP]):
      overlap = iou(box, boxes)
      match = (classes == label) & (overlap >= 0.9) & (np.abs(scores - score) <= 1e-3)
      assert match.any(), (path.name, label, score, box)
      best = np.flatnonzero(match)[np.argmax(overlap[match])]
      worst_iou = min(worst_iou, overlap[best])
      worst_score = max(worst_score, abs(scores[best] - score))
    print(f"{path.name}: top {TOP} matched, min IoU {worst_iou:.4f}, "
          f"max score diff {worst_score:.2e}")
