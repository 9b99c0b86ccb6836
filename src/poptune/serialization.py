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
  as integers of the same width; ``torch.dtype`` values ``{"t": "torch_dtype", "v": "float32"}``;
- a :class:`Directory` (a folder such as ``save_pretrained`` writes) ``{"t": "dir", "k":
  [relative paths], "b": [i, ...]}``: each file's relative POSIX path and the buffer of its bytes.

Version 1 files have no directories. A file holding a directory is written as version 2, so
that a poptune from before directories refuses it by its version instead of misreading it;
every other file is still written as version 1, byte for byte as before.

Round trips are exact: bitwise for arrays and tensors, and types are kept (a float NaN comes
back as NaN, without its sign and payload bits). Three conversions are deliberate: subclasses
of dict, list, tuple, int, float and str (``OrderedDict``, named tuples, ``IntEnum``...) come
back as the base type, ``torch.Size`` as a tuple, and numpy array subclasses as plain arrays.
A value referenced from two places is stored twice. Anything else (objects, sets, masked arrays,
sparse tensors...) is refused with the path where it was found.

There is no pickle anywhere: :func:`load` only parses JSON and copies bytes, and imports torch
only when the file holds tensors. A directory's files (safetensors, JSON configs...) are bytes
too; :func:`load` never writes them anywhere, :meth:`Directory.materialize` does when asked.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np

from .errors import SerializationError

__all__ = [
    "Directory",
    "Encoded",
    "SerializationError",
    "array_bytes",
    "copy",
    "dump",
    "dumps",
    "encode",
    "load",
]

MAGIC = b"POPTUNE\x00CKPT"
#: The newest format version this poptune reads and writes (2: directories); a file without a
#: :class:`Directory` is written as version 1, readable by every poptune.
VERSION = 2
_VERSIONS = (1, 2)
_DIRECTORY_VERSION = 2
_PREFIX = len(MAGIC) + 1 + 8
_ALIGNMENT = 64
_ZEROS = bytes(_ALIGNMENT)
_JSON_INT_BITS = 4096  # CPython refuses to print or parse ints over 4300 digits
_INTEGER_OF_WIDTH = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}
_FIX = "convert it to numpy arrays, tensors or Python scalars, lists, tuples and dicts"


