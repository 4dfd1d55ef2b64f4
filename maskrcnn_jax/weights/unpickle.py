"""Pickled weights read as data: numeric arrays, dicts, lists and scalars, nothing else.

A downloaded `.pkl` or `.pth` is untrusted. Pickle calls any global a file names, and
numpy's own reconstructors trust the state they get: from state version 3 on,
`dtype.__setstate__` takes the dtype's flags from the file, so a structured dtype with an
object field can make numpy read file bytes as object pointers. Here the few globals a
pickle of numpy arrays (or a torch state dict) names map to stubs that only record a
dtype code, a shape and bytes. No numpy object exists until unpickling has ended; then
arrays are rebuilt with `np.frombuffer`, for plain numeric dtypes only (no fields,
subarrays or objects), once the declared size equals the bytes present. The opcode count,
the nesting depth, the objects (shared containers) and the bytes of all arrays together
(at most the file's size) are bounded.

torch's files are read the same way, without torch. A zip file (`torch.save` since torch
1.6): ARCHIVE/data.pkl names its storages, stored uncompressed as ARCHIVE/data/KEY. The
legacy format (before torch 1.6, and `_use_new_zipfile_serialization=False`): pickles of a
magic number, the protocol version, sys_info, the object and its storage keys, then each
storage in the keys' order as an int64 element count and its bytes.
"""

import io
import math
import os
import pickle
import pickletools
import re
import struct
from typing import Any
import zipfile

import numpy as np

MAX_OPCODES = 1 << 22  # A detectron2 R-101 file has ~30k.
MAX_DEPTH = 32  # Nesting of containers; weight files nest 3 deep.
_CODE = re.compile(r"^(f[248]|[iu][1248]|b1)$")  # Plain numeric dtypes, numpy's `dtype.str`.
_ORDERS = ("<", ">", "|", "=")


class WeightFileError(ValueError):
  """A weight file that is damaged, or holds more than numeric arrays."""


class _Stub:
  """What a global of the file returns. BUILD calls `__setstate__`, which refuses unless a
  subclass reads the state; no `__dict__`, so BUILD sets no attribute."""
  __slots__ = ()

  def __setstate__(self, state):
    raise WeightFileError(f"BUILD of a {type(self).__name__.strip('_')}")


class _Dtype(_Stub):
  """`numpy.dtype(code, align, copy)`; BUILD's state gives the byte order."""
  __slots__ = ("code", "order")

  def __init__(self, code, align=False, copy=True):
    del align, copy
    if not (isinstance(code, str) and _CODE.match(code)):
      raise WeightFileError(f"dtype {code!r} is not a plain numeric dtype")
    self.code, self.order = code, "|"

  def __setstate__(self, state):
    # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata]).
    if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in _ORDERS
            and state[2:5] == (None, None, None)):
      raise WeightFileError(f"dtype {self.code!r} with fields or subarrays")
    self.order = state[1]

  def numpy(self) -> np.dtype:
    return np.dtype(self.order + self.code)


class _Array(_Stub):
  """`_reconstruct(ndarray, ...)` and BUILD (protocols 0-4), `_frombuffer` (protocol 5) or
  `scalar`: dtype, shape, Fortran order and bytes."""
  __slots__ = ("dtype", "shape", "data", "fortran")

  def __init__(self, dtype=None, shape=None, data=None, fortran=False):
    self.dtype, self.shape, self.data, self.fortran = dtype, shape, data, fortran

  def __setstate__(self, state):
    # (version, shape, dtype, is_fortran, data); no version before numpy 1.0.
    if not isinstance(state, tuple) or len(state) not in (4, 5) or self.dtype is not None:
      raise WeightFileError("an array with an unknown state")
    self.shape, self.dtype, self.fortran, self.data = state[-4:]

  def numpy(self) -> np.ndarray:
    """The array, once its dtype is plain numeric and its size that of its bytes."""
    if not isinstance(self.dtype, _Dtype):
      raise WeightFileError("an array without a numeric dtype")
    dtype, shape, data = self.dtype.numpy(), self.shape, self.data
    if not _sizes(shape):
      raise WeightFileError(f"an array of shape {shape!r}")
    if isinstance(data, str):
      data = data.encode("latin1")  # Python 2's str.
    if not isinstance(data, bytes | bytearray):
      raise WeightFileError(f"an array whose data is a {type(data).__name__}")
    size = math.prod(shape) * dtype.itemsize
    if size != len(data):
      raise WeightFileError(f"an array of shape {shape} and dtype {dtype} needs {size} "
                            f"bytes, the file holds {len(data)}")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if self.fortran is True else "C")


