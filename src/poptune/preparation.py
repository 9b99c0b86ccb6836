"""The arguments of ``pt.run`` and ``pt.resume``, checked, and what they train with.

:func:`prepare_run` checks ``pt.run``'s arguments in one fixed order (so that when several are
wrong, the same one is reported first, release after release), fills in the default strategies
and builds the :class:`~poptune.config.PopulationConfig` to store; :func:`prepare_resume` does
the same for continuing a stored population, before anything stored changes. Both return a plan
that turns a stored population into an :class:`~poptune.execution.Execution`.
"""

from __future__ import annotations

import inspect
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from ._imports import import_object, reference_of
from ._validation import check_int, check_name, check_population_name, invalid, plain
from .blocks import check_block
from .checkpoints import CheckpointStore
from .config import PopulationConfig, stored_checkpoint_every
from .config import check_checkpoint_every as checked_checkpoint_every
from .execution import Execution
from .locations import open_checkpoint_store
from .reconcile import check_continuable
from .records import PopulationRecord
from .results import Result
from .runners import InProcessRunner, LocalProcessRunner, RayRunner, Runner
from .runspec import KEEP, RunSpec
from .seeding import initial_rng
from .space import Space
from .storage import Storage
from .strategies import Every, Perturb, Truncation, describe
from .strategies import _capabilities as capabilities
from .strategies._base import check_role
from .strategies.stop import Stop, describe_stop, stop_list
from .trackers import Tracker, check_trackers
from .trainable import check_trainable

__all__ = [
    "ResumePlan",
    "RunPlan",
    "check_checkpoint_every",
    "choose_runner",
    "default_resident",
    "prepare_resume",
    "prepare_run",
    "recorded_trainable",
    "warn_every_interval",
]


@dataclass(frozen=True)
class RunPlan:
    """``pt.run``'s arguments, checked: the population to store and how to train it."""

    name: str
    config: PopulationConfig  # without its checkpoint location: that needs the storage
    start: list[dict[str, Any]]  # every member's first hparams
    trainable: Any
    exploit: Callable[..., Any] | None
    explore: Callable[..., Any]
    ready: Callable[..., Any]
    stop: tuple[Stop, ...]
    runner: Runner
    resident: int
    trackers: tuple[Tracker, ...]

    def execution(
        self,
        storage: Storage,
        record: PopulationRecord,
        checkpoints: str | os.PathLike[str] | CheckpointStore | None,
        progress: bool,
    ) -> Execution:
        """Training ``record``, the population stored for this plan, with these objects."""
        spec = RunSpec(
            config=PopulationConfig.of(record),
            trainable=self.trainable,
            exploit=self.exploit,
            explore=self.explore,
            ready=self.ready,
            stop=self.stop,
        )
        # A folder or URL given to pt.run was recorded with the population (or the stored
        # population's own location is kept): read back from there; a store object is used.
        given = None if isinstance(checkpoints, str | os.PathLike) else checkpoints
        return Execution(
            storage=storage,
            record=record,
            spec=spec,
            checkpoints=open_checkpoint_store(storage, record, given),
            runner=self.runner,
            resident=self.resident,
            progress=progress,
            trackers=self.trackers,
        )


