"""One process of a localhost job, launched by test_distributed.py through the manual path.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=I \
      python distributed_worker.py {join,preempt,preempt_before_join,prepare}

Prints one JSON line: the topology it joined (`join`), or the check at which the
preemption agreement stopped it after process 1 sent itself SIGTERM at check 3
(`preempt`) or before the join (`preempt_before_join`), as main.py enters the
preemption handling before the join; or (`prepare`) what `build.prepare` gave each
process, for a synthetic set process 0 takes 2 s to build, then for a root whose
annotations hold category 999, in MASKRCNN_JAX_TEST_DATA.
"""

import json
import os
import pathlib
import signal
import sys
import time

from absl import logging
import jax

from maskrcnn_jax import distributed


def main(mode: str):
  timeout_s = int(os.environ.get("MASKRCNN_JAX_TEST_JOIN_TIMEOUT", "60"))
  with distributed.Preemption() as preemption:
    if mode == "preempt_before_join" and os.environ["JAX_PROCESS_ID"] == "1":
      os.kill(os.getpid(), signal.SIGTERM)
    distributed.initialize(distributed.detect(), timeout_s=timeout_s)
    preemption.joined()
    out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
           "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}
    if mode == "prepare":
      out.update(_prepare(pathlib.Path(os.environ["MASKRCNN_JAX_TEST_DATA"])))
    elif mode != "join":
      for check in range(1, 400):
        if mode == "preempt" and check == 3 and jax.process_index() == 1:
          os.kill(os.getpid(), signal.SIGTERM)
        if preemption.check():
          out["stopped_at"] = check
          break
        time.sleep(0.02)
  print(json.dumps(out), flush=True)


def _prepare(tmp: pathlib.Path) -> dict:
  from configs import default  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import build  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import DataError  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  build.LOG_EVERY_S = 0.5
  config = default.get_config().data
  config.update(root=str(tmp / "synthetic"), mask_size=16, build_workers=1)
  config.synthetic.update(enabled=True, num_train=4, num_val=2, image_size=32)
  out = {}
  if jax.process_index() == 0:  # A build that takes 2 s more, from process 1's start on.
    distributed.wait_for("test/ready", what="process 1", timeout_s=60)
    build_ = build._build  # pylint: disable=protected-access
    build._build = lambda c: (time.sleep(2), build_(c))[1]  # pylint: disable=protected-access
  else:
    distributed.publish("test/ready", "")
  out["train_examples"] = build.prepare(config).info.splits["train"].num_examples
  config.update(root=str(tmp / "bad"))
  config.synthetic.enabled = False
  if jax.process_index() == 0:
    synthetic.write_synthetic(tmp / "bad", num_train=2, num_val=1, image_size=32, seed=0)
    path = tmp / "bad" / "annotations" / "stuff_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(data))
  try:
    build.prepare(config)
  except DataError as e:
    out["error"] = str(e)
  return out


if __name__ == "__main__":
  main(sys.argv[1])
