"""The progress display: plain lines when not on a terminal."""

from __future__ import annotations

import io
import time

from poptune.progress import ProgressWatcher, format_summary
from poptune.records import PopulationStatus
from poptune.storage import Summary


def summary(done: int) -> Summary:
    return Summary(
        members=4,
        steps_done=done,
        steps_total=40,
        running=2,
        done=0,
        failed=1,
        exploits=3,
        failures=1,
        best_member=2,
        best_score=0.75,
        status=PopulationStatus.RUNNING,
    )


def test_format_summary_has_what_a_person_needs():
    line = format_summary("digits", "accuracy", summary(12), 3.2)
    for part in (
        "digits",
        "12/40 intervals",
        "best accuracy 0.75 (member 2)",
        "3 exploits",
        "1 failed",
        "3.2s",
    ):
        assert part in line


def test_plain_lines_at_every_tenth_and_at_the_end():
    stream = io.StringIO()
    done = iter(range(0, 41, 2))
    state = {"done": 0}

    def poll() -> Summary:
        state["done"] = min(next(done, 40), 40)
        return summary(state["done"])

    watcher = ProgressWatcher("p", "q", poll, stream=stream, interval=0.001, log_every=1e9)
    watcher.start()
    deadline = time.monotonic() + 30
    while state["done"] < 40 and time.monotonic() < deadline:
        time.sleep(0.001)
    watcher.stop()
    lines = stream.getvalue().splitlines()
    assert 5 <= len(lines) <= 13  # about one per tenth, plus the final line
    assert "40/40 intervals" in lines[-1]
    assert sum("40/40 intervals" in line for line in lines) == 1  # the last line once


def test_disabled_watcher_prints_nothing():
    stream = io.StringIO()
    with ProgressWatcher("p", "q", lambda: summary(1), enabled=False, stream=stream):
        pass
    assert stream.getvalue() == ""


def test_exploits_are_shown_as_they_happen():
    from poptune.records import ExploitEvent

    events = [
        ExploitEvent(3, 4, 1, 4, {"lr": 0.1}, {"lr": 0.12}, 0.5, 0.9, 1.0),
        ExploitEvent(2, 4, 1, 4, {"lr": 0.2}, {"lr": 0.08}, 0.6, 0.9, 2.0),
    ]
    shown = {"n": -1}  # the first poll (at start) sees no exploit yet

    def poll() -> Summary:
        shown["n"] = min(shown["n"] + 1, 2)
        return Summary(
            members=4,
            steps_done=4 * shown["n"],
            steps_total=8,
            running=0,
            done=0,
            failed=0,
            exploits=shown["n"],
            failures=0,
            best_member=1,
            best_score=0.9,
            status=PopulationStatus.RUNNING,
        )

    stream = io.StringIO()
    watcher = ProgressWatcher(
        "p", "acc", poll, stream=stream, interval=0.01, exploits=lambda: events[: shown["n"]]
    )
    watcher.start()
    deadline = time.monotonic() + 30
    while shown["n"] < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    watcher.stop()
    text = stream.getvalue()
    assert "member 3 (step 4, acc 0.5) copied member 1 (step 4, 0.9); lr=0.12" in text
    assert text.count("copied member 1") == 2  # each exploit once


def test_a_resumed_population_does_not_reprint_its_old_exploits():
    from poptune.records import ExploitEvent

    old = [ExploitEvent(m, 4, 1, 4, {"lr": 0.1}, {"lr": 0.12}, 0.5, 0.9, 1.0) for m in (2, 3)]
    new = ExploitEvent(0, 6, 1, 6, {"lr": 0.1}, {"lr": 0.07}, 0.5, 0.9, 9.0)
    events = list(old)

    def poll() -> Summary:
        return Summary(4, 24, 40, 4, 0, 0, len(events), 0, 1, 0.9, PopulationStatus.RUNNING)

    stream = io.StringIO()
    watcher = ProgressWatcher(
        "p", "acc", poll, stream=stream, interval=0.01, exploits=lambda: events
    )
    watcher.start()  # the two exploits of the earlier run are recorded already
    events.append(new)
    time.sleep(0.2)
    watcher.stop()
    text = stream.getvalue()
    assert "member 0 (step 6" in text and "copied member 1" in text
    assert "member 2 (step 4" not in text and "member 3 (step 4" not in text
