"""poptune's checkpoint format: safe to load, because loading never runs code from the file.

A file is ``MAGIC``, a version byte, an 8-byte little-endian header length, a UTF-8 JSON header
and the raw bytes of every array, tensor and bytes object, one after the other. The header is a
tree in which every JSON object is a tagged node, so nothing is ambiguous:

- ``None``, bools, ints, strings and floats (including NaN and infinities) are JSON scalars;
- lists are JSON arrays; tuples ``{"t": "tuple", "v": [...]}``;
- dicts ``{"t": "dict", "k": [...], "v": [...]}``, so int (or tuple) keys keep their type;
- numpy arrays and scalars, torch tensors and bytes point at a buffer by index.

Anything else is refused with the path where it was found. There is no pickle anywhere.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import Any, BinaryIO

import numpy as np

__all__ = ["SerializationError", "dump", "dumps", "load"]

MAGIC = b"POPTUNE\x00CKPT"
VERSION = 1
_PREFIX = len(MAGIC) + 1 + 8
_ALIGNMENT = 64


class SerializationError(ValueError):
    """The data is not a valid poptune checkpoint (wrong magic, truncated, inconsistent)."""


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


class _Encoder:
    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def buffer(self, data: Any) -> int:
        self.buffers.append(memoryview(data).cast("B"))
        return len(self.buffers) - 1

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return value
        if isinstance(value, list):
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {
                "t": "tuple",
                "v": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)],
            }
        if isinstance(value, dict):
            keys, values = [], []
            for key, item in value.items():
                keys.append(self.encode(key, f"{path} key {key!r}"))
                values.append(self.encode(item, f"{path}[{key!r}]"))
            return {"t": "dict", "k": keys, "v": values}
        if isinstance(value, bytes | bytearray):
            return {"t": "bytes", "b": self.buffer(bytes(value))}
        if isinstance(value, np.ndarray | np.generic):
            return self.array(value, path)
        if _is_tensor(value):
            return self.tensor(value)
        if type(value).__module__.startswith("torch"):
            torch = sys.modules["torch"]
            if isinstance(value, torch.Size):
                return {"t": "tuple", "v": [int(v) for v in value]}
            if isinstance(value, torch.dtype):
                return {"t": "torch_dtype", "v": str(value).removeprefix("torch.")}
        raise TypeError(
            f"state{path} is a {type(value).__module__}.{type(value).__qualname__}, which poptune "
            "cannot store safely; convert it to numpy arrays, tensors or Python scalars, lists "
            "and dicts."
        )

    def array(self, value: np.ndarray | np.generic, path: str) -> dict[str, Any]:
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.fields is not None:
            raise TypeError(
                f"state{path} is a numpy array of dtype {array.dtype}, which poptune cannot "
                "store safely; use a numeric or bool dtype."
            )
        shape = list(array.shape)  # before ascontiguousarray, which makes 0-d arrays 1-d
        array = np.ascontiguousarray(array)
        return {
            "t": "npscalar" if isinstance(value, np.generic) else "ndarray",
            "dtype": array.dtype.str,
            "shape": shape,
            "b": self.buffer(array.reshape(-1).view(np.uint8)),
        }

    def tensor(self, value: Any) -> dict[str, Any]:
        torch = sys.modules["torch"]
        tensor = value.detach().cpu().contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        try:
            array = tensor.numpy()
        except TypeError:  # bfloat16, float8...: store the bits as an integer of the same width
            bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
            array = tensor.view(bits[tensor.element_size()]).numpy()
        return {
            "t": "tensor",
            "dtype": dtype,
            "shape": list(tensor.shape),
            "rg": bool(value.requires_grad),
            "b": self.buffer(array.reshape(-1).view(np.uint8)),
        }


def dump(state: Any, file: BinaryIO) -> int:
    """Write ``state`` to ``file`` in poptune's format; return the number of bytes written.

    Raises:
        TypeError: naming the path of a value that cannot be stored safely.
    """
    encoder = _Encoder()
    tree = encoder.encode(state, "")
    sizes = [len(b) for b in encoder.buffers]
    header = json.dumps({"tree": tree, "sizes": sizes}, allow_nan=True).encode()
    # Pad the header (JSON allows trailing spaces) and every buffer to 64 bytes, so arrays
    # decoded in place from a freshly read file are aligned.
    header += b" " * (_align(_PREFIX + len(header)) - _PREFIX - len(header))
    file.write(MAGIC + bytes([VERSION]) + struct.pack("<Q", len(header)))
    file.write(header)
    total = _PREFIX + len(header)
    for buffer in encoder.buffers:
        file.write(buffer)
        padding = _align(len(buffer)) - len(buffer)
        if padding:
            file.write(b"\0" * padding)
        total += len(buffer) + padding
    return total


def _align(size: int) -> int:
    return (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT


class _Bytes:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(self.parts[-1])


def dumps(state: Any) -> bytes:
    """``state`` in poptune's format, as bytes."""
    sink = _Bytes()
    dump(state, sink)  # type: ignore[arg-type]
    return b"".join(sink.parts)


