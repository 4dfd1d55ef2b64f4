"""torch's side of the parity tests, run in its own process with the torch venv's python.

tensorflow and torch in one process segfault, so no test process imports torch: a parity
test runs a reference script (plain torch + numpy, no package import) with
`.venv-torch/bin/python` (`make torch-venv`; another with MASKRCNN_JAX_TORCH_PYTHON) and
reads the arrays it writes. The script's command line is `SCRIPT SPEC_JSON OUT_NPZ`;
input arrays, if any, are in the npz file `spec["inputs"]`.
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


def run(python: str, script: str, spec: dict, out_path: str,
        inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """Runs `script` (a path under the repository) with `spec` and `inputs`; its npz output."""
  if inputs:
    spec = {**spec, "inputs": out_path + ".inputs.npz"}
    np.savez(spec["inputs"], **inputs)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  proc = subprocess.run([python, os.path.join(ROOT, script), json.dumps(spec), out_path],
                        capture_output=True, text=True, cwd=ROOT, env=env, check=False)
  if proc.returncode:
    raise RuntimeError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  with np.load(out_path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


@functools.cache
def site_packages(python: str) -> str:
  """The torch venv's site-packages: lets a subprocess of ours read `.pth` files."""
  proc = subprocess.run([python, "-c", "import os, torch; print(os.path.dirname("
                         "os.path.dirname(torch.__file__)))"],
                        capture_output=True, text=True, check=True)
  return proc.stdout.strip()
