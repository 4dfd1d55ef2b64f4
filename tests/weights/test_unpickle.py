"""Hostile weight files: each attack is refused in one line, in-process and by the CLIs."""

import importlib
import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from maskrcnn_jax.weights import convert_torchvision
from maskrcnn_jax.weights import unpickle
import torchvision_states

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _RunsCode:
  """Unpickling this calls os.system: what a hostile .pkl does."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def _text(s: str) -> bytes:
  """BINUNICODE."""
  return b"X" + struct.pack("<I", len(s)) + s.encode()


def _dtype(code: str, state: bytes) -> bytes:
  """numpy.dtype(code, False, True), then BUILD with `state` (opcodes of a tuple)."""
  return b"cnumpy\ndtype\n" + _text(code) + b"\x89\x88\x87R" + state + b"b"


def _array(dtype: bytes, shape: tuple[int, ...], data: bytes) -> bytes:
  """_reconstruct(ndarray, (0,), b"b"), then BUILD (1, shape, dtype, False, data)."""
  dims = b"".join(b"\x8a\x06" + n.to_bytes(6, "little") for n in shape)  # LONG1
  return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
          + b"(K\x01(" + dims + b"t" + dtype + b"\x89C" + bytes([len(data)]) + data + b"tb")


def dtype_flags_pickle() -> bytes:
  """One element of dtype [("a", object)] whose flags (state version 3) say refcounted:
  numpy takes them from the file and reads the data, 0x4141..., as an object pointer.
  Plain `pickle.load` of it dies with SIGSEGV."""
  obj = _dtype("O8", b"(K\x03" + _text("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?t")
  fields = b"}" + _text("a") + obj + b"K\x00\x86s"
  void = _dtype("V8", b"(K\x03" + _text("|") + b"N" + _text("a") + b"\x85" + fields
                + b"K\x08K\x01K\x01t")  # elsize 8, alignment 1, flags NPY_ITEM_REFCOUNT.
  return b"\x80\x03}" + _text("w") + _array(void, (1,), b"A" * 8) + b"s."


def _nested(depth: int) -> list:
  x = []
  for _ in range(depth):
    x = [x]
  return x


def _shared() -> list:
  """10 ** 9 leaves from a file of 6 kB: each level repeats one memoised list."""
  x = [1]
  for _ in range(3):
    x = [x] * 1000
  return x


F4 = _dtype("f4", b"(K\x03" + _text("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t")
GOOD = pickle.dumps({"model": {"w": np.arange(64, dtype=np.float32)}}, protocol=2)
# name -> (file contents, the reason the one line gives).
ATTACKS = {
    "code_global": (lambda tmp: pickle.dumps({"w": _RunsCode(tmp / "ran")}),
                    r"refusing to unpickle the global (posix|os)\.system"),
    "object_array": (lambda tmp: pickle.dumps({"w": np.array([_RunsCode(tmp / "ran"), 1])}),
                     r"dtype 'O8'"),
    "builtins": (lambda tmp: b"cbuiltins\neval\n(S'1+1'\ntR.",
                 r"refusing to unpickle the global builtins\.eval"),
    "dtype_flags": (lambda tmp: dtype_flags_pickle(), r"dtype 'V8' is not a plain numeric"),
    "huge_shape": (lambda tmp: b"\x80\x03}" + _text("w") + _array(F4, (1 << 40,), b"\0" * 8)
                   + b"s.", r"shape \(1099511627776,\) and dtype float32 needs 4398046511104 "
                   "bytes, the file holds 8"),
    "truncated": (lambda tmp: GOOD[:len(GOOD) // 2], r"not a readable pickle of arrays"),
    "not_a_pickle": (lambda tmp: b"These are not the weights you are looking for.\n",
                     r"not a readable pickle of arrays"),
    "deep_nesting": (lambda tmp: pickle.dumps({"w": _nested(100)}), r"nested more than 32 deep"),
    "shared_containers": (lambda tmp: pickle.dumps(_shared()), r"more objects than opcodes"),
    "strings": (lambda tmp: pickle.dumps({"w": np.array(["a"])}), r"dtype 'U1'"),
}


@pytest.fixture(params=sorted(ATTACKS))
def attack(request, tmp_path):
  """(path of the hostile file, the expected reason, marker a code global would create)."""
  write, reason = ATTACKS[request.param]
  path = tmp_path / f"{request.param}.pkl"
  path.write_bytes(write(tmp_path))
  return path, reason, tmp_path / "ran"


def test_attacks_are_refused(attack):
  path, reason, marker = attack
  with pytest.raises(unpickle.WeightFileError, match=rf"^{path}: .*{reason}") as e:
    unpickle.read(str(path))
  assert "\n" not in str(e.value)
  assert not marker.exists()


def test_dtype_flags_file_is_the_attack_it_claims(tmp_path):
  """numpy builds the refcounted object dtype from the file's state: plain pickle would
  hand it to numpy (which crashes on the array; the dtype alone is harmless)."""
  data = dtype_flags_pickle()
  start = data.index(b"cnumpy\ndtype\n" + _text("V8"))
  stop = data.index(b"\x89C\x08")  # The dtype's opcodes end where the array's flag starts.
  dtype = pickle.loads(b"\x80\x03" + data[start:stop] + b".")
  assert dtype.fields["a"][0] == np.dtype(object) and dtype.flags & 1


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("value", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(6, dtype=">i8").reshape(3, 2).T,
    np.array([True, False]), np.float16(1.5), np.zeros((0, 3), np.uint8)])
def test_numeric_arrays_round_trip(value, protocol):
  tree = {"a": [value, (1, 2.5, "s", None, b"b")]}
  got = unpickle.loads(pickle.dumps(tree, protocol=protocol))
  assert got["a"][1] == (1, 2.5, "s", None, b"b")
  assert got["a"][0].dtype == value.dtype
  np.testing.assert_array_equal(got["a"][0], value)


def test_arrays_sharing_bytes_are_bounded_by_the_file():
  """A memoised array read twice holds twice the bytes of the file."""
  a = np.zeros(1000, np.float32)
  assert len(unpickle.loads(pickle.dumps([a, a.copy()]))) == 2
  with pytest.raises(unpickle.WeightFileError, match="more bytes than the file"):
    unpickle.loads(pickle.dumps([a, a]))


def _pth(tmp, **kwargs) -> bytes:
  path = tmp / "w.pth"
  torchvision_states.write_pth(str(path), {"w": np.ones((2, 3), np.float32)}, **kwargs)
  return path.read_bytes()


def _storage(numel: int) -> bytes:
  """A FloatStorage persistent id claiming `numel` elements (the file holds 6)."""
  return (b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu")
          + b"\x8a\x06" + numel.to_bytes(6, "little") + b"tQ")


def _tensor(storage: bytes, size: bytes, stride: bytes, offset: int = 0) -> bytes:
  return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K" + bytes([offset]) + size + stride
          + b"\x89ccollections\nOrderedDict\n)RtR")


# name -> (.pth contents, the reason the one line gives).
TORCH_ATTACKS = {
    "code_global": (lambda tmp: _pth(tmp, tensor=lambda k, a, s: b"cposix\nsystem\n"
                                     + _text(f"touch {tmp / 'ran'}") + b"\x85R"),
                    r"refusing to unpickle the global posix\.system"),
    "huge_storage": (lambda tmp: _pth(tmp, tensor=lambda k, a, s: _tensor(
        _storage(1 << 40), b"(K\x02K\x03t", b"(K\x03K\x01t")),
                     r"storage 0 of 1099511627776 x float32 needs 4398046511104 stored bytes"),
    "huge_shape": (lambda tmp: _pth(tmp, tensor=lambda k, a, s: _tensor(
        s, b"(\x8a\x06" + (1 << 40).to_bytes(6, "little") + b"t", b"(K\x01t")),
                   r"reaches element 1099511627776 of a storage of 6"),
    "truncated": (lambda tmp: _pth(tmp)[:300], r"not a readable pickle of arrays"),
    "legacy_truncated": (lambda tmp: _pth(tmp, legacy=True)[:-10],
                         r"storage 0 of 6 x float32 needs 24 bytes, the file holds 14"),
    # The element count before the storage's 24 bytes claims 2^40.
    "legacy_huge_storage": (lambda tmp: _pth(tmp, legacy=True)[:-32]
                            + struct.pack("<q", 1 << 40) + _pth(tmp, legacy=True)[-24:],
                            r"storage 0 of 1099511627776 x float32 needs 4398046511104 "
                            "bytes, the file holds 24"),
    "not_a_pickle": (lambda tmp: b"These are not the weights you are looking for.\n",
                     r"not a readable pickle of arrays"),
}


@pytest.mark.parametrize("name", sorted(TORCH_ATTACKS))
def test_pth_attacks_are_refused(tmp_path, name):
  write, reason = TORCH_ATTACKS[name]
  path = tmp_path / f"{name}.pth"
  path.write_bytes(write(tmp_path))
  with pytest.raises(unpickle.WeightFileError, match=rf"^{path}: .*{reason}") as e:
    unpickle.read(str(path))
  assert "\n" not in str(e.value) and not (tmp_path / "ran").exists()


def test_pth_views_and_dtypes_are_read(tmp_path):
  """Strided views of a storage; every dtype torchvision state dicts hold."""
  base = np.arange(24, dtype=np.float32).reshape(4, 6)
  state = {"f": base, "i": np.arange(3), "b": np.array([True, False]),
           "h": np.zeros((0, 2), np.float16), "s": np.array(7)}
  torchvision_states.write_pth(str(tmp_path / "a.pth"), state)
  got = unpickle.read(str(tmp_path / "a.pth"))
  for key, value in state.items():
    assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
    np.testing.assert_array_equal(got[key], value)
  view = lambda k, a, s: _tensor(s, b"(K\x05K\x02t", b"(K\x01K\x0ct", 1) if k == "f" else None
  torchvision_states.write_pth(str(tmp_path / "b.pth"), {"f": base}, tensor=view)
  np.testing.assert_array_equal(unpickle.read(str(tmp_path / "b.pth"))["f"], base.T[1:, ::2])


@pytest.mark.parametrize("converter, attacks, suffix", [
    ("convert_detectron2", ATTACKS, ".pkl"), ("convert_torchvision", TORCH_ATTACKS, ".pth")])
def test_cli_refuses_every_attack_in_one_line(tmp_path, converter, attacks, suffix):
  """Exit code 1 (no signal), one line naming the file, nothing written. The first attack
  runs the command line in a process of its own; the others its `run_cli` in this process
  (a string passed to sys.exit: Python prints it as the one line and exits with 1)."""
  module = importlib.import_module(f"maskrcnn_jax.weights.{converter}")
  for i, (name, (write, reason)) in enumerate(attacks.items()):
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(write(tmp_path))
    out = tmp_path / f"{name}_out"
    if i == 0:
      result = subprocess.run(
          [sys.executable, "-m", f"maskrcnn_jax.weights.{converter}", f"--input={path}",
           f"--output={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
          check=False)
      returncode, stderr = result.returncode, result.stderr
    else:
      with pytest.raises(SystemExit) as e:
        convert_torchvision.run_cli(module.convert_file, str(path), str(out), depth=None)
      returncode, stderr = (1 if isinstance(e.value.code, str) else e.value.code), e.value.code
    assert returncode == 1, (name, returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: "), (name, stderr)
    assert re.search(reason, lines[0]), (name, lines[0])
    assert not out.exists() and not (tmp_path / "ran").exists(), name
