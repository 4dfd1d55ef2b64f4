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


# A child that restarts, then fills 256 MiB from glibc's malloc (numpy would ask for huge
# pages itself) and reports its page faults.
_CHILD = """
import ctypes, os, resource
from maskrcnn_jax import hostmem
hostmem.restart_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(256 << 20), 1, 256 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), faults)
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
  pid, env_tunables, faults = out.split()
  assert int(pid) == proc.pid  # Re-executed in place: same process for signals and launchers.
  return env_tunables, int(faults)


@pytest.mark.skipif(hostmem.thp_mode() != "madvise" or not hostmem._glibc_has_hugetlb(),  # pylint: disable=protected-access
                    reason="needs transparent huge pages in madvise mode and glibc >= 2.35")
def test_restart_gives_huge_pages_unless_switched_off():
  tunables, faults = _child(None)
  assert tunables == "glibc.malloc.hugetlb=1"
  off_tunables, off_faults = _child("glibc.malloc.hugetlb=0")
  assert off_tunables == "glibc.malloc.hugetlb=0"
  # 256 MiB is 65536 small pages, 128 huge ones (~640 faults here); the kernel may fall back to
  # small pages for some of them when its memory is fragmented.
  assert off_faults > 60000 and faults * 4 < off_faults, (faults, off_faults)
