"""Input-pipeline benchmark: build cost and training throughput with augmentation.

    python -m bench.data [--num_images 240] [--sizes 1024,512] [--workdir DIR]
        [--mask_sizes 56,112] [--rounds 3] [--read_latency_ms 20] [--num_workers 2]

Writes a synthetic set at COCO's typical 640×480 (or reuses the one in --workdir), times
its build on --num_workers processes (wall and CPU seconds per 1,000 images past a 16-image
build, which holds the fixed cost; off with --notime_build), then times the augmented
training pipeline (hflip, scale jitter 0.8-1.25, photometric) per output size S and stored
mask side Sm (`data.mask_size`, one build each; its TFRecord bytes per training image are
printed), in images per second, on every CPU core of the machine; --rounds repeats the
(S, Sm) cases in turn, so that a changing load hits them alike. The CPU time per image is
printed too, with the load average: on a shared machine it bounds what idle cores would
reach.

A slow filesystem (a bucket, NFS) is simulated with --read_latency_ms: the benchmark
re-runs itself with an LD_PRELOAD shim (compiled here with `cc`) that sleeps that long
before every read(2)/pread(2) of a file under the workdir, so each round trip of the
reader costs a fixed latency while the CPU work stays the same.
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import ml_collections
import numpy as np

from bench import common
from maskrcnn_jax.data import build
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import synthetic


_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#define MAX_FD 65536
static unsigned char slow[MAX_FD];
static void mark(int fd, const char *path) {
  const char *prefix = getenv("SLOW_IO_PREFIX");
  if (fd >= 0 && fd < MAX_FD)
    slow[fd] = prefix && path && strncmp(path, prefix, strlen(prefix)) == 0;
}
static void wait_if_slow(int fd) {
  if (fd < 0 || fd >= MAX_FD || !slow[fd]) return;
  long ns = (long)(atof(getenv("SLOW_IO_MS")) * 1e6);
  struct timespec t = {ns / 1000000000L, ns % 1000000000L};
  nanosleep(&t, NULL);
}
#define OPEN(name, call, ...) int name(__VA_ARGS__, int flags, ...) { \
  static int (*real)() = NULL; if (!real) real = dlsym(RTLD_NEXT, #name); \
  va_list ap; va_start(ap, flags); int mode = va_arg(ap, int); va_end(ap); \
  int fd = call; mark(fd, path); return fd; }
OPEN(open, real(path, flags, mode), const char *path)
OPEN(open64, real(path, flags, mode), const char *path)
OPEN(openat, real(dirfd, path, flags, mode), int dirfd, const char *path)
OPEN(openat64, real(dirfd, path, flags, mode), int dirfd, const char *path)
#define READ(name, call, ...) ssize_t name(int fd, void *buf, size_t n, ##__VA_ARGS__) { \
  static ssize_t (*real)() = NULL; if (!real) real = dlsym(RTLD_NEXT, #name); \
  wait_if_slow(fd); return call; }
READ(read, real(fd, buf, n))
READ(pread, real(fd, buf, n, off), off_t off)
READ(pread64, real(fd, buf, n, off), off_t off)
"""


def _rerun_with_latency(workdir: pathlib.Path, latency_ms: float) -> None:
  """Runs this command again with every read of a file under workdir delayed (never returns)."""
  workdir.mkdir(parents=True, exist_ok=True)
  shim = workdir / "slow_io.so"
  source = workdir / "slow_io.c"
  source.write_text(_SHIM)
  subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"],
                 check=True)
  env = dict(os.environ, LD_PRELOAD=str(shim), SLOW_IO_MS=str(latency_ms),
             SLOW_IO_PREFIX=str(workdir.resolve()))
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def _config(root: pathlib.Path, image_size: int,
            mask_size: int = 112) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      root=str(root), tfds_data_dir=str(root / "tfds"), class_set="stuff",
      resize="longest", image_size=image_size, max_instances=100, mask_size=mask_size, class_balanced=False,
      repeat_threshold=0.001, read_parallelism=16, allow_partial_annotations=False,
      augment=dict(hflip=True, scale_range=(0.8, 1.25), photometric=True),
      synthetic=dict(enabled=False)))


def _clocks() -> np.ndarray:
  """Wall seconds, CPU seconds of this process and of its ended child processes."""
  own, children = map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
  return np.array([time.perf_counter(), own.ru_utime + own.ru_stime,
                   children.ru_utime + children.ru_stime])


def _throughput(config, *, batch_size: int, warmup: int, steps: int) -> tuple[float, float]:
  """(images per second, CPU seconds per image) of the training pipeline."""
  batches = pipeline.create_train_dataset(config, global_batch_size=batch_size,
                                         seed=0).as_numpy_iterator()

  def consume(n):
    for _ in range(n):
      next(batches)

  consume(warmup)
  _, (wall, cpu, _) = common.timed(consume, steps, clock=_clocks)
  images = steps * batch_size
  return images / wall, cpu / images


def _build(root: pathlib.Path, data_dir: pathlib.Path, image_size: int, num_workers: int):
  """(wall seconds, CPU seconds here, CPU seconds in the workers) of one build into data_dir."""
  config = _config(root, image_size)
  config.tfds_data_dir, config.build_workers = str(data_dir), num_workers
  return common.timed(build.prepare, config, clock=_clocks)[1]


