"""One way to check a parameter and one message template for what is wrong with it.

In scikit-learn's style: every message reads "The '<name>' parameter [of <owner>] must be
<what>. Got <value> instead.", and values from numpy (``np.int64(4)`` from a grid, ``np.float32``
from a config array) are accepted and returned as the built-in type, so what is validated can be
stored as JSON.
"""

from __future__ import annotations

import functools
import math
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any, TypeVar

import numpy as np

from ._text import unsafe_character
from .errors import InvalidParameterError

__all__ = [
    "POPULATION_NAME_LENGTH",
    "InvalidParameterError",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_name",
    "check_population_name",
    "check_str",
    "invalid",
    "jsonable",
    "plain",
    "renamed",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def plain(value: Any) -> Any:
    """``value`` as a built-in scalar when it is a numpy scalar; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def jsonable(value: Any) -> Any:
    """``value`` as JSON gives it back: tuples as lists, numpy scalars as built-ins, mapping
    keys as strings (anything else is left for ``json.dumps`` to accept or refuse)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return plain(value)


def invalid(
    name: str, expected: str, value: Any, owner: str | None = None, hint: str | None = None
) -> InvalidParameterError:
    """The error for parameter ``name`` (of ``owner``), which must be ``expected``; ``hint``
    (a sentence) says what to do when that is not obvious from ``expected``."""
    of = f" of {owner}" if owner else ""
    shown = repr(value)
    if len(shown) > _SHOWN:  # a 10,000-character name is not repeated in full
        shown = f"{shown[: _SHOWN - 1]}…"
    advice = f" {hint}" if hint else ""
    return InvalidParameterError(
        f"The '{name}' parameter{of} must be {expected}. Got {shown} instead.{advice}"
    )


def check_int(
    name: str, value: Any, low: int | None = None, high: int | None = None, owner: str | None = None
) -> int:
    """``value`` as an ``int`` in ``[low, high]``; bools are refused."""
    number = plain(value)
    if isinstance(number, bool) or not isinstance(number, Integral):
        raise invalid(name, _int_range(low, high), value, owner)
    result = int(number)
    if (low is not None and result < low) or (high is not None and result > high):
        raise invalid(name, _int_range(low, high), value, owner)
    return result


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    owner: str | None = None,
) -> float:
    """``value`` as a finite ``float`` inside the given bounds; bools are refused."""
    number = plain(value)
    expected = _float_range(low, high, low_open, high_open)
    if isinstance(number, bool) or not isinstance(number, Real):
        raise invalid(name, expected, value, owner)
    number = float(number)
    if not math.isfinite(number):
        raise invalid(name, expected, value, owner)
    if low is not None and (number < low or (low_open and number == low)):
        raise invalid(name, expected, value, owner)
    if high is not None and (number > high or (high_open and number == high)):
        raise invalid(name, expected, value, owner)
    return number


def check_bool(name: str, value: Any, owner: str | None = None) -> bool:
    """``value`` as a ``bool`` (``np.bool_`` accepted)."""
    flag = plain(value)
    if not isinstance(flag, bool):
        raise invalid(name, "a bool (True or False)", value, owner)
    return flag


def check_str(name: str, value: Any, owner: str | None = None) -> str:
    """``value`` as a non-empty ``str``."""
    text = plain(value)
    if not isinstance(text, str) or not text.strip():
        raise invalid(name, "a non-empty string", value, owner)
    return str(text)


def check_name(name: str, value: Any, owner: str | None = None, kind: str = "a name") -> str:
    """``value`` as a name that poptune stores and prints (a population's, a hyperparameter's,
    a metric's): a non-empty ``str`` without control characters (escape codes, newlines), lone
    surrogates (which UTF-8 cannot store) or bidirectional overrides. ``kind`` says what the
    message calls it."""
    text = check_str(name, value, owner)
    if any(unsafe_character(character) for character in text):
        raise invalid(
            name,
            f"{kind} without control characters, lone surrogates or bidirectional overrides "
            "(rename it)",
            value,
            owner,
        )
    return text


#: The longest population name the storage keeps (``VARCHAR(255)``: PostgreSQL refuses more).
POPULATION_NAME_LENGTH = 255


def check_population_name(name: str, value: Any, owner: str | None = None) -> str:
    """``value`` as a population's name: :func:`check_name`, at most
    :data:`POPULATION_NAME_LENGTH` characters."""
    text = check_name(name, value, owner)
    invisible = [c for c in text if unicodedata.category(c) == "Cf"]
    if invisible or text != text.strip():
        raise invalid(
            name,
            "a population name without invisible characters (zero-width spaces, joiners, "
            "U+FEFF...) or spaces at its ends, which would list as another population's name "
            "(remove them)",
            value,
            owner,
        )
    if len(text) > POPULATION_NAME_LENGTH:
        raise invalid(
            name,
            f"a population name of at most {POPULATION_NAME_LENGTH} characters (this one has "
            f"{len(text)}; shorten it)",
            value,
            owner,
        )
    return text


def check_choice(name: str, value: Any, options: tuple[str, ...], owner: str | None = None) -> str:
    """``value``, which must be one of ``options``."""
    text = plain(value)
    if text not in options:
        raise invalid(name, " or ".join(repr(o) for o in options), value, owner)
    return str(text)


def renamed(owner: str, **new_names: str) -> Callable[[_F], _F]:
    """Decorator: a function (or method) whose keyword ``old`` is now called ``new_names[old]``
    still accepts ``old=``, with a ``DeprecationWarning`` naming the new name.

    ``owner`` is how the message names the callable (``"Every"``, ``"Truncation.__call__"``).
    On a class, its ``__init__`` is wrapped. Passing both names is refused. The map is kept as
    ``__renamed__`` (on the wrapper, or the class), so a stored description that uses an old
    name is rebuilt without a warning (see :func:`poptune.strategies.rebuild`).

    Example:
        >>> @renamed("scale", factor="ratio")
        ... def scale(value, ratio=1.0):
        ...     return value * ratio
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     scale(2.0, factor=3.0)
        6.0
        >>> str(caught[0].message)
        "The 'factor' parameter of scale is deprecated: call it 'ratio' (same meaning)."
    """

    def decorate(function: _F) -> _F:
        if isinstance(function, type):
            cls: Any = function
            cls.__init__ = decorate(cls.__init__)
            cls.__renamed__ = cls.__init__.__renamed__
            return function

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs:  # the common call passes none: one check, no copy
                for old, new in new_names.items():
                    if old in kwargs:
                        kwargs = _renamed_keyword(kwargs, old, new, owner)
            return function(*args, **kwargs)

        wrapper.__renamed__ = {**getattr(function, "__renamed__", {}), **new_names}  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _renamed_keyword(kwargs: dict[str, Any], old: str, new: str, owner: str) -> dict[str, Any]:
    if new in kwargs:
        raise invalid(
            old, f"left out when '{new}' is given (it is its old name)", kwargs[old], owner
        )
    warnings.warn(
        f"The '{old}' parameter of {owner} is deprecated: call it '{new}' (same meaning).",
        DeprecationWarning,
        stacklevel=3,  # the caller's line: here, the wrapper, the caller
    )
    return {(new if key == old else key): value for key, value in kwargs.items()}


#: How much of a refused value a message shows.
_SHOWN = 200


def _int_range(low: int | None, high: int | None) -> str:
    if high is None:
        return "an int" if low is None else f"an int >= {low}"
    return f"an int in the range [{'-inf' if low is None else low}, {high}]"


def _float_range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"a number {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"a number {'<' if high_open else '<='} {high:g}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"a number in the range {left}{low:g}, {high:g}{right}"
