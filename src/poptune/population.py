"""One PBT run: validate the user's input, store the population, start workers, return results."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from ._imports import import_object, reference_of
from ._validation import check_int, check_name, invalid
from .checkpoints import (
    CheckpointStore,
    UnsafeCheckpointPath,
    confined,
    open_checkpoints,
    population_folder,
    population_folders,
    sweep_orphans,
)
from .config import PopulationConfig
from .progress import ProgressWatcher
from .records import CheckpointRef, PopulationRecord, PopulationStatus
from .report import build_model, plot, write_report
from .results import Result
from .runners import InProcessRunner, LocalProcessRunner, RayRunner, Runner, WorkerTarget
from .space import Space
from .storage import (
    PopulationBusy,
    PopulationExists,
    PopulationNotFound,
    Storage,
    open_storage,
    redact_url,
    storage_option,
)
from .strategies import Every, Perturb, Truncation, describe
from .strategies import _capabilities as capabilities
from .strategies.stop import Stop, describe_stop, stop_list
from .trackers import BackgroundExport, Tracker, check_trackers
from .trainable import check_trainable
from .worker import KEEP, PopulationError, RunSpec, Worker, initial_rng

__all__ = ["Population", "delete", "join", "load", "replay", "resume", "run"]

log = logging.getLogger("poptune")

_DEFAULT: Any = KEEP


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
    explore: Callable[..., Any] | None = None,
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
            the population's recent improvements), or any callable.
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
        stop: stop before the budget: ``pt.Target(score)``, ``pt.Plateau(intervals)``,
            ``pt.WallClock(seconds)``, any callable taking a :class:`poptune.strategies.Progress`
            and returning a reason (or ``None``), or a list of them (the first that gives a
            reason stops the population: its status becomes ``stopped``, with the reason).
        trackers: where to export the population while it trains, e.g.
            ``[pt.TensorBoard("runs/tb"), pt.MLflow("sqlite:///runs/mlflow.db")]``: a thread
            beside the workers exports what the storage holds, and the rest once they stop. A
            failing tracker is a warning, never a stopped run. See docs/trackers.md.

    Raises:
        ValueError / TypeError: for invalid arguments, naming the parameter and the value.
        PopulationError: if the population stopped on an error (e.g. every member failed).

    Example:
        >>> result = pt.run(Digits, space={"lr": pt.LogUniform(1e-3, 0.5)},
        ...                 metric="accuracy", population=4, intervals=5, workers=2)
        >>> result.status, len(result.intervals())
        ('finished', 20)
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
    runner = _runner(runner, workers, population, devices)
    trackers = check_trackers(trackers)
    if exploit is _DEFAULT:
        exploit = Truncation()
    explore = Perturb() if explore is None else explore
    ready = Every() if ready is None else ready
    for role, strategy in (("exploit", exploit), ("explore", explore), ("ready", ready)):
        if strategy is not None and not callable(strategy):
            raise TypeError(
                f"The '{role}' parameter must be a strategy such as pt.Truncation() or a "
                f"callable. Got {strategy!r}."
            )
    capabilities.check_space(explore, space)  # e.g. PB2 cannot tune a space of constants
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    seed = check_int("seed", seed, 0)
    name = check_name("name", trainable.__name__ if name is None else name)
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
    )
    start = _initial(space, population, seed, initial)
    if initial is not None:
        config = config.replace(initial=start)
    store = open_storage(storage)
    try:
        record = store.population(name)
    except PopulationNotFound:
        record = None
    differences = _differences(record, config) if record is not None else []
    if record is not None and differences and _never_trained(store, record):
        log.warning(
            "Population %r in %s never recorded an interval (status %s), and this run has "
            "another configuration (%s): replacing it.",
            name,
            redact_url(store.url),
            record.status.value,
            "; ".join(differences),
        )
        _delete(store, record)
        record = None
    if record is None:
        config = config.replace(checkpoints=_checkpoints_url(store, checkpoints))
        try:
            record = store.create_population(name, config.to_dict(), start)
        except PopulationExists:  # an identical run started at the same time created it
            record = store.population(name)
            _check_same(record, config, store)
    else:
        _check_same(record, config, store)
        store.update_config(
            record.id, {"stop": [dict(d) for d in config.stop], "started_at": started_at}
        )
        log.warning(
            "Population %r already exists in %s with this configuration; continuing it%s. "
            "Pass another name for a fresh run.",
            name,
            redact_url(store.url),
            " (it is finished: nothing to train)"
            if record.status is PopulationStatus.FINISHED
            else "",
        )
        record = store.population(name)
    spec = RunSpec(
        config=PopulationConfig.of(record),
        trainable=trainable,
        exploit=exploit,
        explore=explore,
        ready=ready,
        stop=tuple(criteria),
    )
    resident = resident if resident is not None else _default_resident(population, workers)
    return _execute(store, record, spec, progress, runner, checkpoints, resident, trackers)


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
    store = open_storage(storage, mode="read")
    record = store.population(name)
    location = checkpoints if checkpoints is not None else checkpoints_location(store, record)
    return Population(store, record, open_checkpoints(location))


def resume(
    result: Result,
    workers: int = 1,
    progress: bool = True,
    trainable: type | None = None,
    exploit: Callable[..., Any] | None = _DEFAULT,
    explore: Callable[..., Any] | None = None,
    ready: Callable[..., Any] | None = None,
    runner: Runner | None = None,
    devices: Sequence[str] | None = None,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
    intervals: int | None = None,
    stop: Stop | Sequence[Stop] | None = _DEFAULT,
    trackers: Sequence[Tracker] | None = None,
) -> Population:
    """Continue a stored population to its full budget with its stored configuration.

    Failed members get another try from their last checkpoint. Strategies that were plain
    callables without an import reference must be passed again. ``devices`` gives the workers
    GPUs as in :func:`run`. ``checkpoints`` says where the checkpoints are now, if not where
    ``result`` found them (see :func:`load`). ``intervals`` gives the population (finished or
    not) a larger budget: its members train on from where they are, to that many intervals.
    ``stop`` replaces the stored stop criteria (``None`` or ``[]``: none); by default they are
    kept (a wall-clock limit counts from this call). ``trackers`` export while it trains, as
    in :func:`run`.

    Raises:
        ValueError: if ``intervals`` is less than the population's budget.
    """
    workers = check_int("workers", workers, 1)
    store = result.storage
    record = store.population(result.name)
    _check_continuable(record)
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
    if stop is not _DEFAULT:
        changes["stop"] = describe_stop(stop_list(stop, config.metric))
    runner = _runner(runner, workers, config.population, devices)
    trainable = trainable if trainable is not None else _recorded_trainable(record)
    check_trainable(trainable)
    planned = config.replace(stop=tuple(changes["stop"])) if "stop" in changes else config
    RunSpec.build(planned, trainable, exploit, explore, ready)  # its strategies import, too
    # Everything is checked and imported: only now change what is stored (a resume that fails
    # before this point, e.g. on a training script that is gone, leaves the population as it was).
    if intervals is not None:
        store.extend(record.id, intervals)
    store.update_config(record.id, changes)
    record = store.population(result.name)
    config = PopulationConfig.of(record)
    spec = RunSpec.build(config, trainable, exploit, explore, ready)
    _reopen(store, record)
    return _execute(
        store,
        store.population(record.name),
        spec,
        progress,
        runner,
        open_checkpoints(checkpoints) if checkpoints is not None else result.checkpoint_store,
        _default_resident(config.population, workers),
        check_trackers(trackers),
    )


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
    trainable = trainable if trainable is not None else _recorded_trainable(source.record)
    check_trainable(trainable)
    store = source.storage
    target = replay_name or f"{name}-replay"
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
    )
    try:
        record = store.population(target)
    except PopulationNotFound:
        try:
            record = store.create_population(target, config.to_dict(), [schedule[0]])
        except PopulationExists:
            record = store.population(target)
    recorded = PopulationConfig.of(record)
    if recorded.schedule != config.schedule:
        raise ValueError(
            f"A population named {target!r} already exists in {redact_url(store.url)} and is "
            f"not a replay of this schedule. Pass replay_name= another name."
        )
    spec = RunSpec.build(recorded, trainable)
    return _execute(store, record, spec, progress, InProcessRunner(), None, 1)


def join(
    result: Result,
    checkpoints: str | os.PathLike[str] | None = None,
    trainable: type | None = None,
    resident: int | None = None,
) -> int:
    """Run one worker on a stored population in this process until the budget is spent.

    This is what ``poptune worker`` runs on every machine that joins. ``resident`` bounds the
    members it keeps in memory (default: the whole population). Returns the number of
    intervals this worker trained.
    """
    if resident is not None:
        resident = check_int("resident", resident, 1)
    record = result.storage.population(result.name)
    _check_continuable(record)
    config = PopulationConfig.of(record)
    trainable = trainable if trainable is not None else _recorded_trainable(record)
    check_trainable(trainable)
    store = open_checkpoints(
        checkpoints if checkpoints is not None else checkpoints_location(result.storage, record)
    )
    spec = RunSpec.build(config, trainable)
    target = WorkerTarget(
        spec, result.storage.url, str(store.url), record.id, config.lease_seconds, resident
    )
    return Worker.from_target(target, result.storage, store).run()


def _check_continuable(record: PopulationRecord) -> None:
    """Refuse to train a population recorded when ``step`` meant something else and whose
    rows the upgrade could not rewrite exactly (see docs/upgrades.md)."""
    why = PopulationConfig.of(record).legacy_steps
    if why:
        reason = f" ({why})" if isinstance(why, str) else ""
        raise PopulationError(
            f"Population {record.name!r} was recorded by an older poptune, whose steps counted "
            "the intervals a member trained itself rather than the intervals behind its weights, "
            f"and its records cannot be rewritten to the new meaning exactly{reason}. It can "
            "still be read (status, report, pt.load), but not continued: training it on would "
            "mix the two meanings. Start a new population (another name) instead."
        )


def _recorded_trainable(record: PopulationRecord) -> type:
    """Import the trainable by the reference recorded with the population."""
    reference = PopulationConfig.of(record).trainable
    if not reference:
        raise ValueError(
            f"Population {record.name!r} was made with a trainable that cannot be imported by "
            "reference (defined interactively?). Pass it: resume(trainable=MyClass) or "
            "join(result, trainable=MyClass)."
        )
    return import_object(reference)


def _execute(
    store: Storage,
    record: PopulationRecord,
    spec: RunSpec,
    progress: bool,
    runner: Runner,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None,
    resident: int,
    trackers: Sequence[Tracker] = (),
) -> Population:
    checkpoint_store = (
        checkpoints
        if checkpoints is not None and not isinstance(checkpoints, str | os.PathLike)
        else open_checkpoints(checkpoints_location(store, record))
    )
    _check_continuable(record)
    if record.status is PopulationStatus.ERROR:
        _reopen(store, record)
    lease_seconds = spec.config.lease_seconds
    target = WorkerTarget(
        spec, store.url, str(checkpoint_store.url), record.id, lease_seconds, resident
    )
    committed = {ref.path for ref in store.checkpoints(record.id)}
    database = store.database_id()
    assert database is not None  # created on first use
    folder = population_folder(database, record.id)
    swept = sweep_orphans(checkpoint_store, folder, committed, older_than=2 * lease_seconds)
    if swept:
        log.info("Deleted %d orphan checkpoint file(s) left by killed workers.", len(swept))

    def poll() -> Any:
        return store.summary(record.id, spec.config.intervals, spec.config.mode)

    watcher = ProgressWatcher(
        record.name,
        spec.config.metric,
        poll,
        enabled=progress,
        exploits=lambda: store.exploits(record.id),
    )
    exporter = BackgroundExport(Result(store, record, None), trackers)

    def started() -> None:
        watcher.start()
        if trackers:
            exporter.start()

    try:
        # The display and the exporter start once workers are running: forking a threaded
        # process is unsafe.
        runner.run(target, store, checkpoint_store, on_started=started)
    except KeyboardInterrupt:
        watcher.stop()
        log.warning(
            "Interrupted: population %r stopped cleanly; continue it with "
            "`poptune resume %s%s` or pt.load(...).resume().",
            record.name,
            record.name,
            storage_option(store.url),
        )
        raise
    finally:
        watcher.stop()
        exporter.stop()  # exports what the workers recorded last
    try:
        final = store.population(record.name)
    except PopulationNotFound:
        raise PopulationError(
            f"Population {record.name!r} was deleted from the storage while it trained "
            "(poptune delete, or pt.delete): its workers stopped."
        ) from None
    if final.status is PopulationStatus.ERROR:
        raise PopulationError(f"Population {record.name!r} stopped: {final.error}")
    if final.status is PopulationStatus.STOPPED:
        log.warning("Population %r stopped before its budget: %s.", record.name, final.error)
    return Population(store, final, checkpoint_store, spec.trainable)


def _runner(
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
            raise ValueError(
                "The 'devices' parameter cannot be used with a RayRunner: Ray assigns GPUs to "
                f"its workers. Pass RayRunner(num_gpus=1) instead. Got devices={devices!r}."
            )
        if runner is not None:
            raise ValueError(
                "The 'devices' parameter applies to the worker processes pt.run starts; with "
                "runner= give the devices to the runner, e.g. "
                f"pt.LocalProcessRunner(2, devices=[...]). Got devices={devices!r}."
            )
        return LocalProcessRunner(min(workers, members), devices=devices)
    if runner is not None:
        return runner
    return InProcessRunner() if workers == 1 else LocalProcessRunner(min(workers, members))


def _default_resident(population: int, workers: int) -> int:
    """Each worker's share of the population, plus one for the member that moves between
    workers when one of them is ahead."""
    return min(population, -(-population // workers) + 1)


def _expire_dead_local_claims(store: Storage, record: PopulationRecord) -> None:
    """Free members held by workers of this machine whose process is gone (killed, crashed),
    instead of waiting for their leases to run out. Workers elsewhere are left to their leases."""
    host = socket.gethostname()
    dead = set()
    for owner in store.claims(record.id).values():
        owner_host, _, rest = (owner or "").partition(":")
        pid_text = rest.partition(":")[0]
        if owner_host == host and pid_text.isdigit() and not _alive(int(pid_text)):
            dead.add(owner)
    if dead and store.release_claims(record.id, sorted(dead)):
        log.warning("Took back members held by %d dead worker(s) of this machine.", len(dead))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker whose parent died too may linger as a zombie nobody reaps
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _reopen(store: Storage, record: PopulationRecord) -> None:
    """Give failed members another try and mark the population running again."""
    _expire_dead_local_claims(store, record)
    store.reopen_members(record.id, PopulationConfig.of(record).intervals)
    if record.status is not PopulationStatus.RUNNING:
        store.set_status(record.id, PopulationStatus.RUNNING, None)


def _differences(record: PopulationRecord, config: PopulationConfig) -> list[str]:
    """Where ``config`` and the stored configuration disagree on the algorithm."""
    return PopulationConfig.of(record).differences(config)


def _check_same(record: PopulationRecord, config: PopulationConfig, store: Storage) -> None:
    differing = _differences(record, config)
    if differing:
        option = storage_option(store.url)
        raise PopulationExists(
            f"A population named {record.name!r} already exists in {redact_url(store.url)} with a "
            f"different configuration ({'; '.join(differing)}). Choose another name, continue "
            f"the stored one with pt.load(storage, {record.name!r}).resume() / `poptune resume "
            f"{record.name}{option}`, or delete it with `poptune delete {record.name}{option}`."
        )


def _never_trained(store: Storage, record: PopulationRecord) -> bool:
    """Whether the population has nothing worth keeping: no interval recorded, and no worker
    (alive) training one."""
    _expire_dead_local_claims(store, record)
    return not store.intervals(record.id) and not store.claims(record.id)


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
    store = open_storage(storage, mode="write")
    record = store.population(name)
    _delete(store, record, checkpoints)


def check_deletable(store: Storage, record: PopulationRecord) -> None:
    """Raise :class:`PopulationError` if :func:`delete` would refuse ``record`` now (it is
    being trained), deleting nothing: the CLI checks before it asks for confirmation."""
    _delete_rows(store, record, check_only=True)


def _delete_rows(
    store: Storage, record: PopulationRecord, check_only: bool = False
) -> list[CheckpointRef]:
    _expire_dead_local_claims(store, record)
    quiet = 2 * PopulationConfig.of(record).lease_seconds
    try:
        return store.delete_population(record.id, quiet_seconds=quiet, check_only=check_only)
    except PopulationBusy as busy:
        raise PopulationError(f"Population {record.name!r} cannot be deleted: {busy}.") from None


def _delete(
    store: Storage,
    record: PopulationRecord,
    checkpoints: str | os.PathLike[str] | CheckpointStore | None = None,
) -> None:
    """Delete the population's rows unless it is being trained (checked in the same
    transaction), then the files it owns (nothing refers to them any more)."""
    refs = _delete_rows(store, record)
    if checkpoints is None and not PopulationConfig.of(record).checkpoints:
        return
    if checkpoints is None:
        checkpoints = checkpoints_location(store, record)
    files = open_checkpoints(checkpoints)
    database = store.database_id(create=False)
    folders = population_folders(database, record.id)
    paths = set()
    for ref in refs:
        try:
            paths.add(confined(ref.path, folders))
        except UnsafeCheckpointPath as error:
            log.warning("%s", error)
    if database is not None:  # its own folder: every file there is the population's
        paths |= set(files.files(population_folder(database, record.id)))
    for path in sorted(paths):
        try:
            files.remove(path)
        except UnsafeCheckpointPath as error:  # a symbolic link out of the folder
            log.warning("%s", error)
    files.close()


def _checkpoints_url(
    store: Storage, checkpoints: str | os.PathLike[str] | CheckpointStore | None
) -> str:
    if checkpoints is not None:
        if isinstance(checkpoints, str) and "://" in checkpoints:
            open_checkpoints(checkpoints)  # fail now, clearly, if the scheme is not installed
            return checkpoints
        if isinstance(checkpoints, str | os.PathLike):
            folder = Path(os.fspath(checkpoints)).expanduser().resolve()
            database = _sqlite_folder(store.url)
            if database is not None and folder.is_relative_to(database):
                return folder.relative_to(database).as_posix()  # moves with the database
            return str(folder)
        return str(checkpoints.url)
    if _sqlite_folder(store.url) is not None:
        return "checkpoints"  # next to the database file, wherever it moves
    folder = Path(os.environ.get("POPTUNE_CHECKPOINTS") or "runs/checkpoints").resolve()
    log.warning(
        "Checkpoints go to %s (pass checkpoints= or set $POPTUNE_CHECKPOINTS). Workers on other "
        "machines need to reach this folder at the same path.",
        folder,
    )
    return str(folder)


def _sqlite_folder(url: str) -> Path | None:
    """The folder of a SQLite database file, or ``None`` for other storages."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(parsed.database).expanduser().resolve().parent
    return None


