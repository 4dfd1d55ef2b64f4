"""Reads of the TFRecords from a bucket: bytes and requests per image, images per second.

    python -m bench.remote [--workdir DIR] [--num_images 1100] [--build_workers 2]
        [--latency_ms 30] [--rounds 2] [--batches 6] [--batch_size 8] [--image_size 512]

Writes a COCO-Stuff-layout set of real-size images (`bench.build`: 480×640 JPEGs of about
150 KB, 10 stuff instances each; 1,100 images make one full 1,024-image shard, as train2017's
are, and a short one), builds it into DIR/buckets/bench/tfds, and serves DIR/buckets as
gs:// through `bench.object_store`: TensorFlow's own GCS client, a local HTTPS endpoint that
sleeps --latency_ms per request and counts requests and bytes. Each case runs in a fresh
process (TF reads its GCS settings when it loads): TF's defaults, and the settings
`maskrcnn_jax.data.gcs` chooses. In each, the training pipeline (augmented, resize `longest`
to --image_size, data.read_parallelism 16) and then the evaluation pipeline (image-id order)
of `maskrcnn_jax.data.pipeline` read gs://bench/tfds: after one warm-up batch the store's
counts are reset and --batches batches timed. Per record read it prints the bytes fetched
next to the record's own framed size and the requests, then the process's images/s, CPU
time per image and peak RSS so far; last, the record index's one pass over the split
(`record_index`, uncached). The cases alternate over --rounds.
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

from bench import build as bench_build  # Its flags too: --workdir, --build_workers.
from configs import default

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "bench"

_NUM_IMAGES = flags.DEFINE_integer("num_images", 1100, "Train images of the set.")
_LATENCY = flags.DEFINE_float("latency_ms", 30.0, "Latency the store charges per request.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Times each case runs, in turn.")
_BATCHES = flags.DEFINE_integer("batches", 6, "Timed batches per pipeline (more images than "
                                "the pipeline reads ahead, or the counts see none).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per batch.")
_SIZE = flags.DEFINE_integer("image_size", 512, "data.image_size (resize `longest`).")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one case (`defaults` or `chosen`).")


def _config(root: pathlib.Path, data_dir: str, image_size: int) -> ml_collections.ConfigDict:
  """configs/default.py's data config (read parallelism 16), resize `longest` to image_size."""
  config = default.get_config().data
  config.root, config.tfds_data_dir, config.class_set = str(root), data_dir, "stuff"
  config.resize, config.image_size = "longest", image_size
  config.build_workers = bench_build._WORKERS.value  # pylint: disable=protected-access
  config.augment.update(hflip=True, scale_range=(0.8, 1.25), photometric=True)
  return config


