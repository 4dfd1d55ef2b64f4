"""Input-pipeline benchmark: build cost and training throughput with augmentation.

    python -m maskrcnn_jax.data.bench [--num_images 240] [--sizes 1024,512] [--workdir DIR]

Writes a synthetic set at COCO's typical 640×480, builds its TFRecords (time and bytes
per 1,000 images), then times the augmented training pipeline (hflip, scale jitter
0.8-1.25, photometric) per output size S, in images per second, on every CPU core of the
machine. The CPU time per image is printed too, with the load average: on a shared
machine it bounds what idle cores would reach.
"""

import os
import pathlib
import resource
import tempfile
import time

from absl import app
from absl import flags
import ml_collections

from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import synthetic


def _config(root: pathlib.Path, image_size: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      root=str(root), tfds_data_dir=str(root / "tfds"), class_set="stuff",
      image_size=image_size, max_instances=100, mask_size=56, class_balanced=False,
      repeat_threshold=0.001,
      augment=dict(hflip=True, scale_range=(0.8, 1.25), photometric=True),
      synthetic=dict(enabled=False)))


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _throughput(config, *, batch_size: int, warmup: int, steps: int) -> tuple[float, float]:
  """(images per second, CPU seconds per image) of the training pipeline."""
  batches = pipeline.create_train_dataset(config, global_batch_size=batch_size,
                                         seed=0).as_numpy_iterator()
  for _ in range(warmup):
    next(batches)
  start, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(steps):
    next(batches)
  images = steps * batch_size
  return images / (time.perf_counter() - start), (_cpu_seconds() - cpu) / images


def run(workdir: pathlib.Path, *, num_images: int, sizes, batch_size: int, steps: int) -> None:
  root = workdir / "coco"
  if root.exists():
    raise FileExistsError(f"{root} exists: give an empty --workdir")
  start = time.perf_counter()
  synthetic.write_synthetic(root, num_train=num_images, num_val=8, image_size=(480, 640), seed=0)
  jpeg_bytes = sum(p.stat().st_size for p in (root / "train2017").iterdir())
  print(f"synthetic: {num_images} train images 640x480 written in "
        f"{time.perf_counter() - start:.1f} s, "
        f"JPEGs {jpeg_bytes / num_images / 1024:.0f} KiB/image")
  start = time.perf_counter()
  builder = pipeline.prepare(_config(root, sizes[0]))
  seconds = time.perf_counter() - start
  total = num_images + 8
  train_bytes = builder.info.splits["train"].num_bytes
  print(f"build (TFRecords + record index, both splits): {seconds:.1f} s = "
        f"{seconds / total * 1000:.0f} s per 1,000 images; train split on disk "
        f"{train_bytes / num_images * 1000 / 2**20:.0f} MiB per 1,000 images")
  cores = os.cpu_count()
  for size in sizes:
    rate, cpu = _throughput(_config(root, size), batch_size=batch_size, warmup=3, steps=steps)
    print(f"train pipeline S={size}, augmented, batch {batch_size}: {rate:.1f} images/s; "
          f"{cpu * 1000:.1f} ms CPU per image (at most {cores / cpu:.0f} images/s on "
          f"{cores} idle cores); load average {os.getloadavg()[0]:.1f}")


def main(argv):
  del argv
  f = flags.FLAGS
  sizes = [int(s) for s in f.sizes.split(",")]
  if f.workdir:
    run(pathlib.Path(f.workdir), num_images=f.num_images, sizes=sizes, batch_size=f.batch_size,
        steps=f.steps)
    return
  with tempfile.TemporaryDirectory() as tmp:
    run(pathlib.Path(tmp), num_images=f.num_images, sizes=sizes, batch_size=f.batch_size,
        steps=f.steps)


if __name__ == "__main__":
  flags.DEFINE_integer("num_images", 240, "Synthetic training images to write and build.")
  flags.DEFINE_string("sizes", "1024,512", "Output sizes S to time.")
  flags.DEFINE_integer("batch_size", 8, "Images per batch.")
  flags.DEFINE_integer("steps", 40, "Timed batches per size (after 3 warm-up batches).")
  flags.DEFINE_string("workdir", "",
                      "Empty directory to keep the data in (default: a temporary one).")
  app.run(main)