def checkpoints_location(store: Storage, record: PopulationRecord) -> str:
    """Where the population's checkpoints are, as recorded: an absolute folder or URL, or a
    folder relative to the SQLite database file (the default), which moves with it."""
    recorded = str(PopulationConfig.of(record).checkpoints)
    folder = _sqlite_folder(store.url)
    if "://" in recorded or Path(recorded).is_absolute() or folder is None:
        return recorded
    return str(folder / recorded)


def _initial(
    space: Space, population: int, seed: int, initial: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """The first hparams of every member: the given ones, then samples from the prior."""
    given = list(initial or [])
    if len(given) > population:
        raise ValueError(
            f"The 'initial' parameter has {len(given)} entries but the population has only "
            f"{population} members. Pass at most {population}, or raise 'population'."
        )
    start = []
    for index, hparams in enumerate(given):
        if not isinstance(hparams, Mapping):
            raise TypeError(f"initial[{index}] must be a dict of hparams. Got {hparams!r}.")
        try:
            start.append(space.validate(hparams))
        except ValueError as error:
            raise ValueError(f"initial[{index}] is not in the space: {error}") from None
    start += [space.sample(initial_rng(seed, i)) for i in range(len(given), population)]
    return start


def _space(space: Any) -> Space:
    if isinstance(space, Space):
        return space
    if not isinstance(space, Mapping):
        raise TypeError(
            f"The 'space' parameter must be a dict of hyperparameter name -> distribution "
            f"(e.g. {{'lr': pt.LogUniform(1e-4, 1e-1)}}). Got {type(space).__name__}."
        )
    return Space(space)
