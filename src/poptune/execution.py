"""Training a stored population: start its workers, show progress and export while they run,
and read how the population ended.

An :class:`Execution` says what one session trains (a stored population, with its live
trainable and strategies), where its checkpoints are and how its workers run; :func:`execute`
carries it out. ``pt.run``, ``pt.resume`` and ``pt.replay`` build one each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._signals import sigterm_interrupts
from .checkpoints import CheckpointStore, population_folder, sweep_orphans
from .errors import PopulationError
from .progress import ProgressWatcher
from .reconcile import check_continuable, reopen
from .records import PopulationRecord, PopulationStatus
from .results import Result
from .runners import Runner
from .runspec import RunSpec, WorkerTarget
from .storage import PopulationNotFound, Storage, command_hint
from .trackers import BackgroundExport, Tracker

__all__ = ["Execution", "execute"]

log = logging.getLogger("poptune")


@dataclass(frozen=True)
class Execution:
    """One session of training a stored population.

    Attributes:
        storage: the storage that holds the population.
        record: the population, as stored when the session starts.
        spec: its configuration with the live trainable and strategies.
        checkpoints: where its checkpoints are.
        runner: where its workers run.
        resident: how many members each worker keeps in memory.
        progress: whether to show a progress display on stderr.
        trackers: where to export the population while it trains.
    """

    storage: Storage
    record: PopulationRecord
    spec: RunSpec
    checkpoints: CheckpointStore
    runner: Runner
    resident: int
    progress: bool = True
    trackers: Sequence[Tracker] = ()


def execute(execution: Execution) -> PopulationRecord:
    """Train the population until its workers stop, and return it as stored then.

    Raises:
        PopulationError: if it cannot be continued, was deleted while it trained, or stopped
            on an error.
        KeyboardInterrupt: on Ctrl-C, once the workers stopped cleanly.
    """
    storage, record, spec = execution.storage, execution.record, execution.spec
    check_continuable(record)
    if record.status is PopulationStatus.ERROR:
        reopen(storage, record)
    lease_seconds = spec.config.lease_seconds
    target = WorkerTarget(
        spec,
        storage.url,
        str(execution.checkpoints.url),
        record.id,
        lease_seconds,
        execution.resident,
    )
    _sweep(storage, record, execution.checkpoints, older_than=2 * lease_seconds)
    with sigterm_interrupts():  # SIGTERM (SLURM, Kubernetes, timeout) stops as Ctrl-C does
        _run_watched(execution, target)
    final = _ended(storage, record)
    sweep_finished(storage, final, execution.checkpoints)
    return final


def _sweep(
    storage: Storage, record: PopulationRecord, checkpoints: CheckpointStore, older_than: float
) -> None:
    """Delete the files in the population's own folder that no committed checkpoint names
    (left by killed workers) and that are older than ``older_than`` seconds."""
    committed = {ref.path for ref in storage.checkpoints(record.id)}
    database = storage.database_id()
    assert database is not None  # created on first use
    folder = population_folder(database, record.id)
    swept = sweep_orphans(checkpoints, folder, committed, older_than=older_than)
    if swept:
        log.info("Deleted %d orphan checkpoint file(s) left by killed workers.", len(swept))


def sweep_finished(
    storage: Storage, record: PopulationRecord, checkpoints: CheckpointStore
) -> None:
    """Once the population finished, delete the files of its folder that nothing committed:
    no member can be held any more, so no live worker is writing one (a worker killed before
    it committed its checkpoint left them; the start of a run only takes those older than two
    leases, and a resume right after the kill starts inside that window)."""
    if record.status is PopulationStatus.FINISHED:
        _sweep(storage, record, checkpoints, older_than=0.0)


def _run_watched(execution: Execution, target: WorkerTarget) -> None:
    """Run the workers, with the progress display and the trackers' export beside them."""
    storage, record, config = execution.storage, execution.record, execution.spec.config

    def poll() -> Any:
        return storage.summary(record.id, config.intervals, config.mode)

    watcher = ProgressWatcher(
        record.name,
        config.metric,
        poll,
        enabled=execution.progress,
        exploits=lambda: storage.exploits(record.id),
    )
    exporter = BackgroundExport(Result(storage, record, None), execution.trackers)

    def started() -> None:
        watcher.start()
        if execution.trackers:
            exporter.start()

    try:
        # The display and the exporter start once workers are running: forking a threaded
        # process is unsafe.
        execution.runner.run(target, storage, execution.checkpoints, on_started=started)
    except KeyboardInterrupt:
        watcher.stop()
        log.warning(
            "Interrupted: population %r stopped cleanly; continue it with "
            "`%s` or pt.load(...).resume().",
            record.name,
            command_hint("resume", record.name, storage.url),
        )
        raise
    finally:
        watcher.stop()
        exporter.stop()  # exports what the workers recorded last


def _ended(storage: Storage, record: PopulationRecord) -> PopulationRecord:
    """The population as its workers left it; an error if it stopped on one."""
    try:
        final = storage.population(record.name)
    except PopulationNotFound:
        raise PopulationError(
            f"Population {record.name!r} was deleted from the storage while it trained "
            "(poptune delete, or pt.delete): its workers stopped."
        ) from None
    if final.status is PopulationStatus.ERROR:
        raise PopulationError(f"Population {record.name!r} stopped: {final.error}")
    if final.status is PopulationStatus.STOPPED:
        log.warning("Population %r stopped before its budget: %s.", record.name, final.error)
    return final
