"""What a worker runs: :class:`RunSpec`, a population's configuration with its live objects, and
:class:`WorkerTarget`: that, and where the population's state lives (what a runner hands a
worker)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import PopulationConfig
from .records import Candidate
from .strategies import rebuild

__all__ = ["KEEP", "RunSpec", "WorkerTarget"]

#: "Keep what the population recorded" (the default of strategy arguments that accept None).
KEEP: Any = object()


@dataclass(frozen=True)
class RunSpec:
    """What a worker runs: the population's configuration and its live objects.

    ``config`` holds every setting (one typed value, see :class:`~poptune.config.PopulationConfig`);
    the trainable and the strategies are the objects themselves, rebuilt from their recorded
    descriptions by :meth:`build` (which imports user code: only training does that).
    """

    config: PopulationConfig
    trainable: Any  # a Trainable class, or a training function (poptune.loop)
    exploit: Callable[..., Candidate | None] | None
    explore: Callable[..., Mapping[str, Any]]
    ready: Callable[[Candidate], bool]
    stop: tuple[Callable[..., str | None], ...] = ()  # checked after every recorded interval

    @classmethod
    def build(
        cls,
        config: PopulationConfig,
        trainable: Any,
        exploit: Any = KEEP,
        explore: Any = None,
        ready: Any = None,
    ) -> RunSpec:
        """The live objects of ``config``; strategies given here replace the recorded ones
        (``exploit=None`` is random search, so only ``KEEP`` keeps the recorded exploit)."""
        return cls(
            config=config,
            trainable=trainable,
            exploit=rebuild(config.exploit, "exploit") if exploit is KEEP else exploit,
            explore=explore if explore is not None else rebuild(config.explore, "explore"),
            ready=ready if ready is not None else rebuild(config.ready, "ready"),
            stop=tuple(rebuild(d, "stop") for d in config.stop),
        )


@dataclass(frozen=True)
class WorkerTarget:
    """What a worker needs to join a population: the algorithm and where the state lives."""

    spec: RunSpec
    storage_url: str
    checkpoints_url: str
    population_id: int
    lease_seconds: float = 30.0
    resident: int | None = None  # members a worker keeps in memory (None: all)