def _child(case: str) -> None:
  """One case, in its own process (the settings before TensorFlow loads): talks to the
  parent one JSON line at a time."""
  if case == "chosen":
    from maskrcnn_jax.data import gcs  # pylint: disable=g-import-not-at-top
    print(json.dumps({"settings": gcs.configure()}), flush=True)
  else:
    print(json.dumps({"settings": "TF's defaults"}), flush=True)
  from maskrcnn_jax.data import build  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import record_index  # pylint: disable=g-import-not-at-top
  config = _config(pathlib.Path("unused"), f"gs://{BUCKET}/tfds", _SIZE.value)
  builder = build.built(config)
  records = record_index.load(builder, "train")
  frames = {(records.paths[s], int(o) - 12): int(n) + 16
            for s, o, n in zip(records.shard, records.offset, records.length)}
  make = {
      "train": lambda: pipeline.create_train_dataset(config, global_batch_size=_BATCH.value,
                                                     seed=0, process_index=0, process_count=1),
      "eval": lambda: pipeline.create_eval_dataset(config, batch_size=_BATCH.value, split="train",
                                                   process_index=0, process_count=1)}
  for order, dataset in make.items():
    batches = dataset().as_numpy_iterator()
    next(batches)
    print(json.dumps({"ready": order}), flush=True)
    sys.stdin.readline()  # The parent has reset the store's counts.
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(_BATCHES.value):
      next(batches)
    print(json.dumps({"order": order, "seconds": time.perf_counter() - start,
                      "cpu": time.process_time() - cpu,
                      "images": _BATCH.value * _BATCHES.value,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)
    sys.stdin.readline()  # The parent has taken the counts.
    del batches
  print(json.dumps({"ready": "index"}), flush=True)
  sys.stdin.readline()
  start = time.perf_counter()
  record_index._index_records(builder, "train")  # pylint: disable=protected-access
  print(json.dumps({"order": "index", "seconds": time.perf_counter() - start,
                    "images": len(records), "frames": sum(frames.values())}), flush=True)
  sys.stdin.readline()
  print(json.dumps({"frames": [[p, o, n] for (p, o), n in frames.items()]}), flush=True)


def _summary(requests, frames: dict, result: dict) -> str:
  """One line: per record read, bytes fetched against its framed size, requests, images/s.

  A request belongs to a record when it starts at the record's first byte or one byte before
  (TF's seek first reads that byte, to check the file does not end there). Medians over the
  records: the timed window cuts some records' requests in two."""
  per_record = {}
  for r in requests:
    key = next((k for k in ((f"gs://{r.path}", r.start + d) for d in (0, 1)) if k in frames),
               None)
    if r.kind == "media" and key:
      per_record.setdefault(key, []).append(r.bytes)
  fetched = sum(r.bytes for r in requests)
  if result["order"] == "index":
    return (f"record index pass over {result['images']} records "
            f"({result['frames'] / 2**20:.0f} MiB): {len(requests)} requests, "
            f"{fetched / 2**20:.1f} MiB fetched, {result['seconds']:.1f} s")
  got = np.median([sum(b) for b in per_record.values()])
  own = np.median([frames[k] for k in per_record])
  return (f"{result['order']:5s}: per record read (median of {len(per_record)}) "
          f"{got / 1024:.0f} KiB fetched, {got / own:.2f}x its framed {own / 1024:.0f} KiB, "
          f"{np.median([len(b) for b in per_record.values()]):.0f} requests; in all "
          f"{fetched / 2**20:.1f} MiB in {len(requests)} requests "
          f"({len(requests) - sum(map(len, per_record.values()))} not a record's); "
          f"{result['images'] / result['seconds']:.1f} images/s, "
          f"{result['cpu'] / result['images'] * 1000:.0f} ms CPU per image, peak RSS "
          f"{result['rss_mib']:.0f} MiB")


def _run_case(case: str, store, env: dict) -> list[str]:
  proc = subprocess.Popen(
      [sys.executable, "-m", "bench.remote", f"--child={case}", f"--batches={_BATCHES.value}",
       f"--batch_size={_BATCH.value}", f"--image_size={_SIZE.value}"],
      cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  lines, results = [], []
  for line in proc.stdout:
    if not line.startswith("{"):
      continue
    message = json.loads(line)
    if "settings" in message:
      lines.append(f"{case}: {message['settings']}")
    elif "ready" in message:
      store.take()
      proc.stdin.write("\n")
      proc.stdin.flush()
    elif "order" in message:
      results.append((message, store.take()))
      proc.stdin.write("\n")
      proc.stdin.flush()
    elif "frames" in message:
      frames = {(p, o): n for p, o, n in message["frames"]}
      lines += [f"  {_summary(requests, frames, r)}" for r, requests in results]
  if proc.wait():
    raise RuntimeError(f"case {case} failed with exit code {proc.returncode}")
  return lines


def main(argv):
  del argv
  if _CHILD.value:
    return _child(_CHILD.value)
  from bench import object_store  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(bench_build._WORKDIR.value  # pylint: disable=protected-access
                         or tempfile.mkdtemp(prefix="bench_remote_"))
  root, data_dir = workdir / "coco", workdir / "buckets" / BUCKET / "tfds"
  if not root.exists():
    bench_build.write_set(root, _NUM_IMAGES.value)
  from maskrcnn_jax.data import build  # pylint: disable=g-import-not-at-top
  build.prepare(_config(root, str(data_dir), _SIZE.value))
  env = object_store.clean_env()
  for k in ("GCS_READ_CACHE_BLOCK_SIZE_MB", "GCS_READ_CACHE_MAX_SIZE_MB",
            "GCS_READAHEAD_BUFFER_SIZE_BYTES"):
    env.pop(k, None)
  env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
  with object_store.Store(workdir / "buckets", latency_s=_LATENCY.value / 1000) as store:
    env.update(store.client_env())
    for r in range(_ROUNDS.value):
      for case in ("defaults", "chosen"):
        lines = _run_case(case, store, env)
        print(f"round {r + 1}, latency {_LATENCY.value:g} ms, batch {_BATCH.value}, "
              f"S={_SIZE.value}, read parallelism 16, load average "
              f"{os.getloadavg()[0]:.1f}; " + "\n".join(lines), flush=True)


if __name__ == "__main__":
  app.run(main)
