"""Reads PyTorch checkpoint files (``torch.save``) with Python's pickle and NumPy: no torch needed.

Two formats: the zip archive that torch >= 1.6 writes (``<name>/data.pkl``, one record
``<name>/data/<key>`` per storage, ``<name>/byteorder``) and the legacy stream of torch < 1.6
(five pickles in a row, then every storage as an int64 element count and its bytes).

Only what a state dict of tensors needs is unpickled: ``collections.OrderedDict``, torch's
tensor and parameter rebuild functions, its storage types (float, half, bfloat16, integer,
bool, complex) and plain Python values. Any other global (``os.system``, ``builtins.eval``,
a class to reconstruct) is refused by name before anything is called, so a malicious file
runs nothing. Every tensor becomes its own NumPy array (a copy, views of one storage
included); bfloat16 as ``ml_dtypes.bfloat16`` (``astype(np.float32)`` is exact).
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edvr_jax.errors import UserError

_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001

#: torch storage type -> NumPy dtype of its elements (little-endian as stored, or as the archive's byteorder).
_STORAGE_DTYPES = {"DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bfloat16",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "c8",
                   "ComplexDoubleStorage": "c16"}


class PthError(UserError, ValueError):
    """A file that is not a readable PyTorch checkpoint; the message names it and what is wrong."""


class UnsafePickleError(PthError):
    """The checkpoint's pickle names a global outside the allow-list; nothing was called."""


class _Frozen:
    """What the unpickler hands out for an allowed global: a BUILD opcode cannot modify it."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"a BUILD opcode on {self!r}")


class _StorageType(_Frozen):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return self.name


class _Function(_Frozen):
    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return self.name


class _Storage(_Frozen):
    """One storage: its elements (filled once read; a legacy view is a slice of its root's)."""

    __slots__ = ("key", "dtype", "numel", "elements", "root", "offset")

    def __init__(self, key: str, dtype: np.dtype, numel: int, root: _Storage | None = None, offset: int = 0):
        self.key, self.dtype, self.numel, self.root, self.offset = key, dtype, numel, root, offset
        self.elements: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.offset:self.offset + self.numel]
        if self.elements is None:
            raise pickle.UnpicklingError(f"storage {self.key!r} has no data")
        return self.elements


class _Tensor(_Frozen):
    """A tensor as ``_rebuild_tensor_v2`` describes it; ``array()`` once the storages are read."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage, offset, shape, stride):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
        for name, value in (("size", shape), ("stride", stride)):
            if not (isinstance(value, tuple) and all(type(v) is int and v >= 0 for v in value)):
                raise pickle.UnpicklingError(f"tensor {name} {value!r}: expected a tuple of non-negative ints")
        if len(shape) != len(stride) or type(offset) is not int or offset < 0:
            raise pickle.UnpicklingError(f"tensor of size {shape}, stride {stride}, offset {offset!r}")
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def array(self) -> np.ndarray:
        elements = self.storage.array()
        if 0 in self.shape:
            return np.zeros(self.shape, elements.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if last >= len(elements):
            raise pickle.UnpicklingError(f"a tensor of size {self.shape}, stride {self.stride} at offset {self.offset} "
                                         f"reaches element {last} of storage {self.storage.key!r}, which has "
                                         f"{len(elements)}")
        strides = tuple(s * elements.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(elements[self.offset:], self.shape, strides, writeable=False)
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_):  # *_: requires_grad, backward_hooks, metadata
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):  # *_: requires_grad, backward_hooks, state
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError(f"a parameter's data is a {type(data).__name__}, not a tensor")
    return data


_ALLOWED = {"collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor": _rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
            "torch._utils._rebuild_parameter": _rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": _rebuild_parameter}
_GLOBALS = {name: _Function(name, fn) for name, fn in _ALLOWED.items()}
_GLOBALS.update({f"{module}.{name}": _StorageType(f"{module}.{name}", dtype) for name, dtype in _STORAGE_DTYPES.items()
                 for module in ("torch", "torch.cuda")})  # torch < 1.6 named a GPU tensor's storage torch.cuda.*
_GLOBALS["torch.storage.UntypedStorage"] = _StorageType("torch.storage.UntypedStorage", "u1")


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # a dependency of jax

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name).newbyteorder("<")


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``_GLOBALS``; ``storage(pid)`` maps persistent ids."""

    def __init__(self, file: BinaryIO, storage=None):
        super().__init__(file, encoding="utf-8")
        self._storage = storage

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as pickle itself maps them
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if f"{module}.{name}" not in _GLOBALS:
            raise UnsafePickleError(f"{module}.{name}")
        return _GLOBALS[f"{module}.{name}"]

    def persistent_load(self, pid):
        if self._storage is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:100]}")
        return self._storage(pid[1:])


def _storage_args(args: tuple, legacy: bool, seen: dict[str, _Storage]) -> tuple[np.dtype, str, int]:
    """``(dtype, key, numel)`` of a persistent id ``('storage', type, key, location, numel[, view])``;
    a key met before must come with the same dtype."""
    if len(args) != (5 if legacy else 4) or not isinstance(args[0], _StorageType):
        raise pickle.UnpicklingError(f"unexpected storage id {str(args)[:100]}")
    storage_type, key, _location, numel = args[:4]
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise pickle.UnpicklingError(f"unexpected storage id {str(args)[:100]}")
    dtype = _numpy_dtype(storage_type.dtype)
    if key in seen and seen[key].dtype != dtype:
        raise pickle.UnpicklingError(f"storage {key!r} is read as {seen[key].dtype} and as {dtype}")
    return dtype, key, numel


