"""Benchmarks (docs/benchmarks.md), each run as `python -m bench.NAME`; `common` and `fakes`
are what they share. torchvision's side runs with TORCH_PYTHON by default."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The torch reference venv in the checkout, made (or repaired) by `make torch-venv`.
TORCH_PYTHON = os.path.join(ROOT, ".venv-torch", "bin", "python")
