"""The data build at COCO's size: time per 1,000 images, peak memory and temp disk.

    python -m bench.build [--workdir DIR] [--sizes 100,400] [--build_workers 2]

Writes COCO-Stuff-layout train sets of 480×640 JPEGs (about 150 KB: noisy colour regions)
with 10 stuff instances each (the regions, a partition of the image as COCO-Stuff's stuff
annotations are), 16 distinct images cycled under new ids, and builds each size with
`python -m maskrcnn_jax.data.prepare` (class set stuff, Sm 112, the record index included)
in a fresh data dir. Per size it prints the wall time, the CPU seconds of the writing
process and of the workers, the peak RSS of the writing process and of the largest worker
(getrusage; the workers' sampled every 50 ms), and the peak size of the dataset's folder
while it is built (polled every 50 ms) next to the finished dataset's size. Seconds per
1,000 images come from the difference between the sizes, so that fixed costs (the workers'
start, metadata) cancel; the idle-core estimate is the larger of the writing process's CPU
time and the workers' CPU time over their number.
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import psutil
from pycocotools import mask as mask_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, INSTANCES, DISTINCT = 480, 640, 10, 16
FIRST_STUFF_ID = 92

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the sets and builds go (default: a temp "
                               "dir); a set already there is reused.")
_SIZES = flags.DEFINE_list("sizes", ["100", "400"], "Train images per set.")
_WORKERS = flags.DEFINE_integer("build_workers", 2, "data.build_workers of the builds.")


def write_set(root: pathlib.Path, num_images: int) -> None:
  """num_images train images, 10 stuff RLEs each, in the COCO-Stuff layout under root."""
  rng = np.random.default_rng(0)
  (root / "train2017").mkdir(parents=True)
  (root / "annotations").mkdir()
  yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
  distinct = []
  for _ in range(DISTINCT):
    seeds = rng.random((INSTANCES, 2)) * (HEIGHT, WIDTH)
    labels = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, -1)
    pixels = rng.integers(40, 215, (INSTANCES, 3))[labels] + rng.normal(0, 20, (HEIGHT, WIDTH, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    rles = [mask_utils.encode(np.asfortranarray((labels == k).astype(np.uint8)))
            for k in range(INSTANCES)]
    distinct.append((out.getvalue(), [dict(size=r["size"], counts=r["counts"].decode())
                                      for r in rles]))
  images, anns = [], []
  for i in range(1, num_images + 1):
    jpeg, rles = distinct[i % DISTINCT]
    (root / "train2017" / f"{i:012d}.jpg").write_bytes(jpeg)
    images.append(dict(id=i, file_name=f"{i:012d}.jpg", height=HEIGHT, width=WIDTH))
    anns += [dict(id=i * 100 + k, image_id=i, category_id=FIRST_STUFF_ID + (i + k) % 91,
                  iscrowd=0, segmentation=rle) for k, rle in enumerate(rles)]
  (root / "annotations" / "stuff_train2017.json").write_text(
      json.dumps(dict(images=images, annotations=anns)))


def _folder_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# Runs prepare with its command line, timing `builder.build` (TFRecords, without the imports
# and the record index) in CPU and wall seconds; prints what it measured as its last line.
_RUNNER = """
import atexit, json, resource, runpy, sys, time
from maskrcnn_jax.data import builder
build, spent = builder.build, {}
def timed(*args, **kwargs):
  cpu, wall = time.process_time(), time.time()
  try:
    return build(*args, **kwargs)
  finally:
    spent.update(build_cpu=time.process_time() - cpu, build_wall=time.time() - wall)
builder.build = timed
def report():
  own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
  print(json.dumps(dict(spent, worker_cpu=kids.ru_utime + kids.ru_stime,
                        main_rss_mib=own.ru_maxrss / 1024)),
        file=sys.stderr)
atexit.register(report)
sys.argv = ["prepare", *sys.argv[1:]]
runpy.run_module("maskrcnn_jax.data.prepare", run_name="__main__")
"""


def measure_build(root: pathlib.Path, data_dir: pathlib.Path, build_workers: int) -> dict:
  """Runs prepare on root into data_dir, polling its workers' RSS (getrusage's maximum for
  children counts the parent's pages a spawned child holds before its exec) and the size of
  its dataset folder while it is built."""
  config_dir = data_dir / "maskrcnn_coco_stuff" / "stuff_m112"
  start = time.time()
  proc = subprocess.Popen(
      [sys.executable, "-c", _RUNNER, "--root", str(root), "--data_dir", str(data_dir),
       "--class_set", "stuff", "--mask_size", "112", "--build_workers", str(build_workers)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "", "PYTHONPATH": str(ROOT)})
  peak_temp = peak_worker = 0
  while proc.poll() is None:
    try:
      for worker in psutil.Process(proc.pid).children(recursive=True):
        peak_worker = max(peak_worker, worker.memory_info().rss)
      peak_temp = max(peak_temp, _folder_bytes(config_dir / "1.0.0"))
    except (psutil.NoSuchProcess, FileNotFoundError):  # Gone, or a file renamed while summed.
      pass
    time.sleep(0.05)
  wall = time.time() - start
  _, err = proc.communicate()
  if proc.returncode:
    raise RuntimeError(err[-3000:])
  return dict(json.loads(err.strip().splitlines()[-1]), wall=wall,
              worker_rss_mib=peak_worker / 2**20, peak_temp_mib=peak_temp / 2**20,
              dataset_mib=_folder_bytes(config_dir / "1.0.0") / 2**20)


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="bench_build_"))
  sizes = [int(s) for s in _SIZES.value]
  results = {}
  for n in sizes:
    root = workdir / f"set_{n}"
    if not root.exists():
      write_set(root, n)
    jpeg_mib = _folder_bytes(root / "train2017") / 2**20
    results[n] = r = measure_build(root, workdir / f"build_{n}_{time.time_ns()}",
                                   _WORKERS.value)
    print(f"{n} images ({jpeg_mib:.0f} MiB of JPEG), {_WORKERS.value} workers: prepare "
          f"{r['wall']:.1f} s wall, build {r['build_wall']:.1f} s wall, CPU {r['build_cpu']:.1f} s "
          f"writing + {r['worker_cpu']:.1f} s workers; peak RSS {r['main_rss_mib']:.0f} MiB "
          f"writing, {r['worker_rss_mib']:.0f} MiB largest worker; peak build folder "
          f"{r['peak_temp_mib']:.1f} MiB, dataset {r['dataset_mib']:.1f} MiB; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
  small, large = results[sizes[0]], results[sizes[-1]]
  per = lambda k: (large[k] - small[k]) * 1000 / (sizes[-1] - sizes[0])
  print(f"per 1,000 images past {sizes[0]}: build {per('build_wall'):.1f} s wall, CPU "
        f"{per('build_cpu'):.1f} s writing + {per('worker_cpu'):.1f} s workers; on "
        f"{_WORKERS.value} idle cores: {max(per('build_cpu'), per('worker_cpu') / _WORKERS.value):.1f} s")


if __name__ == "__main__":
  app.run(main)
