"""One long-lived torch process that runs the reference scripts' `main(spec, out_path)`.

  .venv-torch/bin/python tests/torch_worker.py

torch and torchvision are imported once per test run instead of once per case. Each line
on stdin is a request, {"script": PATH, "spec": {...}, "out": NPZ_PATH}; each answer is one
line on stdout, {"error": null} or {"error": TRACEBACK}. What the scripts print goes to
stderr. Every request starts from the generator state of a fresh process, so a script
gives what it gives when run alone.
"""

import importlib.util
import json
import os
import sys
import traceback


def _load(path: str, modules: dict):
  if path not in modules:
    sys.path.insert(0, os.path.dirname(path))  # The script's own imports, as when run alone.
    spec = importlib.util.spec_from_file_location(f"reference_{len(modules)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    modules[path] = module
  return modules[path]


def main():
  answers = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top,unused-import
  seed = torch.initial_seed()
  modules = {}
  for line in sys.stdin:
    request = json.loads(line)
    torch.manual_seed(seed)
    try:
      _load(request["script"], modules).main(request["spec"], request["out"])
      error = None
    except Exception:  # pylint: disable=broad-except
      error = traceback.format_exc()
    answers.write(json.dumps({"error": error}) + "\n")
    answers.flush()


if __name__ == "__main__":
  main()
