"""Train-step time per fine-tuning stage: frozen stages cost no backward pass.

  python -m bench.stages --config configs/demo.py
  python -m bench.stages --config configs/default.py --depth 101 --size 512 --batch 1

Prints, for each stage of the config, the compile time and the median step time of the
real training step (`training.train.make_train_step`) on a synthetic batch.
"""

import argparse

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from bench import common
from bench import run as bench_run
from maskrcnn_jax import models
from maskrcnn_jax.data import categories
from maskrcnn_jax.data import images
from maskrcnn_jax.training import train


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--depth", type=int, default=0, help="overrides model.depth")
  parser.add_argument("--size", type=int, default=0,
                      help="a size² canvas: data.image_size, resize longest")
  parser.add_argument("--batch", type=int, default=0, help="overrides the global batch")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per stage")
  args = parser.parse_args()
  config = common.load_config(args.config)
  config.model.depth = args.depth or config.model.depth
  if args.size:
    config.data.resize, config.data.image_size = "longest", args.size
  size, _ = images.canvas(config.data)  # Square canvases only.
  batch_size = args.batch or config.train.global_batch_size
  class_set = categories.get_class_set(config.data.class_set)
  model = models.build(config.model, num_classes=class_set.num_classes + 1)
  mesh = train.make_mesh()
  variables = train.init_variables(model, config.data, jax.random.key(0),
                                   NamedSharding(mesh, P()))
  batch = common.synthetic_batch(batch_size, size, 3,
                                 mask_size=config.data.mask_size,
                                 max_instances=config.data.max_instances,
                                 num_classes=class_set.num_classes + 1)
  print(f"R{config.model.depth}-FPN {size}² batch {batch_size}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  print(f"{'stage':>8} {'trainable':>10} {'compile s':>10} {'step s':>8}")
  for stage in config.train.stages:
    compile_s, run, _ = bench_run.compiled_train_step(model, variables, config, stage, mesh,
                                                      batch)
    step_s, _ = common.step_times(run, args.steps, 1)
    print(f"{stage.name:>8} {str(stage.trainable):>10} {compile_s:10.1f} {step_s:8.3f}")


if __name__ == "__main__":
  main()
