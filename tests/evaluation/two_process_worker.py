"""One of two jax.distributed processes on localhost, started by test_run_eval.py.

Uneven shards: the validation loss's batches of process 0 are [full, full, padded] and
of process 1 [full, padded, padded]; every process must use batch 0 only (a local
decision would make process 0 run a second collective that process 1 never joins).
Then each process scores its own images (`IMAGES_OF[process]`) and process 0 merges.
Prints JSON: the losses and, on process 0, the merged metrics.
"""

import argparse
import json
import sys

import jax
import numpy as np

IMAGES_OF = ((1, 2, 3), (4, 5))  # Image ids of each process: uneven.
VALID_OF = (((1, 1), (1, 1), (1, 0)), ((1, 1), (1, 0), (0, 0)))  # Local batches of 2.


def data(gt_path: str, class_set):
  """The GT file and, per image id, (batch, detections) of that one image."""
  from bench import fakes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  fakes.fake_ground_truth(gt_path, 5, 30, 40, class_set, rng)
  return {i: fakes.fake_batch([i], 30, 40, 1.0, 6, class_set.num_classes, rng)
          for i in range(1, 6)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--port", type=int)
  parser.add_argument("--dir")
  args = parser.parse_args()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=2,
                             process_id=args.process_id)
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import categories  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.evaluation import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.evaluation import run_eval  # pylint: disable=g-import-not-at-top

  mesh = Mesh(np.asarray(jax.devices()), (run_eval.AXIS,))
  sharding = NamedSharding(mesh, P(run_eval.AXIS))
  me = args.process_id

  def batches():
    for j, valid in enumerate(VALID_OF[me]):
      local = dict(image_valid=np.array(valid, bool),
                   x=np.full(2, 10.0 * j + me, np.float32))
      yield local, jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), local)

  def loss_step(variables, batch, rng):
    del variables, rng
    return {"x": jax.jit(lambda x: x.mean())(batch["x"])}  # A global reduction.

  losses = run_eval.mean_losses(batches(), loss_step, {}, jax.random.key(0), 2)

  cs = categories.get_class_set("stuff")
  gt = f"{args.dir}/gt.json"
  per_image = data(gt, cs)
  # pycocotools: each process matches its own images (`coco_eval.evaluate_images`).
  ev = evaluator_lib.Evaluator([gt], cs, num_pictures=0, coco_backend="pycocotools")
  for i in IMAGES_OF[me]:
    ev.add(*per_image[i])
  run_eval.merge_processes(ev, f"{args.dir}/eval")
  out = {"losses": losses, "metrics": ev.result() if me == 0 else None}
  json.dump(out, sys.stdout)


if __name__ == "__main__":
  main()
