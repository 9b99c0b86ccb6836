"""The three strategy seams of PBT and how they are stored with a population.

A strategy is a small object (or any callable with the same signature): data and a seeded
``numpy.random.Generator`` in, a decision out. No storage, no files, no clock, so the paper's
algorithms are testable in microseconds and synchronous runs are deterministic.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .._imports import import_object, reference_of
from .._validation import invalid, jsonable
from ..errors import NotRecordable
from ..records import Candidate

if TYPE_CHECKING:
    from ..space import Space

__all__ = [
    "DeclaredExploit",
    "DeclaredExplore",
    "DeclaredStop",
    "Exploit",
    "Explore",
    "NotRecordable",
    "Ready",
    "describe",
    "rebuild",
]


@runtime_checkable
class Exploit(Protocol):
    """Pick a donor for ``member`` among ``peers``, or ``None`` to keep training as it is.

    ``peers`` holds the interval every healthy member recorded at ``member.step`` (``member``
    included), so members are compared at equal training. Only candidates with a complete
    checkpoint are ever offered, so any returned candidate can be copied. The worker passes a
    :class:`~poptune.peers.Peers`: a read-only sequence in member-id order that reads everyone
    only when iterated, and answers ``len``, ``rank``, ``best(k)``, ``finite`` and ``peers[i]``
    with a few rows whatever the population's size (the built-in strategies ask only these;
    ``as_peers(candidates, member)`` gives the same view of a plain list). Candidates carry
    their scores, not their hparams (the chosen donor's are read after the choice).

    Optional capabilities, declared as attributes (see :class:`DeclaredExploit`; a plain
    function declares none and gets the default):

    - ``needs_hparams: bool`` (default ``False``): the worker reads every candidate's hparams;
    - ``history: int`` (default ``0``): each candidate carries its last ``history`` scores in
      ``Candidate.history`` (as ``pt.TTest`` compares them).
    """

    def __call__(
        self, member: Candidate, peers: Sequence[Candidate], rng: np.random.Generator
    ) -> Candidate | None: ...


@runtime_checkable
class Explore(Protocol):
    """Return new hyperparameters explored from ``hparams`` (copied from a donor) in ``space``.

    Optional capabilities, declared as attributes (see :class:`DeclaredExplore`; a plain
    function declares none and gets the default):

    - ``window: int`` (default ``0``): a strategy that learns from the population (e.g.
      ``PB2``) declares a positive ``window``; the worker then also passes ``data=`` an
      :class:`~poptune.records.ExploreData`: the copied weights' step and fitness, and the
      population's intervals of the last ``window`` steps;
    - ``check_space(space) -> None`` (default: every space is accepted): raises for a space it
      cannot explore, called by ``pt.run`` before anything trains.
    """

    def __call__(
        self, hparams: Mapping[str, Any], space: Space, rng: np.random.Generator
    ) -> dict[str, Any]: ...


@runtime_checkable
class Ready(Protocol):
    """Is ``member`` (its interval ``member.step`` just recorded) due to exploit and explore?"""

    def __call__(self, member: Candidate) -> bool: ...


class DeclaredExploit(Exploit, Protocol):
    """An :class:`Exploit` that declares its capabilities, as the built-in ones do (the types
    for your own class; :mod:`poptune.strategies._capabilities` is the one place they are read)."""

    @property
    def needs_hparams(self) -> bool:
        """Whether the worker reads every candidate's hparams, not only the donor's."""
        ...

    @property
    def history(self) -> int:
        """How many recent scores each candidate carries (0: only its latest)."""
        ...


class DeclaredExplore(Explore, Protocol):
    """An :class:`Explore` that declares its capabilities, as the built-in ones do."""

    @property
    def window(self) -> int:
        """How many recent steps of the population's intervals it learns from (0: none)."""
        ...

    def check_space(self, space: Space) -> None:
        """Raise for a space it cannot explore (``ValueError``); return otherwise."""
        ...


class DeclaredStop(Protocol):
    """A stop criterion (``Progress -> reason or None``) that declares the metric it watches
    (``None``: the optimised one); a plain function watches the optimised metric."""

    @property
    def metric(self) -> str | None:
        """The metric it watches, which must be the one the population optimises."""
        ...

    def __call__(self, progress: Any) -> str | None: ...


class Builtin:
    """Base of the built-in strategies, frozen dataclasses whose fields are their parameters:
    ``repr``, ``==`` and the recorded description come from the fields. ``role`` is the seat
    it takes in ``pt.run``: ``"exploit"``, ``"explore"``, ``"ready"`` or ``"stop"``."""

    role: ClassVar[str] = ""

    def to_config(self) -> dict[str, Any]:
        """Parameters to store with the population: the fields that rebuild it, as JSON."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return {f.name: jsonable(getattr(self, f.name)) for f in fields if f.init}


def check_role(role: str, strategy: Any, owner: str | None = None, name: str = "") -> None:
    """Refuse a strategy class given for an instance (``pt.Truncation`` for
    ``pt.Truncation()``), and a built-in strategy in another seat (``explore=pt.Truncation()``):
    either was accepted, and failed after training started with an error from deep inside.

    Raises:
        InvalidParameterError: saying what was given and what to pass (as parameter ``name``,
            by default ``role``).
    """
    name = name or role
    if inspect.isclass(strategy):
        raise invalid(
            name,
            f"a strategy instance, such as {strategy.__name__}(...) (the class itself was given)",
            strategy,
            owner,
        )
    seat = getattr(strategy, "role", "") if isinstance(strategy, Builtin) else ""
    if seat and seat != role:
        raise invalid(
            name,
            f"{'an' if role[0] in 'aeiou' else 'a'} {role} strategy",
            strategy,
            owner,
            hint=f"{type(strategy).__name__} is {'an' if seat[0] in 'aeiou' else 'a'} {seat} "
            f"strategy: pass it as {seat}=.",
        )


def settle(strategy: Any, **values: Any) -> None:
    """Set validated fields of a frozen dataclass from its ``__post_init__``."""
    for name, value in values.items():
        object.__setattr__(strategy, name, value)


_REGISTRY: dict[str, type] = {}
log = logging.getLogger("poptune")


def register(cls: type) -> type:
    """Class decorator: make a built-in strategy rebuildable from its stored description."""
    _REGISTRY[cls.__name__] = cls
    return cls


def describe(strategy: Callable[..., Any] | None, role: str = "strategy") -> dict[str, Any] | None:
    """A JSON description of ``strategy`` to store with the population; :func:`rebuild` turns
    it back into an equal strategy, with the same parameters.

    - a built-in strategy: ``{"type": "Perturb", **parameters}``;
    - an instance of a user class: ``{"type": "object", "ref": "module:Class", "params": ...}``,
      where the parameters come from its ``to_config()`` method (the keyword arguments that
      rebuild it: ``Class(**obj.to_config())``), or from its fields if it is a dataclass, or are
      empty if the instance holds no state;
    - a function: ``{"type": "callable", "ref": "module:function"}``.

    A strategy with no import reference (a lambda, a class defined in a notebook) is recorded
    by its ``repr`` only: such a population can be resumed by passing the strategy again.

    Raises:
        NotRecordable: for an instance whose parameters cannot be recorded (state but no
            ``to_config()`` and not a dataclass, parameters that are not JSON, or a
            ``to_config()`` that does not rebuild it): the message says how to make it
            recordable. Nothing is ever rebuilt with default parameters instead.
    """
    if strategy is None:
        return None
    to_config = getattr(strategy, "to_config", None)
    if _REGISTRY.get(type(strategy).__name__) is type(strategy) and callable(to_config):
        return {"type": type(strategy).__name__, **_jsonable(strategy, role, to_config())}
    if inspect.isroutine(strategy) or inspect.isclass(strategy):
        return {"type": "callable", "ref": reference_of(strategy), "repr": repr(strategy)}
    params = _jsonable(strategy, role, _parameters(strategy, role))
    description = {
        "type": "object",
        "ref": reference_of(type(strategy)),
        "params": params,
        "repr": repr(strategy),
    }
    cls: Any = type(strategy)
    try:
        again = cls(**params)
    except Exception as error:
        raise NotRecordable(
            _how(strategy, role, f"{_name(strategy)}(**{params!r}) raised {error!r}")
        ) from None
    differing = _differing_state(strategy, again)
    if _jsonable(again, role, _parameters(again, role)) != params or differing:
        raise NotRecordable(
            _how(
                strategy,
                role,
                f"{_name(strategy)}(**{params!r}) records other parameters"
                + (f" (its {differing} differ)" if differing else ""),
            )
        )
    return description


def rebuild(description: Mapping[str, Any] | None, role: str) -> Any:
    """Rebuild a strategy from :func:`describe`'s output, with its recorded parameters.

    Raises:
        ValueError: if the strategy cannot be imported here (it had no import reference, or
            its module is missing): the message says to pass it again.
    """
    if description is None:
        return None
    kind = description["type"]
    if kind in ("callable", "object"):
        ref = description.get("ref")
        if ref is None:
            raise ValueError(
                f"The {role} strategy of this population was {description.get('repr')}, which "
                f"cannot be imported again. Pass it again: pt.load(...).resume({role}=...)."
            )
        obj = import_object(ref)
        if kind == "object":
            return obj(**description.get("params", {}))
        if isinstance(obj, type):
            # Recorded by a release that stored an instance by its class only: its parameters
            # were not recorded, so this instance has the class's defaults.
            log.warning(
                "The %s strategy %s was recorded by an older poptune without its parameters; it "
                "is rebuilt with its defaults. Pass it again to resume(%s=...) to be sure.",
                role,
                description.get("repr"),
                role,
            )
            return obj()
        return obj
    if kind not in _REGISTRY:
        raise ValueError(f"Unknown {role} strategy type {kind!r} in the stored population.")
    cls = _REGISTRY[kind]
    # A description recorded before a parameter was renamed uses its old name: the same
    # parameter, so rebuilt without the deprecation warning a user's call gets.
    new_names: Mapping[str, str] = getattr(cls, "__renamed__", {})
    params = {new_names.get(k, k): v for k, v in description.items() if k != "type"}
    return cls(**params)


def canonical(description: Any) -> Any:
    """``description`` with the parameters of built-in strategies under their current names
    (``{"type": "Every", "intervals": 4}`` -> ``{"type": "Every", "period": 4}``), nested
    descriptions (a chain's steps) included; anything else unchanged. A population recorded
    before a rename then compares equal to the same strategy described today.

    Example:
        >>> canonical({"type": "Every", "intervals": 4, "burn_in": 0})
        {'type': 'Every', 'period': 4, 'burn_in': 0}
    """
    if isinstance(description, list | tuple):
        return [canonical(item) for item in description]
    if not isinstance(description, Mapping):
        return description
    cls = _REGISTRY.get(description.get("type"))  # type: ignore[arg-type]
    new_names: Mapping[str, str] = getattr(cls, "__renamed__", {}) if cls is not None else {}
    return {new_names.get(k, k): canonical(v) for k, v in description.items()}


def _parameters(strategy: Any, role: str) -> dict[str, Any]:
    """The keyword arguments that rebuild ``strategy``."""
    to_config = getattr(strategy, "to_config", None)
    if callable(to_config):
        params = to_config()
        if not isinstance(params, Mapping):
            raise NotRecordable(
                _how(strategy, role, f"to_config() returned {params!r}, not a dict")
            )
        return dict(params)
    if dataclasses.is_dataclass(strategy):
        return {f.name: getattr(strategy, f.name) for f in dataclasses.fields(strategy) if f.init}
    state = getattr(strategy, "__dict__", None) or {
        slot: getattr(strategy, slot)
        for slot in getattr(type(strategy), "__slots__", ())
        if hasattr(strategy, slot)
    }
    if state:
        raise NotRecordable(
            _how(strategy, role, f"it holds {sorted(state)} but says nothing of how to rebuild it")
        )
    return {}


def _differing_state(strategy: Any, again: Any) -> list[str]:
    """The attributes in which the rebuilt ``again`` differs from ``strategy`` (those that can
    be compared), so a ``to_config()`` that forgets a parameter is caught."""
    mine, theirs = getattr(strategy, "__dict__", {}), getattr(again, "__dict__", {})
    differing = []
    for name in sorted(set(mine) | set(theirs)):
        try:
            same = bool(mine.get(name) == theirs.get(name))
        except Exception:  # e.g. arrays: not comparable as one bool, so not judged
            continue
        if not same:
            differing.append(name)
    return differing


def _jsonable(strategy: Any, role: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as JSON gives them back (tuples as lists), or NotRecordable."""
    try:
        return json.loads(json.dumps(jsonable(dict(params))))
    except (TypeError, ValueError) as error:
        raise NotRecordable(
            _how(strategy, role, f"its parameters {params!r} are not JSON ({error})")
        ) from None


def _name(strategy: Any) -> str:
    return type(strategy).__qualname__


def _how(strategy: Any, role: str, problem: str) -> str:
    return (
        f"The {role} strategy {strategy!r} cannot be recorded with the population: {problem}. "
        "A population records its strategies with their parameters, so that resume and other "
        "workers rebuild the same ones. Make it recordable: give its class a to_config() "
        f"method returning the keyword arguments that rebuild it ({_name(strategy)}"
        "(**obj.to_config()) must equal obj), or make it a dataclass of JSON values "
        "(numbers, strings, lists, dicts)."
    )
