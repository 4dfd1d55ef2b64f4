"""Shared test setup: torch for parity tests lives in its own venv, found through TORCH_SITE."""

import os
import sys

if os.environ.get("TORCH_SITE"):
  sys.path.append(os.environ["TORCH_SITE"])  # Appended: the project's own packages win.
