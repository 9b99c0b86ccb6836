"""Large checkpoints handed between local worker processes through shared memory: used only
when verified, never the only copy, never left behind, never named from user text."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import poptune as pt
from poptune import handover, serialization
from poptune.checkpoints import (
    CheckpointMissing,
    LocalCheckpoints,
    checksum,
    open_checkpoints,
    population_folder,
)
from poptune.handover import SEGMENTS, SHARED_BYTES, segment_name, sweep_segments
from poptune.records import CheckpointRef
from poptune.testing import CreateOnlyRunner

pytestmark = pytest.mark.skipif(not handover._tmpfs(), reason="needs a tmpfs /dev/shm")

FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def _asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handover is opt-in: these tests ask for it (worker processes inherit it)."""
    monkeypatch.setenv("POPTUNE_SHARED_MEMORY", "1")


@pytest.fixture
def database() -> Iterator[str]:
    """A database id of this test's own: its segments cannot be another test's."""
    database = uuid.uuid4().hex[:16]
    yield database
    for name in segments(database):  # whatever a failed test left
        os.unlink(f"/dev/shm/{name}")


def segments(database: str) -> list[str]:
    """The names of every segment of ``database`` in /dev/shm."""
    return sorted(
        n for n in os.listdir("/dev/shm") if n.startswith(f"poptune-{os.geteuid()}-{database}-")
    )


def large(seed: int) -> dict[str, Any]:
    """A state just over the threshold, in two arrays (one not a multiple of a block)."""
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal(SHARED_BYTES // 8 + 1001),
        "b": rng.integers(0, 9, 77),
        "step": seed,
    }


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        np.array_equal(a["w"], b["w"]) and np.array_equal(a["b"], b["b"]) and a["step"] == b["step"]
    )


def _save_and_wait(root: str, folder: str, refs: Any, done: Any) -> None:
    """Process A: save a large checkpoint, hand its ref over, keep the segment until told."""
    store = LocalCheckpoints(root, shared_memory=True)
    refs.put(store.save(folder, 0, 1, large(1)))
    done.wait(60)
    store.close()


def _save_then_hang(root: str, folder: str, refs: Any) -> None:
    """A worker that saves a large checkpoint and is then killed before it can clean up."""
    store = LocalCheckpoints(root, shared_memory=True)
    refs.put(store.save(folder, 0, 1, large(1)))
    signal.pause()


def _killed_writers_segment(root: Path, folder: str) -> str:
    """The segment a worker process left: it saved a large checkpoint in ``folder`` and was
    SIGKILLed before it could clean up."""
    refs = FORK.Queue()
    killed = FORK.Process(target=_save_then_hang, args=(str(root), folder, refs))
    killed.start()
    left = segment_name(refs.get(timeout=60))
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(60)
    return left


def test_another_process_restores_the_donor_from_shared_memory(tmp_path: Path, database: str):
    folder = population_folder(database, 1)
    refs, done = FORK.Queue(), FORK.Event()
    writer = FORK.Process(target=_save_and_wait, args=(str(tmp_path), folder, refs, done))
    writer.start()
    try:
        ref = refs.get(timeout=60)
        assert segments(database) == [segment_name(ref)]
        (tmp_path / ref.path).unlink()  # the file cannot be what this process reads
        reader = LocalCheckpoints(tmp_path, shared_memory=True)
        state = reader.load(ref)
        assert same(state, large(1))
        assert checksum(serialization.dumps(state)) == ref.checksum
        state["w"][0] = 42.0  # the decoded arrays are this process's: writing them is allowed
        assert same(reader.load(ref), large(1)), "and it does not change the segment"
    finally:
        done.set()
        writer.join(60)
    assert writer.exitcode == 0
    assert segments(database) == [], "the writer deletes its segments when it stops"
    with pytest.raises(CheckpointMissing):  # neither the segment nor the file any more
        reader.load(ref)