class _Scalar(_Array):
  """`numpy._core.multiarray.scalar(dtype, bytes)`."""
  __slots__ = ()

  def __init__(self, dtype, data):
    super().__init__(dtype, (), data)

  def numpy(self):
    return super().numpy()[()]


class _Storage(_Stub):
  """A storage of a torch file: its elements' dtype and bytes (a legacy file's are filled
  in after its object's pickle)."""
  __slots__ = ("dtype", "data")

  def __init__(self, dtype: np.dtype, data: bytes):
    self.dtype, self.data = dtype, data


class _Tensor(_Stub):
  """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: a strided view
  of a storage, copied once its bounds are checked."""
  __slots__ = ("storage", "offset", "shape", "stride")

  def __init__(self, storage, offset, shape, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata.
    self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

  def numpy(self) -> np.ndarray:
    storage, shape, stride, offset = self.storage, self.shape, self.stride, self.offset
    if not (isinstance(storage, _Storage) and _sizes(shape) and _sizes(stride)
            and len(stride) == len(shape) and _sizes((offset,))):
      raise WeightFileError(f"a tensor of size {shape!r}, stride {stride!r}")
    base = np.frombuffer(storage.data, storage.dtype)
    if math.prod(shape) == 0:
      return np.zeros(shape, base.dtype)
    end = offset + sum((n - 1) * s for n, s in zip(shape, stride)) + 1
    if end > base.size:
      raise WeightFileError(f"a tensor of size {shape} reaches element {end} of a storage "
                            f"of {base.size}")
    return np.lib.stride_tricks.as_strided(
        base[offset:], shape, tuple(s * base.itemsize for s in stride), writeable=False
    ).copy()


class _OrderedDict(dict):
  """`collections.OrderedDict`; BUILD's state (torch's `_metadata`) is dropped."""
  __slots__ = ()

  def __setstate__(self, state):
    del state


def _sizes(t) -> bool:
  return isinstance(t, tuple) and all(type(n) is int and n >= 0 for n in t)


class _Ndarray(_Stub):
  """`numpy.ndarray`: what `_reconstruct` is given; calling it is refused."""
  __slots__ = ()


def _reconstruct(cls, shape, dtype):
  del shape, dtype  # numpy's placeholders (0,) and b"b".
  if not isinstance(cls, _Ndarray):
    raise WeightFileError("_reconstruct of a class other than numpy.ndarray")
  return _Array()


def _frombuffer(data, dtype, shape, order):
  return _Array(dtype, shape, data, order == "F")


def _bytes():  # Protocols 0-2 write b"" as `bytes()`.
  return b""


def _encode(text, encoding):  # Protocols 0-2 write bytes as `_codecs.encode(str, "latin1")`.
  if not isinstance(text, str) or encoding != "latin1":
    raise WeightFileError(f"_codecs.encode with {encoding!r}")
  return text.encode("latin1")


def _parameter(data, *unused):  # `torch._utils._rebuild_parameter`: the tensor itself.
  del unused
  return data


_NUMPY = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x.
_GLOBALS = {
    **{(f"{m}.multiarray", "_reconstruct"): _reconstruct for m in _NUMPY},
    **{(f"{m}.multiarray", "scalar"): _Scalar for m in _NUMPY},
    **{(f"{m}.numeric", "_frombuffer"): _frombuffer for m in _NUMPY},
    ("numpy", "ndarray"): _Ndarray,
    ("numpy", "dtype"): _Dtype,
    ("collections", "OrderedDict"): _OrderedDict,
    ("_codecs", "encode"): _encode,
    **{(m, "bytes"): _bytes for m in ("builtins", "__builtin__")},
}
# torch's storage classes (their element dtype) and tensor rebuilders.
_TORCH_DTYPES = {f"{name}Storage": np.dtype(code) for name, code in (
    ("Float", "<f4"), ("Double", "<f8"), ("Half", "<f2"), ("Long", "<i8"), ("Int", "<i4"),
    ("Short", "<i2"), ("Char", "i1"), ("Byte", "u1"), ("Bool", "b1"))}
_TORCH_GLOBALS = {
    **{("torch", name): name for name in _TORCH_DTYPES},
    ("torch._utils", "_rebuild_tensor_v2"): _Tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
}


class _Global(_Stub):
  """A global as the file sees it: calls go to the stub; BUILD is refused."""
  __slots__ = ("name", "stub")

  def __init__(self, name: str, stub):
    self.name, self.stub = name, stub

  def __call__(self, *args):
    if not callable(self.stub):
      raise WeightFileError(f"a call of {self.name}")
    return self.stub(*args)


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, allowed, storage):
    super().__init__(file, encoding="latin1")  # Caffe2 files were written by Python 2.
    self.allowed, self.storage = allowed, storage

  def find_class(self, module, name):
    if (module, name) not in self.allowed:
      raise WeightFileError(f"refusing to unpickle the global {module}.{name}: only numeric "
                            "arrays, dicts, lists and scalars are read")
    stub = self.allowed[module, name]
    return _Ndarray() if stub is _Ndarray else _Global(f"{module}.{name}", stub)

  def persistent_load(self, pid):
    if self.storage is None:
      raise WeightFileError("a persistent id outside a torch file")
    return self.storage(pid)


