"""What the benchmarks share: configs, the synthetic batch, timing.

Imports only NumPy and the standard library: torchvision's side of a benchmark runs in the
torch venv (`bench.TORCH_PYTHON`), which has neither jax nor ml_collections.
"""

import importlib.util
import resource
import time

import numpy as np


def load_config(path: str):
  """`get_config()` of the config file at `path`."""
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def default_config(depth: int, size: int):
  """configs/default.py at ResNet `depth` and a `size`² canvas (resize `longest`), with
  torchvision's layout of the model (torchvision's Mask R-CNN is the peer)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  default.torchvision_weights(config.model)
  config.model.depth = depth
  config.data.resize, config.data.image_size = "longest", size
  return config


def override(config, pairs: list[tuple[str, str]]) -> None:
  """Applies `--set key=value` pairs to `config` in place, typed as the existing value."""
  for key, value in pairs:
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = type(target[leaf])(value) if not isinstance(target[leaf], bool) else (
        value.lower() in ("1", "true"))


def synthetic_batch(batch_size: int, size: int, instances: int, *, mask_size: int = 28,
                    max_instances: int = 0, num_classes: int = 92, full_masks: bool = False,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """A training batch (`train.dummy_batch`'s keys) of random pixels and random GT.

  Per image `instances` boxes of 32..size/2 px, classes in [1, num_classes), masks that
  fill the box (`masks`: Sm x Sm crops of ones; with `full_masks`, also the S x S masks
  torchvision takes); rows up to `max_instances` are padding, as the input pipeline pads.
  """
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, size / 2, (batch_size, instances, 2))
  wh = rng.uniform(32, size / 2, (batch_size, instances, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, size)], -1).astype(np.float32)
  image = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
  classes = rng.integers(1, num_classes, (batch_size, instances)).astype(np.int32)
  pad = max(max_instances - instances, 0)
  grow = lambda x: np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  batch = {
      "image": image,
      "image_id": np.arange(batch_size, dtype=np.int32),
      "image_info": np.tile(np.array([[size, size, 1.0, size, size]], np.float32),
                            (batch_size, 1)),
      "boxes": grow(boxes),
      "classes": grow(classes),
      "masks": grow(np.ones((batch_size, instances, mask_size, mask_size), np.uint8)),
      "valid": grow(np.ones((batch_size, instances), bool)),
      "num_truncated": np.zeros((batch_size,), np.int32),
  }
  if full_masks:
    full = np.zeros((batch_size, instances, size, size), np.uint8)
    for b, i in np.ndindex(batch_size, instances):
      x1, y1, x2, y2 = boxes[b, i].astype(int)
      full[b, i, y1:y2, x1:x2] = 1
    batch["full_masks"] = grow(full)
  return batch


def timed(fn, *args, clock=time.perf_counter, **kwargs):
  """(`fn(*args, **kwargs)`, what `clock` advanced during the call: wall seconds by default)."""
  start = clock()
  out = fn(*args, **kwargs)
  return out, clock() - start


def step_times(fn, steps: int, warmup: int) -> tuple[float, float]:
  """(median, minimum) wall seconds of `steps` calls `fn()` after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = [timed(fn)[1] for _ in range(steps)]
  return float(np.median(times)), float(np.min(times))


def peak_rss_mb() -> float:
  """This process's peak resident memory."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
