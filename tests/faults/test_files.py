"""Bad files: damaged checkpoints are never trained on; a full disk is reported clearly."""

from __future__ import annotations

import errno
import io
import logging
from pathlib import Path

import pytest

import poptune as pt
from poptune import checkpoints
from poptune.runners import InProcessRunner
from poptune.worker import Worker


class DamageAfter(InProcessRunner):
    """Trains ``before`` intervals, damages member 0's latest checkpoint, then finishes."""

    def __init__(self, before: int, damage: str) -> None:
        self.before = before
        self.damage = damage
        self.damaged: pt.CheckpointRef | None = None

    def run(self, target, storage, checkpoints, on_started=lambda: None):
        worker = Worker(target.spec, storage, checkpoints, target.population_id)
        spec = target.spec
        for _ in range(self.before):
            claim = storage.claim(
                target.population_id, worker.owner, spec.config.intervals, 30.0, False
            )
            worker.work_on(claim)
            worker.flush()  # recorded before the next claim, as one interval at a time
        member = storage.members(target.population_id)[0]
        self.damaged = storage.checkpoint(target.population_id, *member.restore)
        path = checkpoints.root / self.damaged.path
        if self.damage == "flip":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        elif self.damage == "truncate":
            path.write_bytes(path.read_bytes()[:10])
        else:
            path.unlink()
        # A new worker (the old one would continue member 0 in memory, never reading the file):
        # as after a restart, or when the member moves to another worker.
        Worker(target.spec, storage, checkpoints, target.population_id).run()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_never_trained_on(quick_run, damage: str, caplog):
    runner = DamageAfter(before=6, damage=damage)
    with caplog.at_level(logging.WARNING, logger="poptune"):
        result = quick_run(name="damaged", intervals=5, exploit=None, runner=runner)
    bad = runner.damaged
    assert (bad.member, bad.step) == (0, 2)
    assert [m.step for m in result.members] == [5, 5, 5]
    assert result.failures() == []
    assert "Falling back" in caplog.text or "falling back" in caplog.text
    # the damaged checkpoint's row is gone, so nobody restores or copies it any more
    assert result.storage.checkpoint(result.record.id, 0, 2) is None
    third = next(i for i in result.intervals() if i.member == 0 and i.step == 3)
    assert third.origin != (0, 2)
    copies = [e for e in result.exploits() if e.member == 0 and e.step == 2]
    assert third.origin == (copies[0].donor, copies[0].donor_step)
    assert third.hparams == copies[0].hparams_after  # weights and hparams from the same donor
    assert [e.reason for e in result.exploits()] == [pt.CopyReason.FALLBACK]  # not an exploit
    assert (result.summary().exploits, result.summary().recoveries) == (0, 1)


def test_a_missing_checkpoint_file_stops_the_run_and_drops_nothing(quick_run):
    runner = DamageAfter(before=6, damage="delete")
    with pytest.raises(pt.PopulationError, match=r"member 0 at step 2 is missing.*checkpoints="):
        quick_run(name="gone", intervals=5, exploit=None, runner=runner)
    result = pt.load(quick_run.storage, "gone")
    assert result.status == "error"
    assert result.storage.checkpoint(result.record.id, 0, 2) == runner.damaged  # kept
    assert not result.exploits() and not result.failures()  # no fallback, nothing recorded


def test_a_full_disk_stops_the_run_clearly_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch, quick_run
):
    calls = {"n": 0}

    class FullDisk(io.FileIO):
        """The fifth checkpoint file written fills the disk after a few bytes."""

        def write(self, data: object) -> int:
            super().write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode or "+" in mode:
            calls["n"] += 1
            if calls["n"] == 5:
                return FullDisk(path, mode.replace("b", "") or "w")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "open", full_open, raising=False)
    with pytest.raises(pt.PopulationError, match=r"No space left on device.*resume"):
        quick_run(name="full", intervals=4)  # checkpoints next to the database, in tmp_path
    files = list((tmp_path / "checkpoints").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    result = pt.load(quick_run.storage, "full")
    committed = {c.path for c in result.storage.checkpoints(result.record.id)}
    on_disk = {str(f.relative_to(tmp_path / "checkpoints")) for f in files if f.is_file()}
    assert on_disk == committed  # nothing half-written is visible
    assert len(result.intervals()) == 4
    monkeypatch.delattr(checkpoints, "open")  # "free some space"
    resumed = result.resume(progress=False)
    assert [m.step for m in resumed.members] == [4, 4, 4]


@pytest.mark.parametrize("how", ["resume", "worker"])
def test_files_a_killed_worker_left_are_gone_once_the_population_finished(
    quick_run, tmp_path: Path, how: str
):
    """A worker killed after writing a checkpoint and before committing it leaves a file that
    no row names. The start of a run deletes such files only once they are two leases old, and
    a resume right after the kill starts inside that window: they stayed for good."""
    from poptune.population import join

    quick_run.created(name="p", population=2, intervals=2)
    result = pt.load(quick_run.storage, "p")
    own = checkpoints.population_folder(result.storage.database_id(), result.id)
    folder = tmp_path / "checkpoints" / own
    orphans = [folder / "member-0000" / "step-000001-0123456789ab.ckpt"]
    orphans.append(folder / "member-0001" / ".step-000001-0123456789ab.ckpt.tmp")
    for orphan in orphans:  # just written, as by a worker killed a moment ago
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"x" * 100)
    if how == "resume":
        result.resume(progress=False)
    else:  # poptune worker
        join(result, checkpoints=str(tmp_path / "checkpoints"))
    assert pt.load(quick_run.storage, "p").status == "finished"
    assert not any(orphan.exists() for orphan in orphans)
    kept = result.storage.checkpoints(result.id)
    assert kept and all((tmp_path / "checkpoints" / ref.path).exists() for ref in kept)
