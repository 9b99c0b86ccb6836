"""The search space: priors to sample, perturb and validate hyperparameters.

A :class:`Space` maps each hyperparameter name to a :class:`Distribution` (tunable) or to a plain
constant (fixed). Every distribution validates its definition when it is built, draws only from
the ``numpy.random.Generator`` it is given, returns plain Python values, and perturbs so that a
value never leaves the space: numbers are multiplied by a factor and clipped to their bounds,
integers stay integers, ordered choices move to a neighbour, unordered choices are redrawn.

Example:
    >>> import numpy as np
    >>> from poptune.space import Choice, LogUniform, Space
    >>> space = Space({"lr": LogUniform(1e-4, 1e-1), "act": Choice(["relu", "tanh"]), "seed": 7})
    >>> rng = np.random.default_rng(0)
    >>> hparams = space.sample(rng)
    >>> space.validate(hparams) == hparams
    True

How a whole set of hyperparameters is explored (perturbed, resampled) is the explore
strategies' business (:mod:`poptune.strategies.explore`); a distribution only knows how to move
one value by a factor.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from ._validation import invalid, plain

__all__ = [
    "Choice",
    "Distribution",
    "IntUniform",
    "LogUniform",
    "Space",
    "Uniform",
    "space_from_dict",
]

# What a fixed value or a Choice option may be: whatever JSON stores and gives back unchanged.
_SCALARS = (str, int, float, bool, type(None))
_SCALAR_NAMES = "a str, int, float, bool or None"
_INT64 = (-(2**63), 2**63 - 1)


# --- helpers -------------------------------------------------------------------------------------


def _plain_scalar(value: Any) -> Any:
    """``value`` as an exact built-in scalar (numpy scalars and str/int/float subclasses such
    as enums are converted), or unchanged if it is not a scalar at all."""
    value = plain(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return value


def _strict_key(value: Any) -> tuple[type, Any]:
    """An equality key that tells ``1``, ``1.0`` and ``True`` apart, unlike ``==``."""
    return (type(value), value)


def _same_value(expected: Any, value: Any) -> bool:
    """Whether ``value`` stands for the scalar ``expected``: the same type and value, or equal
    numbers of other types (``3.0`` or ``np.int64(3)`` for ``3``) but never a bool for a number."""
    if type(expected) is type(value):
        return bool(expected == value)
    numeric = (Real, np.number)
    if (
        isinstance(expected, numeric)
        and isinstance(value, numeric)
        and not isinstance(expected, bool | np.bool_)
        and not isinstance(value, bool | np.bool_)
    ):
        return bool(expected == value)
    if isinstance(expected, str) and isinstance(value, str):
        return expected == value
    return False


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_factor(owner: str, factor: Any) -> float:
    if not _is_real(factor) or not math.isfinite(float(factor)) or float(factor) <= 0:
        raise invalid(
            "factor", "a positive finite number, such as 0.8 or 1.2", factor, f"{owner}.perturb"
        )
    return float(factor)


def _float_bound(owner: str, name: str, value: Any) -> float:
    if not _is_real(value):
        raise invalid(name, "a finite number (an int or a float)", value, owner)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise invalid(name, "a finite number", value, owner, hint="Use a finite bound.")
    return number


def _check_order(owner: str, low: float, high: float) -> None:
    if not low < high:
        raise invalid(
            "low",
            f"smaller than high={high!r}",
            low,
            owner,
            hint="Swap them or widen the range, or use a fixed value for a constant.",
        )


def _perturbable(distribution: Any, value: Any, kind: str) -> float:
    """``value`` as a float that ``distribution`` can perturb: a number, not NaN."""
    number = float(value) if _is_real(value) else math.nan
    if math.isnan(number):
        raise invalid(
            "value",
            f"{kind} inside {distribution!r}",
            value,
            f"{type(distribution).__name__}.perturb",
        )
    return number


def _clip(value: Any, low: Any, high: Any) -> Any:
    return min(max(value, low), high)


# --- distributions -------------------------------------------------------------------------------


class Distribution(abc.ABC):
    """A prior over one hyperparameter: sample, perturb, check membership, describe as JSON.

    Subclasses are immutable values: equal when their definitions are equal, with a ``repr`` that
    rebuilds them. :func:`space_from_dict` knows the four built-in kinds by their ``"type"``.
    """

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """Draw a value from the prior using only ``rng``; a plain Python value."""

    @abc.abstractmethod
    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> Any:
        """Return a value moved from ``value`` by ``factor``, always inside the distribution."""

    @abc.abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a legal value of this distribution."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description, with ``"type"`` the class name."""

    def _canonical(self, value: Any) -> Any:
        """``value`` (already contained) in the distribution's own type; see Space.validate."""
        return value