def _unpickle(f: io.BytesIO, allowed, storage) -> tuple[Any, int]:
  """The stub tree of the pickle at `f`'s position and its opcode count; `f` is left
  after the pickle's STOP."""
  start, count = f.tell(), 0
  for _ in pickletools.genops(f):  # Not a pickle, truncated: fails before any object.
    count += 1
    if count > MAX_OPCODES:
      raise WeightFileError(f"more than {MAX_OPCODES} pickle opcodes")
  end = f.tell()
  f.seek(start)
  tree = _Unpickler(f, allowed, storage).load()
  f.seek(end)
  return tree, count


def _numpy(tree: Any, objects: int, budget: int) -> Any:
  """`tree` with its stubs replaced by numpy arrays: at most `objects` objects (its
  pickle's opcodes) and `budget` bytes of arrays."""
  left = {"objects": objects, "bytes": budget}

  def walk(x, depth):
    left["objects"] -= 1
    if left["objects"] < 0:
      raise WeightFileError("more objects than opcodes: containers are shared")
    if depth > MAX_DEPTH:
      raise WeightFileError(f"containers nested more than {MAX_DEPTH} deep")
    if isinstance(x, _Array | _Tensor):
      x = x.numpy()
      left["bytes"] -= x.nbytes
      if left["bytes"] < 0:
        raise WeightFileError("its arrays hold more bytes than the file")
      return x
    if isinstance(x, dict):
      return {walk(k, depth + 1): walk(v, depth + 1) for k, v in x.items()}
    if isinstance(x, list | tuple):
      return type(x)(walk(v, depth + 1) for v in x)
    if x is None or isinstance(x, bool | int | float | str | bytes):
      return x
    raise WeightFileError(f"a {type(x).__name__.strip('_')} (only numeric arrays, dicts, "
                          "lists and scalars are read)")

  return walk(tree, 0)


def loads(data: bytes, *, storage=None, budget: int | None = None) -> Any:
  """Unpickles `data` into dicts, lists, tuples, scalars, strings and numeric arrays.

  Args:
    data: the pickle.
    storage: torch's persistent id -> `_Storage` (`_torch_zip`); None refuses them.
    budget: the bytes all arrays may hold together; default `len(data)`.

  Raises:
    WeightFileError: anything else in it; a damaged pickle; more opcodes than
      `MAX_OPCODES`, objects than opcodes (shared containers), nesting than `MAX_DEPTH`,
      or array bytes than `budget`.
  """
  allowed = _GLOBALS if storage is None else {**_GLOBALS, **_TORCH_GLOBALS}
  tree, count = _unpickle(io.BytesIO(data), allowed, storage)
  return _numpy(tree, count, len(data) if budget is None else budget)


def _storage_id(pid) -> tuple[np.dtype, str, int]:
  """A torch persistent id ("storage", storage class, key, location, element count[, view
  metadata]) -> (dtype, key, element count). Views of storages are refused."""
  if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
          and isinstance(pid[1], _Global) and pid[1].stub in _TORCH_DTYPES
          and isinstance(pid[2], str) and _sizes(pid[4:5]) and pid[5:] in ((), (None,))):
    raise WeightFileError(f"a persistent id {pid!r}")
  return _TORCH_DTYPES[pid[1].stub], pid[2], pid[4]