def _corrupt(kind: str, path: str) -> None:
    if kind == "a flipped byte":
        with open(path, "r+b") as file:
            file.seek(4096 + SHARED_BYTES // 2)
            byte = file.read(1)
            file.seek(-1, os.SEEK_CUR)
            file.write(bytes([byte[0] ^ 0xFF]))
    elif kind == "truncated":
        os.truncate(path, os.path.getsize(path) - 4096)
    elif kind == "another user's":
        os.chown(path, 54321, -1) if os.geteuid() == 0 else pytest.skip("needs root to chown")
    elif kind == "writable by others":
        os.chmod(path, 0o666)
    elif kind == "another checkpoint's":
        with open(path, "r+b") as file:  # the header names another checksum
            file.seek(handover._FIELDS.size)
            file.write(b"xxh3_128:" + b"0" * 32)
    elif kind == "a symbolic link":
        os.rename(path, f"{path}.elsewhere")  # a valid segment, reached through a link
        os.symlink(f"{path}.elsewhere", path)


@pytest.mark.parametrize(
    "kind",
    [
        "a flipped byte",
        "truncated",
        "another user's",
        "writable by others",
        "another checkpoint's",
        "a symbolic link",
    ],
)
def test_a_segment_that_is_not_exactly_the_checkpoint_falls_back_to_the_file(
    tmp_path: Path, database: str, kind: str, caplog: pytest.LogCaptureFixture
):
    store = LocalCheckpoints(tmp_path, shared_memory=True)
    ref = store.save(population_folder(database, 1), 0, 1, large(1))
    path = f"/dev/shm/{segment_name(ref)}"
    _corrupt(kind, path)
    with caplog.at_level(logging.WARNING):
        assert same(store.load(ref), large(1))  # from the file
    if kind == "a flipped byte":  # the header matched: the checksum caught it
        assert "does not match its recorded checksum" in caplog.text
        assert "Reading its file instead" in caplog.text
    (tmp_path / ref.path).unlink()
    with pytest.raises(CheckpointMissing):  # so the state above came from the file
        store.load(ref)
    store.close()
    if kind == "a symbolic link":
        assert os.path.exists(f"{path}.elsewhere"), "nothing is followed through a link"


def test_a_segment_someone_maps_is_never_rewritten(tmp_path: Path, database: str):
    folder = population_folder(database, 1)
    writer = LocalCheckpoints(tmp_path / "a", shared_memory=True)
    reader = LocalCheckpoints(tmp_path / "b", shared_memory=True)  # another store: no file
    first = writer.save(folder, 0, 1, large(1))
    (writer.root / first.path).rename(reader.root.parent / "moved")  # only the segment has it
    (reader.root / first.path).parent.mkdir(parents=True)
    held = reader.load(first)  # its arrays map the segment
    second = writer.save(folder, 0, 2, large(2))  # member 0 again: its segment is reused...
    assert same(held, large(1)), "...but not this one, which a reader maps"
    assert segments(database) == [segment_name(second)], "the superseded one is unlinked"
    del held
    third = writer.save(folder, 0, 3, large(3))  # nobody maps the second: reused in place
    assert segments(database) == [segment_name(third)]
    assert same(writer.load(third), large(3))
    writer.close()


def test_segments_stay_bounded_and_are_reused(tmp_path: Path, database: str):
    store = LocalCheckpoints(tmp_path, shared_memory=True)
    folder = population_folder(database, 1)
    refs = [store.save(folder, member, 1, large(member)) for member in range(SEGMENTS + 2)]
    kept = [segment_name(ref) for ref in refs[-SEGMENTS:]]
    assert segments(database) == sorted(kept), "the latest SEGMENTS, oldest dropped first"
    assert same(store.load(refs[0]), large(0)), "an older one is read from its file"
    store.delete(refs[-1])  # collected: the next save overwrites its segment
    new = store.save(folder, 99, 1, large(9))
    assert segments(database) == sorted([*kept[:-1], segment_name(new)])
    assert same(store.load(new), large(9))
    store.close()
    assert segments(database) == []


def test_small_states_remote_stores_and_the_switch_keep_the_file_path(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
):
    store = LocalCheckpoints(tmp_path, shared_memory=True)
    small = store.save(population_folder(database, 1), 0, 1, {"w": np.zeros(1000)})
    legacy = store.save("population-1", 0, 1, large(1))  # a folder without a database id
    assert segments(database) == [] and segment_name(legacy) is None
    assert store.load(small)["w"].shape == (1000,)
    assert LocalCheckpoints(tmp_path).segments is None, "off unless asked for"
    assert not hasattr(open_checkpoints("memory://handover", shared_memory=True), "segments")
    monkeypatch.setenv("POPTUNE_SHARED_MEMORY", "0")
    assert LocalCheckpoints(tmp_path, shared_memory=True).segments is None
    monkeypatch.delenv("POPTUNE_SHARED_MEMORY")
    assert LocalCheckpoints(tmp_path, shared_memory=True).segments is None, "off by default"


def test_segments_of_killed_workers_are_swept_and_nothing_else(tmp_path: Path, database: str):
    folder = population_folder(database, 1)
    dead = _killed_writers_segment(tmp_path, folder)
    live = LocalCheckpoints(tmp_path, shared_memory=True)  # a worker of this process, alive
    alive = segment_name(live.save(folder, 1, 1, large(2)))
    other = segment_name(live.save(population_folder(database, 2), 0, 1, large(3)))
    prefix = f"poptune-{os.geteuid()}-{database}-1-"
    odd = f"{prefix}not-a-segment"  # the population's prefix, not a segment's shape
    Path(f"/dev/shm/{odd}").write_bytes(b"")
    foreign = f"{prefix}9-9-{'0' * 32}"  # a segment's shape, but another user's file
    Path(f"/dev/shm/{foreign}").write_bytes(b"")
    if os.geteuid() == 0:
        os.chown(f"/dev/shm/{foreign}", 54321, -1)
    try:
        assert sweep_segments(database, 1) == (
            [dead] if os.geteuid() == 0 else sorted([dead, foreign])
        )
        assert dead not in segments(database)
        assert {alive, other} <= set(segments(database)), "live writers and other populations"
    finally:
        live.close()
        os.unlink(f"/dev/shm/{odd}")
        Path(f"/dev/shm/{foreign}").unlink(missing_ok=True)
    assert sweep_segments(None, 1) == []


@pytest.mark.parametrize(
    "path",
    [
        "db-0123456789abcdef/population-1/../../../etc/passwd",
        "/db-0123456789abcdef/population-1/member-0000/step-000001-0123456789ab.ckpt",
        "db-0123456789ABCDEF/population-1/member-0000/step-000001-0123456789ab.ckpt",
        "db-0123456789abcdef/population-1/member-0000/step-000001-x\n.ckpt",
        "population-1/member-0000/step-000001-0123456789ab.ckpt",
        "db-0123456789abcdef/population-1/member-0000/step-000001-0123456789ab.ckpt/x",
    ],
)
def test_segment_names_come_from_validated_parts_only(path: str):
    assert segment_name(CheckpointRef(0, 1, path, SHARED_BYTES, "xxh3_128:00")) is None


def test_segment_names_are_plain_and_unique_per_checkpoint():
    path = "db-0123456789abcdef/population-7/member-0003/step-000005-0123456789ab.ckpt"
    name = segment_name(CheckpointRef(3, 5, path, 10, "xxh3_128:aa"))
    assert name is not None
    assert re.fullmatch(r"poptune-[0-9]+-0123456789abcdef-7-3-5-[0-9a-f]{32}", name)
    other = segment_name(CheckpointRef(3, 5, path, 10, "xxh3_128:bb"))
    moved = segment_name(
        CheckpointRef(3, 5, path.replace("0123456789ab.", "ba9876543210."), 10, "xxh3_128:aa")
    )
    assert len({name, other, moved}) == 3


class LargeState(pt.Trainable):
    """A member whose state is just over the handover threshold; ``kill`` (a file) makes the
    worker that trains its member 1 at step 3 die there once, without cleaning up."""

    kill: str | None = None

    def __init__(self, hparams: dict[str, Any], seed: int) -> None:
        self.w = np.full(SHARED_BYTES // 8 + 1001, float(seed % 7))
        self.x = hparams["x"]
        self.steps = 0

    def train(self, hparams: dict[str, Any]) -> None:
        self.x = hparams["x"]
        self.steps += 1
        self.w[:10] += self.x
        if self.kill and self.steps == 3 and os.path.exists(self.kill):
            os.unlink(self.kill)
            os.kill(os.getpid(), signal.SIGKILL)

    def evaluate(self) -> dict[str, float]:
        return {"score": float(self.w[:10].sum())}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w = np.array(state["w"])  # a copy: nothing keeps the segment mapped
        self.steps = state["steps"]


def _run(tmp_path: Path, name: str, **options: Any) -> pt.Population:
    return pt.run(
        LargeState,
        space={"x": pt.Uniform(0.0, 1.0)},
        metric="score",
        mode="max",
        population=3,
        intervals=4,
        workers=2,
        name=name,
        storage=f"sqlite:///{tmp_path / 'poptune.db'}",
        seed=3,
        progress=False,
        **options,
    )


def _database(tmp_path: Path) -> str:
    storage = pt.open_storage(f"sqlite:///{tmp_path / 'poptune.db'}")
    try:
        database = storage.database_id(create=False)
    finally:
        storage.close()
    assert database is not None
    return database


def test_a_run_of_local_processes_leaves_no_segment(tmp_path: Path):
    hostile = "../../x; rm -rf / #" + "é" * 20 + "/" * 200  # never in a segment's name
    result = _run(tmp_path, hostile)
    assert len(result.intervals()) >= 12
    assert segments(_database(tmp_path)) == []


def test_a_run_with_a_killed_worker_leaves_no_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    kill = tmp_path / "kill-once"
    kill.touch()
    monkeypatch.setattr(LargeState, "kill", str(kill))
    result = _run(tmp_path, "killed", lease_seconds=2.0)
    assert not kill.exists(), "a worker was killed"
    assert len(result.intervals()) >= 12, "the other worker finished the population"
    assert segments(_database(tmp_path)) == []


def test_local_workers_sweep_what_killed_workers_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    created = CreateOnlyRunner()
    _run(tmp_path, "resumed", runner=created)
    database = _database(tmp_path)
    folder = population_folder(database, created.target.population_id)
    left = _killed_writers_segment(tmp_path, folder)
    assert segments(database) == [left]
    with caplog.at_level(logging.INFO, logger="poptune"):
        pt.LocalProcessRunner(2).run(created.target, created.storage, created.checkpoints)
    assert "Removed 1 shared-memory segment(s) left by killed workers" in caplog.text
    assert segments(database) == []


def test_deleting_a_population_removes_the_segments_its_killed_workers_left(tmp_path: Path):
    """The whole run was killed and never resumed: `poptune delete` removes its segments,
    and only its own (not a neighbouring population's of the same database)."""
    created = {name: CreateOnlyRunner() for name in ("gone", "kept")}
    for name, runner in created.items():
        _run(tmp_path, name, runner=runner)
    database = _database(tmp_path)
    left = {
        name: _killed_writers_segment(tmp_path, population_folder(database, r.target.population_id))
        for name, r in created.items()
    }
    assert segments(database) == sorted(left.values())
    pt.delete(f"sqlite:///{tmp_path / 'poptune.db'}", "gone")
    assert segments(database) == [left["kept"]]
    pt.delete(f"sqlite:///{tmp_path / 'poptune.db'}", "kept")
    assert segments(database) == []
