"""Evaluation speed: the host's share with fake detections, and a whole `--mode=eval`.

  python -m bench.evaluation --num_images=100 --height=480 --width=640 --detections=100 \
      --out_dir=/tmp/eval_bench [--eval_images=16 --eval_config=configs/demo.py]

Writes a stuff JSON of random rectangular regions and batches of random detections
(`bench.fakes`: random boxes, smooth 28 × 28 mask probabilities, scores, classes), then
times, on the same detections:
  before  `Evaluator.add` pasting on the host: per image `paste` (within each box, RLE,
          painting: `host_pasted_detections`) and the rest (`metrics`: confusion,
          per-image precision/recall);
  after   `masks.paste_batch_device` jitted (`device`: on this machine's jax backend) and
          `Evaluator.add` of its output: per image `rle` (transitions → RLE) and the rest;
  and `result` (COCOeval with each backend) and `write` (the COCO results JSON, which grows
  with N, apart from the pictures and tables, which do not). Logs milliseconds
  per image, the after/before ratio and images/s of the host's work (model forward
  excluded), for N and for 5,000 images.

With `--marginal=16,208`, the user's path: `main.py --mode=eval` in a new process with
`--marginal_config` (configs/tiny.py) at `data.image_size=--marginal_size` (128, so that
the host's share dominates), random weights, test-time score threshold 0 and `--detections`
detections per image, on synthetic height × width images, timed (wall) for each image
count and COCOeval backend (`--marginal_backends`), `--repeats` times in turn. The marginal
rate, the difference of the image counts over the difference of the wall times, leaves
out what a run pays once (start-up, compiling, pictures) (`marginal_eval`).

With `--eval_images=N`, also a whole `--mode=eval` (`run_eval.Evaluation`: data pipeline,
jitted model forward, pasting, metrics, files) of `--eval_config`
(`--eval_config.key=value` overrides; `--config` is main.py's flag) with random weights on
N synthetic images of height × width, on this machine's jax backend: test-time score
threshold 0 and `--detections` detections per image, so that every image has that many
valid detections. Logs images/s of the whole evaluation, and of
one that waits for each predict step, in parts: the predict step, the host's
`Evaluator.add` and `write`, and the rest (data input) (`whole_eval`).
"""

import functools
import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
from ml_collections import config_flags
import numpy as np

from bench import common
from bench import fakes
from maskrcnn_jax import validation
from maskrcnn_jax.data import build
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import synthetic
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import masks as masks_lib
from maskrcnn_jax.evaluation import run_eval
from maskrcnn_jax.weights import checkpoint
from maskrcnn_jax.weights import load

_NUM_IMAGES = flags.DEFINE_integer("num_images", 100,
                                   "Images of the host share with fake detections; 0: none.")
_HEIGHT = flags.DEFINE_integer("height", 480, "Original image height.")
_WIDTH = flags.DEFINE_integer("width", 640, "Original image width.")
_SCALE = flags.DEFINE_float("scale", 1.6, "Padded-image pixels per original pixel.")
_DETECTIONS = flags.DEFINE_integer("detections", 100, "Valid detections per image.")
_BATCH = flags.DEFINE_integer("batch", 4, "Images per batch.")
_PICTURES = flags.DEFINE_integer("num_pictures", 0, "Images drawn by write().")
_CLASS_SET = flags.DEFINE_string("class_set", "stuff", "Class set.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/eval_bench", "Where files are written.")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 0, "Images of a whole --mode=eval; 0: none.")
_CONFIG = config_flags.DEFINE_config_file("eval_config", "configs/demo.py",
                                          "Config of the whole --mode=eval.", lock_config=True)
_MARGINAL = flags.DEFINE_list("marginal", [], "Image counts of main.py --mode=eval runs.")
_MARGINAL_CONFIG = flags.DEFINE_string("marginal_config", "configs/tiny.py",
                                       "Config file of the main.py --mode=eval runs.")
_MARGINAL_SIZE = flags.DEFINE_integer("marginal_size", 128, "data.image_size of those runs.")
_MARGINAL_BACKENDS = flags.DEFINE_list("marginal_backends", ["pycocotools", "faster_coco_eval"],
                                       "eval.coco_backend values of those runs.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of each count and backend.")


