"""Checkpoint writing off the training path: one background thread per worker.

While a member's checkpoint is written and its interval recorded, the worker trains the next
member. At most one job waits behind the running one, so memory holds at most two states being
written. The member being written stays claimed until its job records it, so nobody (this
worker included) trains it, or copies an incomplete checkpoint of it, meanwhile.

An exception raised by a job (a full disk, a storage that went away) is re-raised in the
worker's loop by :meth:`BackgroundWriter.check`, and the writer runs no job after it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]


#: States at least this large (their arrays and tensors) are checkpointed on the
#: background writer while the next interval trains; smaller ones are written in line, which
#: costs less than handing them to a thread that must share the interpreter with training.
#: ``$POPTUNE_BACKGROUND_BYTES`` overrides it (0: always in the background).
BACKGROUND_BYTES = 16 * 2**20


class BackgroundWriter:
    """Runs jobs one at a time, in order, on a daemon thread.

    Example:
        >>> writer = BackgroundWriter()
        >>> writer.submit(lambda: None)
        >>> writer.close()          # waits for the queued jobs, then re-raises their error
        True
    """

    def __init__(self, name: str = "poptune-writer") -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; blocks while another job is already waiting."""
        self.check()
        self._jobs.put(job)

    def flush(self) -> None:
        """Wait until every queued job has run; re-raise the first error of one.

        Called from a job itself (on the writer's thread), it returns at once: there is
        nothing before that job to wait for.
        """
        if threading.current_thread() is not self._thread:
            self._jobs.join()
        self.check()

    def idle(self) -> bool:
        """Whether no job is running or waiting."""
        return self._jobs.unfinished_tasks == 0

    def check(self) -> None:
        """Re-raise the error of a job that failed, if any."""
        if self._error is not None:
            raise self._error

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, stop the thread, and re-raise a job's error.

        With ``timeout`` (seconds), give up waiting after that long and return ``False``: the
        daemon thread is left to finish or die with the process.
        """
        if self._thread.is_alive():
            try:
                self._jobs.put(None, timeout=timeout)
            except queue.Full:
                return False
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        self.check()
        return True

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as error:  # handed to the loop, which decides
                self._error = error
            finally:
                self._jobs.task_done()
