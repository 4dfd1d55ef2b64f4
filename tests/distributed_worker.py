"""One process of a localhost job, launched by test_distributed.py through the manual path.

  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=I \
      python distributed_worker.py {join,preempt,preempt_before_join}

Prints one JSON line: the topology it joined (`join`), or the check at which the
preemption agreement stopped it after process 1 sent itself SIGTERM at check 3
(`preempt`) or before the join (`preempt_before_join`), as main.py enters the
preemption handling before the join.
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
  with distributed.Preemption() as preemption:
    if mode == "preempt_before_join" and os.environ["JAX_PROCESS_ID"] == "1":
      os.kill(os.getpid(), signal.SIGTERM)
    distributed.initialize(distributed.detect(), timeout_s=timeout_s)
    preemption.joined()
    out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
           "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}
    if mode != "join":
      for check in range(1, 400):
        if mode == "preempt" and check == 3 and jax.process_index() == 1:
          os.kill(os.getpid(), signal.SIGTERM)
        if preemption.check():
          out["stopped_at"] = check
          break
        time.sleep(0.02)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