DISTINCT_BATCHES = 3
FULL_SCALE = 5000  # COCO-Stuff's validation images.
# The host's work in CPU seconds of this process: other jobs on the machine inflate them less.
_cpu_timed = functools.partial(common.timed, clock=time.process_time)


def run(num_images: int, height: int, width: int, num_detections: int, batch_size: int,
        class_set_name: str, out_dir: str, *, scale: float = 1.6, num_pictures: int = 0
        ) -> dict[str, float]:
  """Times both paths on the same detections; returns seconds (keys in the module doc)."""
  rng = np.random.default_rng(0)
  class_set = categories.get_class_set(class_set_name)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  gt_path = str(epath.Path(out_dir) / "gt.json")
  fakes.fake_ground_truth(gt_path, num_images, height, width, class_set, rng)
  # A few distinct batches of detections, repeated with new image ids: the device pastes
  # each distinct one once (its output depends on the detections only).
  distinct = [fakes.fake_batch(range(batch_size), height, width, scale, num_detections,
                               class_set.num_classes, rng) for _ in range(DISTINCT_BATCHES)]
  batches = []
  for j, s in enumerate(range(0, num_images, batch_size)):
    batch, dets = distinct[j % DISTINCT_BATCHES]
    ids = np.arange(s + 1, s + batch_size + 1, dtype=np.int32)
    batches.append((dict(batch, image_id=ids, image_valid=ids <= num_images), dets))
  times = {}
  ev, times["load"] = _cpu_timed(evaluator_lib.Evaluator, [gt_path], class_set,
                                 num_pictures=num_pictures)

  times["gt"] = sum(_cpu_timed(ev.ground_truth_flat, i)[1] for i in ev.coco_gt.imgs)

  # Before: per batch the parts of host pasting, then the whole `add` (interleaved: the
  # same load on a shared machine).
  for k in ("before/paste", "before/add"):
    times[k] = 0.0
  for batch, dets in batches:
    for b in np.flatnonzero(batch["image_valid"]):
      times["before/paste"] += _cpu_timed(evaluator_lib.host_pasted_detections, dets, b,
                                          batch["image_info"][b], fill=ev.fill)[1]
    times["before/add"] += _cpu_timed(ev.add, batch, dets)[1]
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
    out, t = common.timed(lambda d, i: jax.device_get(paste(d, i)),
                          {k: dets[k] for k in keys}, batch["image_info"])
    pasted.append({**dets, **out})
  times["device"] = t / batch_size * num_images  # The last batch's: compiled and warm.
  pasted = [pasted[j % DISTINCT_BATCHES] for j in range(len(batches))]
  ev.reset()
  times["after/rle"] = times["after/add"] = 0.0
  results = []
  for (batch, _), dets in zip(batches, pasted):
    for b in np.flatnonzero(batch["image_valid"]):
      image_dets, t = _cpu_timed(evaluator_lib.pasted_image_detections, dets, b,
                                 batch["image_info"][b])
      times["after/rle"] += t
      results += evaluator_lib.detections_to_coco(int(batch["image_id"][b]), image_dets,
                                                  class_set)
    times["after/add"] += _cpu_timed(ev.add, batch, dets)[1]
  for backend in ("pycocotools", "faster_coco_eval"):
    ev.coco_backend = backend
    after, times[f"result/{backend}"] = _cpu_timed(ev.result)
  times["write"] = _cpu_timed(ev.write, str(epath.Path(out_dir) / "eval"))[1]
  # The part of write() that grows with the images: the COCO results (the per-image table
  # is far smaller); the rest (pictures, tables of classes) is once per evaluation.
  times["write/results"] = _cpu_timed(coco_eval.write_results,
                                      str(epath.Path(out_dir) / "results.json"), results)[1]
  for k, v in before.items():  # The same numbers (up to a pixel at mask boundaries).
    if not np.isclose(v, after[k], atol=1e-3, equal_nan=True):
      logging.warning("%s: %.6f before, %.6f after", k, v, after[k])
  return times


def _timing(times: dict[str, float], key: str, fn, *, block: bool = False):
  """`fn` adding its wall seconds to `times[key]` (after the result is ready with `block`)."""
  call = (lambda *a, **k: jax.block_until_ready(fn(*a, **k))) if block else fn
  def timed(*args, **kwargs):
    out, seconds = common.timed(call, *args, **kwargs)
    times[key] = times.get(key, 0.0) + seconds
    return out
  return timed