@dataclass(frozen=True)
class _FloatRange(Distribution):
    """Shared by Uniform and LogUniform: float bounds, clipped perturbation."""

    low: float
    high: float

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "low", _float_bound(owner, "low", self.low))
        object.__setattr__(self, "high", _float_bound(owner, "high", self.high))
        _check_order(owner, self.low, self.high)

    def _snap(self, value: Any) -> float:
        """A numeric ``value`` clipped into ``[low, high]``; anything else is an error."""
        return float(_clip(_perturbable(self, value, "a float"), self.low, self.high))

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> float:
        """``value * factor`` clipped to ``[low, high]``.

        A ``value`` outside the bounds is clipped first. On a negative range the product moves
        away from zero for ``factor > 1`` like everywhere else; the clip still keeps the result
        inside ``[low, high]``. ``rng`` is unused: the move is fully decided by ``factor``.
        """
        factor = _check_factor(type(self).__name__, factor)
        return float(_clip(self._snap(value) * factor, self.low, self.high))

    def contains(self, value: Any) -> bool:
        """A real number (not a bool) within ``[low, high]``."""
        # Compared as given: float(10**400) would overflow, and an int compares exactly.
        return _is_real(value) and self.low <= plain(value) <= self.high

    def to_dict(self) -> dict[str, Any]:
        """``{"type": <class name>, "low": ..., "high": ...}``."""
        return {"type": type(self).__name__, "low": self.low, "high": self.high}

    def _canonical(self, value: Any) -> float:
        return float(value)


@dataclass(frozen=True)
class Uniform(_FloatRange):
    """Floats drawn uniformly from ``[low, high]``.

    Example:
        >>> Uniform(0.0, 0.99)
        Uniform(low=0.0, high=0.99)
    """

    def sample(self, rng: np.random.Generator) -> float:
        """A uniform draw in ``[low, high]``."""
        if math.isfinite(self.high - self.low):
            value = float(rng.uniform(self.low, self.high))
        else:  # the width overflows a float (e.g. -1e308..1e308): interpolate instead
            share = float(rng.random())
            value = self.low * (1.0 - share) + self.high * share
        return float(_clip(value, self.low, self.high))


