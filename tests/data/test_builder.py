"""The resumable, memory-bounded build: records equal for any bound, a SIGKILLed build
resumed to the same bytes, stale temp folders removed."""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import pytest

from maskrcnn_jax.data import builder

ROOT = pathlib.Path(__file__).resolve().parents[2]
SIDE, NUM_IMAGES = 192, 480


@pytest.fixture(scope="module")
def noise_root(tmp_path_factory) -> pathlib.Path:
  """480 train images of 192² noise (33 KB of JPEG each, 16 MB in all), one stuff
  annotation each."""
  root = tmp_path_factory.mktemp("noise")
  (root / "train2017").mkdir()
  (root / "annotations").mkdir()
  out = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3), np.uint8)).save(
      out, format="JPEG", quality=90)
  images, anns = [], []
  for i in range(1, NUM_IMAGES + 1):
    (root / "train2017" / f"{i:012d}.jpg").write_bytes(out.getvalue())
    images.append(dict(id=i, file_name=f"{i:012d}.jpg", height=SIDE, width=SIDE))
    mask = np.zeros((SIDE, SIDE), np.uint8, order="F")
    mask[i % 50:, :100 + i % 100] = 1
    rle = mask_utils.encode(mask)
    anns.append(dict(id=i, image_id=i, category_id=100 + i % 20, iscrowd=0,
                     segmentation=dict(size=rle["size"], counts=rle["counts"].decode())))
  (root / "annotations" / "stuff_train2017.json").write_text(
      json.dumps(dict(images=images, annotations=anns)))
  return root


def _records(built) -> dict[str, list[bytes]]:
  """Each file of the split: its records' bytes (read without TF)."""
  out = {}
  for path in built.info.splits["train"].filepaths:
    data, pos, records = pathlib.Path(path).read_bytes(), 0, []
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], "little")
      records.append(data[pos + 12:pos + 12 + length])
      pos += 16 + length
    out[pathlib.Path(path).name] = records
  return out


@pytest.fixture(scope="module")
def default_build(noise_root, tmp_path_factory):
  """The noise root built in this process with the default bound, 32 images per shard."""
  return builder.build(noise_root, tmp_path_factory.mktemp("default"), class_set="stuff",
                       mask_size=28, shard_images=32)


@pytest.mark.slow  # 480 images decoded, at a writer slowed on purpose.
def test_a_small_bound_holds_and_gives_the_default_records(noise_root, default_build, tmp_path,
                                                           monkeypatch):
  bound = 2 * 2**20
  # In a process of its own, where no other thread allocates (tracemalloc counts them all).
  # A writer slower than the workers: without the bound, their results would pile up.
  script = f"""
import time, tracemalloc
from maskrcnn_jax.data import builder
serialize = builder._SplitWriter.serialize
builder._SplitWriter.serialize = lambda self, example: (time.sleep(0.004),
                                                        serialize(self, example))[1]
tracemalloc.start()
builder.build({str(noise_root)!r}, {str(tmp_path / "bounded")!r}, class_set="stuff",
              mask_size=28, num_workers=2, shard_images=32, max_pending_bytes={bound})
print(tracemalloc.get_traced_memory()[1])
"""
  child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert child.returncode == 0, child.stderr[-3000:]
  peak = int(child.stdout.split()[-1])
  split_bytes = sum(p.stat().st_size for p in (noise_root / "train2017").iterdir())
  assert split_bytes > 7 * bound
  # Python's allocations while building: the JSON, the chunks in flight, one being received
  # (15 MB measured without the bound).
  assert peak < 2 * bound, peak
  monkeypatch.setattr(builder.coco_reader, "_example", None)  # The child's build, not redone.
  bounded = builder.build(noise_root, tmp_path / "bounded", class_set="stuff", mask_size=28)
  assert _records(bounded) == _records(default_build)
  assert bounded.info.splits["train"].num_examples == NUM_IMAGES
  assert bounded.info.metadata == default_build.info.metadata


@pytest.mark.slow  # A build process killed, then resumed.
def test_a_killed_build_resumes_to_the_same_records(noise_root, default_build, tmp_path,
                                                    monkeypatch):
  data_dir = tmp_path / "tfds"
  config_dir = data_dir / "maskrcnn_coco_stuff" / "stuff_m28"
  progress = config_dir / str(builder.MaskrcnnCocoStuff.VERSION) / "progress"
  script = f"""
import time
from maskrcnn_jax.data import builder, coco_reader
example = coco_reader._example
coco_reader._example = lambda task: (time.sleep(0.01), example(task))[1]  # 5 s in all.
builder.build({str(noise_root)!r}, {str(data_dir)!r}, class_set="stuff", mask_size=28,
              shard_images=32)
"""
  child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  deadline = time.time() + 120
  while not (progress / "train-00003.json").exists():
    assert child.poll() is None and time.time() < deadline, "the build ended before the kill"
    time.sleep(0.02)
  os.kill(child.pid, signal.SIGKILL)
  child.wait()
  committed = len(list(progress.glob("train-*.json")))
  assert 4 <= committed < NUM_IMAGES // 32
  (config_dir / "incomplete.AB12CD_1.0.0").mkdir()  # What a killed TFDS build leaves.
  decoded = []
  example = builder.coco_reader._example
  monkeypatch.setattr(builder.coco_reader, "_example",
                      lambda task: (decoded.append(task[0]), example(task))[1])
  resumed = builder.build(noise_root, data_dir, class_set="stuff", mask_size=28,
                          shard_images=32)
  assert decoded == list(range(committed * 32 + 1, NUM_IMAGES + 1))
  assert _records(resumed) == _records(default_build)
  assert resumed.info.metadata == default_build.info.metadata
  assert sorted(p.name for p in config_dir.iterdir()) == [str(builder.MaskrcnnCocoStuff.VERSION)]
  assert not (config_dir / str(builder.MaskrcnnCocoStuff.VERSION) / "progress").exists()
