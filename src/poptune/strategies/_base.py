"""The three strategy seams of PBT and how they are stored with a population.

A strategy is a small object (or any callable with the same signature): data and a seeded
``numpy.random.Generator`` in, a decision out. No storage, no files, no clock, so the paper's
algorithms are testable in microseconds and synchronous runs are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .._imports import import_object, reference_of
from ..records import Candidate

if TYPE_CHECKING:
    from ..space import Space

__all__ = ["Exploit", "Explore", "Ready", "describe", "rebuild"]


@runtime_checkable
class Exploit(Protocol):
    """Pick a donor for ``member`` among ``population``, or ``None`` to keep training as it is.

    ``population`` holds the interval every healthy member recorded at ``member.step``
    (``member`` included), so members are compared at equal training. Only candidates with a
    complete checkpoint are ever offered, so any returned candidate can be copied.
    """

    def __call__(
        self, member: Candidate, population: Sequence[Candidate], rng: np.random.Generator
    ) -> Candidate | None: ...


@runtime_checkable
class Explore(Protocol):
    """Return new hyperparameters explored from ``hparams`` (copied from a donor) in ``space``.

    A strategy that learns from the population (e.g. ``PB2``) declares a positive ``window``
    attribute; the worker then also passes ``data=`` an :class:`~poptune.records.ExploreData`:
    the copied weights' step and fitness, and the population's intervals of the last
    ``window`` steps.
    """

    def __call__(
        self, hparams: Mapping[str, Any], space: Space, rng: np.random.Generator
    ) -> dict[str, Any]: ...


@runtime_checkable
class Ready(Protocol):
    """Is ``member`` (its interval ``member.step`` just recorded) due to exploit and explore?"""

    def __call__(self, member: Candidate) -> bool: ...


_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a built-in strategy rebuildable from its stored description."""
    _REGISTRY[cls.__name__] = cls
    return cls


def describe(strategy: Callable[..., Any] | None) -> dict[str, Any] | None:
    """A JSON description of ``strategy`` to store with the population.

    Built-in strategies are described by their parameters; other callables by an import
    reference (``None`` when they have none, e.g. a lambda: such a population can only be
    resumed by passing the strategy again).
    """
    if strategy is None:
        return None
    to_config = getattr(strategy, "to_config", None)
    if type(strategy).__name__ in _REGISTRY and callable(to_config):
        return {"type": type(strategy).__name__, **to_config()}
    return {"type": "callable", "ref": reference_of(strategy), "repr": repr(strategy)}


def rebuild(description: Mapping[str, Any] | None, role: str) -> Any:
    """Rebuild a strategy from :func:`describe`'s output.

    Raises:
        ValueError: if the strategy was a callable with no import reference.
    """
    if description is None:
        return None
    kind = description["type"]
    if kind == "callable":
        ref = description.get("ref")
        if ref is None:
            raise ValueError(
                f"The {role} strategy of this population was {description.get('repr')}, which "
                f"cannot be imported again. Pass it again: pt.load(...).resume({role}=...)."
            )
        obj = import_object(ref)
        # A reference to a class means the population was given an instance of it.
        return obj() if isinstance(obj, type) else obj
    if kind not in _REGISTRY:
        raise ValueError(f"Unknown {role} strategy type {kind!r} in the stored population.")
    params = {k: v for k, v in description.items() if k != "type"}
    return _REGISTRY[kind](**params)
