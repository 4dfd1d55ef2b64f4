"""Train-step time per fine-tuning stage: frozen stages cost no backward pass.

  python -m bench.stages --config configs/demo.py
  python -m bench.stages --config configs/default.py --depth 101 --size 512 --batch 1

Prints, for each stage of the config, the compile time and the median step time of the
real training step (`training.train.make_train_step`) on a synthetic batch.
"""

import argparse
import importlib.util

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from bench import run as bench_run
from maskrcnn_jax import models
from maskrcnn_jax.data import categories
from maskrcnn_jax.training import train


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def synthetic_batch(config, batch_size: int, rng: np.random.Generator):
  """Random image, 3 GT boxes with full masks per image."""
  batch = train.dummy_batch(config.data, batch_size)
  s = config.data.image_size
  batch["image"] = rng.integers(0, 256, batch["image"].shape, dtype=np.uint8)
  for b in range(batch_size):
    for i in range(3):
      x1, y1 = rng.uniform(0, s / 2, 2)
      w, h = rng.uniform(s / 8, s / 2, 2)
      batch["boxes"][b, i] = (x1, y1, x1 + w, y1 + h)
      batch["classes"][b, i] = i + 1
      batch["masks"][b, i] = 1
      batch["valid"][b, i] = True
  return batch


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--depth", type=int, default=0, help="overrides model.depth")
  parser.add_argument("--size", type=int, default=0, help="overrides data.image_size")
  parser.add_argument("--batch", type=int, default=0, help="overrides the global batch")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per stage")
  args = parser.parse_args()
  config = load_config(args.config)
  config.model.depth = args.depth or config.model.depth
  config.data.image_size = args.size or config.data.image_size
  batch_size = args.batch or config.train.global_batch_size
  class_set = categories.get_class_set(config.data.class_set)
  model = models.build(config.model, num_classes=class_set.num_classes + 1)
  mesh = train.make_mesh()
  variables = train.init_variables(model, config.data, jax.random.key(0),
                                   NamedSharding(mesh, P()))
  batch = synthetic_batch(config, batch_size, np.random.default_rng(0))
  print(f"R{config.model.depth}-FPN {config.data.image_size}² batch {batch_size}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  print(f"{'stage':>8} {'trainable':>10} {'compile s':>10} {'step s':>8}")
  for stage in config.train.stages:
    compile_s, run, _ = bench_run.compiled_train_step(model, variables, config, stage, mesh,
                                                      batch)
    step_s = bench_run._time(run, args.steps, 1)  # pylint: disable=protected-access
    print(f"{stage.name:>8} {str(stage.trainable):>10} {compile_s:10.1f} {step_s:8.3f}")


if __name__ == "__main__":
  main()
