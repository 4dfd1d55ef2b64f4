"""Shared test setup.

- Parity tests compare with torch, which runs in its own process (tests/torch_parity.py):
  the `torch_reference` fixture. A test that uses it, or is marked `parity`, fails when it
  is skipped (no torch venv, ...) unless MASKRCNN_JAX_ALLOW_SKIP_PARITY=1.
- Tests compile many small programs and run them a few times, so XLA's optimisation
  passes would dominate their time: they are off unless a test is marked `optimized`
  (it runs many steps). Compiled programs are also cached on disk for the session, so
  tests (and the subprocesses they start) that build the same step do not compile again.
"""

import os
import tempfile

import jax
import pytest

import torch_parity

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


@pytest.fixture(scope="session")
def torch_reference(tmp_path_factory):
  """`run(script, inputs=None, **spec) -> {name: array}`: a reference script's output.

  `inputs` ({name: array}) reach the script as the npz file `spec["inputs"]`
  (tests/torch_parity.py).
  """
  python, why = torch_parity.torch_python()
  if python is None:
    pytest.skip(why)

  def run(script, inputs=None, **spec):
    out = tmp_path_factory.mktemp("torch_reference") / "out.npz"
    try:
      return torch_parity.run(python, script, spec, str(out), inputs)
    finally:  # Reference weights are large; the arrays are in memory.
      out.unlink(missing_ok=True)
      out.with_name(out.name + ".inputs.npz").unlink(missing_ok=True)

  return run


def pytest_collection_modifyitems(items):
  for item in items:
    if "torch_reference" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.parity)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """A skipped parity test fails, unless MASKRCNN_JAX_ALLOW_SKIP_PARITY=1.

  A test that skips because torch does not import in the test process counts as one: its
  torch side belongs in a reference script (tests/torch_parity.py).
  """
  report = (yield).get_result()
  if not report.skipped or hasattr(report, "wasxfail"):
    return
  reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
  if ((item.get_closest_marker("parity") is not None or "could not import 'torch" in reason)
      and os.environ.get(torch_parity.ALLOW_SKIP_ENV) != "1"):
    report.outcome = "failed"
    report.longrepr = (f"parity test skipped: {reason}\n(set "
                       f"{torch_parity.ALLOW_SKIP_ENV}=1 to allow skipping parity tests)")