def whole_eval(config: ml_collections.ConfigDict, out_dir: str, *, num_images: int,
               height: int, width: int, num_detections: int, batch_size: int,
               scale: float = 1.6) -> dict[str, float]:
  """Times `run_eval.Evaluation` of `config` with random weights; wall seconds.

  The data: `num_images` synthetic height × width images (written to OUT_DIR once), input
  side max(height, width) · scale. Test-time score threshold 0 and `num_detections`
  detections per image. After a first evaluation of one batch (compiling), evaluates twice
  as `--mode=eval` does (a new `Evaluation`: the ground truth decoded as it is used, the
  compiled predict step): `whole`, where the host scores a batch while the device predicts
  the next; and with every predict step waited for, timed in parts (`serial/predict`,
  `serial/add`, `serial/write`; `serial/whole`).

  Returns:
    `compile` (the first evaluation), `whole`, the `serial/*` parts and `detections` (COCO
    results per image).
  """
  side = round(max(height, width) * scale / 64) * 64
  root = epath.Path(out_dir) / f"data_{height}x{width}_{num_images}"
  config = config.copy_and_resolve_references()
  config.data.root = str(root)
  config.data.tfds_data_dir = ""
  config.data.synthetic.enabled = False  # Written here at height × width.
  config.data.resize, config.data.image_size = "longest", side
  config.data.eval_batch_size = batch_size
  config.model.roi_heads.score_threshold = 0.0
  config.model.roi_heads.detections_per_image = num_detections
  config.eval.num_images = num_images
  validation.validate(config)
  if not (root / "annotations").exists():
    synthetic.write_synthetic(root, num_train=1, num_val=num_images, image_size=(height, width),
                              seed=config.data.synthetic.seed)
  build.prepare(config.data)
  _, model, mesh = run_eval.build(config)
  init = jax.jit(functools.partial(load.init_inference, model),
                 out_shardings=NamedSharding(mesh, P()))
  variables = init(jax.random.key(config.seed))
  workdir = str(epath.Path(out_dir) / "eval_run")
  times = {}
  # Compiling on one batch; then each evaluation is new, as a `--mode=eval` (ground truth
  # not yet decoded), with the compiled predict step.
  warm_config = config.copy_and_resolve_references()
  warm_config.eval.num_images = batch_size
  warm = run_eval.Evaluation(warm_config, model, mesh)
  _timing(times, "compile", warm)(variables, workdir, 0)
  evaluation = run_eval.Evaluation(config, model, mesh)
  evaluation.predict = warm.predict
  _timing(times, "whole", evaluation)(variables, workdir, 1)
  evaluation = run_eval.Evaluation(config, model, mesh)
  ev = evaluation.evaluator
  ev.add, ev.write = _timing(times, "serial/add", ev.add), _timing(times, "serial/write", ev.write)
  evaluation.predict = _timing(times, "serial/predict", warm.predict, block=True)
  _timing(times, "serial/whole", evaluation)(variables, workdir, 2)
  results = json.loads((epath.Path(workdir) / "eval" / "2" / "coco_results.json").read_text())
  times["detections"] = len(results) / num_images
  return times


def marginal_setup(config_file: str, out_dir: str, *, num_images: int, height: int,
                   width: int, image_size: int) -> tuple[str, str]:
  """(data root, weights): `num_images` synthetic height × width validation images built
  for `config_file` at `image_size`, and random weights of its model; made once."""
  config = common.load_config(config_file)
  root = epath.Path(out_dir) / f"marginal_{height}x{width}_{num_images}"
  config.data.root = str(root / "data")
  config.data.synthetic.enabled = False
  config.data.image_size = image_size
  if not (root / "data" / "annotations").exists():
    synthetic.write_synthetic(root / "data", num_train=1, num_val=num_images,
                              image_size=(height, width), seed=config.data.synthetic.seed)
  build.prepare(config.data)
  weights = root / "weights"
  if not weights.exists():
    _, model, _ = run_eval.build(config)
    variables = jax.jit(functools.partial(load.init_inference, model))(
        jax.random.key(config.seed))
    checkpoint.save_variables(str(weights), jax.device_get(variables))
  return config.data.root, str(weights)


