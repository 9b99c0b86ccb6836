"""Import user objects by reference: ``package.module:QualName`` or ``/path/to/file.py:QualName``.

Workers that join a population from another process or machine find the trainable (and any
custom strategy) by the reference recorded with the population, so it must be importable there.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["import_object", "reference_of"]

# Modules imported from a file path get names with this prefix, and are referenced by path.
_FILE_PREFIX = "_poptune_user_"


def reference_of(obj: Any) -> str | None:
    """Return an importable reference for ``obj``, or ``None`` if it has none (e.g. a lambda).

    Objects defined in a script run as ``__main__`` are referenced by the script's absolute path,
    so ``poptune resume`` can find them again without running the script's main block.
    """
    target = obj if (inspect.isclass(obj) or inspect.isfunction(obj)) else type(obj)
    qualname = getattr(target, "__qualname__", None)
    module_name = getattr(target, "__module__", None)
    if not qualname or not module_name or "<" in qualname:
        return None
    if module_name in ("__main__", "__mp_main__") or module_name.startswith(_FILE_PREFIX):
        module = sys.modules.get(module_name)
        path = getattr(module, "__file__", None)
        if path is None:  # an interactive session or a notebook: nothing to import later
            return None
        return f"{Path(path).resolve()}:{qualname}"
    return f"{module_name}:{qualname}"


def import_object(reference: str) -> Any:
    """Import the object named by ``module:qualname`` or ``path/to/file.py:qualname``.

    Raises:
        ImportError: with the reference, the reason and what to do, if it cannot be imported.
    """
    if not isinstance(reference, str) or ":" not in reference:
        raise ImportError(
            f"Cannot import {reference!r}: expected 'package.module:QualName' or "
            "'path/to/file.py:QualName'."
        )
    module_part, _, qualname = reference.rpartition(":")
    try:
        if module_part.endswith(".py"):
            module = _import_file(Path(module_part))
        else:
            module = _import_module(module_part)
    except ImportError as error:
        where = (
            "Make sure the file exists on this machine."
            if module_part.endswith(".py")
            else f"Run this from the folder that holds {module_part.partition('.')[0]!r} (the "
            "one your training script was started in), or put that folder on PYTHONPATH "
            "(PYTHONPATH=/that/folder poptune ...); on another machine, install or copy the "
            "code there."
        )
        raise ImportError(f"Cannot import {reference!r}: {error}. {where}") from error
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(
                f"Cannot import {reference!r}: module {module.__name__!r} has no attribute "
                f"{qualname!r}. Check the spelling, or define it at module level."
            ) from None
    return obj


def _import_module(name: str) -> Any:
    """``importlib.import_module(name)``; if its top-level package is not found, again with
    the current folder on ``sys.path``, as ``python script.py`` and ``python -m`` have it.

    A training script's neighbour (``train.py`` importing its trainable from ``model.py``) is
    recorded as ``model:Net``; the ``poptune`` command, unlike ``python``, does not search the
    folder it is run from, so ``poptune resume`` there would not find it. The folder stays on
    the path: the worker processes started next inherit it, and unpickling may import more."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        here = os.getcwd()
        if error.name != name.partition(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)  # after the installed packages: it cannot shadow one
        try:
            return importlib.import_module(name)
        except ImportError:
            sys.path.remove(here)
            raise


def _import_file(path: Path) -> Any:
    path = path.resolve()
    if not path.is_file():
        raise ImportError(f"no such file {str(path)!r}")
    name = _FILE_PREFIX + "_".join(path.with_suffix("").parts[-3:]).replace("-", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # Let the script import its neighbours, as it could when it was run as a script: first
    # on the path while it runs, then last, where a neighbour imported later (inside a training
    # function, or by unpickling) is still found but shadows nothing installed.
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(folder)
    if folder not in sys.path:
        sys.path.append(folder)
    return module
