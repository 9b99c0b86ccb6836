"""Explore strategies: how copied hyperparameters are mutated after an exploit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._base import register

if TYPE_CHECKING:
    from ..space import Space

__all__ = ["Perturb", "Resample"]


def _check_probability(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"The '{name}' parameter of {owner} must be a float in the range [0, 1]. "
            f"Got {value!r} instead."
        )
    return float(value)


@register
class Perturb:
    """Multiply each hyperparameter by a factor drawn from ``factors`` (the paper's 0.8 / 1.2).

    Numeric values are clipped to their bounds, integers stay integers, ordered choices move to a
    neighbouring option and unordered ones are resampled. With ``resample_probability`` p, each
    hyperparameter is instead resampled from its prior with probability p.

    Example:
        >>> import poptune as pt
        >>> explore = pt.Perturb((0.8, 1.2), resample_probability=0.25)
    """

    def __init__(
        self, factors: Sequence[float] = (0.8, 1.2), resample_probability: float = 0.0
    ) -> None:
        if isinstance(factors, str | bytes) or not isinstance(factors, Sequence) or not factors:
            raise ValueError(
                "The 'factors' parameter of Perturb must be a non-empty sequence of positive "
                f"numbers such as (0.8, 1.2). Got {factors!r} instead."
            )
        for factor in factors:
            if (
                isinstance(factor, bool)
                or not isinstance(factor, int | float)
                or not math.isfinite(factor)
                or factor <= 0
            ):
                raise ValueError(
                    "The 'factors' parameter of Perturb must hold positive finite numbers. "
                    f"Got {factor!r} in {tuple(factors)!r}."
                )
        self.factors = tuple(float(f) for f in factors)
        self.resample_probability = _check_probability(
            "Perturb", "resample_probability", resample_probability
        )

    def __call__(
        self, hparams: Mapping[str, Any], space: Space, rng: np.random.Generator
    ) -> dict[str, Any]:
        """Return perturbed copies of ``hparams``; always inside ``space``."""
        return space.perturb(hparams, self.factors, rng, self.resample_probability)

    def to_config(self) -> dict[str, Any]:
        """Parameters to store with the population."""
        return {"factors": list(self.factors), "resample_probability": self.resample_probability}

    def __repr__(self) -> str:
        return f"Perturb(factors={self.factors}, resample_probability={self.resample_probability})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Perturb) and other.to_config() == self.to_config()


@register
class Resample:
    """Resample each hyperparameter from its prior with ``probability`` (default: all of them).

    Example:
        >>> import poptune as pt
        >>> explore = pt.Resample()
    """

    def __init__(self, probability: float = 1.0) -> None:
        self.probability = _check_probability("Resample", "probability", probability)

    def __call__(
        self, hparams: Mapping[str, Any], space: Space, rng: np.random.Generator
    ) -> dict[str, Any]:
        """Return ``hparams`` with each value resampled from the prior with ``probability``."""
        return space.resample(hparams, rng, self.probability)

    def to_config(self) -> dict[str, Any]:
        """Parameters to store with the population."""
        return {"probability": self.probability}

    def __repr__(self) -> str:
        return f"Resample(probability={self.probability})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resample) and other.probability == self.probability