def prepare_run(
    trainable: type | Callable[..., Any],
    space: Mapping[str, Any] | Space,
    metric: str,
    *,
    mode: str,
    population: int,
    intervals: int,
    workers: int,
    exploit: Callable[..., Any] | None,
    explore: Callable[..., Any] | None,
    ready: Callable[..., Any] | None,
    name: str | None,
    seed: int | None,
    sync: bool,
    runner: Runner | None,
    initial: Sequence[Mapping[str, Any]] | None,
    max_failures: int,
    lease_seconds: float,
    devices: Sequence[str] | None,
    resident: int | None,
    stop: Stop | Sequence[Stop] | None,
    trackers: Sequence[Tracker] | None,
    block: int | None = None,
    checkpoint_every: int | timedelta | None = None,
) -> RunPlan:
    """Check ``pt.run``'s arguments (see :func:`poptune.run`) in their fixed order and build
    the plan; ``exploit`` or ``explore`` equal to :data:`~poptune.runspec.KEEP`, and ``explore``
    or ``ready`` equal to ``None``, are the defaults.

    Raises:
        ValueError / TypeError: for the first invalid argument, naming it and its value.
    """
    check_trainable(trainable)
    started_at = time.time()
    metric = check_name("metric", metric)
    criteria = stop_list(stop, metric)
    space = _space(space)
    for key in space:  # a Space also loads stored names; new ones must be printable
        check_name("space", key, kind="hyperparameter names")
    population = check_int("population", population, 2)
    workers = check_int("workers", workers, 1)
    if resident is not None:
        resident = check_int("resident", resident, 1)
    block = check_block(block, trainable)
    checkpoint_every = check_checkpoint_every(checkpoint_every, block, sync)
    runner = choose_runner(runner, workers, population, devices)
    trackers = check_trackers(trackers)
    exploit, explore, ready = _strategies(exploit, explore, ready, space)
    warn_every_interval(checkpoint_every, exploit, ready)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    seed = check_int("seed", seed, 0)
    name = check_population_name("name", trainable.__name__ if name is None else name)
    config = PopulationConfig(
        trainable=reference_of(trainable),
        space=space,
        metric=metric,
        mode=mode,  # type: ignore[arg-type]  # checked and converted by PopulationConfig
        population=population,
        intervals=intervals,
        exploit=describe(exploit, "exploit"),
        explore=describe(explore, "explore"),
        ready=describe(ready, "ready"),
        seed=seed,
        sync=sync,
        max_failures=max_failures,
        lease_seconds=lease_seconds,
        stop=tuple(describe_stop(criteria)),
        started_at=started_at,
        block=block,
        checkpoint_every=checkpoint_every,
    )
    start = _initial(space, population, seed, initial)
    if initial is not None:
        config = config.replace(initial=start)
    return RunPlan(
        name=name,
        config=config,
        start=start,
        trainable=trainable,
        exploit=exploit,
        explore=explore,
        ready=ready,
        stop=tuple(criteria),
        runner=runner,
        resident=resident if resident is not None else default_resident(population, workers),
        trackers=tuple(trackers),
    )


@dataclass(frozen=True)
class ResumePlan:
    """``pt.resume``'s arguments, checked against the stored population, before anything
    stored changes: what to change, and how to train it on."""

    record: PopulationRecord  # as read before the changes
    intervals: int | None  # the new budget, if any
    changes: dict[str, Any]  # to the stored configuration (started_at, stop)
    trainable: Any
    exploit: Callable[..., Any] | None  # KEEP: the recorded one
    explore: Callable[..., Any] | None  # None: the recorded one
    ready: Callable[..., Any] | None  # None: the recorded one
    runner: Runner
    resident: int

    def execution(
        self,
        storage: Storage,
        record: PopulationRecord,
        checkpoints: CheckpointStore | None,
        progress: bool,
        trackers: Sequence[Tracker],
    ) -> Execution:
        """Training ``record``, the population as changed for this plan, on; ``checkpoints``
        ``None`` reads them where they were recorded."""
        spec = RunSpec.build(
            PopulationConfig.of(record), self.trainable, self.exploit, self.explore, self.ready
        )
        return Execution(
            storage=storage,
            record=record,
            spec=spec,
            checkpoints=open_checkpoint_store(storage, record, checkpoints),
            runner=self.runner,
            resident=self.resident,
            progress=progress,
            trackers=tuple(trackers),
        )


