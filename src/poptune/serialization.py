"""poptune's checkpoint format: safe to load, because loading never runs code from the file.

A file is ``MAGIC``, a version byte, an 8-byte little-endian header length, a UTF-8 JSON header
(padded with spaces to a multiple of 64 bytes) and the raw bytes of every array, tensor and bytes
object, each padded with zeros to a multiple of 64 bytes. The header is
``{"tree": ..., "sizes": [buffer sizes]}``, where the tree holds the state and every JSON object
is a tagged node, so nothing is ambiguous:

- ``None``, bools, ints, strings and floats (including NaN and infinities) are JSON scalars;
  ints over 4096 bits, which CPython will not print in decimal, are ``{"t": "int", "v": "0x..."}``;
- lists are JSON arrays; tuples ``{"t": "tuple", "v": [...]}``;
- dicts ``{"t": "dict", "k": [...], "v": [...]}``, so int, float, tuple or None keys keep their
  type and insertion order is kept;
- bytes ``{"t": "bytes", "b": i}``, where ``i`` indexes the buffers (``"bytearray"`` likewise);
- numpy arrays ``{"t": "ndarray", "dtype": "<f4", "shape": [...], "b": i}`` and numpy scalars
  the same with ``"t": "npscalar"``, so an ``np.float32`` comes back as an ``np.float32``;
- torch tensors ``{"t": "tensor", "dtype": "float32", "shape": [...], "b": i, "rg": bool}``
  (``"p": true`` for an ``nn.Parameter``); dtypes numpy lacks (bfloat16, float8...) are stored
  as integers of the same width; ``torch.dtype`` values ``{"t": "torch_dtype", "v": "float32"}``.

Round trips are exact: bitwise for arrays and tensors, and types are kept (a float NaN comes
back as NaN, without its sign and payload bits). Three conversions are deliberate: subclasses
of dict, list, tuple, int, float and str (``OrderedDict``, named tuples, ``IntEnum``...) come
back as the base type, ``torch.Size`` as a tuple, and numpy array subclasses as plain arrays.
A value referenced from two places is stored twice. Anything else (objects, sets, masked arrays,
sparse tensors...) is refused with the path where it was found.

There is no pickle anywhere: :func:`load` only parses JSON and copies bytes, and imports torch
only when the file holds tensors.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any, BinaryIO

import numpy as np

__all__ = ["SerializationError", "array_bytes", "copy", "dump", "dumps", "load"]

MAGIC = b"POPTUNE\x00CKPT"
VERSION = 1
_PREFIX = len(MAGIC) + 1 + 8
_ALIGNMENT = 64
_ZEROS = bytes(_ALIGNMENT)
_JSON_INT_BITS = 4096  # CPython refuses to print or parse ints over 4300 digits
_INTEGER_OF_WIDTH = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}
_FIX = "convert it to numpy arrays, tensors or Python scalars, lists, tuples and dicts"


class SerializationError(ValueError):
    """The data is not a valid poptune checkpoint (wrong magic, truncated, inconsistent)."""


class _Refused(Exception):
    """A value cannot be stored; ``path`` is filled in, innermost segment first, on the way up."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = []  # "[...]" subscripts, or the index of a dict's key

    def error(self) -> TypeError:
        where = "state"
        for segment in reversed(self.path):
            where = f"list({where})[{segment}]" if isinstance(segment, int) else where + segment
        return TypeError(f"{where} {self.problem}")


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


