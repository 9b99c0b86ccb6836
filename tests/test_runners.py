"""Runners: in-process and local processes; Ctrl-C stops cleanly and resume finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import poptune as pt
from poptune.records import MemberStatus
from tests._helpers import wait_for_intervals

SCRIPT = textwrap.dedent(
    """
    import sys
    import poptune as pt
    from poptune.testing import SlowQuadratic, quadratic_space
    try:
        pt.run(SlowQuadratic, space=quadratic_space(), metric="q", population=6, intervals=30,
               workers=int(sys.argv[2]), storage=sys.argv[1], name="cut", seed=0,
               progress=False)
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path: Path, workers: int):
    url = f"sqlite:///{tmp_path / 'poptune.db'}"
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, url, str(workers)],
        start_new_session=True,  # its own process group, like a job in a terminal
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_for_intervals(process, url, "cut", 12)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert process.wait(timeout=60) == 130
    interrupted = pt.load(url, "cut")
    assert interrupted.status == "running"
    members = interrupted.members
    assert not any(m.status is MemberStatus.RUNNING for m in members), "claims were released"
    assert sum(m.step for m in members) < 6 * 30
    recorded = {(i.member, i.step) for i in interrupted.intervals()}

    result = interrupted.resume(workers=workers, progress=False)
    assert result.status == "finished"
    assert [m.step for m in result.members] == [30] * 6
    intervals = result.intervals()
    assert len(intervals) == 6 * 30  # no step lost, none counted twice
    assert recorded <= {(i.member, i.step) for i in intervals}


@pytest.mark.parametrize("group", [True, False])
def test_sigterm_stops_cleanly_as_ctrl_c_does(tmp_path: Path, group: bool):
    """SLURM's preemption and ``timeout`` send SIGTERM to the job's process group, Kubernetes to
    its main process: the run died at once, its members held until their leases ran out, with
    no word on how to continue it."""
    url = f"sqlite:///{tmp_path / 'poptune.db'}"
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, url, "2"],
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_intervals(process, url, "cut", 12)
    if group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopped cleanly; continue it with `poptune resume cut" in stderr
    members = pt.load(url, "cut").members
    assert not any(m.status is MemberStatus.RUNNING for m in members), "claims were released"
    assert sum(m.step for m in members) < 6 * 30


def test_cli_resume_after_interrupt(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'poptune.db'}"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, url, "2"], start_new_session=True)
    wait_for_intervals(process, url, "cut", 12)
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "poptune.cli",
            "resume",
            "cut",
            "--storage",
            url,
            "--workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "finished" in out.stdout
    assert [m.step for m in pt.load(url, "cut").members] == [30] * 6