def _torch_zip(path: str) -> Any:
  """`loads` of ARCHIVE/data.pkl of a torch zip file; its arrays at most the file's size."""
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise WeightFileError("a zip file, but not one torch.save wrote")
    archive = pickles[0][:-len("data.pkl")]
    if f"{archive}byteorder" in names and z.read(f"{archive}byteorder") != b"little":
      raise WeightFileError("a big-endian torch file")
    storages = {}

    def storage(pid):
      dtype, key, numel = _storage_id(pid)
      if key not in storages:
        info = z.getinfo(f"{archive}data/{key}")
        size = numel * dtype.itemsize
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != size:
          raise WeightFileError(f"storage {key} of {numel} x {dtype} needs {size} stored "
                                f"bytes, the file holds {info.file_size}")
        storages[key] = _Storage(dtype, z.read(info))
      if storages[key].dtype != dtype:
        raise WeightFileError(f"storage {key} read as {storages[key].dtype} and {dtype}")
      return storages[key]

    return loads(z.read(pickles[0]), storage=storage, budget=os.path.getsize(path))


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # The first pickle of torch's legacy format.
_LEGACY_PROTOCOL = 1001


def _pickles(data: bytes) -> Any:
  """`loads` of a pickle, or of a torch file in the legacy format (its first pickle the
  magic number); its arrays at most `len(data)` bytes."""
  f = io.BytesIO(data)
  tree, count = _unpickle(f, _GLOBALS, None)
  if not (type(tree) is int and tree == _LEGACY_MAGIC):
    return _numpy(tree, count, len(data))
  version, _ = _unpickle(f, _GLOBALS, None)
  if version != _LEGACY_PROTOCOL:
    raise WeightFileError(f"torch's legacy format of protocol {version!r}, not "
                          f"{_LEGACY_PROTOCOL}")
  info, _ = _unpickle(f, _GLOBALS, None)
  if not (isinstance(info, dict) and info.get("little_endian") is True):
    raise WeightFileError("a big-endian torch file")
  storages = {}  # key -> (element count, `_Storage` without bytes yet).

  def storage(pid):
    dtype, key, numel = _storage_id(pid)
    if storages.setdefault(key, (numel, _Storage(dtype, b"")))[0] != numel:
      raise WeightFileError(f"storage {key} of {storages[key][0]} and {numel} elements")
    if storages[key][1].dtype != dtype:
      raise WeightFileError(f"storage {key} read as {storages[key][1].dtype} and {dtype}")
    return storages[key][1]

  tree, count = _unpickle(f, {**_GLOBALS, **_TORCH_GLOBALS}, storage)
  keys, _ = _unpickle(f, _GLOBALS, None)
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)
          and len(keys) == len(storages) and set(keys) == set(storages)):
    raise WeightFileError(f"storage keys {keys!r} are not those its object names")
  view = memoryview(data)
  for key in keys:
    numel, stored = storages[key]
    head = f.read(8)
    left = len(data) - f.tell()
    if len(head) < 8:
      raise WeightFileError(f"the file ends before storage {key}")
    (found,) = struct.unpack("<q", head)
    size = found * stored.dtype.itemsize
    if not 0 <= size <= left:
      raise WeightFileError(f"storage {key} of {found} x {stored.dtype} needs {size} bytes, "
                            f"the file holds {left}")
    if found != numel:
      raise WeightFileError(f"storage {key} holds {found} elements, its object names {numel}")
    stored.data = view[f.tell():f.tell() + size]
    f.seek(size, io.SEEK_CUR)
  return _numpy(tree, count, len(data))


def read(path: str) -> Any:
  """`loads` of the pickle at `path`, or of a torch file (`.pth`, zip or legacy) without
  torch.

  Every error is one WeightFileError naming `path`.
  """
  try:
    if zipfile.is_zipfile(path):
      return _torch_zip(path)
    with open(path, "rb") as f:
      return _pickles(f.read())
  except OSError as e:
    raise WeightFileError(f"{path}: {e.strerror or e}") from None
  except WeightFileError as e:
    raise WeightFileError(f"{path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except; any failure on untrusted bytes.
    raise WeightFileError(f"{path}: not a readable pickle of arrays "
                          f"({type(e).__name__}: {e})") from None
