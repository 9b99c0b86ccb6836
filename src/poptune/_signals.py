"""SIGTERM stops training as Ctrl-C does.

SLURM's preemption, Kubernetes, systemd and ``timeout`` ask a process to end with SIGTERM,
whose default action ends it at once: a worker would die holding its member until the lease
ran out, and the run would print nothing about how to continue it. While poptune trains, it
turns SIGTERM into the ``KeyboardInterrupt`` of Ctrl-C, so the same clean stop follows: each
worker releases its member, the run says how to resume it, and nothing recorded is lost.

This module imports nothing of poptune's, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["sigterm_interrupts"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread.

    Only where it can and where nobody else decided: on the main thread (Python runs signal
    handlers there only), and while SIGTERM has its default action (a handler of the user's,
    or of a framework such as Ray, is left as it is). The previous action comes back after.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
