"""Shared test setup.

- Parity tests compare with torch, which runs in its own process (tests/torch_parity.py):
  the `torch_reference` fixture. A test that uses it, or is marked `parity`, fails when it
  is skipped (no torch venv, ...) unless MASKRCNN_JAX_ALLOW_SKIP_PARITY=1.
- The tiny config's synthetic data and a run of it trained through both stages are made
  once per test run (`tiny_data`, `tiny_run`); tests that write to a run copy it first
  (`tiny_workdir`). Under pytest-xdist the tests of each such fixture share a worker.
- Tests compile many small programs and run them a few times, so XLA's optimisation
  passes would dominate their time: they are off unless a test or module is marked
  `optimized` (it runs many steps, or large models). Compiled programs are also cached
  on disk for the session, so tests (and the subprocesses they start) that build the same
  step do not compile again.
"""

import contextlib
import copy
import os
import shutil
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


@contextlib.contextmanager
def _xla_optimizations(on: bool):
  """XLA's optimisations on or off for the programs compiled inside; then as before."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", not on)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


def _optimizations(node):
  """XLA's optimisations on while `node` runs, if it is marked `optimized` itself."""
  on = any(m.name == "optimized" for m in node.own_markers)
  with _xla_optimizations(True) if on else contextlib.nullcontext():
    yield


@pytest.fixture(scope="session")
def unoptimized():
  """`with unoptimized():` in an `optimized` test or module: XLA's optimisations off for a
  program compiled there and run once (an init, a single forward), where they cost more
  than they save."""
  return lambda: _xla_optimizations(False)


@pytest.fixture(autouse=True, scope="module")
def optimized_module(request):
  """A module marked `optimized` (`pytestmark`): its module fixtures compile optimised too."""
  yield from _optimizations(request.node)


@pytest.fixture(autouse=True)
def optimized(request):
  yield from _optimizations(request.node)


@pytest.fixture(scope="session")
def torch_reference(tmp_path_factory):
  """`run(script, inputs=None, **spec) -> {name: array}`: a reference script's output.

  `inputs` ({name: array}) reach the script as the npz file `spec["inputs"]`
  (tests/torch_parity.py).
  """
  python, why = torch_parity.torch_python()
  if python is None:
    pytest.skip(why)
  worker = torch_parity.Worker(python, str(tmp_path_factory.mktemp("torch_worker") / "log.txt"))

  def run(script, inputs=None, **spec):
    out = tmp_path_factory.mktemp("torch_reference") / "out.npz"
    try:
      return worker.run(script, spec, str(out), inputs)
    finally:  # Reference weights are large; the arrays are in memory.
      out.unlink(missing_ok=True)
      out.with_name(out.name + ".inputs.npz").unlink(missing_ok=True)

  yield run
  worker.close()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
  """The tiny config's synthetic data root with its TFRecords; tests must not modify it."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.data import build  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.root = str(tmp_path_factory.mktemp("tiny_data") / "data")
  build.prepare(config.data)
  return config.data.root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
  """(config, workdir, result) of `--mode=train` with the tiny config on `tiny_data`: its
  stages heads (2 steps) and 4+ (2 steps), as main.py runs them; tests must not modify it."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import run  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.root = tiny_data
  workdir = tmp_path_factory.mktemp("tiny_run")
  run.write_config(config, str(workdir))
  return config, workdir, run.run(config, str(workdir), "train")


@pytest.fixture(scope="module")
def tiny_workdir(tiny_run, tmp_path_factory):
  """(config, workdir): a copy of `tiny_run`'s config and workdir the module may change."""
  config, workdir, _ = tiny_run
  copied = tmp_path_factory.mktemp("tiny_workdir") / "run"
  shutil.copytree(workdir, copied)
  return copy.deepcopy(config), copied


# Under pytest-xdist (`make test`, `--dist loadgroup`) each group runs on one worker, so that
# a fixture is made once per test run: the tests of a costly session fixture form a group,
# and the other tests one group per module (module fixtures: compiled models, references).
# The first fixture listed that a test uses names its group: the multi-process runs (their
# processes, not the worker, do the work) leave the tiny group for the other worker, which
# builds its own copy of the tiny data (seconds).
_GROUPS = {"equivalence_reference": "equivalence", "torch_reference": "torch",
           "tiny_data": "tiny", "tiny_run": "tiny", "tiny_workdir": "tiny"}


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist reads the groups.
def pytest_collection_modifyitems(items):
  group = {}
  for item in items:
    fixtures = getattr(item, "fixturenames", ())
    if "torch_reference" in fixtures:
      item.add_marker(pytest.mark.parity)
    module = item.nodeid.split("::")[0].removeprefix("tests/").removesuffix(".py")
    group[item] = next((g for f, g in _GROUPS.items() if f in fixtures), module)
    item.add_marker(pytest.mark.xdist_group(group[item]))
  # The longest groups first (`make test` keeps this order: --no-loadscope-reorder): xdist
  # hands out groups in order, so the long ones start at once and short ones fill in.
  seconds = {}
  for item in items:
    seconds[group[item]] = seconds.get(group[item], 0) + _seconds(item)
  items.sort(key=lambda item: -seconds[group[item]])


def _seconds(item) -> float:
  """A test's expected cost: `slow(seconds=N)`'s measured N, 10 for another slow test, else 1."""
  slow = item.get_closest_marker("slow")
  return 1 if slow is None else slow.kwargs.get("seconds", 10)


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
