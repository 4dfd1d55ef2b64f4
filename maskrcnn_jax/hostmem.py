"""Transparent huge pages for the host's large buffers: a restart with glibc's `hugetlb` tunable.

XLA:CPU allocates each step's temporary buffers anew; glibc serves those large blocks with
fresh `mmap`s, so the kernel faults in and zeroes every 4 KiB page of them on every step
(R101-FPN 800² training: ~620k page faults, 1.4 s of system time per step on 2 cores).
Where the kernel offers transparent huge pages on request (`madvise` mode, the common
default), `glibc.malloc.hugetlb=1` makes glibc ask for them, and the faults fall to ~13k per
step (`docs/benchmarks.md`). glibc reads tunables only at start-up, so `restart_with_huge_pages`
re-executes the interpreter, same PID and arguments, with the tunable added. It does nothing
where the tunable is set already (`glibc.malloc.hugetlb=0` keeps it off), the kernel's mode
is `always` (huge pages without asking) or `never`, or the C library is not glibc >= 2.35.
Nor where the gain was not measured, or a restart would lose state: jax will run on an
accelerator (`cpu_backend`), or a tracer or debugger is attached (`python -m pdb` would
start over).
"""

import os
import platform
import sys
from typing import Mapping

from maskrcnn_jax import hardware

TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def with_huge_pages(tunables: str) -> str | None:
  """`GLIBC_TUNABLES` with `hugetlb=1` added, or None when it names `hugetlb` already."""
  names = [item.split("=", 1)[0] for item in tunables.split(":") if item]
  if TUNABLE in names:
    return None
  return ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))


def thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode (`always`, `madvise`, `never`), None if unknown."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def _glibc_has_hugetlb() -> bool:
  name, version = platform.libc_ver()
  parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
  return name == "glibc" and parts >= (2, 35)


def huge_pages_on_request() -> bool:
  """Whether glibc can ask for huge pages: the kernel's mode is `madvise`, glibc >= 2.35."""
  return thp_mode() == "madvise" and _glibc_has_hugetlb()


def cpu_backend(env: Mapping[str, str] | None = None, *, root: str = "/") -> bool:
  """Whether jax will run on the CPU, decided without importing jax.

  `JAX_PLATFORMS` decides where set (only `cpu`); else no GPU or TPU is present.
  """
  env = os.environ if env is None else env
  platforms = hardware.requested_platforms(env)
  if platforms:
    return platforms == ("cpu",)
  return not hardware.accelerator_present(root)


def restart_with_huge_pages() -> None:
  """Re-executes this process with `glibc.malloc.hugetlb=1` where that changes anything.

  Only for the CPU backend and without a tracer or debugger (module docstring). Call it
  first thing, before heavy imports: the process starts over from the same command.
  """
  tunables = with_huge_pages(os.environ.get("GLIBC_TUNABLES", ""))
  if (tunables is None or sys.gettrace() is not None or not huge_pages_on_request()
      or not cpu_backend()):
    return
  os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})