class _Encoder:
    """Turns a state into a JSON tree and a list of byte buffers that the tree points at."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def buffer(self, data: Any) -> int:
        self.buffers.append(memoryview(data).cast("B"))
        return len(self.buffers) - 1

    def encode(self, value: Any) -> Any:
        kind = type(value)
        # Exact types first: the common case, and np.float64 (a float subclass) must stay numpy.
        if value is None or kind is str or kind is bool or kind is float:
            return value
        if kind is int:
            return self.integer(value)
        if kind is dict:
            return self.mapping(value)
        if kind is list:
            return self.sequence(value)
        if kind is tuple:
            return {"t": "tuple", "v": self.sequence(value)}
        if isinstance(value, np.ndarray | np.generic):
            return self.array(value)
        torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
        if torch is not None and isinstance(value, torch.Tensor | torch.Size | torch.dtype):
            return self.torch_value(value, torch)
        if isinstance(value, bytes | bytearray):
            tag = "bytearray" if isinstance(value, bytearray) else "bytes"
            return {"t": tag, "b": self.buffer(value)}
        if isinstance(value, dict):
            return self.mapping(value)
        if isinstance(value, list):
            return self.sequence(value)
        if isinstance(value, tuple):
            return {"t": "tuple", "v": self.sequence(value)}
        if isinstance(value, bool | int):
            return self.integer(int(value))
        if isinstance(value, float):
            return float(value)
        if isinstance(value, str):
            return str(value)
        raise _Refused(f"is a {_type_name(value)}, which poptune cannot store safely; {_FIX}.")

    def integer(self, value: int) -> Any:
        if value.bit_length() > _JSON_INT_BITS:
            return {"t": "int", "v": hex(value)}
        return value

    def sequence(self, values: list[Any] | tuple[Any, ...]) -> list[Any]:
        encoded: list[Any] = []
        for index, item in enumerate(values):
            try:  # free unless raised: the path is only built for an error
                encoded.append(self.encode(item))
            except _Refused as refused:
                refused.path.append(f"[{index}]")
                raise
        return encoded

    def mapping(self, value: dict[Any, Any]) -> dict[str, Any]:
        keys: list[Any] = []
        values: list[Any] = []
        for index, (key, item) in enumerate(value.items()):
            try:
                keys.append(self.encode(key))
            except _Refused as refused:
                refused.path.append(index)  # written list(state[...])[index]: the key itself
                raise
            try:
                values.append(self.encode(item))
            except _Refused as refused:
                refused.path.append(f"[{key!r}]")
                raise
        return {"t": "dict", "k": keys, "v": values}

    def array(self, value: np.ndarray | np.generic) -> dict[str, Any]:
        if isinstance(value, np.ma.MaskedArray):
            raise _Refused(
                "is a numpy masked array, whose mask poptune would lose; store its .data and "
                ".mask as two arrays."
            )
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.fields is not None or array.dtype.itemsize == 0:
            raise _Refused(
                f"is a numpy array of dtype {array.dtype}, which poptune cannot store safely; "
                "use a numeric, bool, string or datetime dtype without fields."
            )
        shape = list(array.shape)  # before ascontiguousarray, which makes 0-d arrays 1-d
        array = np.ascontiguousarray(array)
        return {
            "t": "npscalar" if isinstance(value, np.generic) else "ndarray",
            "dtype": array.dtype.str,
            "shape": shape,
            "b": self.buffer(array.reshape(-1).view(np.uint8)),
        }

    def torch_value(self, value: Any, torch: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(value, torch)
        if isinstance(value, torch.Size):
            return {"t": "tuple", "v": [int(v) for v in value]}
        return {"t": "torch_dtype", "v": str(value).removeprefix("torch.")}

    def tensor(self, value: Any, torch: Any) -> dict[str, Any]:
        tensor = value.detach()
        if tensor.layout != torch.strided or tensor.is_nested:
            raise _Refused(
                f"is a tensor with layout {tensor.layout}, which poptune cannot store; convert "
                "it with .to_dense() (or store its parts as separate tensors)."
            )
        if tensor.is_quantized:
            raise _Refused("is a quantized tensor; store tensor.dequantize() and its scale.")
        if tensor.device.type == "meta":
            raise _Refused("is a tensor on the meta device, which holds no data to store.")
        tensor = tensor.cpu().resolve_conj().resolve_neg().contiguous()
        try:
            array = tensor.numpy()
        except TypeError:  # bfloat16, float8...: store the bits as an integer of the same width
            width = tensor.element_size()
            if width not in _INTEGER_OF_WIDTH:
                raise _Refused(
                    f"is a tensor of dtype {tensor.dtype}, which poptune cannot store."
                ) from None
            array = tensor.view(getattr(torch, _INTEGER_OF_WIDTH[width])).numpy()
        node = {
            "t": "tensor",
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "rg": bool(value.requires_grad),
            "b": self.buffer(array.reshape(-1).view(np.uint8)),
        }
        if type(value) is not torch.Tensor and isinstance(value, torch.nn.Parameter):
            node["p"] = True
        return node


def _encode(state: Any) -> tuple[bytes, list[memoryview]]:
    """The prefix and header of ``state``'s file, and the buffers that follow them."""
    encoder = _Encoder()
    try:
        tree = encoder.encode(state)
    except _Refused as refused:
        raise refused.error() from None
    except RecursionError:
        raise ValueError(
            "state is nested too deeply, or a list or dict in it contains itself; poptune stores "
            "trees of values, so break the cycle or flatten the state."
        ) from None
    sizes = [buffer.nbytes for buffer in encoder.buffers]
    header = json.dumps({"tree": tree, "sizes": sizes}, allow_nan=True, separators=(",", ":"))
    # ensure_ascii (the default) makes the header's length in characters its length in bytes.
    # Pad the header (JSON allows trailing spaces) so that every buffer starts 64-byte aligned.
    length = _align(_PREFIX + len(header)) - _PREFIX
    head = MAGIC + bytes([VERSION]) + struct.pack("<Q", length) + header.ljust(length).encode()
    return head, encoder.buffers