def _resolve(obj: Any, seen: dict[int, Any]) -> Any:
    """``obj`` with every tensor (and bare storage) replaced by its array; containers in place."""
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, _Tensor):
        out = obj.array()
    elif isinstance(obj, _Storage):
        out = np.array(obj.array())
    elif isinstance(obj, (_Function, _StorageType)):
        raise pickle.UnpicklingError(f"{obj!r} itself is stored as a value")
    elif isinstance(obj, (dict, list)):
        seen[id(obj)] = out = obj
        for k, v in list(obj.items() if isinstance(obj, dict) else enumerate(obj)):
            obj[k] = _resolve(v, seen)
    elif isinstance(obj, tuple):
        out = tuple(_resolve(v, seen) for v in obj)
    else:
        return obj
    seen[id(obj)] = out
    return out


def _read_zip(zf: zipfile.ZipFile) -> Any:
    names = zf.namelist()
    prefix = names[0].split("/")[0] if names else ""
    if f"{prefix}/data.pkl" not in names:
        raise pickle.UnpicklingError(f"the zip archive holds no {prefix}/data.pkl (a torch.jit.save archive, or not "
                                     f"from torch.save)")
    order = zf.read(f"{prefix}/byteorder").decode() if f"{prefix}/byteorder" in names else "little"
    if order not in ("little", "big"):
        raise pickle.UnpicklingError(f"{prefix}/byteorder is {order[:20]!r}, expected little or big")
    storages: dict[str, _Storage] = {}

    def storage(args):
        dtype, key, numel = _storage_args(args, legacy=False, seen=storages)
        if key not in storages:
            record = f"{prefix}/data/{key}"
            if record not in names:
                raise pickle.UnpicklingError(f"storage {key!r}: no record {record}")
            if zf.getinfo(record).file_size < numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"{record}: {zf.getinfo(record).file_size} bytes, {numel} elements of "
                                             f"{dtype.itemsize} bytes expected")
            with zf.open(record) as f:
                elements = np.frombuffer(f.read(numel * dtype.itemsize), dtype)
            storages[key] = _Storage(key, dtype, numel)
            storages[key].elements = elements.byteswap() if order == "big" and dtype.itemsize > 1 else elements
        return storages[key]

    with zf.open(f"{prefix}/data.pkl") as f:
        return _Unpickler(f, storage).load()


def _read_legacy(f: BinaryIO, size: int) -> Any:
    try:
        magic = _Unpickler(f).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError):  # not a pickle at all
        magic = None
    if magic != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("neither a zip archive (torch >= 1.6) nor torch's legacy format (torch < 1.6)")
    protocol = _Unpickler(f).load()
    if protocol != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError(f"legacy format protocol {protocol!r}, expected {_LEGACY_PROTOCOL}")
    _Unpickler(f).load()  # sys_info: byte order and type sizes of the writer; storages are little-endian
    roots: dict[str, _Storage] = {}

    def storage(args):
        dtype, key, numel = _storage_args(args, legacy=True, seen=roots)
        root = roots.setdefault(key, _Storage(key, dtype, numel))
        if args[4] is None:
            return root
        view_key, offset, view_numel = args[4]  # a storage that was a slice of another (torch < 1.0)
        if type(offset) is not int or type(view_numel) is not int or not 0 <= offset <= offset + view_numel <= numel:
            raise pickle.UnpicklingError(f"storage view {view_key!r}: {view_numel!r} elements from {offset!r} of "
                                         f"{numel}")
        return _Storage(str(view_key), dtype, view_numel, root, offset)

    result = _Unpickler(f, storage).load()
    keys = _Unpickler(f).load()
    if not (isinstance(keys, list) and set(keys) == set(roots)):
        raise pickle.UnpicklingError(f"the storage list {str(keys)[:100]} differs from the pickle's storages")
    for key in keys:
        root = roots[key]
        head = f.read(8)
        if len(head) < 8:
            raise EOFError(f"storage {key!r}: the file ends before its data")
        (count,) = struct.unpack("<q", head)
        if count != root.numel or count * root.dtype.itemsize > size - f.tell():
            raise EOFError(f"storage {key!r}: {count} elements on disk, {root.numel} expected, "
                           f"{size - f.tell()} bytes left in the file")
        root.elements = np.frombuffer(f.read(count * root.dtype.itemsize), root.dtype)
    return result


def read_pth(path: str | os.PathLike) -> Any:
    """The object ``torch.save`` wrote to ``path``, its tensors as NumPy arrays (see the module
    docstring). A refused global raises ``UnsafePickleError`` naming it; a damaged or foreign
    file ``PthError``; both name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:  # a damaged archive is named so by ZipFile, instead of being tried as the legacy format
            with zipfile.ZipFile(path) as zf:
                obj = _read_zip(zf)
        else:
            with open(path, "rb") as f:
                obj = _read_legacy(f, path.stat().st_size)
        return _resolve(obj, {})
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: refused to unpickle the global {e.args[0]!r} (nothing was run): edvr-jax "
                                f"reads only tensors and plain containers from a .pth, as a checkpoint of weights "
                                f"holds") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RecursionError, MemoryError, struct.error) as e:
        raise PthError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                       f"{type(e).__name__}: {str(e)[:300]}") from e
