"""The search space: priors to sample, perturb and validate hyperparameters.

Every distribution validates its definition when it is built, samples only with the generator it
is given, and perturbs so that a value never leaves the space: numbers are multiplied by a factor
and clipped to their bounds, integers stay integers, ordered choices move to a neighbour.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "Choice",
    "Distribution",
    "IntUniform",
    "LogUniform",
    "Space",
    "Uniform",
    "space_from_dict",
]

_SCALARS = (str, int, float, bool, type(None))


class Distribution(abc.ABC):
    """A prior over one hyperparameter: sample, perturb, check membership, describe as JSON."""

    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """Draw a value from the prior with ``rng``."""

    @abc.abstractmethod
    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> Any:
        """Return a value near ``value``, moved by ``factor``, always inside the distribution."""

    @abc.abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a legal value of this distribution."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description, with ``"type"`` the class name."""


def _bound(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{owner}: `{name}` must be a number (got {value!r} of type "
            f"{type(value).__name__}); pass an int or a float."
        )
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(
            f"{owner}: `{name}` must be finite (got {name}={value!r}); use a finite bound."
        )
    return number


def _ordered_bounds(owner: str, low: float, high: float) -> None:
    if low >= high:
        raise ValueError(
            f"{owner}: `low` must be smaller than `high` (got low={low!r}, high={high!r}); "
            "swap them or widen the range, or use a fixed value for a constant."
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class Uniform(Distribution):
    """Floats drawn uniformly from ``[low, high]``.

    Example:
        >>> import poptune as pt
        >>> pt.Uniform(0.0, 0.99)
        Uniform(low=0.0, high=0.99)
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "low", _bound(name, "low", self.low))
        object.__setattr__(self, "high", _bound(name, "high", self.high))
        _ordered_bounds(name, self.low, self.high)

    def sample(self, rng: np.random.Generator) -> float:
        """A uniform draw in ``[low, high]``."""
        return float(rng.uniform(self.low, self.high))

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> float:
        """``value * factor`` clipped to ``[low, high]`` (with negative values the clip still
        keeps the result inside the range)."""
        return float(min(max(float(value) * factor, self.low), self.high))

    def contains(self, value: Any) -> bool:
        """A finite number within the bounds."""
        return _is_number(value) and self.low <= float(value) <= self.high

    def to_dict(self) -> dict[str, Any]:
        """``{"type": ..., "low": ..., "high": ...}``."""
        return {"type": type(self).__name__, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogUniform(Uniform):
    """Floats drawn log-uniformly from ``[low, high]`` with ``0 < low`` (learning rates...).

    Example:
        >>> import poptune as pt
        >>> pt.LogUniform(1e-4, 1e-1)
        LogUniform(low=0.0001, high=0.1)
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low <= 0:
            raise ValueError(
                f"LogUniform: `low` must be positive (got low={self.low!r}); a log scale needs "
                "0 < low < high. Use Uniform for ranges that include 0 or negative values."
            )

    def sample(self, rng: np.random.Generator) -> float:
        """A log-uniform draw in ``[low, high]``."""
        value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return float(min(max(value, self.low), self.high))


@dataclass(frozen=True)
class IntUniform(Distribution):
    """Integers drawn uniformly from ``low..high``, both ends included.

    Example:
        >>> import poptune as pt
        >>> pt.IntUniform(16, 256)
        IntUniform(low=16, high=256)
    """

    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            number = _bound("IntUniform", name, value)
            if not number.is_integer():
                raise ValueError(
                    f"IntUniform: `{name}` must be an integer (got {name}={value!r}); round it, "
                    "or use Uniform for floats."
                )
            object.__setattr__(self, name, int(number))
        _ordered_bounds("IntUniform", self.low, self.high)

    def sample(self, rng: np.random.Generator) -> int:
        """A uniform integer in ``low..high``."""
        return int(rng.integers(self.low, self.high + 1))

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> int:
        """``round(value * factor)``, at least one step in the factor's direction, clipped."""
        current = round(float(value))
        moved = round(current * factor)
        if moved == current and factor != 1.0:
            moved = current + (1 if factor > 1.0 else -1)
        return int(min(max(moved, self.low), self.high))

    def contains(self, value: Any) -> bool:
        """An integer (``int`` or integral number, not bool) within the bounds."""
        if isinstance(value, bool):
            return False
        if isinstance(value, Integral):
            return self.low <= int(value) <= self.high
        return _is_number(value) and float(value).is_integer() and self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "IntUniform", "low": ..., "high": ...}``."""
        return {"type": "IntUniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Choice(Distribution):
    """One of ``options``. Ordered choices perturb to a neighbour; unordered ones resample.

    Example:
        >>> import poptune as pt
        >>> pt.Choice([32, 64, 128])
        Choice(options=(32, 64, 128), ordered=True)
    """

    options: tuple[Any, ...]
    ordered: bool = True

    def __post_init__(self) -> None:
        options = self.options
        if isinstance(options, str | bytes) or not isinstance(options, Sequence):
            raise TypeError(
                f"Choice: `options` must be a list or tuple of values (got {options!r}); "
                "for example Choice(['sgd', 'adam'])."
            )
        options = tuple(options)
        if not options:
            raise ValueError("Choice: `options` must not be empty (got []); give at least one.")
        for option in options:
            if not isinstance(option, _SCALARS) or (
                isinstance(option, float) and not math.isfinite(option)
            ):
                raise TypeError(
                    f"Choice: every option must be a str, int, finite float, bool or None so the "
                    f"space can be stored as JSON (got {option!r} of type "
                    f"{type(option).__name__}); pass a name and map it in your trainable."
                )
        keys = [(type(o), o) for o in options]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Choice: `options` must be distinct (got {list(options)!r}).")
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "ordered", bool(self.ordered))

    def _index(self, value: Any) -> int:
        for index, option in enumerate(self.options):
            if type(option) is type(value) and option == value:
                return index
        for index, option in enumerate(self.options):
            if option == value and not isinstance(option, bool) and not isinstance(value, bool):
                return index
        raise ValueError(f"Choice: {value!r} is not one of the options {list(self.options)!r}.")

    def sample(self, rng: np.random.Generator) -> Any:
        """A uniformly drawn option."""
        return self.options[int(rng.integers(len(self.options)))]

    def perturb(self, value: Any, factor: float, rng: np.random.Generator) -> Any:
        """Ordered: the neighbour in the factor's direction (reflected at the ends).
        Unordered: a different option, drawn uniformly."""
        index = self._index(value)
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
        """Whether ``value`` is one of the options."""
        try:
            self._index(value)
        except ValueError:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "Choice", "options": [...], "ordered": ...}``."""
        return {"type": "Choice", "options": list(self.options), "ordered": self.ordered}


_TYPES: dict[str, type[Distribution]] = {
    "Uniform": Uniform,
    "LogUniform": LogUniform,
    "IntUniform": IntUniform,
    "Choice": Choice,
}


class Space(Mapping[str, Any]):
    """Hyperparameter name -> distribution, or a fixed value that never changes.

    Example:
        >>> import numpy as np, poptune as pt
        >>> space = pt.Space({"lr": pt.LogUniform(1e-4, 1e-1), "optimizer": "sgd"})
        >>> sorted(space.sample(np.random.default_rng(0)))
        ['lr', 'optimizer']
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        if isinstance(params, Space):
            params = dict(params._params)
        if not isinstance(params, Mapping):
            raise TypeError(
                f"A space must be a dict of hyperparameter name -> distribution or fixed value; "
                f"got {type(params).__name__}."
            )
        checked: dict[str, Any] = {}
        for name, value in params.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"Hyperparameter names must be non-empty strings (got {name!r}).")
            if isinstance(value, Distribution):
                checked[name] = value
            elif isinstance(value, _SCALARS):
                if isinstance(value, float) and math.isnan(value):
                    raise ValueError(f"Hyperparameter {name!r} is fixed to NaN; give a number.")
                checked[name] = value
            else:
                raise TypeError(
                    f"Hyperparameter {name!r} is a {type(value).__name__} ({value!r}); use a "
                    "distribution (pt.Uniform, pt.LogUniform, pt.IntUniform, pt.Choice) or a "
                    "fixed str, int, float, bool or None."
                )
        self._params = checked

    # --- mapping -------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        return f"Space({self._params!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """Every hyperparameter name, in the order given."""
        return tuple(self._params)

    @property
    def distributions(self) -> dict[str, Distribution]:
        """The tunable hyperparameters."""
        return {k: v for k, v in self._params.items() if isinstance(v, Distribution)}

    @property
    def fixed(self) -> dict[str, Any]:
        """The fixed hyperparameters and their values."""
        return {k: v for k, v in self._params.items() if not isinstance(v, Distribution)}

    # --- operations ----------------------------------------------------------------------

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """A full set of hyperparameters drawn from the priors (fixed values as given)."""
        return {
            name: value.sample(rng) if isinstance(value, Distribution) else value
            for name, value in self._params.items()
        }

    def perturb(
        self,
        hparams: Mapping[str, Any],
        factors: Sequence[float],
        rng: np.random.Generator,
        resample_probability: float = 0.0,
    ) -> dict[str, Any]:
        """Perturb every tunable value by a factor drawn from ``factors``; each one is instead
        resampled from its prior with probability ``resample_probability``."""
        result: dict[str, Any] = {}
        for name, value in self._params.items():
            if not isinstance(value, Distribution):
                result[name] = value
            elif resample_probability > 0 and rng.random() < resample_probability:
                result[name] = value.sample(rng)
            else:
                factor = float(factors[int(rng.integers(len(factors)))])
                result[name] = value.perturb(self._current(hparams, name), factor, rng)
        return result

    def resample(
        self, hparams: Mapping[str, Any], rng: np.random.Generator, probability: float = 1.0
    ) -> dict[str, Any]:
        """Resample each tunable value from its prior with ``probability``, else keep it."""
        result: dict[str, Any] = {}
        for name, value in self._params.items():
            if not isinstance(value, Distribution):
                result[name] = value
            elif probability >= 1.0 or rng.random() < probability:
                result[name] = value.sample(rng)
            else:
                result[name] = self._current(hparams, name)
        return result

    def validate(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Check that ``hparams`` names exactly this space's hyperparameters with legal values.

        Raises:
            ValueError: naming the missing or unknown names, or the value out of its range.
        """
        if not isinstance(hparams, Mapping):
            raise ValueError(f"hparams must be a dict (got {type(hparams).__name__}).")
        missing = [n for n in self._params if n not in hparams]
        extra = [n for n in hparams if n not in self._params]
        if missing:
            raise ValueError(f"hparams lack {missing}; the space has {list(self._params)}.")
        if extra:
            raise ValueError(
                f"hparams have unknown names {extra}; the space has {list(self._params)}."
            )
        for name, value in self._params.items():
            if isinstance(value, Distribution) and not value.contains(hparams[name]):
                raise ValueError(
                    f"Hyperparameter {name!r}={hparams[name]!r} is outside its distribution "
                    f"{value!r}."
                )
        return {name: hparams[name] for name in self._params}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A JSON-serialisable description; :func:`space_from_dict` reverses it."""
        return {
            name: value.to_dict()
            if isinstance(value, Distribution)
            else {"type": "Fixed", "value": value}
            for name, value in self._params.items()
        }

    def _current(self, hparams: Mapping[str, Any], name: str) -> Any:
        if name not in hparams:
            raise ValueError(f"hparams lack {name!r}; the space has {list(self._params)}.")
        return hparams[name]


def space_from_dict(description: Mapping[str, Mapping[str, Any]]) -> Space:
    """Rebuild a :class:`Space` from :meth:`Space.to_dict` output."""
    params: dict[str, Any] = {}
    for name, spec in description.items():
        kind = spec.get("type")
        if kind == "Fixed":
            params[name] = spec["value"]
        elif kind in _TYPES:
            fields = {k: v for k, v in spec.items() if k != "type"}
            if kind == "Choice":
                fields["options"] = tuple(fields["options"])
            params[name] = _TYPES[kind](**fields)
        else:
            raise ValueError(
                f"Unknown distribution type {kind!r} for {name!r}; known: {['Fixed', *_TYPES]}."
            )
    return Space(params)