@dataclass(frozen=True)
class LogUniform(_FloatRange):
    """Floats drawn log-uniformly from ``[low, high]``, with ``0 < low``: learning rates, weight
    decays and other scales where each decade is as likely as the next.

    Example:
        >>> LogUniform(1e-4, 1e-1)
        LogUniform(low=0.0001, high=0.1)
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low <= 0:
            raise invalid(
                "low",
                "a number > 0 (a log scale needs 0 < low < high)",
                self.low,
                "LogUniform",
                hint="Use Uniform for ranges that include 0 or negative values.",
            )

    def sample(self, rng: np.random.Generator) -> float:
        """A log-uniform draw in ``[low, high]``."""
        value = math.exp(float(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(_clip(value, self.low, self.high))


@dataclass(frozen=True)
class IntUniform(Distribution):
    """Integers drawn uniformly from ``low..high``, both ends included.

    Integral floats such as ``16.0`` are accepted as bounds and stored as ``int``.

    Example:
        >>> IntUniform(16, 256)
        IntUniform(low=16, high=256)
    """

    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, Integral) and not isinstance(value, bool):
                number = int(value)
            else:
                as_float = _float_bound("IntUniform", name, value)
                if not as_float.is_integer():
                    raise invalid(
                        name,
                        "an integer",
                        value,
                        "IntUniform",
                        hint="Round it, or use Uniform for floats.",
                    )
                number = int(as_float)
            if not _INT64[0] <= number <= _INT64[1]:
                raise invalid(
                    name,
                    "an integer that fits in 64 bits",
                    value,
                    "IntUniform",
                    hint="Narrow the range.",
                )
            object.__setattr__(self, name, number)
        _check_order("IntUniform", self.low, self.high)

    def sample(self, rng: np.random.Generator) -> int:
        """A uniform integer in ``low..high``."""
        return int(rng.integers(self.low, self.high, endpoint=True))

    def _snap(self, value: Any) -> int:
        """A numeric ``value`` rounded to an integer and clipped into ``low..high``."""
        if isinstance(value, Integral) and not isinstance(value, bool):
            return int(_clip(int(value), self.low, self.high))
        number = _perturbable(self, value, "an int")
        rounded = number if math.isinf(number) else round(number)
        return int(_clip(rounded, self.low, self.high))

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> int:
        """``round(value * factor)``, clipped to ``low..high``; always a Python ``int``.

        If rounding leaves the value where it was and ``factor != 1``, it moves one step in the
        factor's direction (``+1`` for ``factor > 1``, ``-1`` below), so small integers such as
        0 or 1 are not stuck. The step follows the factor, not the sign of the value: on negative
        values a factor above 1 still steps up by one. A ``value`` outside the bounds (or not
        integral) is rounded and clipped first. ``rng`` is unused.
        """
        factor = _check_factor("IntUniform", factor)
        current = self._snap(value)
        moved = round(current * factor)
        if moved == current and factor != 1.0:
            moved = current + (1 if factor > 1.0 else -1)
        return int(_clip(moved, self.low, self.high))

    def contains(self, value: Any) -> bool:
        """An integer (an ``int``, a numpy integer or an integral float; not a bool) within
        ``low..high``."""
        if isinstance(value, bool):
            return False
        if isinstance(value, Integral):
            return self.low <= int(value) <= self.high
        return (
            _is_real(value)
            and math.isfinite(float(value))
            and float(value).is_integer()
            and self.low <= float(value) <= self.high
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "IntUniform", "low": ..., "high": ...}``."""
        return {"type": "IntUniform", "low": self.low, "high": self.high}

    def _canonical(self, value: Any) -> int:
        return int(value)


