"""Shared test setup.

- torch for parity tests lives in its own venv, found through TORCH_SITE.
- Tests compile many small programs and run them a few times, so XLA's optimisation
  passes would dominate their time: they are off unless a test is marked `optimized`
  (it runs many steps). Compiled programs are also cached on disk for the session, so
  tests (and the subprocesses they start) that build the same step do not compile again.
"""

import os
import sys
import tempfile

import jax
import pytest

if os.environ.get("TORCH_SITE"):
  sys.path.append(os.environ["TORCH_SITE"])  # Appended: the project's own packages win.

_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               os.path.join(tempfile.gettempdir(), "maskrcnn_jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True)
def optimized(request):
  if request.node.get_closest_marker("optimized") is None:
    yield
    return
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", True)
