"""hostmem: the tunable is added once and kept where set, and the restart gives huge pages."""

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
  monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
  monkeypatch.setenv("GLIBC_TUNABLES", tunables)
  hostmem.restart_with_huge_pages()
  if restarted is None:
    assert not calls
  else:
    assert calls == [(sys.executable, sys.orig_argv, {**os.environ,
                                                      "GLIBC_TUNABLES": restarted})]


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


@pytest.mark.skipif(not hostmem.huge_pages_on_request(),
                    reason="needs transparent huge pages in madvise mode and glibc >= 2.35")
def test_restart_in_place_with_the_tunable_unless_switched_off():
  assert _child(None) == "glibc.malloc.hugetlb=1"
  assert _child("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"
