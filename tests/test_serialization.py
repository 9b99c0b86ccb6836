"""poptune's checkpoint format: exact round trips, clear refusals, never code execution."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from poptune.serialization import SerializationError, dump, dumps, load

torch = pytest.importorskip("torch")


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray | np.generic):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.requires_grad == b.requires_grad
            and torch.equal(a.detach().view(torch.uint8), b.detach().view(torch.uint8))
        )
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, 2: "b", (3, "x"): [None, True, 2**80, -1.5, "ünï"], None: b"\x00raw"},
        {"nan": math.nan, "inf": math.inf, "-inf": -math.inf},
        (1, (2, [3, {"k": ()}])),
        np.arange(12, dtype=np.float16).reshape(3, 4),
        np.array([True, False]),
        np.array([1 + 2j], dtype=np.complex128),
        np.zeros((0, 3), dtype=np.int64),
        np.array(5.0),
        np.float32(1.25),
        np.int64(-7),
        np.arange(20, dtype=np.int32)[::3],  # not contiguous
        torch.arange(6, dtype=torch.float32).reshape(2, 3),
        torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        torch.tensor([1, 2], dtype=torch.int64),
        torch.ones(3, requires_grad=True),
        torch.Size([2, 3]),
        {"dtype": torch.float64},
    ],
)
def test_round_trip_is_exact(value):
    loaded = load(dumps(value))
    if isinstance(value, torch.Size):
        assert loaded == (2, 3)
    else:
        assert same(value, loaded)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
keys = st.none() | st.booleans() | st.integers() | st.text()
nested = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=20,
)


@given(nested)
def test_round_trip_of_nested_python_values(value):
    assert same(value, load(dumps(value)))


def test_loaded_arrays_and_tensors_are_writable_and_independent():
    data = bytearray(dumps({"a": np.zeros(4), "t": torch.zeros(4)}))
    state = load(data)
    state["a"][0] = 1.0
    state["t"][0] = 1.0  # no warning, no error
    again = load(bytes(data))
    again["a"][1] = 2.0


def test_dump_reports_its_size():
    buffer = io.BytesIO()
    size = dump({"w": np.ones(1000)}, buffer)
    assert size == len(buffer.getvalue())


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"model": {"layer": object()}}, r"\['model'\]\['layer'\]"),
        ([1, {1, 2}], r"\[1\]"),
        ({"a": np.array([object()])}, r"dtype object"),
    ],
)
def test_unsupported_values_are_refused_with_their_path(value, path):
    with pytest.raises(TypeError, match=path):
        dumps(value)


class Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_is_refused_and_never_executed(tmp_path: Path):
    marker = tmp_path / "executed"
    payload = pickle.dumps(Marker(str(marker)))
    with pytest.raises(SerializationError):
        load(payload)
    assert not marker.exists()


def test_truncated_data_always_raises_serialization_error():
    data = dumps({"w": np.arange(100, dtype=np.float64), "s": "x" * 50, "t": (1, 2)})
    for cut in range(len(data)):
        with pytest.raises(SerializationError):
            load(data[:cut])
    with pytest.raises(SerializationError):
        load(data + b"extra")


def test_flipped_header_bytes_give_an_error_or_a_value_never_anything_else():
    data = bytearray(dumps({"w": np.arange(10.0), "k": [1, 2]}))
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0x5A
        with contextlib.suppress(SerializationError):
            load(damaged)


def test_importing_the_format_does_not_import_torch():
    code = "import sys, poptune.serialization, poptune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