def prepare_resume(
    result: Result,
    *,
    workers: int,
    trainable: type | None,
    exploit: Callable[..., Any] | None,
    explore: Callable[..., Any] | None,
    ready: Callable[..., Any] | None,
    runner: Runner | None,
    devices: Sequence[str] | None,
    intervals: int | None,
    stop: Stop | Sequence[Stop] | None,
    block: int | None = KEEP,
    checkpoint_every: int | timedelta | None = KEEP,
) -> ResumePlan:
    """Check ``pt.resume``'s arguments (see :func:`poptune.resume`) against the stored
    population and import what it trains with; ``stop`` equal to
    :data:`~poptune.runspec.KEEP` keeps the stored criteria.

    Raises:
        ValueError: if ``intervals`` is less than the population's budget.
        PopulationError: if the population cannot be continued (see
            :func:`~poptune.reconcile.check_continuable`).
    """
    if not isinstance(result, Result):
        raise invalid(
            "result",
            "a population as pt.load gives it",
            result,
            "resume",
            hint="Continue a stored population with pt.load(storage, name).resume() (the "
            "command line's poptune resume NAME).",
        )
    workers = check_int("workers", workers, 1)
    record = result.storage.population(result.name)
    check_continuable(record)
    config = PopulationConfig.of(record)
    if intervals is not None:
        intervals = check_int("intervals", intervals, 1)
        if intervals < config.intervals:
            raise invalid(
                "intervals",
                f"at least the population's budget ({config.intervals}): a budget only grows",
                intervals,
                "resume",
            )
    changes: dict[str, Any] = {"started_at": time.time()}
    if stop is not KEEP:
        changes["stop"] = describe_stop(stop_list(stop, config.metric))
    if block is not KEEP:
        changes["block"] = block
    if checkpoint_every is not KEEP:
        changes["checkpoint_every"] = checkpoint_every
    runner = choose_runner(runner, workers, config.population, devices)
    trainable = trainable if trainable is not None else recorded_trainable(record)
    check_trainable(trainable)
    if "block" in changes:
        changes["block"] = check_block(changes["block"], trainable)
    else:
        check_block(config.block, trainable)
    checked = check_checkpoint_every(
        changes.get("checkpoint_every", config.checkpoint_every),
        changes.get("block", config.block),
        config.sync,
    )
    if "checkpoint_every" in changes:  # stored in its own form: see stored_checkpoint_every
        del changes["checkpoint_every"]
        changes.update(stored_checkpoint_every(checked))
    planned = config.replace(stop=tuple(changes["stop"])) if "stop" in changes else config
    _check_roles(exploit, explore, ready)
    explore = None if explore is KEEP else explore  # RunSpec.build keeps the recorded one
    spec = RunSpec.build(planned, trainable, exploit, explore, ready)  # its strategies import
    warn_every_interval(checked, spec.exploit, spec.ready)
    return ResumePlan(
        record=record,
        intervals=intervals,
        changes=changes,
        trainable=trainable,
        exploit=exploit,
        explore=explore,
        ready=ready,
        runner=runner,
        resident=default_resident(config.population, workers),
    )


def check_checkpoint_every(
    checkpoint_every: Any, block: int | None, sync: Any = False
) -> int | timedelta | None:
    """``checkpoint_every`` checked: ``None`` (a checkpoint after every interval), a positive
    int (intervals) or a positive ``timedelta`` (of a member's training); blocks take neither,
    and a synchronous run takes no duration.

    Raises:
        InvalidParameterError: naming the value and the fix.
    """
    checkpoint_every = checked_checkpoint_every(checkpoint_every)
    if checkpoint_every is None:
        return None
    if block is not None and checkpoint_every != 1:
        raise invalid(
            "checkpoint_every",
            "left out (or 1) with block=",
            checkpoint_every,
            hint="A block checkpoints every member after every interval; leave "
            "checkpoint_every out, or train without block=.",
        )
    if isinstance(checkpoint_every, timedelta) and plain(sync) is True:
        # Which steps a duration checkpoints depends on how fast each interval ran, and with
        # them the donors and the loadable best: a synchronous run would no longer be the same
        # for any number of workers.
        raise invalid(
            "checkpoint_every",
            "an int (intervals) with sync=True, not a duration",
            checkpoint_every,
            hint="A synchronous run checkpoints the same steps on every run; give a number of "
            "intervals (e.g. checkpoint_every=5 with ready=pt.Every(5)), or train with "
            "sync=False.",
        )
    return checkpoint_every


def warn_every_interval(
    checkpoint_every: int | timedelta | None,
    exploit: Callable[..., Any] | None,
    ready: Callable[..., Any] | None,
) -> None:
    """Warn when ``checkpoint_every`` is a duration that cannot save a write: a member
    checkpoints wherever it exploits, and ``pt.Every(1)`` exploits after every interval."""
    if not isinstance(checkpoint_every, timedelta) or exploit is None:
        return
    if isinstance(ready, Every) and ready.period == 1:
        warnings.warn(
            f"checkpoint_every={checkpoint_every!r} with ready={ready!r}: a member is "
            f"checkpointed at every step where it may exploit (a donor must be on disk), here "
            f"every step from {max(ready.burn_in, 1)} on, so the duration saves no write there. "
            "Pass ready=pt.Every(n) to exploit, and so checkpoint, every n intervals.",
            UserWarning,
            stacklevel=4,  # the caller of pt.run / resume
        )


