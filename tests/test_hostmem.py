"""hostmem: the tunable is added once and kept where set, the restart happens only for the
CPU backend without a tracer, and it gives huge pages."""

import os
import subprocess
import sys

import pytest

from maskrcnn_jax import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("before,after", [
    ("", "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", None),
    ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", None),
])
def test_with_huge_pages(before, after):
  assert hostmem.with_huge_pages(before) == after


@pytest.mark.parametrize("on_request, tunables, restarted", [
    (True, "", "glibc.malloc.hugetlb=1"),
    (True, "glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    (True, "glibc.malloc.hugetlb=0", None),  # The user's choice is kept.
    (True, "glibc.malloc.hugetlb=1", None),  # Restarted already: once only.
    (False, "", None),  # THP `always`/`never`, or no glibc >= 2.35: nothing to gain.
])
def test_restart_only_where_it_changes_something(monkeypatch, on_request, tunables,
                                                 restarted):
  calls = []
  monkeypatch.setattr(hostmem, "huge_pages_on_request", lambda: on_request)
  monkeypatch.setattr(hostmem, "cpu_backend", lambda: True)
  monkeypatch.setattr(hostmem.sys, "gettrace", lambda: None)  # Coverage may trace tests.
  monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
  monkeypatch.setenv("GLIBC_TUNABLES", tunables)
  hostmem.restart_with_huge_pages()
  if restarted is None:
    assert not calls
  else:
    assert calls == [(sys.executable, sys.orig_argv, {**os.environ,
                                                      "GLIBC_TUNABLES": restarted})]


@pytest.mark.parametrize("cpu, tracer", [(False, None), (True, lambda *args: None)])
def test_no_restart_on_an_accelerator_or_under_a_tracer(monkeypatch, cpu, tracer):
  calls = []
  monkeypatch.setattr(hostmem, "huge_pages_on_request", lambda: True)
  monkeypatch.setattr(hostmem, "cpu_backend", lambda: cpu)
  monkeypatch.setattr(hostmem.sys, "gettrace", lambda: tracer)
  monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
  monkeypatch.setenv("GLIBC_TUNABLES", "")
  hostmem.restart_with_huge_pages()
  assert not calls


def test_cpu_backend_from_jax_platforms_and_devices(tmp_path):
  root = str(tmp_path)
  assert hostmem.cpu_backend({}, root=root)
  assert hostmem.cpu_backend({"JAX_PLATFORMS": "cpu"}, root=root)
  assert not hostmem.cpu_backend({"JAX_PLATFORMS": "cuda,cpu"}, root=root)
  assert not hostmem.cpu_backend({"JAX_PLATFORMS": "tpu"}, root=root)
  (tmp_path / "dev").mkdir()
  (tmp_path / "dev" / "nvidia0").touch()
  assert not hostmem.cpu_backend({}, root=root)
  assert hostmem.cpu_backend({"JAX_PLATFORMS": "cpu"}, root=root)  # Asked for the CPU.
  tpu = tmp_path / "tpu"
  chip = tpu / "sys/bus/pci/devices/0000:00:05.0"
  chip.mkdir(parents=True)
  (chip / "vendor").write_text("0x1ae0\n")
  (chip / "device").write_text("0x0063\n")  # A v5e chip.
  assert not hostmem.cpu_backend({}, root=str(tpu))


def test_huge_pages_on_request_reads_the_kernel_and_libc(monkeypatch):
  for mode, libc, expected in [("madvise", ("glibc", "2.35"), True),
                               ("madvise", ("glibc", "2.31"), False),
                               ("always", ("glibc", "2.39"), False),
                               ("never", ("glibc", "2.39"), False),
                               ("madvise", ("", ""), False)]:
    monkeypatch.setattr(hostmem, "thp_mode", lambda mode=mode: mode)
    monkeypatch.setattr(hostmem.platform, "libc_ver", lambda libc=libc: libc)
    assert hostmem.huge_pages_on_request() is expected, (mode, libc)


# A child that restarts, then reports its PID and the tunables it runs with.
_CHILD = """
import os
from maskrcnn_jax import hostmem
hostmem.restart_with_huge_pages()
print(os.getpid(), os.environ.get("GLIBC_TUNABLES", "-"))
"""


def _child(tunables):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  env["PYTHONPATH"] = ROOT
  proc = subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE,
                          text=True)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0
  pid, env_tunables = out.split()
  assert int(pid) == proc.pid  # Re-executed in place: same process for signals and launchers.
  return env_tunables


@pytest.mark.skipif(not hostmem.huge_pages_on_request() or not hostmem.cpu_backend(),
                    reason="needs transparent huge pages in madvise mode, glibc >= 2.35 and "
                    "no accelerator")
def test_restart_in_place_with_the_tunable_unless_switched_off():
  assert _child(None) == "glibc.malloc.hugetlb=1"
  assert _child("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"
