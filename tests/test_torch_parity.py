"""The parity infrastructure: finding the torch venv, and skipped parity tests failing."""

import os
import subprocess
import sys

import torch_parity

_SKIPPING = '''
import pytest

@pytest.mark.parity
def test_parity():
  pytest.skip("no reference")

def test_in_process_torch():
  pytest.importorskip("torch_missing_here")  # As an in-process torch test without torch.
'''


def _run(tmp_path, allow: bool):
  (tmp_path / "test_skipping.py").write_text(_SKIPPING)
  env = {k: v for k, v in os.environ.items() if k != torch_parity.ALLOW_SKIP_ENV}
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), torch_parity.ROOT])
  if allow:
    env[torch_parity.ALLOW_SKIP_ENV] = "1"
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest",
                         "-p", "no:cacheprovider", "test_skipping.py"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, check=False)


def test_skipped_parity_tests_fail_unless_allowed(tmp_path):
  proc = _run(tmp_path, allow=False)
  assert proc.returncode == 1 and "2 failed" in proc.stdout, proc.stdout
  assert "parity test skipped: Skipped: no reference" in proc.stdout
  assert f"{torch_parity.ALLOW_SKIP_ENV}=1 to allow" in proc.stdout
  proc = _run(tmp_path, allow=True)
  assert proc.returncode == 0 and "2 skipped" in proc.stdout, proc.stdout


def test_torch_python_reports_what_is_missing(monkeypatch, tmp_path):
  monkeypatch.setenv(torch_parity.PYTHON_ENV, str(tmp_path / "none" / "python"))
  torch_parity.torch_python.cache_clear()
  python, why = torch_parity.torch_python()
  assert python is None and "does not exist: run `make torch-venv`" in why
  # Python runs, torch does not import: a half-made venv.
  monkeypatch.setenv(torch_parity.PYTHON_ENV, sys.executable)
  torch_parity.torch_python.cache_clear()
  python, why = torch_parity.torch_python()
  assert python is None and "cannot import torch and torchvision (a half-made venv?" in why
  torch_parity.torch_python.cache_clear()