def load(data: bytes | bytearray | memoryview) -> Any:
    """Decode a checkpoint written by :func:`dump`. Never executes code from ``data``.

    Raises:
        SerializationError: if the data is not a complete, consistent poptune checkpoint.
    """
    view = memoryview(data).cast("B")
    if len(view) < _PREFIX or bytes(view[: len(MAGIC)]) != MAGIC:
        raise SerializationError("not a poptune checkpoint (wrong magic bytes or too short)")
    version = view[len(MAGIC)]
    if version != VERSION:
        raise SerializationError(
            f"checkpoint format version {version} is not supported (this poptune reads "
            f"{VERSION}); use the poptune version that wrote it"
        )
    (length,) = struct.unpack("<Q", view[len(MAGIC) + 1 : _PREFIX])
    if _PREFIX + length > len(view):
        raise SerializationError("truncated checkpoint: the header runs past the end of the data")
    try:
        header = json.loads(bytes(view[_PREFIX : _PREFIX + length]).decode())
        sizes = [int(s) for s in header["sizes"]]
        tree = header["tree"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise SerializationError(f"corrupt checkpoint header: {error}") from None
    offsets, position = [], _PREFIX + length
    for size in sizes:
        if size < 0:
            raise SerializationError("corrupt checkpoint: negative buffer size")
        offsets.append(position)
        position += _align(size)
    if position != len(view):
        raise SerializationError(
            f"truncated or padded checkpoint: {len(view)} bytes, {position} expected"
        )
    buffers = [view[o : o + s] for o, s in zip(offsets, sizes, strict=True)]
    try:
        # A writable buffer (a fresh bytearray read from a file) is handed over: arrays view it
        # instead of copying. Read-only data (bytes) is copied so arrays are writable.
        return _decode(tree, buffers, copy=view.readonly)
    except SerializationError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise SerializationError(f"corrupt checkpoint contents: {error!r}") from None


def _decode(node: Any, buffers: list[memoryview], copy: bool) -> Any:
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return [_decode(v, buffers, copy) for v in node]
    if not isinstance(node, dict):
        raise SerializationError(f"unexpected node {node!r}")
    tag = node["t"]
    if tag == "tuple":
        return tuple(_decode(v, buffers, copy) for v in node["v"])
    if tag == "dict":
        keys = [_decode(k, buffers, copy) for k in node["k"]]
        values = [_decode(v, buffers, copy) for v in node["v"]]
        if len(keys) != len(values):
            raise SerializationError("dict node with unequal keys and values")
        return dict(zip(keys, values, strict=True))
    if tag == "bytes":
        return bytes(buffers[node["b"]])
    if tag in ("ndarray", "npscalar"):
        dtype = np.dtype(node["dtype"])
        if dtype.hasobject or dtype.fields is not None:
            raise SerializationError(f"refusing numpy dtype {dtype}")
        array = _array(buffers[node["b"]], dtype, node["shape"], copy)
        return array[()] if tag == "npscalar" else array
    if tag == "tensor":
        return _tensor(node, buffers, copy)
    if tag == "torch_dtype":
        import torch

        dtype = getattr(torch, node["v"], None)
        if not isinstance(dtype, torch.dtype):
            raise SerializationError(f"unknown torch dtype {node['v']!r}")
        return dtype
    raise SerializationError(f"unknown node tag {tag!r}")


def _array(buffer: memoryview, dtype: np.dtype, shape: list[int], copy: bool) -> np.ndarray:
    shape = [int(s) for s in shape]
    count = int(np.prod(shape)) if shape else 1
    if count * dtype.itemsize != len(buffer) or any(s < 0 for s in shape):
        raise SerializationError(
            f"buffer of {len(buffer)} bytes does not hold shape {shape} of {dtype}"
        )
    array = np.frombuffer(buffer, dtype=dtype).reshape(tuple(shape))
    return array.copy() if copy or array.ctypes.data % max(dtype.alignment, 1) else array


def _tensor(node: dict[str, Any], buffers: list[memoryview], copy: bool) -> Any:
    import torch

    dtype = getattr(torch, node["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise SerializationError(f"unknown torch dtype {node['dtype']!r}")
    width = torch.empty((), dtype=dtype).element_size()
    try:
        numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
        bits = None
    except TypeError:
        numpy_dtype = np.dtype({1: "u1", 2: "<i2", 4: "<i4", 8: "<i8"}[width])
        bits = True
    array = _array(buffers[node["b"]], numpy_dtype, node["shape"], copy)
    tensor = torch.from_numpy(array)
    if bits:
        tensor = tensor.view(dtype)
    if node.get("rg"):
        tensor.requires_grad_(True)
    return tensor