def _write(root: pathlib.Path, num_images: int) -> None:
  _, seconds = common.timed(synthetic.write_synthetic, root, num_train=num_images, num_val=8,
                            image_size=(480, 640), seed=0)
  jpeg_bytes = sum(p.stat().st_size for p in (root / "train2017").iterdir())
  print(f"synthetic: {num_images} train images 640x480 written in {seconds:.1f} s, "
        f"JPEGs {jpeg_bytes / num_images / 1024:.0f} KiB/image")


def _time_build(workdir: pathlib.Path, root: pathlib.Path, image_size: int,
                num_workers: int) -> None:
  """Builds the set and a 16-image one (the fixed cost: workers' start, metadata), each into
  a fresh directory; the difference is the cost of the extra images, in wall and CPU time."""
  small = workdir / "small"
  if not small.exists():
    synthetic.write_synthetic(small, num_train=8, num_val=8, image_size=(480, 640), seed=1)
  builds = workdir / "builds" / str(time.time_ns())
  _build(small, builds / "warm-up", image_size, num_workers)  # One-time imports of this process.
  fixed = _build(small, builds / "small", image_size, num_workers)
  total = len(list((root / "train2017").iterdir())) + len(list((root / "val2017").iterdir()))
  wall, here, workers = (_build(root, builds / "full", image_size, num_workers) - fixed) * (
      1000 / (total - 16))
  print(f"build on {num_workers} workers (TFRecords + record index, both splits), per 1,000 "
        f"images past a 16-image build ({fixed[0]:.1f} s): {wall:.0f} s; CPU {here:.1f} s in "
        f"this process (JSON, serialization, writing), {workers:.1f} s in the workers "
        f"(decoding); load average {os.getloadavg()[0]:.1f}")


def run(workdir: pathlib.Path, *, num_images: int, sizes, mask_sizes, rounds: int,
        batch_size: int, steps: int, read_parallelism: int, num_workers: int,
        latency_ms: float, time_build: bool) -> None:
  root = workdir / "coco"
  if root.exists():
    print(f"reusing the set at {root}")
  else:
    _write(root, num_images)
  if time_build:
    _time_build(workdir, root, sizes[0] if sizes else 1024, num_workers)
  stuff = json.loads((root / "annotations" / "stuff_train2017.json").read_text())
  per_image = len(stuff["annotations"]) / len(stuff["images"])
  for mask_size in mask_sizes:
    split = build.prepare(_config(root, 1024, mask_size)).info.splits["train"]
    print(f"TFRecords Sm={mask_size}: {split.num_bytes / split.num_examples / 1024:.1f} KiB "
          f"per training image ({per_image:.1f} stuff annotations per image)")
  cores = os.cpu_count()
  for _ in range(rounds):
    for size in sizes:
      for mask_size in mask_sizes:
        config = _config(root, size, mask_size)
        config.read_parallelism = read_parallelism
        rate, cpu = _throughput(config, batch_size=batch_size, warmup=3, steps=steps)
        print(f"train pipeline S={size} Sm={mask_size}, augmented, batch {batch_size}, read "
              f"latency {latency_ms:g} ms, read parallelism {read_parallelism}: {rate:.1f} "
              f"images/s; {cpu * 1000:.1f} ms CPU per image (at most {cores / cpu:.0f} "
              f"images/s on {cores} idle cores); load average {os.getloadavg()[0]:.1f}")


def main(argv):
  del argv
  f = flags.FLAGS
  sizes = [int(s) for s in f.sizes.split(",") if s]
  mask_sizes = [int(s) for s in f.mask_sizes.split(",") if s]
  kwargs = dict(num_images=f.num_images, sizes=sizes, mask_sizes=mask_sizes, rounds=f.rounds,
                batch_size=f.batch_size, steps=f.steps,
                read_parallelism=f.read_parallelism, num_workers=f.num_workers,
                latency_ms=f.read_latency_ms, time_build=f.time_build)
  if f.read_latency_ms > 0:
    if not f.workdir:
      raise app.UsageError("--read_latency_ms needs --workdir (the files it slows down)")
    if "SLOW_IO_MS" not in os.environ:
      _rerun_with_latency(pathlib.Path(f.workdir), f.read_latency_ms)
  if f.workdir:
    run(pathlib.Path(f.workdir), **kwargs)
    return
  with tempfile.TemporaryDirectory() as tmp:
    run(pathlib.Path(tmp), **kwargs)


if __name__ == "__main__":
  flags.DEFINE_integer("num_images", 240, "Synthetic training images to write and build.")
  flags.DEFINE_string("sizes", "1024,512", "Output sizes S to time.")
  flags.DEFINE_string("mask_sizes", "112", "Stored mask sides Sm (data.mask_size) to time.")
  flags.DEFINE_integer("rounds", 1, "Times to time every (S, Sm) case, in turn.")
  flags.DEFINE_integer("batch_size", 8, "Images per batch.")
  flags.DEFINE_integer("steps", 40, "Timed batches per size (after 3 warm-up batches).")
  flags.DEFINE_string("workdir", "",
                      "Directory to keep the data in (default: a temporary one); a set "
                      "written there before is reused.")
  flags.DEFINE_float("read_latency_ms", 0.0, "Added latency per read of the data (simulated "
                     "slow filesystem; needs --workdir and `cc`).")
  flags.DEFINE_integer("read_parallelism", 16, "data.read_parallelism.")
  flags.DEFINE_integer("num_workers", 1, "Build processes.")
  flags.DEFINE_bool("time_build", True, "Time a build (into a fresh directory).")
  app.run(main)
