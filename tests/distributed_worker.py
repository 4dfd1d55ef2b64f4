"""One process of a localhost job, launched by test_distributed.py through the manual path.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=I \
      python distributed_worker.py {join,preempt}

Prints one JSON line: the topology it joined (`join`), or the step at which the
preemption agreement stopped it after process 1 sent itself SIGTERM at step 3 (`preempt`).
"""

import json
import os
import signal
import sys
import time

import jax

from maskrcnn_jax import distributed


def main(mode: str):
  timeout_s = int(os.environ.get("MASKRCNN_JAX_TEST_JOIN_TIMEOUT", "60"))
  distributed.initialize(distributed.detect(), timeout_s=timeout_s)
  out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
         "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}
  if mode == "preempt":
    with distributed.Preemption() as preemption:
      for step in range(1, 400):
        if step == 3 and jax.process_index() == 1:
          os.kill(os.getpid(), signal.SIGTERM)
        if preemption.check(step):
          out["stopped_at"] = step
          break
        time.sleep(0.02)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
