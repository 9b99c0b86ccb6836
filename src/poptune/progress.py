"""Progress of a running population: a live line on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from .records import ExploitEvent
from .storage import Summary

__all__ = ["ProgressWatcher", "format_summary"]


def format_summary(name: str, metric: str, summary: Summary, elapsed: float) -> str:
    """One line: steps done, best score, exploits, failures, elapsed time."""
    best = (
        "no score yet"
        if summary.best_score is None
        else f"best {metric} {summary.best_score:.4g} (member {summary.best_member})"
    )
    failed = f" · {summary.failed} failed" if summary.failed else ""
    recovered = f" · {summary.recoveries} recovered" if summary.recoveries else ""
    return (
        f"{name}: {summary.steps_done}/{summary.steps_total} intervals · {summary.done}/"
        f"{summary.members} members done · {best} · {summary.exploits} exploits{failed}"
        f"{recovered} · {elapsed:.1f}s"
    )


def _score(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ProgressWatcher:
    """Polls a population's summary in a background thread and shows it.

    On a terminal it draws a live progress bar (rich); otherwise it writes a plain line at every
    tenth of the budget and at least every ``log_every`` seconds.
    """

    def __init__(
        self,
        name: str,
        metric: str,
        poll: Callable[[], Summary],
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 0.5,
        log_every: float = 30.0,
        exploits: Callable[[], Sequence[ExploitEvent]] | None = None,
    ) -> None:
        self.name = name
        self.metric = metric
        self._poll = poll
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.log_every = log_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._exploits = exploits
        self._shown = 0

    def __enter__(self) -> ProgressWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start showing progress (no-op when disabled)."""
        self._started = time.monotonic()
        if not self.enabled:
            return
        before = self._summary()  # copies recorded before this run (resumed) are not news
        self._shown = 0 if before is None else before.exploits + before.recoveries
        target = self._run_live if self._live else self._run_plain
        self._thread = threading.Thread(target=target, name="poptune-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and print the final state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _summary(self) -> Summary | None:
        try:
            return self._poll()
        except Exception:  # a progress display must never break a run
            return None

    def _new_exploits(self, summary: Summary) -> list[str]:
        """Lines for copies (exploits and recoveries) recorded since the last call (at most 5,
        then a count)."""
        if self._exploits is None or summary.exploits + summary.recoveries <= self._shown:
            return []
        try:
            events = list(self._exploits())[self._shown :]
        except Exception:
            return []
        self._shown += len(events)
        lines = [
            f"{e.reason.value}: member {e.member} (step {e.step}, {self.metric} "
            f"{_score(e.score)}) "
            f"copied member {e.donor} (step {e.donor_step}, {_score(e.donor_score)}); "
            + ", ".join(f"{k}={_score(v)}" for k, v in e.hparams_after.items())
            for e in events[:5]
        ]
        if len(events) > 5:
            lines.append(f"... and {len(events) - 5} more copies")
        return lines

    def _run_plain(self) -> None:
        last_tenth, last_time = -1, 0.0
        printed: Summary | None = None  # the state the last line showed
        while True:
            stopping = self._stop.wait(self.interval)
            summary = self._summary()
            if summary is not None:
                for line in self._new_exploits(summary):
                    print(f"{self.name}: {line}", file=self.stream, flush=True)
                tenth = 10 * summary.steps_done // max(summary.steps_total, 1)
                now = time.monotonic()
                final = stopping and summary != printed  # the end, unless just shown
                if final or tenth > last_tenth or now - last_time >= self.log_every:
                    printed = summary
                    elapsed = now - self._started
                    print(
                        format_summary(self.name, self.metric, summary, elapsed),
                        file=self.stream,
                        flush=True,
                    )
                    last_tenth, last_time = tenth, now
            if stopping:
                return

    def _run_live(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        console = Console(file=self.stream)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} intervals"),
            TextColumn("{task.fields[info]}"),
            TextColumn("{task.fields[elapsed]}"),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(self.name, total=None, info="starting", elapsed="")
            while True:
                stopping = self._stop.wait(self.interval)
                summary = self._summary()
                if summary is not None:
                    for line in self._new_exploits(summary):
                        progress.console.print(f"[dim]{line}[/dim]", highlight=False)
                    best = (
                        "—"
                        if summary.best_score is None
                        else f"{summary.best_score:.4g} (#{summary.best_member})"
                    )
                    failed = f" · [red]{summary.failed} failed[/red]" if summary.failed else ""
                    info = (
                        f"best {self.metric} {best} · {summary.exploits} exploits · "
                        f"{summary.running} running{failed}"
                    )
                    progress.update(
                        task,
                        completed=summary.steps_done,
                        total=summary.steps_total,
                        info=info,
                        elapsed=f"{time.monotonic() - self._started:.0f}s",
                    )
                if stopping:
                    return