def eval_command(config_file: str, workdir: str, root: str, weights: str, *,
                 num_images: int, image_size: int, num_detections: int,
                 backend: str) -> list[str]:
  """The `main.py --mode=eval` command line a user runs for these settings."""
  return [sys.executable, "main.py", f"--config={config_file}", f"--workdir={workdir}",
          "--mode=eval", f"--config.data.root={root}", "--config.data.synthetic.enabled=false",
          f"--config.data.image_size={image_size}",
          "--config.model.roi_heads.score_threshold=0",
          f"--config.model.roi_heads.detections_per_image={num_detections}",
          f"--config.eval.num_images={num_images}", f"--config.eval.checkpoint={weights}",
          f"--config.eval.coco_backend={backend}"]


def marginal_eval(config_file: str, out_dir: str, *, counts: list[int], height: int,
                  width: int, image_size: int, num_detections: int, backends: list[str],
                  repeats: int = 1) -> dict[str, list[float]]:
  """Wall seconds of `main.py --mode=eval` (`eval_command`), per backend and image count.

  Runs take turns (each count and backend once, `repeats` times), so that a change in the
  machine's load spreads over all of them, after one untimed run (the first start reads
  the libraries from disk).

  Returns:
    {f"{backend}/{count}": [wall seconds of each repeat], f"{backend}/{count}/cpu": [CPU
    seconds, user + system over all threads]}.
  """
  root, weights = marginal_setup(config_file, out_dir, num_images=max(counts), height=height,
                                 width=width, image_size=image_size)
  def timed(count: int, backend: str) -> tuple[float, float]:
    workdir = str(epath.Path(out_dir) / f"marginal_run_{backend}_{count}")
    command = eval_command(config_file, workdir, root, weights, num_images=count,
                           image_size=image_size, num_detections=num_detections,
                           backend=backend)
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    start, start_cpu = time.perf_counter(), cpu()
    subprocess.run(command, check=True, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return time.perf_counter() - start, cpu() - start_cpu

  timed(min(counts), backends[0])
  times = {}
  for _ in range(repeats):
    for backend in backends:
      for count in counts:
        wall, cpu = timed(count, backend)
        times.setdefault(f"{backend}/{count}", []).append(wall)
        times.setdefault(f"{backend}/{count}/cpu", []).append(cpu)
  return times


def marginal_summary(times: dict[str, list[float]], counts: list[int]) -> str:
  """Per backend and clock (wall, CPU): the times and the marginal images/s of each
  repeat (for CPU seconds: images per CPU second of all threads)."""
  lo, hi = min(counts), max(counts)
  lines = []
  for backend in dict.fromkeys(k.split("/")[0] for k in times):
    for clock, suffix in (("wall", ""), ("CPU", "/cpu")):
      if f"{backend}/{lo}{suffix}" not in times:
        continue
      rates = [(hi - lo) / (b - a) for a, b in zip(times[f"{backend}/{lo}{suffix}"],
                                                  times[f"{backend}/{hi}{suffix}"])]
      spent = ", ".join(f"{count}: " + " ".join(
          f"{t:.1f}" for t in times[f"{backend}/{count}{suffix}"]) for count in counts)
      lines.append(f"{backend}: {clock} s {spent}; marginal images/s "
                   + " ".join(f"{r:.1f}" for r in rates))
  return "\n".join(lines)


def eval_summary(times: dict[str, float], num_images: int) -> str:
  """Images/s of the whole evaluation and of its parts."""
  per_s = lambda k: num_images / times[k]
  other = times["serial/whole"] - sum(times[f"serial/{k}"] for k in ("predict", "add", "write"))
  return "\n".join([
      f"whole --mode=eval on {jax.default_backend()} ({times['detections']:.1f} detections "
      f"per image): {per_s('whole'):.2f} images/s (compiling, on one batch: "
      f"{times['compile']:.1f} s)",
      f"waiting for each predict step: {per_s('serial/whole'):.2f} images/s; s/image: "
      f"predict step {times['serial/predict'] / num_images:.3f}, host Evaluator.add "
      f"{times['serial/add'] / num_images:.3f}, write {times['serial/write'] / num_images:.3f}, "
      f"data and the rest {other / num_images:.3f}"])


def summary(times: dict[str, float], num_images: int, full: int = FULL_SCALE) -> str:
  """A before/after table in ms per image, ratios and images/s of the host's work.

  Of `write`, the COCO results grow with the images, the rest (pictures, tables of
  classes) is once per evaluation: images/s are given for `num_images` and `full` images.
  """
  ms = {k: v / num_images * 1e3 for k, v in times.items()}
  rest_before = ms["before/add"] - ms["before/paste"]
  rest_after = ms["after/add"] - ms["after/rle"]
  fixed = times["write"] - times["write/results"]  # Seconds per evaluation.
  rows = [  # (part, before, after)
      ("paste, RLE, painting", ms["before/paste"], ms["after/rle"]),
      ("metrics: GT label maps", ms["gt"], 0.0),
      ("metrics: confusion, P/R", rest_before, rest_after),
      ("metrics: COCOeval pycocotools", ms["result/pycocotools"], ms["result/pycocotools"]),
      ("write: COCO results", ms["write/results"], ms["write/results"]),
  ]
  before = sum(r[1] for r in rows)
  after = sum(r[2] for r in rows)
  faster = after - ms["result/pycocotools"] + ms["result/faster_coco_eval"]
  per_s = lambda per_image, count: count / (count * per_image + fixed * 1e3) * 1e3
  lines = [f"{'host CPU ms/image':36s} {'before':>9s} {'after':>9s}"]
  lines += [f"{name:36s} {b:9.2f} {a:9.2f}" for name, b, a in rows]
  lines += [f"{'total':36s} {before:9.2f} {after:9.2f}",
            f"{'total, COCOeval faster_coco_eval':36s} {'':9s} {faster:9.2f}",
            f"write: pictures and tables, once per evaluation: {fixed:.2f} s"]
  for count in (num_images, full):
    lines.append(f"host images/s, {count} images: before {per_s(before, count):.1f}, after "
                 f"{per_s(after, count):.1f} (pycocotools), {per_s(faster, count):.1f} "
                 f"(faster_coco_eval)")
  lines += [
      f"after/before (per image) {after / before:.3f}",
      f"device pasting on {jax.default_backend()}: {ms['device']:.1f} ms/image (wall)",
      "after: GT label maps decoded in an earlier evaluation of the run; model forward "
      "not included"]
  return "\n".join(lines)


def main(argv):
  del argv
  if _NUM_IMAGES.value:
    times = run(_NUM_IMAGES.value, _HEIGHT.value, _WIDTH.value, _DETECTIONS.value,
                _BATCH.value, _CLASS_SET.value, _OUT_DIR.value, scale=_SCALE.value,
                num_pictures=_PICTURES.value)
    print(f"Evaluation of {_NUM_IMAGES.value} images ({_HEIGHT.value}x{_WIDTH.value}, "
          f"{_DETECTIONS.value} detections):\n{summary(times, _NUM_IMAGES.value)}")
    print(json.dumps(times))
  if _MARGINAL.value:
    counts = [int(c) for c in _MARGINAL.value]
    times = marginal_eval(_MARGINAL_CONFIG.value, _OUT_DIR.value, counts=counts,
                          height=_HEIGHT.value, width=_WIDTH.value,
                          image_size=_MARGINAL_SIZE.value, num_detections=_DETECTIONS.value,
                          backends=_MARGINAL_BACKENDS.value, repeats=_REPEATS.value)
    print(f"main.py --mode=eval ({_HEIGHT.value}x{_WIDTH.value}, {_DETECTIONS.value} "
          f"detections, load {os.getloadavg()[0]:.1f} at the end):\n"
          f"{marginal_summary(times, counts)}")
    print(json.dumps(times))
  if _EVAL_IMAGES.value:
    times = whole_eval(_CONFIG.value, _OUT_DIR.value, num_images=_EVAL_IMAGES.value,
                       height=_HEIGHT.value, width=_WIDTH.value,
                       num_detections=_DETECTIONS.value, batch_size=_BATCH.value,
                       scale=_SCALE.value)
    print(f"Whole evaluation of {_EVAL_IMAGES.value} images ({_HEIGHT.value}x{_WIDTH.value}):\n"
          f"{eval_summary(times, _EVAL_IMAGES.value)}")
    print(json.dumps(times))


if __name__ == "__main__":
  app.run(main)