def _align(size: int) -> int:
    return (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT


def dump(state: Any, file: BinaryIO) -> int:
    """Write ``state`` to ``file`` in poptune's format; return the number of bytes written.

    The bytes of arrays and tensors are written straight from their memory, without a copy.

    Raises:
        TypeError: for a value that cannot be stored safely; the message gives its path, e.g.
            ``state['optimizer']['state'][0]['foo']``, and its type.
        ValueError: if the state contains itself.
    """
    head, buffers = _encode(state)
    file.write(head)
    total = len(head)
    for buffer in buffers:
        file.write(buffer)
        padding = _align(buffer.nbytes) - buffer.nbytes
        if padding:
            file.write(_ZEROS[:padding])
        total += buffer.nbytes + padding
    return total


def dumps(state: Any) -> bytes:
    """``state`` in poptune's format, as bytes (see :func:`dump`).

    Example:
        >>> load(dumps({"step": 3, "w": np.zeros(2)}))
        {'step': 3, 'w': array([0., 0.])}
    """
    return bytes(_pack(state))


def _pack(state: Any) -> bytearray:
    """``state`` in poptune's format, laid out in one new buffer (every array copied once)."""
    head, buffers = _encode(state)
    data = bytearray(len(head) + sum(_align(buffer.nbytes) for buffer in buffers))
    view = memoryview(data)
    view[: len(head)] = head
    position = len(head)
    for buffer in buffers:
        view[position : position + buffer.nbytes] = memoryview(buffer).cast("B")
        position += _align(buffer.nbytes)
    return data


def array_bytes(state: Any) -> int:
    """The bytes of the arrays, tensors and bytes objects in ``state``: about the size of its
    checkpoint, found without encoding it (containers are walked, anything else counts 0).

    Example:
        >>> array_bytes({"w": np.zeros(4), "step": 3})
        32
    """
    if isinstance(state, np.ndarray | np.generic):
        return int(state.nbytes)
    if isinstance(state, bytes | bytearray | memoryview):
        return len(state)
    if isinstance(state, dict):
        return sum(array_bytes(value) for value in state.values())
    if isinstance(state, list | tuple):
        return sum(array_bytes(value) for value in state)
    nelement = getattr(state, "nelement", None)
    element_size = getattr(state, "element_size", None)
    if callable(nelement) and callable(element_size):  # a torch tensor
        return int(nelement()) * int(element_size())
    return 0


def copy(state: Any) -> Any:
    """A deep copy of ``state`` through poptune's format: what saving and loading it would
    give, without a file or a checksum (arrays and tensors are copied once, into one buffer).

    Example:
        >>> copy({"w": np.ones(2)})
        {'w': array([1., 1.])}
    """
    return load(_pack(state), copy=False)


def load(data: bytes | bytearray | memoryview, *, copy: bool = True) -> Any:
    """Decode a checkpoint written by :func:`dump`. Never executes code from ``data``.

    Arrays and tensors are copied out of ``data`` once, so they are writable and independent of
    it. With ``copy=False`` and writable ``data`` (a bytearray just read from a file, which the
    caller hands over), they are decoded in place instead and share memory with ``data``.

    Raises:
        SerializationError: if the data is not a complete, consistent poptune checkpoint.
        ImportError: if the checkpoint holds torch tensors and torch is not installed.
    """
    view = memoryview(data).cast("B")
    if len(view) < _PREFIX or view[: len(MAGIC)] != MAGIC:
        raise SerializationError(
            f"not a poptune checkpoint: the data ({len(view)} bytes) does not start with "
            f"{MAGIC!r}; it may be truncated, or written by another program (poptune never "
            "unpickles)."
        )
    version = view[len(MAGIC)]
    if version != VERSION:
        raise SerializationError(
            f"checkpoint format version {version} is not supported (this poptune reads version "
            f"{VERSION}); load it with the poptune version that wrote it."
        )
    (length,) = struct.unpack("<Q", view[len(MAGIC) + 1 : _PREFIX])
    if _PREFIX + length > len(view):
        raise SerializationError(
            f"truncated checkpoint: its header needs {_PREFIX + length} bytes, the data has "
            f"{len(view)}."
        )
    try:
        header = json.loads(str(view[_PREFIX : _PREFIX + length], "utf-8"))
        tree, sizes = header["tree"], header["sizes"]
        if not isinstance(sizes, list) or not all(_is_count(s) for s in sizes):
            raise TypeError(f"buffer sizes must be a list of counts, not {sizes!r:.100}")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise SerializationError(f"corrupt checkpoint header: {error}") from None
    offsets, position = [], _PREFIX + length
    for size in sizes:
        offsets.append(position)
        position += _align(size)
    if position != len(view):
        raise SerializationError(
            f"truncated or padded checkpoint: its header describes {position} bytes, the data "
            f"has {len(view)}."
        )
    buffers = [view[o : o + s] for o, s in zip(offsets, sizes, strict=True)]
    try:
        return _Decoder(buffers, copy=copy or view.readonly).decode(tree)
    except SerializationError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as error:
        # RuntimeError covers RecursionError and torch's complaints about impossible tensors.
        raise SerializationError(f"corrupt checkpoint contents: {error!r:.300}") from None


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


class _Decoder:
    """Rebuilds a state from a header tree and the buffers it points at."""

    def __init__(self, buffers: list[memoryview], copy: bool) -> None:
        self.buffers = buffers
        self.copy = copy

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            raise SerializationError(f"unexpected node {node!r:.100}")
        tag = node["t"]
        if tag == "dict":
            keys = [self.decode(k) for k in node["k"]]
            values = [self.decode(v) for v in node["v"]]
            if len(keys) != len(values):
                raise SerializationError("corrupt checkpoint: a dict has unequal keys and values")
            return dict(zip(keys, values, strict=True))
        if tag == "tuple":
            return tuple(self.decode(v) for v in node["v"])
        if tag in ("ndarray", "npscalar"):
            dtype = node["dtype"]
            if not isinstance(dtype, str):
                raise SerializationError(f"corrupt checkpoint: numpy dtype {dtype!r:.100}")
            array = self.array(node, np.dtype(dtype))
            return array[()] if tag == "npscalar" else array
        if tag == "tensor":
            return self.tensor(node)
        if tag == "bytes":
            return bytes(self.buffer(node))
        if tag == "bytearray":
            return bytearray(self.buffer(node))
        if tag == "int":
            return int(node["v"], 16)
        if tag == "torch_dtype":
            return _torch_dtype(node["v"])
        raise SerializationError(f"corrupt checkpoint: unknown node tag {tag!r:.100}")

    def buffer(self, node: dict[str, Any]) -> memoryview:
        index = node["b"]
        if not _is_count(index) or index >= len(self.buffers):
            raise SerializationError(
                f"corrupt checkpoint: buffer index {index!r:.100} is not in [0, "
                f"{len(self.buffers)})"
            )
        return self.buffers[index]

    def array(self, node: dict[str, Any], dtype: np.dtype) -> np.ndarray:
        if dtype.hasobject or dtype.fields is not None or dtype.itemsize == 0:
            raise SerializationError(f"corrupt checkpoint: refusing numpy dtype {dtype}")
        shape = node["shape"]
        buffer = self.buffer(node)
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise SerializationError(f"corrupt checkpoint: array shape {shape!r:.100}")
        if math.prod(shape) * dtype.itemsize != len(buffer):
            raise SerializationError(
                f"corrupt checkpoint: a buffer of {len(buffer)} bytes does not hold an array "
                f"of shape {shape} and dtype {dtype}"
            )
        array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
        if self.copy or array.ctypes.data % dtype.alignment:
            return array.copy()
        return array

    def tensor(self, node: dict[str, Any]) -> Any:
        torch = _import_torch()
        dtype = _torch_dtype(node["dtype"])
        numpy_dtype, as_bits = _numpy_dtype_of(dtype)
        tensor = torch.from_numpy(self.array(node, numpy_dtype))
        if as_bits:
            tensor = tensor.view(dtype)
        requires_grad = node.get("rg", False)
        if type(requires_grad) is not bool:
            raise SerializationError(f"corrupt checkpoint: requires_grad {requires_grad!r:.100}")
        if node.get("p", False):
            return torch.nn.Parameter(tensor, requires_grad=requires_grad)
        return tensor.requires_grad_(requires_grad)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "This checkpoint holds torch tensors, so loading it needs PyTorch: pip install "
            "torch==2.13.0 (CPU) or pip install 'poptune[torch]'."
        ) from error
    return torch


