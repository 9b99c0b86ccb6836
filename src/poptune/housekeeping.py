"""A worker's housekeeping, on two threads of its own, off the per-interval path.

- ``poptune-lease`` renews the leases of the members the worker holds (a third of a lease apart).
- ``poptune-gc`` collects garbage now and then (dropped checkpoint rows) and deletes the files
  that nothing refers to any more: those the collection dropped, and those the worker queued
  (a damaged checkpoint, one written under a lease that was lost).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence

from .checkpoints import CheckpointStore, UnsafeCheckpointPath, confined
from .records import CheckpointRef, Mode
from .storage import Claim, LeaseLost, Storage

__all__ = ["GC_MIN_SECONDS", "GC_SPACING", "Housekeeper"]

log = logging.getLogger("poptune")

# Garbage collection runs at most once per GC_SPACING times its last duration, and at least
# GC_MIN_SECONDS apart (see Housekeeper._collect_now_and_then).
GC_SPACING = 20.0
GC_MIN_SECONDS = 1.0


class Housekeeper:
    """The lease and garbage-collection threads of one worker (:meth:`start`, :meth:`stop`).

    ``held`` is the worker's own map of the members it holds (read, never changed, here);
    ``folders`` are the population's checkpoint folders, the only place files are deleted from.
    """

    def __init__(
        self,
        storage: Storage,
        checkpoints: CheckpointStore,
        population_id: int,
        mode: Mode,
        folders: Sequence[str],
        lease_seconds: float,
        held: Mapping[int, Claim],
    ) -> None:
        self.storage = storage
        self.checkpoints = checkpoints
        self.population_id = population_id
        self.mode = mode
        self.folders = folders
        self.lease_seconds = lease_seconds
        self._held = held
        #: whether :meth:`start` runs the two threads; off, the caller runs their passes itself
        #: (:meth:`renew_leases`, :meth:`tidy`): the simulator (:mod:`poptune.simulation`)
        #: schedules them on its own thread so that a run is the same for the same seed.
        self.threaded = True
        self._closed = threading.Event()
        self._doomed: queue.SimpleQueue[CheckpointRef | None] = queue.SimpleQueue()
        self._recorded_since_gc = threading.Event()
        self._deleter: threading.Thread | None = None

    def start(self) -> None:
        """Start renewing leases and collecting garbage (nothing, unless :attr:`threaded`)."""
        if not self.threaded:
            return
        heartbeat = threading.Thread(target=self._heartbeat, name="poptune-lease", daemon=True)
        heartbeat.start()
        # Garbage collection and deleting files are housekeeping: off the per-interval path.
        self._deleter = threading.Thread(
            target=self._collect_now_and_then, name="poptune-gc", daemon=True
        )
        self._deleter.start()

    def stop(self) -> None:
        """Stop renewing leases; run a last collection, delete the queued files, and return
        once that is done."""
        self._closed.set()
        if not self.threaded:
            self.tidy(final=True)
            return
        self._doomed.put(None)
        if self._deleter is not None:
            self._deleter.join()

    def recorded(self) -> None:
        """Note that an interval was recorded: the next collection is due once spaced enough."""
        self._recorded_since_gc.set()

    def delete(self, ref: CheckpointRef) -> None:
        """Queue the file of ``ref``, which nothing refers to (or may copy) any more."""
        self._doomed.put(ref)

    def delete_if_unrecorded(self, checkpoint: CheckpointRef) -> None:
        """Queue ``checkpoint``'s file if the storage does not refer to it (written, never
        committed); if the storage cannot say, the file is kept for the orphan sweep."""
        try:
            found = self.storage.checkpoint(self.population_id, checkpoint.member, checkpoint.step)
        except Exception:
            return
        if found is None or found.path != checkpoint.path:
            self._doomed.put(checkpoint)

    def renew_leases(self) -> None:
        """Renew the lease of every member held: one beat of ``poptune-lease``."""
        for claim in list(self._held.values()):
            try:
                self.storage.renew(claim, self.lease_seconds)
            except LeaseLost:
                pass
            except Exception:
                log.debug("Lease renewal failed", exc_info=True)

    def tidy(self, final: bool = False) -> None:
        """Delete the queued files, then collect garbage if intervals were recorded since the
        last collection (always when ``final``): one pass of ``poptune-gc``, unspaced, in the
        caller's thread (for a housekeeper that is not :attr:`threaded`)."""
        while True:
            try:
                ref = self._doomed.get_nowait()
            except queue.Empty:
                break
            if ref is not None:
                self._delete_file(ref)
        if final or self._recorded_since_gc.is_set():
            self._collect(final)

    def _collect_now_and_then(self) -> None:
        """Collect garbage now and then, and delete the files nothing refers to any more.

        Collecting reads the whole population, so it is kept off the per-interval path and
        amortised: it runs once intervals were recorded since the last time, and at most once
        per ``GC_SPACING`` times its own last duration (at least ``GC_MIN_SECONDS`` apart), so
        it costs at most a few percent of a worker's time whatever the population's size. A
        last collection runs when the worker stops.
        """
        last_started, last_took = 0.0, 0.0
        while True:
            try:
                ref = self._doomed.get(timeout=GC_MIN_SECONDS)
            except queue.Empty:  # nothing to delete: time to see whether to collect
                pass
            else:
                if ref is None:
                    self._collect(final=True)
                    return
                self._delete_file(ref)
            due = max(GC_MIN_SECONDS, GC_SPACING * last_took)
            if self._recorded_since_gc.is_set() and time.monotonic() - last_started >= due:
                last_started = time.monotonic()
                self._collect(final=False)
                last_took = time.monotonic() - last_started

    def _collect(self, final: bool) -> None:
        """One garbage collection; the dropped checkpoints' files are deleted right away."""
        self._recorded_since_gc.clear()
        try:
            refs = self.storage.collect_garbage(self.population_id, self.mode)
        except Exception:  # housekeeping: the next collection (or worker) catches up
            log.debug("Garbage collection failed", exc_info=True)
            return
        for ref in refs:  # rows already gone: nothing can reach these files any more
            self._delete_file(ref)
        if final:
            while True:  # files queued meanwhile
                try:
                    queued = self._doomed.get_nowait()
                except queue.Empty:
                    break
                if queued is not None:
                    self._delete_file(queued)

    def _delete_file(self, ref: CheckpointRef) -> None:
        try:
            confined(ref.path, self.folders)
            self.checkpoints.delete(ref)
        except UnsafeCheckpointPath as error:  # not a file of this population: left alone
            log.warning("%s", error)
        except OSError:  # an orphan file is harmless: nothing refers to it any more
            log.debug("Could not delete checkpoint %s", ref.path, exc_info=True)

    def _heartbeat(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while not self._closed.wait(interval):
            self.renew_leases()
