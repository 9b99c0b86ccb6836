"""A population's configuration: one typed, validated value, stored as a JSON dict.

:class:`PopulationConfig` is what ``pt.run`` records with a population and what every later
reader and worker gets back: the storage keeps :meth:`~PopulationConfig.to_dict`'s output and
:meth:`~PopulationConfig.from_dict` reads it (also from populations recorded by older releases).
It holds data only: the trainable and the strategies as the descriptions they were recorded
with (see :mod:`poptune.strategies`), so reading a configuration never imports user code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from numbers import Integral
from typing import Any

from ._validation import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_str,
    invalid,
    jsonable,
    plain,
)
from .records import Mode, PopulationRecord
from .space import Space, space_from_dict
from .strategies._base import canonical

__all__ = [
    "PopulationConfig",
    "StrategyDescription",
    "check_checkpoint_every",
    "stored_checkpoint_every",
]

#: A strategy as recorded: ``{"type": <name>, **parameters}`` (see ``strategies.describe``).
StrategyDescription = Mapping[str, Any]

# The fields that define the algorithm: a population may only be continued by a run that agrees
# on all of them.
_ALGORITHM = (
    "trainable",
    "space",
    "metric",
    "mode",
    "population",
    "intervals",
    "exploit",
    "explore",
    "ready",
    "seed",
    "sync",
    "initial",
)
_OWNER = "PopulationConfig"


@dataclass(frozen=True)
class PopulationConfig:
    """Everything recorded about how a population trains.

    Construction validates every field once and normalises numpy scalars to built-in types
    (``population=np.int64(4)`` is stored as ``4``), so a config that exists is valid.

    Attributes:
        trainable: the trainable's import reference (``"module:qualname"``), or ``None`` when
            it was defined where it cannot be imported again (it must then be passed).
        space: the hyperparameter space.
        metric: the key of the metrics that PBT optimises.
        mode: whether higher (``max``) or lower (``min``) scores are better.
        population: the number of members.
        intervals: the budget: intervals of training behind every member's final weights.
        exploit: the exploit strategy's description, ``None`` for none (random search).
        explore: the explore strategy's description.
        ready: the ready strategy's description.
        seed: the seed of every random decision.
        sync: whether members train in generations.
        initial: the given first hparams (``None`` when all were sampled).
        max_failures: retries of a failing member before it is re-seeded.
        lease_seconds: how long a claim lasts without a heartbeat.
        stop: the stop criteria's descriptions.
        started_at: ``time.time()`` when the latest run of it started (for wall-clock limits).
        checkpoints: where its checkpoints are: a folder relative to a SQLite database, an
            absolute folder or a URL.
        schedule: for a replay, the hparams of each interval.
        replay_of: for a replay, ``{"population": name, "member": id}`` of what it replays.
        block: how many members one call of the training function trains together
            (``None``: one member per call); how workers schedule, not the algorithm.
        checkpoint_every: when a member's weights are checkpointed instead of after every
            interval (``None``): an int k, at the steps that are multiples of k (and at the
            budget); a ``timedelta``, once that much of its training has passed since its last
            checkpoint (and where it exploits, and at the budget). See :func:`poptune.run`.
            Stored as ``checkpoint_every`` (intervals) or ``checkpoint_seconds`` (a number).
        legacy_steps: recorded by a release whose steps counted a member's own intervals, and
            not rewritten to the new meaning by the upgrade (why, or ``True``): read-only.
        extra: stored keys this release does not know (kept, so nothing is lost on a rewrite).
    """

    trainable: str | None
    space: Space
    metric: str
    mode: Mode
    population: int
    intervals: int
    exploit: StrategyDescription | None
    explore: StrategyDescription | None
    ready: StrategyDescription | None
    seed: int
    sync: bool = False
    initial: tuple[Mapping[str, Any], ...] | None = None
    max_failures: int = 2
    lease_seconds: float = 30.0
    stop: tuple[StrategyDescription, ...] = ()
    started_at: float = 0.0
    checkpoints: str | None = None
    schedule: tuple[Mapping[str, Any], ...] = ()
    replay_of: Mapping[str, Any] | None = None
    block: int | None = None
    checkpoint_every: int | timedelta | None = None
    legacy_steps: bool | str = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.trainable is not None:
            put("trainable", check_str("trainable", self.trainable, _OWNER))
        if not isinstance(self.space, Space):
            if not isinstance(self.space, Mapping):
                raise invalid("space", "a Space or a dict of name -> distribution", self.space)
            put("space", Space(self.space))
        put("metric", check_str("metric", self.metric))
        put("mode", Mode(check_choice("mode", _mode_value(self.mode), ("max", "min"))))
        put("population", check_int("population", self.population, 1))
        put("intervals", check_int("intervals", self.intervals, 1))
        for role in ("exploit", "explore", "ready"):
            put(role, _description(role, getattr(self, role)))
        put("seed", check_int("seed", self.seed, 0))
        put("sync", check_bool("sync", self.sync))
        if self.initial is not None:
            put("initial", _hparams_list("initial", self.initial))
        put("max_failures", check_int("max_failures", self.max_failures, 0))
        put(
            "lease_seconds",
            check_float(
                "lease_seconds", self.lease_seconds, 0, 86400, low_open=True, high_open=True
            ),
        )
        put("stop", tuple(_description("stop", d) for d in self.stop or ()))
        put("started_at", check_float("started_at", self.started_at, 0))
        if self.checkpoints is not None:
            put("checkpoints", check_str("checkpoints", self.checkpoints, _OWNER))
        put("schedule", _hparams_list("schedule", self.schedule or ()))
        if self.replay_of is not None:
            put("replay_of", dict(self.replay_of))
        if self.block is not None:
            put("block", check_int("block", self.block, 1))
        put("checkpoint_every", check_checkpoint_every(self.checkpoint_every))
        if not isinstance(self.legacy_steps, str):
            put("legacy_steps", check_bool("legacy_steps", self.legacy_steps))
        put("extra", dict(self.extra))

    # --- the storage's form ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the storage keeps; :meth:`from_dict` reads it back equal."""
        data: dict[str, Any] = dict(self.extra)
        data.update(
            {
                "trainable": self.trainable,
                "space": self.space.to_dict(),
                "metric": self.metric,
                "mode": self.mode.value,
                "population": self.population,
                "intervals": self.intervals,
                "exploit": jsonable(self.exploit),
                "explore": jsonable(self.explore),
                "ready": jsonable(self.ready),
                "seed": self.seed,
                "sync": self.sync,
                "initial": None if self.initial is None else [dict(h) for h in self.initial],
                "max_failures": self.max_failures,
                "lease_seconds": self.lease_seconds,
                "stop": [jsonable(d) for d in self.stop],
                "started_at": self.started_at,
                "checkpoints": self.checkpoints,
            }
        )
        if self.schedule:
            data["schedule"] = [dict(h) for h in self.schedule]
        if self.replay_of is not None:
            data["replay_of"] = dict(self.replay_of)
        if self.block is not None:
            data["block"] = self.block
        stored = stored_checkpoint_every(self.checkpoint_every)
        data.update({key: value for key, value in stored.items() if value is not None})
        if self.legacy_steps:
            data["legacy_steps"] = self.legacy_steps
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PopulationConfig:
        """Read a stored configuration (from any release); unknown keys are kept in ``extra``.

        Raises:
            ValueError: if a field is missing or invalid (the storage was edited by hand?).
        """
        # checkpoint_seconds is checkpoint_every's other stored form, not a field of its own
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"} | {_SECONDS}
        missing = [
            name
            for name in ("space", "metric", "mode", "population", "intervals", "seed")
            if name not in data
        ]
        if missing:
            raise ValueError(
                f"The stored population configuration lacks {missing}; it was not written by "
                f"poptune (keys: {sorted(data)})."
            )
        values = {k: v for k, v in data.items() if k in known}
        values["space"] = space_from_dict(data["space"])
        values.setdefault("trainable", None)
        for role in ("exploit", "explore", "ready"):
            values.setdefault(role, None)
        values["stop"] = tuple(data.get("stop") or ())
        if values.get("schedule") is None:
            values["schedule"] = ()
        if values.get("started_at") is None:
            values["started_at"] = 0.0
        seconds = values.pop(_SECONDS, None)
        # Both are stored only if an older release, which keeps checkpoint_seconds without
        # reading it, set intervals since: that is the later choice.
        if seconds is not None and values.get("checkpoint_every") is None:
            values["checkpoint_every"] = timedelta(
                seconds=check_float(_SECONDS, seconds, 0, low_open=True)
            )
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def of(cls, record: PopulationRecord) -> PopulationConfig:
        """The configuration of a stored population."""
        return cls.from_dict(record.config)

    # --- comparisons -----------------------------------------------------------------------

    def differences(self, other: PopulationConfig) -> list[str]:
        """Where ``other`` defines another algorithm than this one, one line per field."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{name}: stored {mine.get(name)!r}, given {theirs.get(name)!r}"
            for name in _ALGORITHM
            if _comparable(mine.get(name)) != _comparable(theirs.get(name))
        ]

    def replace(self, **changes: Any) -> PopulationConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


#: The stored key of a ``checkpoint_every`` given as a duration. A key of its own, so that a
#: release before it keeps it (in ``extra``) and checkpoints after every interval, which is
#: always sound, rather than failing to read the population.
_SECONDS = "checkpoint_seconds"


def check_checkpoint_every(value: Any) -> int | timedelta | None:
    """``checkpoint_every`` checked: ``None``, an int >= 1 (intervals) or a positive
    ``datetime.timedelta`` (of a member's training).

    Raises:
        InvalidParameterError: naming the value and the two forms.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise invalid(
                "checkpoint_every",
                "a positive duration when it is a timedelta",
                value,
                hint="Give the seconds of a member's training between its checkpoints, e.g. "
                "timedelta(minutes=10).",
            )
        return value
    number = plain(value)
    if isinstance(number, bool) or not isinstance(number, Integral) or number < 1:
        raise invalid(
            "checkpoint_every",
            "an int >= 1 (intervals) or a datetime.timedelta (of training), or None",
            value,
            hint="For seconds, pass e.g. timedelta(seconds=600).",
        )
    return int(number)


def stored_checkpoint_every(value: int | timedelta | None) -> dict[str, Any]:
    """``checkpoint_every`` as the storage keeps it: under ``checkpoint_every`` (intervals)
    or ``checkpoint_seconds`` (a float), the other ``None`` (and both for ``None``), so that
    updating both keys replaces any earlier form."""
    return {
        "checkpoint_every": value if isinstance(value, int) else None,
        _SECONDS: value.total_seconds() if isinstance(value, timedelta) else None,
    }


def _mode_value(mode: Any) -> Any:
    return mode.value if isinstance(mode, Mode) else mode


def _description(role: str, value: Any) -> StrategyDescription | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise invalid(role, "a strategy description with a 'type' (strategies.describe)", value)
    return canonical(jsonable(value))  # a description recorded before a rename: today's names


def _hparams_list(name: str, values: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
        raise invalid(name, "a list of dicts of hparams", values)
    result = []
    for index, hparams in enumerate(values):
        if not isinstance(hparams, Mapping):
            raise invalid(f"{name}[{index}]", "a dict of hparams", hparams)
        result.append(jsonable(hparams))
    return tuple(result)


def _comparable(value: Any) -> Any:
    """A stored description without its free-text ``repr`` (it differs between releases)."""
    if isinstance(value, Mapping):
        return {k: _comparable(v) for k, v in value.items() if k != "repr"}
    if isinstance(value, list | tuple):
        return [_comparable(v) for v in value]
    return value