_TORCH_DTYPES: dict[str, Any] = {}
_NUMPY_OF_TORCH: dict[Any, tuple[np.dtype, bool]] = {}


def _torch_dtype(name: Any) -> Any:
    """The torch dtype called ``name``, looked up in a table (never ``getattr`` on torch)."""
    torch = _import_torch()
    if not _TORCH_DTYPES:
        dtypes = [value for value in vars(torch).values() if isinstance(value, torch.dtype)]
        for dtype in dtypes:
            canonical = str(dtype).removeprefix("torch.")
            # Quantized tensors are refused by dump, so a file cannot legitimately hold them.
            if not canonical.startswith(("qint", "quint")):
                _TORCH_DTYPES[canonical] = dtype
    if not isinstance(name, str) or name not in _TORCH_DTYPES:
        raise SerializationError(f"corrupt checkpoint: unknown torch dtype {name!r:.100}")
    return _TORCH_DTYPES[name]


def _numpy_dtype_of(dtype: Any) -> tuple[np.dtype, bool]:
    """The numpy dtype a tensor of ``dtype`` is stored as, and whether it is stored as bits."""
    if dtype not in _NUMPY_OF_TORCH:
        torch = _import_torch()
        empty = torch.empty(0, dtype=dtype)
        try:
            _NUMPY_OF_TORCH[dtype] = (empty.numpy().dtype, False)
        except TypeError:
            _NUMPY_OF_TORCH[dtype] = (np.dtype(_INTEGER_OF_WIDTH[empty.element_size()]), True)
    return _NUMPY_OF_TORCH[dtype]