@dataclass(frozen=True)
class Choice(Distribution):
    """One of ``options``, each a str, int, float, bool or None (so the space stores as JSON).

    ``ordered=True`` (the default) means the options are a scale, such as batch sizes: perturbing
    moves to the neighbouring option. ``ordered=False`` means they are names with no order, such
    as optimizers: perturbing draws a different option. ``options`` is stored as a tuple.

    Example:
        >>> Choice([32, 64, 128])
        Choice(options=(32, 64, 128), ordered=True)
        >>> Choice(["sgd", "adam"], ordered=False).perturb("sgd", 1.2, np.random.default_rng(0))
        'adam'
    """

    options: Sequence[Any]
    ordered: bool = True

    def __post_init__(self) -> None:
        options: Any = self.options
        if isinstance(options, np.ndarray):
            options = options.tolist()
        if isinstance(options, str | bytes) or not isinstance(options, Sequence):
            raise invalid(
                "options",
                "a list or tuple, for example Choice(['sgd', 'adam'])",
                options,
                "Choice",
                hint=f"It is a {type(options).__name__}.",
            )
        plain = tuple(_plain_scalar(option) for option in options)
        if not plain:
            raise invalid("options", "a non-empty list", options, "Choice", hint="Give an option.")
        for option in plain:
            if not isinstance(option, _SCALARS):
                raise invalid(
                    "options",
                    f"a list of values that are each {_SCALAR_NAMES}, so the space can be stored "
                    "as JSON",
                    list(plain),
                    "Choice",
                    hint=f"{option!r} is of type {type(option).__name__}: pass a name and map it "
                    "to the object in your trainable.",
                )
            if isinstance(option, float) and not math.isfinite(option):
                raise invalid(
                    "options",
                    "a list of finite values",
                    list(plain),
                    "Choice",
                    hint=f"Remove {option!r} or use a large finite number.",
                )
        for index, option in enumerate(plain):
            if any(_same_value(earlier, option) for earlier in plain[:index]):
                raise invalid(
                    "options",
                    "a list of distinct values",
                    list(plain),
                    "Choice",
                    hint=f"{option!r} is there twice: remove the duplicate.",
                )
        if not isinstance(self.ordered, bool | np.bool_):
            raise invalid(
                "ordered",
                "True or False",
                self.ordered,
                "Choice",
                hint="True for a scale such as batch sizes, False for names such as optimizers.",
            )
        object.__setattr__(self, "options", plain)
        object.__setattr__(self, "ordered", bool(self.ordered))

    def __eq__(self, other: object) -> bool:
        # Type-strict, so Choice([1, 2]) != Choice([True, 2]) although 1 == True.
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Choice)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return (tuple(_strict_key(o) for o in self.options), self.ordered)

    def _index(self, value: Any) -> int | None:
        for index, option in enumerate(self.options):
            if type(option) is type(value) and option == value:
                return index
        for index, option in enumerate(self.options):
            if _same_value(option, value):
                return index
        return None

    def sample(self, rng: np.random.Generator) -> Any:
        """A uniformly drawn option."""
        return self.options[int(rng.integers(len(self.options)))]

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> Any:
        """Move away from ``value``, which must be one of the options.

        Ordered: the neighbour in the factor's direction (the next option for ``factor > 1``,
        the previous one otherwise), reflected at either end so the value changes whenever there
        are two or more options. Unordered: a different option drawn uniformly with ``rng``; the
        factor is ignored. With a single option, that option is returned.

        Raises:
            ValueError: if ``value`` is not one of the options.
        """
        _check_factor("Choice", factor)
        index = self._index(value)
        if index is None:
            raise invalid(
                "value", f"one of the options {list(self.options)!r}", value, "Choice.perturb"
            )
        count = len(self.options)
        if count == 1:
            return self.options[0]
        if not self.ordered:
            other = int(rng.integers(count - 1))
            return self.options[other if other < index else other + 1]
        step = 1 if factor > 1.0 else -1
        moved = index + step
        if not 0 <= moved < count:
            moved = index - step
        return self.options[moved]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the options (``3.0`` counts as ``3``, ``True`` does not)."""
        return self._index(value) is not None

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "Choice", "options": [...], "ordered": ...}``."""
        return {"type": "Choice", "options": list(self.options), "ordered": self.ordered}

    def _canonical(self, value: Any) -> Any:
        index = self._index(value)
        return value if index is None else self.options[index]


_TYPES: dict[str, type[Distribution]] = {
    "Uniform": Uniform,
    "LogUniform": LogUniform,
    "IntUniform": IntUniform,
    "Choice": Choice,
}


# --- the space -----------------------------------------------------------------------------------


def _check_hparams(method: str, hparams: Any) -> Mapping[str, Any]:
    if not isinstance(hparams, Mapping):
        raise invalid("hparams", "a dict of name -> value", hparams, f"Space.{method}")
    return hparams