class Directory(Mapping[str, bytes]):
    """A folder's files as one immutable value that a state may contain.

    Use it for what a framework saves as a directory (``model.save_pretrained(path)``, sharded
    optimizer states): the folder is checkpointed as one unit, checksummed with the rest of
    the state, and comes back as this value, whose :meth:`materialize` writes the files into a
    fresh folder for the framework to load. Files are bytes and nothing in them is executed or
    unpickled by poptune (a safetensors file is loaded by safetensors, not by poptune).

    It maps relative POSIX paths (``"config.json"``, ``"shards/part-0.safetensors"``) to the
    files' bytes; only files are kept (an empty sub-folder is not). A path may not be absolute,
    contain ``..``, ``.``, empty segments, backslashes or NUL, nor be both a file and a folder.

    Example:
        >>> from pathlib import Path    # a folder as model.save_pretrained("out/model") writes
        >>> Path("out/model").mkdir(parents=True)
        >>> Path("out/model/config.json").write_text('{"hidden": 64}')
        14
        >>> state = {"model": Directory.from_path("out/model"), "step": 3}
        >>> loaded = load(dumps(state))
        >>> path = loaded["model"].materialize()               # a new temporary folder
        >>> sorted(p.name for p in path.iterdir())   # for AutoModel.from_pretrained(path)
        ['config.json']
    """

    __slots__ = ("_files",)

    def __init__(self, files: Mapping[str, bytes | bytearray | memoryview]) -> None:
        if not isinstance(files, Mapping):
            raise TypeError(
                "Directory: give a mapping of relative path -> bytes, e.g. {'config.json': "
                f"b'{{}}'}}, or use Directory.from_path(folder). Got {type(files).__name__}."
            )
        checked: dict[str, bytes] = {}
        for path, data in files.items():
            _check_relative(path)
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(
                    f"Directory: the contents of {path!r} must be bytes; got {type(data).__name__}."
                )
            checked[path] = bytes(data)
        _check_no_file_is_a_folder(checked)
        self._files: Mapping[str, bytes] = MappingProxyType(dict(sorted(checked.items())))

    @classmethod
    def from_path(cls, folder: str | os.PathLike[str]) -> Directory:
        """Read every file under ``folder`` (recursively) into a Directory.

        A symbolic link to a file inside ``folder`` is stored as a copy of that file.

        Raises:
            ValueError: if ``folder`` is not a folder, or holds a symbolic link that points
                outside it or at a folder, or a special file (socket, FIFO, device).
        """
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"Directory.from_path: {str(root)!r} is not a folder.")
        real_root = root.resolve()
        files: dict[str, bytes] = {}
        for current, folders, names in os.walk(root):
            for name in [*folders, *names]:
                path = Path(current) / name
                relative = path.relative_to(root).as_posix()
                if path.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(real_root) or not target.exists():
                        raise ValueError(
                            f"Directory.from_path: {relative!r} in {str(root)!r} is a symbolic "
                            f"link to {os.readlink(path)!r}, which is outside the folder or "
                            "missing; copy the file in instead."
                        )
                    if target.is_dir():
                        raise ValueError(
                            f"Directory.from_path: {relative!r} in {str(root)!r} is a symbolic "
                            "link to a folder; poptune stores files only, so replace it with "
                            "the folder itself."
                        )
                if name in folders:
                    continue  # a real sub-folder: os.walk descends into it
                if not stat.S_ISREG(path.stat().st_mode):
                    raise ValueError(
                        f"Directory.from_path: {relative!r} in {str(root)!r} is not a regular "
                        "file (a socket, FIFO or device); poptune stores regular files only."
                    )
                files[relative] = path.read_bytes()
        return cls(files)

    def materialize(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Write the files into ``folder`` (created if missing, else it must be empty), or into
        a new temporary folder that the caller owns (remove it when done); return the folder.

        Raises:
            FileExistsError: if ``folder`` exists and is not empty.
        """
        if folder is None:
            root = Path(tempfile.mkdtemp(prefix="poptune-directory-"))
        else:
            root = Path(folder)
            root.mkdir(parents=True, exist_ok=True)
            if any(root.iterdir()):
                raise FileExistsError(
                    f"Directory.materialize: {str(root)!r} is not empty; give a new or empty "
                    "folder, or none for a fresh temporary one."
                )
        for relative, data in self._files.items():
            path = root.joinpath(*relative.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as file:  # "x": never through a link planted meanwhile
                file.write(data)
        return root

    @property
    def nbytes(self) -> int:
        """The total size of the files, in bytes."""
        return sum(len(data) for data in self._files.values())

    def __getitem__(self, path: str) -> bytes:
        return self._files[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Directory):
            return NotImplemented
        return dict(self._files) == dict(other._files)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Directory({len(self._files)} files, {self.nbytes} bytes)"


def _check_relative(path: Any) -> None:
    """Raise ``ValueError`` unless ``path`` is a safe relative POSIX file path."""
    if not isinstance(path, str):
        raise TypeError(f"Directory: paths must be strings; got {path!r}.")
    problem = None
    if not path:
        problem = "is empty"
    elif path.startswith("/"):
        problem = "is absolute"
    elif "\\" in path or "\x00" in path:
        problem = "contains a backslash or NUL"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "has an empty, '.' or '..' segment"
    elif len(path) >= 2 and path[1] == ":":
        problem = "starts with a drive letter"
    if problem:
        raise ValueError(
            f"Directory: the path {path!r} {problem}; paths are relative to the folder, "
            "'/'-separated, and stay inside it (e.g. 'shards/part-0.safetensors')."
        )


def _check_no_file_is_a_folder(files: Mapping[str, bytes]) -> None:
    folders: set[str] = set()
    for path in files:
        parts = path.split("/")
        folders.update("/".join(parts[:end]) for end in range(1, len(parts)))
    clash = sorted(folders & set(files))
    if clash:
        raise ValueError(f"Directory: {clash[0]!r} is both a file and a folder of other files.")


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
        self.version = 1  # raised to the version of the newest node written
        self.tree: Any = None  # what encode() gave for the whole state
        torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
        self._torch = torch
        #: the exact type met most after dict (a block saves thousands of tensors)
        self._tensor = getattr(torch, "Tensor", None)

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
        if kind is self._tensor:
            return self.tensor(value, self._torch)
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
        if isinstance(value, Directory):
            self.version = max(self.version, _DIRECTORY_VERSION)
            paths = list(value)
            return {"t": "dir", "k": paths, "b": [self.buffer(value[p]) for p in paths]}
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
                keys.append(key if type(key) is str else self.encode(key))
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
        # ``np.ma`` is imported on first use (10 to 14 ms): a masked array exists only if it was.
        masked = sys.modules.get("numpy.ma")
        if masked is not None and isinstance(value, masked.MaskedArray):
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
        grad = value.requires_grad
        tensor = value.detach() if grad else value
        name = _TORCH_NAMES.get(tensor.dtype, "")
        if name == "":
            name = _numpy_name(tensor.dtype, torch)
        if (  # the common case, a third of the general path's time (a block saves thousands)
            name is not None
            and tensor.is_cpu
            and tensor.layout is torch.strided
            and tensor.numel() > 0  # no bytes: memoryview.cast refuses them
            and not (tensor.is_nested or tensor.is_quantized or tensor.is_conj())
            and not tensor.is_neg()
            and tensor.is_contiguous()
        ):
            data: Any = tensor.numpy()
            if not data.ndim:
                data = data.reshape(1)  # a 0-d array: memoryview.cast needs a dimension
        else:
            tensor, data = self._tensor_bytes(tensor, torch)
            name = str(tensor.dtype).removeprefix("torch.")
        self.buffers.append(memoryview(data).cast("B"))
        node = {
            "t": "tensor",
            "dtype": name,
            "shape": list(tensor.shape),
            "rg": grad,
            "b": len(self.buffers) - 1,
        }
        if type(value) is not torch.Tensor and isinstance(value, torch.nn.Parameter):
            node["p"] = True
        return node

    @staticmethod
    def _tensor_bytes(tensor: Any, torch: Any) -> tuple[Any, np.ndarray]:
        """Any other tensor: refused with the reason, or brought to the CPU, resolved and made
        contiguous; with its bytes (a dtype numpy lacks stored as an integer of its width)."""
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
        return tensor, array.reshape(-1).view(np.uint8)


_TORCH_NAMES: dict[Any, str | None] = {}  # torch dtype -> its name here; None: numpy lacks it


def _numpy_name(dtype: Any, torch: Any) -> str | None:
    """The name of torch ``dtype`` in the format if numpy has it (``tensor.numpy()`` works),
    else ``None`` (bfloat16, float8...: the general path stores their bits)."""
    name = _TORCH_NAMES.get(dtype, "")
    if name == "":
        try:
            torch.empty(0, dtype=dtype).numpy()
            name = str(dtype).removeprefix("torch.")
        except TypeError:
            name = None
        _TORCH_NAMES[dtype] = name
    return name


def _tree(state: Any) -> _Encoder:
    """The encoder that encoded ``state``; ``.tree`` is its header's tree, ``.buffers`` views
    of the memory of its arrays and tensors (no copy)."""
    encoder = _Encoder()
    try:
        encoder.tree = encoder.encode(state)
    except _Refused as refused:
        raise refused.error() from None
    except RecursionError:
        raise ValueError(_NESTED) from None
    return encoder


_NESTED = (
    "state is nested too deeply, or a list or dict in it contains itself; poptune stores trees "
    "of values, so break the cycle or flatten the state."
)


class Encoded:
    """A state encoded in poptune's format but not laid out: the file's prefix and header, and
    views of the memory of its arrays and tensors (no copy), to be written or packed.

    ``size`` is the size of the file it makes, known before a byte is written.
    """

    __slots__ = ("buffers", "head", "size")

    def __init__(self, head: bytes, buffers: list[memoryview]) -> None:
        self.head = head
        self.buffers = buffers
        self.size = len(head) + sum(_align(buffer.nbytes) for buffer in buffers)

    def write(self, file: BinaryIO) -> int:
        """Write the file to ``file``, each buffer straight from its memory; its size."""
        for part in self.parts():
            file.write(part)
        return self.size

    def parts(self) -> Iterator[memoryview]:
        """The file's bytes, in order: the head, then each buffer followed by its padding.

        Example:
            >>> encoded = encode({"w": np.zeros(2)})
            >>> b"".join(encoded.parts()) == dumps({"w": np.zeros(2)})
            True
        """
        yield memoryview(self.head)
        for buffer in self.buffers:
            yield buffer
            padding = _align(buffer.nbytes) - buffer.nbytes
            if padding:
                yield memoryview(_ZEROS)[:padding]

    def pack(self) -> bytearray:
        """The file in one new buffer (every array copied once): one write instead of two or
        more per array, which is what a small state's save spends most of its time on."""
        data = bytearray(self.size)
        view = memoryview(data)
        view[: len(self.head)] = self.head
        position = len(self.head)
        for buffer in self.buffers:
            view[position : position + buffer.nbytes] = buffer
            position += _align(buffer.nbytes)
        return data


def encode(state: Any) -> Encoded:
    """``state`` encoded (see :class:`Encoded`), for a writer that needs the file's size first.

    Raises:
        TypeError: for a value that cannot be stored safely (see :func:`dump`).
        ValueError: if the state contains itself.

    Example:
        >>> encode({"w": np.zeros(2)}).size
        192
    """
    encoder = _tree(state)
    tree = encoder.tree
    sizes = [buffer.nbytes for buffer in encoder.buffers]
    header = json.dumps({"tree": tree, "sizes": sizes}, allow_nan=True, separators=(",", ":"))
    # ensure_ascii (the default) makes the header's length in characters its length in bytes.
    # Pad the header (JSON allows trailing spaces) so that every buffer starts 64-byte aligned.
    length = _align(_PREFIX + len(header)) - _PREFIX
    version = bytes([encoder.version])
    head = MAGIC + version + struct.pack("<Q", length) + header.ljust(length).encode()
    return Encoded(head, encoder.buffers)


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
    return encode(state).write(file)


def dumps(state: Any) -> bytes:
    """``state`` in poptune's format, as bytes (see :func:`dump`).

    Example:
        >>> load(dumps({"step": 3, "w": np.zeros(2)}))
        {'step': 3, 'w': array([0., 0.])}
    """
    return bytes(encode(state).pack())


def array_bytes(state: Any) -> int:
    """The bytes of the arrays, tensors and bytes objects in ``state``: about the size of its
    checkpoint, found without encoding it (containers are walked, anything else counts 0).

    Example:
        >>> array_bytes({"w": np.zeros(4), "step": 3})
        32

    Raises:
        ValueError: for a state nested too deeply or containing itself (as encoding it would).
    """
    try:
        return _array_bytes(state)
    except RecursionError:
        raise ValueError(_NESTED) from None


def _array_bytes(state: Any) -> int:
    kind = type(state)
    # Exact types first: a block's save asks this of every member's state, tensor by tensor.
    if kind is dict:
        return sum(map(_array_bytes, state.values()))
    if kind is list or kind is tuple:
        return sum(map(_array_bytes, state))
    if kind is np.ndarray:
        return int(state.nbytes)
    torch = sys.modules.get("torch")
    if torch is not None and (kind is torch.Tensor or kind is torch.nn.Parameter):
        return int(state.nelement()) * int(state.element_size())
    if state is None or kind is int or kind is float or kind is str or kind is bool:
        return 0
    if isinstance(state, np.ndarray | np.generic):
        return int(state.nbytes)
    if isinstance(state, bytes | bytearray | memoryview):
        return len(state)
    if isinstance(state, Directory):
        return state.nbytes
    if isinstance(state, dict):
        return sum(map(_array_bytes, state.values()))
    if isinstance(state, list | tuple):
        return sum(map(_array_bytes, state))
    nelement = getattr(state, "nelement", None)
    element_size = getattr(state, "element_size", None)
    if callable(nelement) and callable(element_size):  # a torch tensor
        return int(nelement()) * int(element_size())
    return 0


def copy(state: Any) -> Any:
    """A deep copy of ``state`` through poptune's format: what saving and loading it would
    give, without a file or a checksum. Each array and tensor is copied once, straight from
    its memory into its own (no buffer laid out in between, which would be written twice).

    Example:
        >>> copy({"w": np.ones(2)})
        {'w': array([1., 1.])}
    """
    encoder = _tree(state)
    return _Decoder(encoder.buffers, copy=True, version=encoder.version).decode(encoder.tree)


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
    if version not in _VERSIONS:
        raise SerializationError(
            f"checkpoint format version {version} is not supported (this poptune reads versions "
            f"{_VERSIONS[0]} to {VERSION}); load it with the poptune version that wrote it."
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
        return _Decoder(buffers, copy=copy or view.readonly, version=version).decode(tree)
    except SerializationError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as error:
        # RuntimeError covers RecursionError and torch's complaints about impossible tensors.
        raise SerializationError(f"corrupt checkpoint contents: {error!r:.300}") from None


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


class _Decoder:
    """Rebuilds a state from a header tree and the buffers it points at."""

    def __init__(self, buffers: list[memoryview], copy: bool, version: int = 1) -> None:
        self.buffers = buffers
        self.copy = copy
        self.version = version

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
        if tag == "dir":
            return self.directory(node)
        raise SerializationError(f"corrupt checkpoint: unknown node tag {tag!r:.100}")

    def directory(self, node: dict[str, Any]) -> Directory:
        if self.version < _DIRECTORY_VERSION:
            raise SerializationError(
                f"corrupt checkpoint: a directory in a version {self.version} file (directories "
                f"came with version {_DIRECTORY_VERSION})"
            )
        paths, indices = node["k"], node["b"]
        if not isinstance(paths, list) or not isinstance(indices, list):
            raise SerializationError("corrupt checkpoint: a directory's paths or buffers")
        if len(paths) != len(indices) or len(set(paths)) != len(paths):
            raise SerializationError(
                "corrupt checkpoint: a directory has unequal or repeated paths and buffers"
            )
        files = {path: bytes(self.buffer({"b": i})) for path, i in zip(paths, indices, strict=True)}
        try:
            return Directory(files)
        except (TypeError, ValueError) as error:
            raise SerializationError(f"corrupt checkpoint: refusing a directory: {error}") from None

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
