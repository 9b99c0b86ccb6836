"""The public front of poptune: train a population (:func:`run`), continue it
(:func:`resume`), read it (:func:`load`), replay its schedule (:func:`replay`), join it with one
more worker (:func:`join`) or delete it (:func:`delete`).

Each is a few calls into the modules that do the work: :mod:`poptune.preparation` checks the
arguments, :mod:`poptune.reconcile` squares them with what the storage holds,
:mod:`poptune.locations` finds the checkpoints, :mod:`poptune.execution` runs the workers and
:mod:`poptune.deletion` deletes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from ._signals import sigterm_interrupts
from ._validation import check_int, check_population_name, check_str
from .blocks import build_worker, check_block
from .checkpoints import CheckpointStore, open_checkpoints
from .config import PopulationConfig
from .deletion import check_deletable as check_deletable
from .deletion import delete_population
from .execution import Execution, execute, sweep_finished
from .locations import checkpoints_location as checkpoints_location
from .locations import open_checkpoint_store
from .preparation import prepare_resume, prepare_run, recorded_trainable
from .reconcile import check_continuable, continue_stored, reconcile, reconcile_replay
from .report import build_model, plot, write_report
from .results import Result
from .runners import InProcessRunner, Runner
from .runspec import KEEP, RunSpec, WorkerTarget
from .space import Space
from .storage import PopulationNotFound, Storage, open_storage
from .strategies.stop import Stop
from .trackers import Tracker, check_trackers
from .trainable import check_trainable

__all__ = ["Population", "delete", "join", "load", "replay", "resume", "run"]

#: The default of a strategy argument: for pt.run the built-in default strategy, for resume the
#: recorded one.
_DEFAULT: Any = KEEP

_EXPLORE_NONE = (
    "explore=None means the default pt.Perturb(); leave it out instead (a future version may "
    "read None as 'no explore')"
)
_EXPLORE_NONE_KEEPS = (
    "explore=None keeps the population's recorded explore; leave it out instead (a future "
    "version may read None as 'no explore')"
)


class Population(Result):
    """A stored population's results, and what more can be done with it: resume it, report it.

    ``pt.run``, ``pt.load``, ``pt.resume`` and ``pt.replay`` return one. Reading it (every
    :class:`~poptune.results.Result` method) needs the storage only; :meth:`resume` imports the
    trainable, as training does.

    Example:
        >>> population = pt.load("sqlite:///runs/poptune.db", "digits")
        >>> population.report("digits.html")
        PosixPath('digits.html')
    """

    def report(self, path: str | Path) -> Path:
        """Write a self-contained HTML report (scores, hparams, lineage tree, schedule)."""
        return write_report(self, path)

    def plot(self, kind: str, path: str | Path) -> Path:
        """Save one static figure (``scores``, ``hparams`` or ``lineage``); needs matplotlib."""
        return plot(build_model(self), kind, path)

    def resume(self, workers: int = 1, **options: Any) -> Population:
        """Continue the population to its full budget; see :func:`poptune.resume`."""
        return resume(self, workers=workers, **options)


def run(
    trainable: type | Callable[..., Any],
    space: Mapping[str, Any] | Space,
    metric: str,
    mode: str = "max",
    population: int = 8,
    intervals: int = 10,
    workers: int = 1,
    exploit: Callable[..., Any] | None = _DEFAULT,
    explore: Callable[..., Any] | None = _DEFAULT,
    ready: Callable[..., Any] | None = None,
    name: str | None = None,
    storage: str | Storage | None = None,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
    seed: int | None = None,
    sync: bool = False,
    progress: bool = True,
    runner: Runner | None = None,
    initial: Sequence[Mapping[str, Any]] | None = None,
    max_failures: int = 2,
    lease_seconds: float = 30.0,
    devices: Sequence[str] | None = None,
    resident: int | None = None,
    stop: Stop | Sequence[Stop] | None = None,
    trackers: Sequence[Tracker] | None = None,
    block: int | None = None,
    checkpoint_every: int | timedelta | None = None,
) -> Population:
    """Train a population with Population Based Training and return its results.

    Args:
        trainable: a class implementing :class:`poptune.Trainable`, or a training function
            ``def train(ctx)`` that loops over ``ctx.intervals()`` (see :mod:`poptune.loop`).
        space: hyperparameter name -> distribution (``pt.Uniform``...) or a fixed value.
        metric: the key of ``evaluate()``'s dict to optimise (any name if it returns a number).
        mode: ``"max"`` or ``"min"``: whether higher or lower scores are better.
        population: number of members (at least 2).
        intervals: budget: how many intervals every member trains.
        workers: 1 trains in this process; N > 1 starts N local worker processes.
        exploit: ``pt.Truncation(0.2)`` by default, ``pt.Tournament()``, any callable, or
            ``None`` for independent training (random search with the same budget).
        explore: ``pt.Perturb()`` by default, ``pt.Resample()``, ``pt.PB2()`` (a GP bandit on
            the population's recent improvements), or any callable. (``None`` also means the
            default, deprecated: leave it out.)
        ready: ``pt.Every(1)`` by default, or any callable.
        name: the population's name in the storage (default: the trainable's name). If it
            exists with the same configuration, the run continues it to the full budget.
        storage: a SQLAlchemy URL; default ``$POPTUNE_STORAGE`` or ``sqlite:///runs/poptune.db``.
        checkpoints: a folder for checkpoints; default ``checkpoints/`` next to the SQLite file.
        seed: seeds every random decision and each member's trainable; random if ``None``.
        sync: train in generations (every member finishes interval k before any exploits at k);
            with a fixed seed the result is identical for any number of workers.
        progress: show a progress display on stderr.
        runner: where workers run; overrides ``workers``.
        initial: hyperparameters for the first members (e.g. a grid); the rest are sampled.
        max_failures: how many times in a row a member whose ``train``/``evaluate`` raised is
            retried from its last checkpoint before it is re-seeded from a healthy member.
        lease_seconds: how long a worker's claim on a member lasts without a heartbeat; a
            member of a worker that died is trained again after this long.
        devices: GPUs for the local workers, e.g. ``["cuda:0", "cuda:1"]`` (each ``"cuda:N"``
            or ``"cpu"``): worker ``i`` sees only ``devices[i % len(devices)]``, as ``cuda:0``,
            and finds its device in ``$POPTUNE_DEVICE``. Workers then always run in worker
            processes, also with ``workers=1``; this process's environment is left as it is.
            Do not initialise CUDA here before the run. See docs/gpus.md.
        resident: how many members each worker keeps in memory (their trainables, weights
            included) between intervals; default: its share of the population plus one. A
            member a worker holds continues without rebuild or reload; lower it when memory is
            short (1 keeps only the member in training).
        stop: stop before the budget: ``pt.Target(score)``, ``pt.Plateau(patience)``,
            ``pt.WallClock(seconds)``, any callable taking a :class:`poptune.strategies.Progress`
            and returning a reason (or ``None``), or a list of them (the first that gives a
            reason stops the population: its status becomes ``stopped``, with the reason).
        trackers: where to export the population while it trains, e.g.
            ``[pt.TensorBoard("runs/tb"), pt.MLflow("sqlite:///runs/mlflow.db")]``: a thread
            beside the workers exports what the storage holds, and the rest once they stop. A
            failing tracker is a warning, never a stopped run. See docs/trackers.md.
        block: train up to this many members in one call of a training function (``def
            train(ctx)`` over ``ctx.members``, see :mod:`poptune.loop` and docs/blocks.md):
            each worker claims a block of members at once and the function trains them
            together (stacked weights, ``vmap``). Recorded with the population, so ``resume``
            and ``poptune worker`` train it in blocks too. ``None`` (default): one member
            per call. A Trainable class cannot train blocks.
        checkpoint_every: for states so large that writing them costs training time,
            checkpoint a member less often than after every interval (``None``, the default,
            like 1). A worker then trains a member on under one claim, in memory, and records
            the scores of those intervals with the checkpoint that follows them (never before:
            a crash loses no recorded score). Either a number of intervals, ``k``: at the
            steps that are multiples of k; exploits happen only there, so choose
            ``ready=pt.Every(k)`` (or a multiple). Or a ``datetime.timedelta`` of a member's
            training (its train and evaluate, wall time, measured by the worker): at the first
            interval boundary at which that much has passed since its last checkpoint, and at
            every step where it is ready to exploit (``ready=pt.Every(n)`` sets how often:
            with the default ``pt.Every(1)`` that is every step, and a warning says so);
            exploits happen where they would without ``checkpoint_every``. Both also at the
            budget and when a worker stops. What they guarantee: a crash loses at most ``k``
            intervals, or that duration plus one interval, of a member's training; a donor is
            always a committed checkpoint (or handed over from memory by the worker holding
            it) when it is copied; leases, ``resume`` and ``poptune worker`` work as before.
            Recorded with the population (``resume`` may change it). Not with ``block``; a
            duration not with ``sync=True`` (which steps it checkpoints depends on timing).
            See docs/overhead.md.

    Raises:
        ValueError / TypeError: for invalid arguments, naming the parameter and the value.
        PopulationError: if the population stopped on an error (e.g. every member failed).

    Example:
        >>> result = pt.run(Digits, space={"lr": pt.LogUniform(1e-3, 0.5)},
        ...                 metric="accuracy", population=4, intervals=5, workers=2)
        >>> result.status, len(result.intervals())
        ('finished', 20)
    """
    if explore is None:
        warnings.warn(_EXPLORE_NONE, DeprecationWarning, stacklevel=2)
    plan = prepare_run(
        trainable,
        space,
        metric,
        mode=mode,
        population=population,
        intervals=intervals,
        workers=workers,
        exploit=exploit,
        explore=explore,
        ready=ready,
        name=name,
        seed=seed,
        sync=sync,
        runner=runner,
        initial=initial,
        max_failures=max_failures,
        lease_seconds=lease_seconds,
        devices=devices,
        resident=resident,
        stop=stop,
        trackers=trackers,
        block=block,
        checkpoint_every=checkpoint_every,
    )
    storage = open_storage(storage)
    record = reconcile(storage, plan.name, plan.config, plan.start, checkpoints)
    return _train(plan.execution(storage, record, checkpoints, progress))


def load(
    storage: str | Storage | None,
    name: str,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
) -> Population:
    """Open a stored population's results (finished, running, or interrupted).

    ``checkpoints`` says where this machine finds the population's checkpoints when they are
    not where they were recorded (a folder given to ``pt.run`` that moved, or is mounted
    elsewhere here); the default folder next to a SQLite file moves with it by itself.

    Reading never imports the population's training code; only training it on (``resume``)
    and :meth:`~poptune.results.Best.load` do. A storage URL is opened for reading: nothing is
    created or upgraded (see :func:`poptune.open_storage`); pass an opened storage
    (``pt.open_storage(url, mode="write")``) to upgrade an older one on the way.

    Raises:
        PopulationNotFound: if there is no population called ``name`` (the message lists them).
    """
    name = check_str("name", name, "load")  # before the storage is opened
    storage = open_storage(storage, mode="read")
    record = storage.population(name)
    return Population(storage, record, open_checkpoint_store(storage, record, checkpoints))


def resume(
    result: Result,
    workers: int = 1,
    progress: bool = True,
    trainable: type | None = None,
    exploit: Callable[..., Any] | None = _DEFAULT,
    explore: Callable[..., Any] | None = _DEFAULT,
    ready: Callable[..., Any] | None = None,
    runner: Runner | None = None,
    devices: Sequence[str] | None = None,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
    intervals: int | None = None,
    stop: Stop | Sequence[Stop] | None = _DEFAULT,
    trackers: Sequence[Tracker] | None = None,
    block: int | None = _DEFAULT,
    checkpoint_every: int | timedelta | None = _DEFAULT,
) -> Population:
    """Continue a stored population to its full budget with its stored configuration.

    Failed members get another try from their last checkpoint. Strategies given here replace
    the recorded ones (``exploit=None``: none, i.e. random search); strategies that were plain
    callables without an import reference must be passed again. ``devices`` gives the workers
    GPUs as in :func:`run`. ``checkpoints`` says where the checkpoints are now, if not where
    ``result`` found them (see :func:`load`). ``intervals`` gives the population (finished or
    not) a larger budget: its members train on from where they are, to that many intervals.
    ``stop`` replaces the stored stop criteria (``None`` or ``[]``: none); by default they are
    kept (a wall-clock limit counts from this call). ``trackers`` export while it trains, as
    in :func:`run`. ``block`` replaces the recorded block size (see :func:`run`; ``None``:
    one member per call); by default it is kept, and so is ``checkpoint_every`` (see
    :func:`run`: intervals or a ``timedelta``; ``None``: a checkpoint after every interval).

    Raises:
        ValueError: if ``intervals`` is less than the population's budget.
    """
    if explore is None:
        warnings.warn(_EXPLORE_NONE_KEEPS, DeprecationWarning, stacklevel=2)
    plan = prepare_resume(
        result,
        workers=workers,
        trainable=trainable,
        exploit=exploit,
        explore=explore,
        ready=ready,
        runner=runner,
        devices=devices,
        intervals=intervals,
        stop=stop,
        block=block,
        checkpoint_every=checkpoint_every,
    )
    exporters = check_trackers(trackers)
    given = open_checkpoints(checkpoints) if checkpoints is not None else result.checkpoint_store
    # Everything is checked and imported: only now change what is stored (a resume that fails
    # before this point, e.g. on a training script that is gone, leaves the population as it was).
    record = continue_stored(result.storage, plan.record, plan.intervals, plan.changes)
    return _train(plan.execution(result.storage, record, given, progress, exporters))


def replay(
    storage: str | Storage | None,
    name: str,
    member: int | None = None,
    replay_name: str | None = None,
    trainable: type | Callable[..., Any] | None = None,
    progress: bool = True,
) -> Population:
    """Train one fresh model following a population's winning schedule, without copying weights.

    The model starts from fresh weights (the trainable's own initialisation, seeded by the
    population's seed) and trains interval ``t`` with the hyperparameters the winning lineage
    (of ``member``, default the best) used at its ``t``-th interval. It is stored as its own
    population, ``replay_name`` (default ``"<name>-replay"``), so ``status``, the report and
    :func:`load` show it; running it again continues it.

    Raises:
        PopulationNotFound: if there is no population called ``name``.
        ValueError: if the population has no trained lineage to replay yet.
    """
    source = load(open_storage(storage, mode="write"), name)  # the replay is stored beside it
    entries = source.schedule(member)
    if not entries:
        raise ValueError(
            f"Population {name!r} has no trained lineage to replay yet: train it first."
        )
    stored = source.config
    trainable = trainable if trainable is not None else recorded_trainable(source.record)
    check_trainable(trainable)
    storage = source.storage
    target = check_population_name(
        "replay_name", f"{name}-replay" if replay_name is None else replay_name
    )
    schedule = tuple(dict(entry.hparams) for entry in entries)
    config = stored.replace(
        population=1,
        intervals=len(entries),
        exploit=None,
        sync=False,
        initial=(schedule[0],),
        stop=(),
        schedule=schedule,
        replay_of={"population": name, "member": entries[-1].member},
        block=None if stored.block is None else 1,  # a block's function replays a block of one
    )
    record = reconcile_replay(storage, target, config, [schedule[0]])
    execution = Execution(
        storage=storage,
        record=record,
        spec=RunSpec.build(PopulationConfig.of(record), trainable),
        checkpoints=open_checkpoint_store(storage, record),
        runner=InProcessRunner(),
        resident=1,
        progress=progress,
    )
    return _train(execution)


def join(
    result: Result,
    checkpoints: str | os.PathLike[str] | None = None,
    trainable: type | None = None,
    resident: int | None = None,
    block: int | None = None,
) -> int:
    """Run one worker on a stored population in this process until the budget is spent.

    This is what ``poptune worker`` runs on every machine that joins. ``resident`` bounds the
    members it keeps in memory (default: the whole population); ``block`` is how many members
    it trains per call of a training function (default: the population's recorded block, see
    :func:`run`). Returns the number of intervals this worker trained.
    """
    if resident is not None:
        resident = check_int("resident", resident, 1)
    record = result.storage.population(result.name)
    check_continuable(record)
    config = PopulationConfig.of(record)
    trainable = trainable if trainable is not None else recorded_trainable(record)
    check_trainable(trainable)
    if block is not None:  # this worker's own: the recorded one is left as it is
        config = config.replace(block=check_block(block, trainable))
    else:
        check_block(config.block, trainable)
    checkpoint_store = open_checkpoint_store(result.storage, record, checkpoints)
    spec = RunSpec.build(config, trainable)
    target = WorkerTarget(
        spec,
        result.storage.url,
        str(checkpoint_store.url),
        record.id,
        config.lease_seconds,
        resident,
    )
    with sigterm_interrupts():  # SIGTERM (SLURM, Kubernetes, timeout) stops as Ctrl-C does
        trained = build_worker(target, result.storage, checkpoint_store).run()
    with contextlib.suppress(PopulationNotFound):  # deleted meanwhile: nothing of it to keep
        sweep_finished(result.storage, result.storage.population(result.name), checkpoint_store)
    return trained


def delete(
    storage: str | Storage | None,
    name: str,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
) -> None:
    """Delete a stored population: its records and its checkpoint files (found where they
    were recorded, or at ``checkpoints``). There is no undo.

    Only files the population can be proven to own are deleted: those its checkpoint rows
    name, inside its folder, and those in its own folder, which names this database
    (see :func:`poptune.checkpoints.population_folder`). A neighbouring database's files in
    the same checkpoint folder are never touched.

    Raises:
        PopulationNotFound: if there is no population called ``name`` (the message lists them).
        PopulationError: if it is being trained (a worker holds a member, or recorded an
            interval within two leases): stop its workers first. Nothing is deleted then.
    """
    name = check_str("name", name, "delete")  # before the storage is opened
    storage = open_storage(storage, mode="write")
    delete_population(storage, storage.population(name), checkpoints)


def _train(execution: Execution) -> Population:
    """Carry out ``execution`` and return the population's results."""
    final = execute(execution)
    return Population(execution.storage, final, execution.checkpoints, execution.spec.trainable)