def recorded_trainable(record: PopulationRecord) -> type:
    """Import the trainable by the reference recorded with the population."""
    reference = PopulationConfig.of(record).trainable
    if not reference:
        raise invalid(
            "trainable",
            f"given: population {record.name!r} was made with a trainable that cannot be "
            "imported by reference (defined interactively?)",
            None,
            hint="Pass it: resume(trainable=MyClass) or join(result, trainable=MyClass).",
        )
    return import_object(reference)


def choose_runner(
    runner: Runner | None, workers: int, members: int, devices: Sequence[str] | None
) -> Runner:
    """Where the workers run: the given runner, else this process (one worker, no devices) or
    local worker processes.

    With ``devices`` the workers are processes even for ``workers=1``: CUDA reads
    ``CUDA_VISIBLE_DEVICES`` once, when it initialises, and this process may have done so
    already; a fresh process also leaves the caller's environment untouched.
    """
    if devices is not None:
        if isinstance(runner, RayRunner):
            raise invalid(
                "devices",
                "None with a RayRunner (Ray assigns GPUs to its workers)",
                devices,
                hint="Pass RayRunner(num_gpus=1) to give each worker a GPU.",
            )
        if runner is not None:
            raise invalid(
                "devices",
                "None when 'runner' is given (it applies to the worker processes pt.run starts)",
                devices,
                hint="Give the devices to the runner, e.g. "
                "pt.LocalProcessRunner(2, devices=[...]).",
            )
        return LocalProcessRunner(min(workers, members), devices=devices)
    if runner is not None:
        if inspect.isclass(runner) or not callable(getattr(runner, "run", None)):
            raise invalid(
                "runner",
                "a runner instance, such as pt.LocalProcessRunner(4) or pt.RayRunner()",
                runner,
                hint="Or leave it out: workers=N starts N local processes.",
            )
        return runner
    return InProcessRunner() if workers == 1 else LocalProcessRunner(min(workers, members))


def default_resident(population: int, workers: int) -> int:
    """Each worker's share of the population, plus one for the member that moves between
    workers when one of them is ahead."""
    return min(population, -(-population // workers) + 1)


def _strategies(
    exploit: Any, explore: Any, ready: Any, space: Space
) -> tuple[Callable[..., Any] | None, Callable[..., Any], Callable[..., Any]]:
    """The strategies to train with: the defaults filled in, each checked."""
    if exploit is KEEP:
        exploit = Truncation()
    explore = Perturb() if explore is None or explore is KEEP else explore
    ready = Every() if ready is None else ready
    _check_roles(exploit, explore, ready)
    capabilities.check_space(explore, space)  # e.g. PB2 cannot tune a space of constants
    return exploit, explore, ready


def _check_roles(exploit: Any, explore: Any, ready: Any) -> None:
    """Each strategy given (``None`` and ``KEEP`` are not) is a callable, an instance rather
    than a class, and no built-in strategy of another seat."""
    for role, strategy in (("exploit", exploit), ("explore", explore), ("ready", ready)):
        if strategy is None or strategy is KEEP:
            continue
        check_role(role, strategy)
        if not callable(strategy):
            raise invalid(role, "a strategy such as pt.Truncation() or a callable", strategy)


def _initial(
    space: Space, population: int, seed: int, initial: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """The first hparams of every member: the given ones, then samples from the prior."""
    given = list(initial or [])
    if len(given) > population:
        raise invalid(
            "initial",
            f"at most {population} dicts of hparams (one per member)",
            given,
            hint=f"It has {len(given)}: pass at most {population}, or raise 'population'.",
        )
    start = []
    for index, hparams in enumerate(given):
        if not isinstance(hparams, Mapping):
            raise invalid(f"initial[{index}]", "a dict of hparams", hparams)
        try:
            start.append(space.validate(hparams))
        except ValueError as error:  # Space.validate's InvalidParameterError, said for initial
            raise invalid(
                f"initial[{index}]", "hparams inside the space", dict(hparams), hint=str(error)
            ) from None
    start += [space.sample(initial_rng(seed, i)) for i in range(len(given), population)]
    return start


def _space(space: Any) -> Space:
    if isinstance(space, Space):
        return space
    if not isinstance(space, Mapping):
        raise invalid(
            "space",
            "a dict of hyperparameter name -> distribution "
            "(e.g. {'lr': pt.LogUniform(1e-4, 1e-1)})",
            space,
        )
    return Space(space)
