"""The accelerators on this host, read from /dev and sysfs as jax's own checks read them.

No jax import and no backend start: `hostmem` decides before jax is imported, and
`distributed` compares what is present with the backend jax started. `root` is the file
system root ("/"), a folder in tests.
"""

import glob
import os
from typing import Mapping

_GOOGLE_PCI_VENDOR = "0x1ae0"
# jax's TPU chips by PCI device id (jax._src.hardware_utils): v3, plc, v4, v5p, v5e, v6e, 7x.
# Other Google devices (the gVNIC network card) share the vendor id.
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
# NVIDIA (jax's list: bare metal, containers, WSL2) and AMD (ROCm's kernel driver).
_GPU_DEVICE_FILES = ("dev/nvidia0", "dev/nvidiactl", "dev/dxg", "dev/kfd")


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ""


def tpu_chips(root: str = "/") -> int:
  """The TPU chips attached through PCI (Google's vendor id and a TPU device id)."""
  vendors = glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor"))
  return sum(_read(v) == _GOOGLE_PCI_VENDOR
             and _read(os.path.join(os.path.dirname(v), "device")) in _TPU_PCI_DEVICES
             for v in vendors)


def accelerator_present(root: str = "/") -> bool:
  """Whether this host has a GPU (NVIDIA or AMD device files) or TPU chips."""
  return (any(os.path.exists(os.path.join(root, f)) for f in _GPU_DEVICE_FILES)
          or tpu_chips(root) > 0)


def requested_platforms(env: Mapping[str, str]) -> tuple[str, ...]:
  """The platforms `JAX_PLATFORMS` names, in order; empty where jax picks."""
  return tuple(p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip())
