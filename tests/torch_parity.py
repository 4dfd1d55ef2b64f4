"""torch's side of the parity tests, run in its own process with the torch venv's python.

tensorflow and torch in one process segfault, so no test process imports torch: a parity
test runs a reference script (plain torch + numpy, no package import) with
`.venv-torch/bin/python` (`make torch-venv`; another with MASKRCNN_JAX_TORCH_PYTHON) and
reads the arrays it writes. A script's `main(spec, out_path)` runs in one long-lived torch
process per test run (`Worker`); its command line `SCRIPT SPEC_JSON OUT_NPZ` runs it alone.
Input arrays, if any, are in the npz file `spec["inputs"]`.
"""

import functools
import json
import os
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_ENV = "MASKRCNN_JAX_TORCH_PYTHON"
ALLOW_SKIP_ENV = "MASKRCNN_JAX_ALLOW_SKIP_PARITY"


@functools.cache
def torch_python() -> tuple[str | None, str]:
  """(python of the torch venv, "") or (None, why it cannot be used)."""
  python = os.environ.get(PYTHON_ENV) or os.path.join(ROOT, ".venv-torch", "bin", "python")
  if not os.path.exists(python):
    return None, f"{python} does not exist: run `make torch-venv`"
  proc = subprocess.run([python, "-c", "import torch, torchvision"], capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    return None, (f"{python} cannot import torch and torchvision (a half-made venv? "
                  f"`make torch-venv` repairs it): {proc.stderr.strip()[-500:]}")
  return python, ""


class Worker:
  """Runs reference scripts in one torch process (tests/torch_worker.py) for a test run."""

  def __init__(self, python: str, log_path: str):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    self._log_path = log_path
    with open(log_path, "w") as log:
      self._proc = subprocess.Popen([python, os.path.join(ROOT, "tests", "torch_worker.py")],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    text=True, cwd=ROOT, env=env)

  def run(self, script: str, spec: dict, out_path: str,
          inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Runs `script` (a path under the repository) with `spec` and `inputs`; its npz output."""
    if inputs:
      spec = {**spec, "inputs": out_path + ".inputs.npz"}
      np.savez(spec["inputs"], **inputs)
    request = {"script": os.path.join(ROOT, script), "spec": spec, "out": out_path}
    self._proc.stdin.write(json.dumps(request) + "\n")
    self._proc.stdin.flush()
    answer = self._proc.stdout.readline()
    if not answer:
      with open(self._log_path) as log:
        raise RuntimeError(f"the torch worker died ({self._proc.wait()}) in {script}:\n"
                           f"{log.read()[-4000:]}")
    error = json.loads(answer)["error"]
    if error:
      raise RuntimeError(f"{script} failed:\n{error[-4000:]}")
    with np.load(out_path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}

  def close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


@functools.cache
def site_packages(python: str) -> str:
  """The torch venv's site-packages: lets a subprocess of ours read `.pth` files."""
  proc = subprocess.run([python, "-c", "import os, torch; print(os.path.dirname("
                         "os.path.dirname(torch.__file__)))"],
                        capture_output=True, text=True, check=True)
  return proc.stdout.strip()