class Space(Mapping[str, Any]):
    """Hyperparameter name -> :class:`Distribution` (tuned), or a fixed value that never changes.

    A fixed value is a str, int, float, bool or None; it is returned as given by :meth:`sample`
    and kept by every explore strategy. ``Space(other_space)`` copies a space.

    Random numbers are drawn name by name in the order the names were given, so the same seed and
    the same space always give the same hyperparameters. For the same reason two spaces are equal
    only if they list the same names, in the same order, with equal definitions.

    Example:
        >>> import numpy as np
        >>> space = Space({"lr": LogUniform(1e-4, 1e-1), "optimizer": "sgd"})
        >>> sorted(space.sample(np.random.default_rng(0)))
        ['lr', 'optimizer']
        >>> space.fixed
        {'optimizer': 'sgd'}
    """

    def __init__(
        self, params: Mapping[str, Distribution | str | int | float | bool | None]
    ) -> None:
        if isinstance(params, Space):
            params = dict(params._params)
        if not isinstance(params, Mapping):
            raise invalid(
                "params",
                "a dict of hyperparameter name -> distribution or fixed value, for example "
                "{'lr': LogUniform(1e-4, 1e-1), 'optimizer': 'sgd'}",
                params,
                "Space",
            )
        checked: dict[str, Any] = {}
        for name, value in params.items():
            if not isinstance(name, str) or not name:
                raise invalid(
                    "params",
                    "a dict whose hyperparameter names are non-empty strings",
                    name,
                    "Space",
                    hint="Name it, e.g. 'lr'.",
                )
            checked[name] = self._checked_value(name, value)
        self._params: dict[str, Any] = checked

    @staticmethod
    def _checked_value(name: str, value: Any) -> Any:
        if isinstance(value, Distribution):
            return value
        plain = _plain_scalar(value)
        if not isinstance(plain, _SCALARS):
            raise invalid(
                name,
                "a distribution (Uniform, LogUniform, IntUniform, Choice) or a fixed value: "
                f"{_SCALAR_NAMES}",
                value,
                "Space",
                hint=f"It is a {type(value).__name__}.",
            )
        if isinstance(plain, float) and math.isnan(plain):
            # Infinity stays allowed: it is a setting ("no limit": a gradient clip of inf), and
            # populations stored with one must still load; NaN is no setting at all.
            raise invalid(
                name,
                "a number other than NaN (math.inf for 'no limit'), or None for 'not set'",
                value,
                "Space",
            )
        return plain

    # --- mapping ---------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        """The distribution or fixed value of ``name``."""
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        """The names, in the order given."""
        return iter(self._params)

    def __len__(self) -> int:
        """How many hyperparameters, tuned and fixed."""
        return len(self._params)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a hyperparameter of this space."""
        return name in self._params

    def __eq__(self, other: object) -> bool:
        """Same names in the same order, equal distributions, fixed values of the same type."""
        if not isinstance(other, Space):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return tuple(
            (name, value if isinstance(value, Distribution) else _strict_key(value))
            for name, value in self._params.items()
        )

    def __repr__(self) -> str:
        return f"Space({self._params!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """Every hyperparameter name, in the order given."""
        return tuple(self._params)

    @property
    def distributions(self) -> dict[str, Distribution]:
        """The tuned hyperparameters and their distributions, in the order given."""
        return {k: v for k, v in self._params.items() if isinstance(v, Distribution)}

    @property
    def fixed(self) -> dict[str, Any]:
        """The fixed hyperparameters and their values, in the order given."""
        return {k: v for k, v in self._params.items() if not isinstance(v, Distribution)}

    # --- operations ------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """A full set of hyperparameters drawn from the priors, fixed values as given."""
        return {
            name: value.sample(rng) if isinstance(value, Distribution) else value
            for name, value in self._params.items()
        }

    def validate(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Check that ``hparams`` has exactly this space's names with legal values.

        Returns a plain dict in the space's name order, each value in its distribution's own
        Python type (``np.float64(0.1)`` -> ``0.1``, ``3.0`` for an IntUniform -> ``3``), so it
        can be stored as JSON. A fixed hyperparameter must equal its fixed value.

        Raises:
            TypeError: if ``hparams`` is not a mapping.
            ValueError: naming the missing or unknown names, or the value that is out of range.
        """
        hparams = _check_hparams("validate", hparams)
        missing = [n for n in self._params if n not in hparams]
        extra = [n for n in hparams if n not in self._params]
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"missing {missing} (add them)")
            if extra:
                problems.append(f"unknown names {extra} (remove them, or add them to the space)")
            raise invalid(
                "hparams",
                f"a dict with the space's names {list(self._params)}",
                dict(hparams),
                "Space.validate",
                hint=f"It has {'; '.join(problems)}.",
            )
        result: dict[str, Any] = {}
        for name, spec in self._params.items():
            value = hparams[name]
            if isinstance(spec, Distribution):
                if not spec.contains(value):
                    raise invalid(
                        f"hparams[{name!r}]",
                        f"inside its distribution {spec!r}",
                        value,
                        "Space.validate",
                    )
                result[name] = spec._canonical(value)
            else:
                if not _same_value(spec, value):
                    raise invalid(
                        f"hparams[{name!r}]",
                        f"its fixed value {spec!r}",
                        value,
                        "Space.validate",
                        hint="Pass that value, or make it a distribution in the space.",
                    )
                result[name] = spec
        return result

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A JSON-serialisable description; :func:`space_from_dict` rebuilds an equal space.

        Example:
            >>> Space({"lr": Uniform(0, 1), "seed": 7}).to_dict()["seed"]
            {'type': 'Fixed', 'value': 7}
        """
        return {
            name: value.to_dict()
            if isinstance(value, Distribution)
            else {"type": "Fixed", "value": value}
            for name, value in self._params.items()
        }


def space_from_dict(description: Mapping[str, Mapping[str, Any]]) -> Space:
    """Rebuild a :class:`Space` from :meth:`Space.to_dict` output (also after a JSON round trip).

    Raises:
        TypeError: if ``description`` or one of its entries is not a mapping.
        ValueError: an unknown ``"type"``, or fields missing or unknown for that type.
    """
    if not isinstance(description, Mapping):
        raise invalid(
            "description",
            "a dict of name -> description, as Space.to_dict() gives",
            description,
            "space_from_dict",
        )
    params: dict[str, Any] = {}
    for name, spec in description.items():
        if not isinstance(spec, Mapping):
            raise invalid(
                f"description[{name!r}]",
                "a dict with a 'type', as Space.to_dict() gives",
                spec,
                "space_from_dict",
            )
        kind = spec.get("type")
        fields = {k: v for k, v in spec.items() if k != "type"}
        if kind == "Fixed":
            required: set[str] = {"value"}
            allowed = {"value"}
        elif isinstance(kind, str) and kind in _TYPES:
            declared = dataclasses.fields(_TYPES[kind])  # type: ignore[arg-type]
            allowed = {f.name for f in declared}
            required = {f.name for f in declared if f.default is dataclasses.MISSING}
        else:
            raise invalid(
                f"description[{name!r}]",
                f"a description whose 'type' is one of {['Fixed', *_TYPES]}",
                dict(spec),
                "space_from_dict",
                hint=f"Its type {kind!r} is unknown.",
            )
        lacking = sorted(required - set(fields))
        unknown = sorted(set(fields) - allowed)
        if lacking or unknown:
            raise invalid(
                f"description[{name!r}]",
                f"a {kind} with the keys {sorted(allowed)}",
                dict(spec),
                "space_from_dict",
                hint=f"It has missing {lacking}, unknown {unknown}.",
            )
        params[name] = fields["value"] if kind == "Fixed" else _TYPES[kind](**fields)
    return Space(params)
