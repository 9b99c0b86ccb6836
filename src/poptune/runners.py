"""Runners start workers: in this process, or as local processes.

Every runner runs the same worker loop (:func:`~poptune.blocks.build_worker`); they differ only
in where.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ._net import unreachable
from ._signals import sigterm_interrupts
from ._text import printable
from ._validation import check_float, check_int
from .blocks import build_worker
from .checkpoints import open_checkpoints
from .devices import (
    CUDA_VISIBLE_DEVICES,
    apply_environment,
    cuda_initialised,
    device_environment,
    idle_devices,
    parse_devices,
)
from .handover import sweep_segments
from .records import PopulationStatus
from .runspec import WorkerTarget
from .storage import PopulationNotFound, Storage, check_shareable, command_hint, open_storage
from .worker import PopulationError

__all__ = ["InProcessRunner", "LocalProcessRunner", "RayRunner", "Runner", "WorkerTarget"]

log = logging.getLogger("poptune")


def _nothing() -> None:
    pass


def run_target(target: WorkerTarget, stop: Any = None, shared_memory: bool = False) -> int:
    """Open the storage and checkpoints named by ``target`` and run one worker on them (the body
    of a worker process or a Ray actor). Returns the intervals it trained. With
    ``shared_memory``, large checkpoints in a local folder are handed over through shared
    memory (see :mod:`poptune.handover`)."""
    storage = open_storage(target.storage_url, mode="write")
    try:
        checkpoints = open_checkpoints(target.checkpoints_url, shared_memory=shared_memory)
        worker = build_worker(target, storage, checkpoints)
        return worker.run(stop)
    finally:
        storage.close()


class Runner(Protocol):
    """Starts workers on a population and returns when they have all stopped."""

    def run(
        self,
        target: WorkerTarget,
        storage: Any,
        checkpoints: Any,
        on_started: Callable[[], None] = _nothing,
    ) -> None:
        """Run workers until the budget is spent, re-raising Ctrl-C after a clean stop.

        ``on_started`` is called once the workers are running (to start a progress display).
        """
        ...


class InProcessRunner:
    """One worker in the calling thread: no subprocess, friendly to notebooks and debuggers."""

    def run(
        self,
        target: WorkerTarget,
        storage: Any,
        checkpoints: Any,
        on_started: Callable[[], None] = _nothing,
    ) -> None:
        """Run one worker here until the budget is spent."""
        on_started()
        build_worker(target, storage, checkpoints).run()


def _worker_main(
    target: WorkerTarget, stop: Any, environment: Mapping[str, str], shared_memory: bool = False
) -> None:
    """Entry point of a worker process: set its environment (its device), then run a worker
    (handing large checkpoints to the other workers through ``shared_memory``)."""
    # First of all: CUDA reads CUDA_VISIBLE_DEVICES once, when user code initialises it.
    apply_environment(environment)
    # A child that sees Ctrl-C (the terminal sends it to the whole process group) releases its
    # member and exits quietly; one that does not stops after its interval when ``stop`` is set.
    try:
        with sigterm_interrupts():  # SIGTERM to the group (SLURM, timeout): as Ctrl-C
            run_target(target, stop, shared_memory=shared_memory)
    except KeyboardInterrupt:
        sys.exit(130)
    except PopulationError as error:
        log.error("%s", error)
        sys.exit(3)


class LocalProcessRunner:
    """``workers`` local processes, each running the worker loop on the shared storage.

        Processes are forked on Linux (fast start, the trainable class is inherited) and spawned
        elsewhere (the trainable must then be importable, e.g. defined at module level).

    With ``POPTUNE_SHARED_MEMORY=1`` (Linux, two workers or more), each hands the large
        checkpoints (16 MB and more) it saves in a local folder to the others through shared memory
        (``/dev/shm``), so that an exploit of a donor saved by another worker does not read its file
        (see :mod:`poptune.handover`; off by default, as it did not pay in the large-state
        benchmark). The segments left by a killed worker are removed when the run ends, or when the
        population runs again.

        ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) gives worker ``i`` the device
        ``devices[i % len(devices)]``: its process sees only that GPU, as ``cuda:0``, and finds its
        name in ``$POPTUNE_DEVICE`` (see :mod:`poptune.devices`). The environment is set when the
        process starts, before the worker loop builds a trainable; a spawned process imports the
        trainable's module before that, so module-level code must not initialise CUDA (importing
        torch is fine).

        Example:
            >>> runner = pt.LocalProcessRunner(4, devices=["cuda:0", "cuda:1"])
    """

    def __init__(
        self,
        workers: int,
        start_method: str | None = None,
        devices: Sequence[str] | None = None,
    ) -> None:
        self.workers = check_int("workers", workers, 1, owner="LocalProcessRunner")
        if start_method is None:
            start_method = "fork" if sys.platform.startswith("linux") else "spawn"
        self.start_method = start_method
        self.devices = None if devices is None else parse_devices(devices)
        self._environments()  # a device this process cannot see is refused now, not in a child
        if self.devices is not None and (idle := idle_devices(self.devices, workers)):
            log.warning(
                "With %d worker process(es), device(s) %s stay idle. Pass workers=%d for one "
                "worker per device.",
                workers,
                ", ".join(idle),
                len(self.devices),
            )

    def _environments(self) -> list[dict[str, str]]:
        """The environment each worker process sets at its start (its device, if any)."""
        if self.devices is None:
            return [{} for _ in range(self.workers)]
        visible = os.environ.get(CUDA_VISIBLE_DEVICES)
        return [device_environment(self.devices, i, visible) for i in range(self.workers)]

    def run(
        self,
        target: WorkerTarget,
        storage: Any,
        checkpoints: Any,
        on_started: Callable[[], None] = _nothing,
    ) -> None:
        """Start the processes and wait for them; on Ctrl-C stop them cleanly and re-raise."""
        if self.devices is not None and self.start_method == "fork" and cuda_initialised():
            raise RuntimeError(
                "CUDA is already initialised in this process, so worker processes forked from it "
                "cannot use their devices. Build models and tensors on the GPU inside the "
                "trainable, not before pt.run; or start spawned workers with "
                "runner=pt.LocalProcessRunner(workers, start_method='spawn', devices=[...]) "
                "(the trainable must then be importable)."
            )
        check_shareable(target.storage_url)
        environments = self._environments()
        context: Any = multiprocessing.get_context(self.start_method)
        stop = context.Event()
        database = storage.database_id(create=False)
        sweep_segments(database, target.population_id)  # of workers killed in an earlier run
        # Never carry open database connections into a child.
        storage.close()
        processes = [
            context.Process(
                target=_worker_main,
                # Every worker runs on this machine: with two or more, large donors go from
                # one to another through shared memory.
                args=(target, stop, environment, self.workers > 1),
                name=f"poptune-worker-{index}",
                daemon=False,
            )
            for index, environment in enumerate(environments)
        ]
        for process in processes:
            process.start()
        on_started()
        try:
            for process in processes:
                process.join()
        except KeyboardInterrupt:
            stop.set()
            deadline = time.monotonic() + target.lease_seconds  # one wait for all, not each
            for process in processes:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
            for process in processes:
                if process.is_alive():
                    process.terminate()
                    process.join()
            raise
        finally:
            if not any(process.is_alive() for process in processes):
                sweep_segments(database, target.population_id)  # of workers that were killed
        failed = [p for p in processes if p.exitcode not in (0, 3)]
        if failed:
            _check_budget(target, storage, ", ".join(f"{p.name}: {p.exitcode}" for p in failed))


def _check_budget(target: WorkerTarget, storage: Storage, codes: str) -> None:
    """After worker processes exited abnormally (``codes``: killed, out of memory, a crash):
    a warning if the population ended all the same (another worker took their members over),
    else :class:`PopulationError` with the command that continues it, so that a script (SLURM,
    CI) does not take a run that stopped half-way for a finished one."""
    config = target.spec.config
    try:
        summary = storage.summary(target.population_id, config.intervals, config.mode)
    except PopulationNotFound:  # deleted meanwhile: execute says so
        return
    if summary.status is not PopulationStatus.RUNNING:
        log.warning("Worker processes exited abnormally (%s).", codes)
        return
    name = next(
        (r.name for r in storage.populations() if r.id == target.population_id), "the population"
    )
    raise PopulationError(
        f"Worker processes exited abnormally ({codes}: killed, out of memory?) before "
        f"population {name!r} reached its budget ({summary.steps_done}/{summary.steps_total} "
        f"intervals). Nothing recorded is lost: continue it with "
        f"`{command_hint('resume', name, storage.url)}`."
    )


#: A cluster's address as ``host:port`` (``[v6]:port``), as ``ray start`` prints it: not
#: ``auto``, ``local`` or a ``ray://`` client address, which Ray resolves itself.
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]{1,5})")

#: How long :func:`_check_answers` waits for a cluster's head to accept a connection.
CONNECT_SECONDS = 10.0


def _check_answers(address: str | None) -> None:
    """Raise ``ConnectionError`` unless the head of the Ray cluster at ``address`` (``host:port``)
    accepts a connection: ``ray.init`` retries an address where nothing answers for minutes,
    printing a warning every few seconds, before it gives up."""
    match = _HOST_PORT.fullmatch(address or "")
    if match is None:
        return
    host, port = match["host"].strip("[]"), int(match["port"])
    reason = unreachable(host, port, CONNECT_SECONDS)
    if reason is not None:
        raise ConnectionError(
            f"RayRunner: no Ray cluster answers at {printable(address, limit=None)} "
            f"({reason}). Start one there (`ray start --head "
            f"--port={port}`), or pass the address `ray start` printed (address='auto' joins "
            "the cluster started on this machine)."
        )


class _RayWorker:
    """The body of one Ray actor: the ordinary worker loop against the shared storage."""

    def __init__(self, target: WorkerTarget) -> None:
        self.target = target

    def run(self) -> int:
        return run_target(self.target)


class RayRunner:
    """Workers as Ray actors on an existing Ray cluster (extra ``ray``).

    Each actor asks Ray for ``num_cpus`` and ``num_gpus``, so GPU clusters place one worker per
    GPU; the actors share the population through its storage like any other workers (use
    PostgreSQL and a shared folder or object store when the cluster has several machines).
    An actor that dies (its process killed, its node lost) is restarted by Ray and runs the
    worker loop again, up to ``max_restarts`` times each; the member it was training returns
    to the population when its lease expires.

    Example:
        >>> runner = pt.RayRunner(address="auto", workers=8, num_gpus=1)
    """

    def __init__(
        self,
        address: str | None = "auto",
        workers: int = 2,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        runtime_env: dict[str, Any] | None = None,
        max_restarts: int = 3,
    ) -> None:
        self.address = address
        self.workers = check_int("workers", workers, 1, owner="RayRunner")
        self.num_cpus = check_float("num_cpus", num_cpus, 0.0, owner="RayRunner")
        self.num_gpus = check_float("num_gpus", num_gpus, 0.0, owner="RayRunner")
        self.runtime_env = runtime_env
        self.max_restarts = check_int("max_restarts", max_restarts, 0, owner="RayRunner")

    def run(
        self,
        target: WorkerTarget,
        storage: Any,
        checkpoints: Any,
        on_started: Callable[[], None] = _nothing,
    ) -> None:
        """Start the actors, wait for them, and shut them down on Ctrl-C.

        Raises:
            ConnectionError: if ``address`` is a ``host:port`` where no Ray cluster answers.
        """
        check_shareable(target.storage_url)
        try:
            import ray
        except ImportError:
            raise ImportError("RayRunner needs Ray: pip install 'poptune[ray]'.") from None
        started_here = not ray.is_initialized()
        if started_here:
            _check_answers(self.address)
            ray.init(
                address=self.address,
                runtime_env=self.runtime_env,
                log_to_driver=False,
                configure_logging=False,
            )
        # A dead actor (its process or node lost) is restarted and its worker loop run again,
        # up to max_restarts times per actor: the loop only claims from the storage, so a
        # rerun continues where the population is (the lost member returns when its lease
        # expires).
        actor: Any = ray.remote(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts,
        )(_RayWorker)
        actors: list[Any] = [actor.remote(target) for _ in range(self.workers)]
        try:
            runs = [a.run.remote() for a in actors]
            on_started()
            ray.get(runs)
        except KeyboardInterrupt:
            for a in actors:
                ray.kill(a)  # their members come back when the leases expire
            raise
        finally:
            if started_here:
                ray.shutdown()
