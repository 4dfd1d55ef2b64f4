"""Runs a few train steps of the tiny model and prints losses and a parameter digest (JSON).

Started by test_train.py in subprocesses: on 1 device, on 8 fake CPU devices
(XLA_FLAGS), and as one of two jax.distributed processes on localhost. Every image of
the global batch is the same and sampling keeps every candidate, so the per-device
losses do not depend on how the batch is split: all runs must agree.
"""

import argparse
import json
import sys

import jax
import numpy as np

GLOBAL_BATCH = 8


def batch_of(n: int, config) -> dict[str, np.ndarray]:
  from maskrcnn_jax.training import train  # pylint: disable=g-import-not-at-top
  batch = train.dummy_batch(config.data, n)
  rows = np.arange(64)[:, None, None]
  batch["image"][:] = (rows * 3 + np.arange(3) * 40).astype(np.uint8)
  batch["image"][:, 8:40, 8:40] = (200, 30, 30)
  batch["image"][:, 20:50, 30:60] = (30, 200, 30)
  batch["boxes"][:, :2] = [[8, 8, 40, 40], [30, 20, 60, 50]]
  batch["classes"][:, :2] = [1, 2]
  batch["masks"][:, :2] = 1
  batch["valid"][:, :2] = True
  return batch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--process_id", type=int, default=-1)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  if args.process_id >= 0:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id)

  from configs import tiny  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import optimizer  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.training import train  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  config.model.rpn.samples_per_image = 1023  # All anchors of a 64² image, and every RoI
  # (32 proposals + 6 GT): no sampling noise.
  config.model.rpn.positive_fraction = 1.0
  config.model.roi_heads.rois_per_image = 38
  config.model.roi_heads.positive_fraction = 1.0
  model = models.build(config.model, num_classes=3)
  mesh = train.make_mesh()
  replicated = NamedSharding(mesh, P())
  stage = config.train.stages[0]
  variables = train.init_variables(model, config.data, jax.random.key(0), replicated)
  mask = optimizer.trainable_mask(variables["params"], "all", freeze_at=config.model.freeze_at)
  tx = optimizer.make_optimizer(config.train, stage)
  state = train.create_state(variables, tx, mask, replicated)
  step = train.make_train_step(mesh, model=model, tx=tx, mask=mask,
                               lr_fn=optimizer.learning_rate(config.train, stage),
                               stage_start=0)
  local = batch_of(GLOBAL_BATCH // jax.process_count(), config)
  sharding = NamedSharding(mesh, P(train.AXIS))
  batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
  losses = []
  for _ in range(args.steps):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics["total_loss"]))
  leaves = [np.asarray(x.addressable_data(0), np.float64) for x in jax.tree.leaves(state.params)]
  digest = [float(np.abs(x).sum()) for x in leaves]  # One number per parameter array.
  json.dump({"devices": jax.device_count(), "losses": losses, "params": digest}, sys.stdout)


if __name__ == "__main__":
  main()
