"""Explore strategies: how copied hyperparameters are mutated after an exploit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._validation import check_float, invalid, plain
from ..space import Distribution
from . import _capabilities as capabilities
from ._base import Builtin, check_role, describe, rebuild, register, settle

if TYPE_CHECKING:
    from ..space import Space

__all__ = ["Chain", "Perturb", "Resample", "chain"]


def _check_probability(owner: str, name: str, value: float) -> float:
    return check_float(name, value, 0.0, 1.0, owner=owner)


def _current(hparams: Mapping[str, Any], space: Space, name: str, owner: str) -> Any:
    """The value of ``name`` in ``hparams``, the mapping an explore strategy was called with."""
    if not isinstance(hparams, Mapping):
        raise invalid("hparams", "a dict of name -> value", hparams, owner)
    if name not in hparams:
        raise invalid(
            "hparams",
            f"a dict with a value for every name of the space {list(space)} (it lacks {name!r})",
            hparams,
            owner,
        )
    return hparams[name]


@register
@dataclass(frozen=True)
class Perturb(Builtin):
    """Multiply each hyperparameter by a factor drawn from ``factors`` (the paper's 0.8 / 1.2).

    Numeric values are clipped to their bounds, integers stay integers, ordered choices move to a
    neighbouring option and unordered ones are resampled. With ``resample_probability`` p, each
    hyperparameter is instead resampled from its prior with probability p.

    Example:
        >>> import poptune as pt
        >>> explore = pt.Perturb((0.8, 1.2), resample_probability=0.25)
    """

    role: ClassVar[str] = "explore"

    factors: Sequence[float] = (0.8, 1.2)
    resample_probability: float = 0.0
    window: ClassVar[int] = 0

    def __post_init__(self) -> None:
        factors: Any = self.factors
        expected = "a non-empty sequence of positive finite numbers such as (0.8, 1.2)"
        if isinstance(factors, str | bytes) or not isinstance(factors, Sequence) or not factors:
            raise invalid("factors", expected, factors, "Perturb")
        numbers = [plain(f) for f in factors]
        if any(
            isinstance(f, bool) or not isinstance(f, Real) or not 0 < float(f) < math.inf
            for f in numbers
        ):
            raise invalid("factors", expected, factors, "Perturb")
        settle(
            self,
            factors=tuple(float(f) for f in numbers),
            resample_probability=_check_probability(
                "Perturb", "resample_probability", self.resample_probability
            ),
        )

    def __call__(
        self, hparams: Mapping[str, Any], space: Space, rng: np.random.Generator
    ) -> dict[str, Any]:
        """A new dict with every tuned value perturbed by a factor drawn uniformly from
        ``factors`` (see each distribution's ``perturb``), or, with probability
        ``resample_probability``, resampled from its prior. Fixed values are reset to theirs.

        Example:
            >>> import numpy as np, poptune as pt
            >>> space = pt.Space({"n": pt.IntUniform(1, 8), "opt": "sgd"})
            >>> pt.Perturb((0.5,))({"n": 4, "opt": "sgd"}, space, np.random.default_rng(0))
            {'n': 2, 'opt': 'sgd'}

        Raises:
            ValueError: a tuned name missing from ``hparams``, or a choice value that is not
                one of its options.
        """
        result: dict[str, Any] = {}
        for name, value in space.items():
            if not isinstance(value, Distribution):
                result[name] = value
            elif self.resample_probability > 0 and rng.random() < self.resample_probability:
                result[name] = value.sample(rng)
            else:
                factor = self.factors[int(rng.integers(len(self.factors)))]
                result[name] = value.perturb(_current(hparams, space, name, "Perturb"), factor, rng)
        return result


@register
@dataclass(frozen=True)
class Resample(Builtin):
    """Resample each hyperparameter from its prior with ``probability`` (default: all of them).

    Example:
        >>> import poptune as pt
        >>> explore = pt.Resample()
    """

    role: ClassVar[str] = "explore"

    probability: float = 1.0
    window: ClassVar[int] = 0

    def __post_init__(self) -> None:
        settle(self, probability=_check_probability("Resample", "probability", self.probability))

    def __call__(
        self, hparams: Mapping[str, Any], space: Space, rng: np.random.Generator
    ) -> dict[str, Any]:
        """A new dict with each tuned value resampled from its prior with ``probability``, else
        kept from ``hparams``. Fixed values are reset to theirs."""
        result: dict[str, Any] = {}
        for name, value in space.items():
            if not isinstance(value, Distribution):
                result[name] = value
            elif self.probability >= 1.0 or rng.random() < self.probability:
                result[name] = value.sample(rng)
            else:
                result[name] = _current(hparams, space, name, "Resample")
        return result


@register
@dataclass(frozen=True)
class Chain(Builtin):
    """Explore steps applied in order, each to the previous one's output (as ``optax.chain``).

    Example:
        >>> import poptune as pt
        >>> explore = pt.chain(pt.Perturb((0.8, 1.2)), pt.Resample(probability=0.25))
    """

    role: ClassVar[str] = "explore"

    steps: Sequence[Any]

    def __post_init__(self) -> None:
        steps: Any = self.steps
        if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Sequence) or not steps:
            raise invalid("steps", "a non-empty list of explore strategies", steps, "Chain")
        built = [rebuild(step, "explore") if isinstance(step, Mapping) else step for step in steps]
        for index, step in enumerate(built):
            check_role("explore", step, "Chain", name=f"steps[{index}]")
            if not callable(step):
                raise invalid(
                    f"steps[{index}]", "an explore strategy such as pt.Perturb()", step, "Chain"
                )
        settle(self, steps=tuple(built))

    @property
    def window(self) -> int:
        """The widest data window of its steps (0: none learns from the population's data)."""
        return max((capabilities.window(step) for step in self.steps), default=0)

    def __call__(
        self,
        hparams: Mapping[str, Any],
        space: Space,
        rng: np.random.Generator,
        data: Any = None,
    ) -> dict[str, Any]:
        """Apply every step in turn; the result of the last one. ``data`` (what the worker
        gathers for a step with a ``window``, such as ``pt.PB2``) goes to the steps that ask."""
        current = dict(hparams)
        for step in self.steps:
            if data is not None and capabilities.window(step) > 0:
                current = dict(step(current, space, rng, data=data))
            else:
                current = dict(step(current, space, rng))
        return current

    def check_space(self, space: Space) -> None:
        """Let each step refuse a space it cannot explore (as ``pt.PB2`` does)."""
        for step in self.steps:
            capabilities.check_space(step, space)

    def to_config(self) -> dict[str, Any]:
        """Parameters to store with the population: each step's own description (its field
        holds the steps themselves, which a description stores by their own descriptions)."""
        return {"steps": [describe(step, "explore") for step in self.steps]}


def chain(*steps: Any) -> Chain:
    """Compose explore steps: ``pt.chain(pt.Perturb(), pt.Resample(probability=0.25))``
    perturbs every hyperparameter, then resamples each with probability 0.25."""
    return Chain(list(steps))
