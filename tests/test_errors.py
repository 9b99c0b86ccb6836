"""One error family: every exception poptune defines derives from ``pt.PoptuneError``, lives in
``poptune.errors``, is exported by ``poptune``, and keeps the builtin base it always had."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import poptune as pt
from poptune import errors

#: The builtin each exception derived from before the family existed: ``except ValueError``
#: written against an older poptune still catches the same errors.
BUILTINS = {
    "InvalidParameterError": (ValueError, TypeError),
    "NotRecordable": (TypeError,),
    "SerializationError": (ValueError,),
    "PopulationError": (RuntimeError,),
    "LoopError": (RuntimeError,),
    "PeersChanged": (RuntimeError,),
    "NoBestMember": (LookupError,),
    "TrackerError": (RuntimeError,),
    "StorageError": (RuntimeError,),
    "PopulationNotFound": (KeyError,),
    "PopulationExists": (ValueError,),
    "PopulationBusy": (RuntimeError,),
    "LeaseLost": (RuntimeError,),
    "CheckpointError": (RuntimeError,),
    "CheckpointMissing": (RuntimeError,),
    "CheckpointCorrupt": (RuntimeError,),
    "UnsafeCheckpointPath": (RuntimeError,),
}


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(pt.__path__, "poptune."):
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        names.append(info.name)
    return names


def test_every_public_exception_is_in_the_family_and_exported() -> None:
    found = {}
    for name in _modules():
        for attr, value in vars(importlib.import_module(name)).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("poptune")
                and not attr.startswith("_")
            ):
                found[attr] = value
    assert found, "no exception found: the walk is broken"
    for attr, value in found.items():
        assert value.__module__ == "poptune.errors", f"{attr} is defined in {value.__module__}"
        assert issubclass(value, pt.PoptuneError), attr
        assert getattr(pt, attr) is value, f"pt.{attr} is not exported"
    assert set(found) | {"PoptuneError"} == set(errors.__all__)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_each_keeps_its_builtin_base(name: str) -> None:
    cls = getattr(pt, name)
    for base in BUILTINS[name]:
        assert issubclass(cls, base), f"{name} no longer a {base.__name__}"
    assert issubclass(cls, pt.PoptuneError)


def test_missing_and_corrupt_are_siblings() -> None:
    assert not issubclass(pt.CheckpointMissing, pt.CheckpointCorrupt)
    assert not issubclass(pt.CheckpointCorrupt, pt.CheckpointMissing)
    assert issubclass(pt.CheckpointMissing, pt.CheckpointError)
    assert issubclass(pt.UnsafeCheckpointPath, pt.CheckpointCorrupt)


def test_a_bad_parameter_is_caught_by_the_family_and_by_value_error() -> None:
    with pytest.raises(pt.PoptuneError):
        pt.Truncation(2.0)
    with pytest.raises(ValueError):
        pt.Truncation(2.0)
