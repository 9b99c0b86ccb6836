"""Checkpoints: atomic, checksummed, safe to load."""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from poptune import checkpoints, handover, serialization
from poptune.checkpoints import (
    DIRECT_BYTES,
    PACKED_BYTES,
    CheckpointCorrupt,
    CheckpointError,
    LocalCheckpoints,
    UnsafeCheckpointPath,
    open_checkpoints,
    population_folder,
)


def test_round_trip_with_checksum(tmp_path: Path):
    store = LocalCheckpoints(tmp_path)
    state = {"w": np.arange(10, dtype=np.float32), "step": 3, "opt": {0: {"m": np.ones(2)}}}
    ref = store.save("population-1", 2, 3, state)
    assert (ref.member, ref.step) == (2, 3)
    assert ref.checksum == checkpoints.checksum((tmp_path / ref.path).read_bytes())
    assert ref.checksum.startswith("xxh3_128:") and len(ref.checksum) == 9 + 32
    assert (tmp_path / ref.path).stat().st_size == ref.size
    loaded = store.load(ref)
    assert np.array_equal(loaded["w"], state["w"]) and loaded["opt"][0]["m"].tolist() == [1, 1]
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file is left behind"


def test_every_attempt_gets_its_own_file(tmp_path: Path):
    store = LocalCheckpoints(tmp_path)
    first = store.save("population-1", 0, 1, {"x": 1})
    second = store.save("population-1", 0, 1, {"x": 2})  # a late writer for the same (member, step)
    assert first.path != second.path
    assert store.load(first) == {"x": 1}


def test_a_member_folder_is_checked_and_made_once_and_again_if_it_went(tmp_path: Path):
    """The store remembers the member folders it made (a block saves 64 states at once); one
    that went meanwhile is made again, and one that leads out of the root is refused."""
    store = LocalCheckpoints(tmp_path / "root")
    first = store.save("population-1", 0, 1, {"x": 1})
    shutil.rmtree(tmp_path / "root" / "population-1" / "member-0000")
    second = store.save("population-1", 0, 2, {"x": 2})
    assert store.load(second) == {"x": 2} and not (tmp_path / "root" / first.path).exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root" / "population-1" / "member-0001").symlink_to(outside)
    with pytest.raises(UnsafeCheckpointPath, match="symbolic link"):
        store.save("population-1", 1, 1, {"x": 3})
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "replace"])
def test_damaged_checkpoints_are_detected_before_decoding(tmp_path: Path, damage: str):
    store = LocalCheckpoints(tmp_path)
    ref = store.save("population-1", 0, 1, {"w": np.zeros(1000)})
    path = tmp_path / ref.path
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(data)
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(pickle.dumps({"w": 0}).ljust(len(data), b"\0"))
    with pytest.raises(CheckpointError, match=r"member 0|recorded|checksum|missing"):
        store.load(ref)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/poptune-pwned",))


def test_a_malicious_pickle_with_a_matching_checksum_is_refused(tmp_path: Path):
    from poptune.records import CheckpointRef

    marker = Path("/tmp/poptune-pwned")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps(_Exploit())
    path = tmp_path / "population-1" / "member-0000" / "evil.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    relative = "population-1/member-0000/evil.ckpt"
    ref = CheckpointRef(0, 1, relative, len(payload), checkpoints.checksum(payload))
    with pytest.raises(CheckpointCorrupt, match="cannot be decoded"):
        LocalCheckpoints(tmp_path).load(ref)
    assert not marker.exists()


def test_unsupported_state_names_the_path(tmp_path: Path):
    with pytest.raises(TypeError, match=r"\['model'\]"):
        LocalCheckpoints(tmp_path).save("population-1", 0, 1, {"model": object()})
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.ckpt"))


def test_open_checkpoints(tmp_path: Path):
    assert open_checkpoints(f"file://{tmp_path}").root == tmp_path.resolve()
    with pytest.raises(
        ValueError, match=r"'url' parameter of FsspecCheckpoints .* Got 'nosuch://x'"
    ):
        open_checkpoints("nosuch://x")


def test_sweep_removes_only_old_uncommitted_files(tmp_path: Path):
    import time as time_module

    from poptune.checkpoints import sweep_orphans

    store = LocalCheckpoints(tmp_path)
    kept = store.save("population-1", 0, 1, {"x": 1})
    orphan = store.save("population-1", 0, 2, {"x": 2})
    fresh = store.save("population-1", 1, 1, {"x": 3})
    old = time_module.time() - 100
    for ref in (kept, orphan):
        os.utime(tmp_path / ref.path, (old, old))
    swept = sweep_orphans(store, "population-1", {kept.path}, older_than=60.0)
    assert swept == [orphan.path]
    assert set(store.files("population-1")) == {
        kept.path,
        fresh.path,
    }  # a fresh file may be about to commit


# Only checkpoints of PACKED_BYTES and more are recycled: these are just over it.
_BIG = PACKED_BYTES // 8 + 4000
_SMALLER = PACKED_BYTES // 8 + 100


def test_a_collected_file_is_overwritten_by_the_next_save_not_reallocated(tmp_path: Path):
    store = LocalCheckpoints(tmp_path, spares=1, direct=False)
    big = store.save("population-1", 0, 1, {"w": np.arange(float(_BIG))})
    inode = (tmp_path / big.path).stat().st_ino
    store.delete(big)  # kept as a spare, under a name nobody looks up
    assert not (tmp_path / big.path).exists()
    smaller = store.save("population-1", 0, 2, {"w": np.arange(float(_SMALLER))})
    assert (tmp_path / smaller.path).stat().st_ino == inode  # the same file, overwritten
    assert (tmp_path / smaller.path).stat().st_size == smaller.size  # and cut to its new size
    np.testing.assert_array_equal(store.load(smaller)["w"], np.arange(float(_SMALLER)))
    other = store.save("population-1", 1, 1, {"w": np.zeros(_SMALLER)})
    store.delete(smaller)
    store.delete(other)  # the pool is full: deleted
    files = [p for p in (tmp_path / "population-1").rglob("*") if p.is_file()]
    assert len(files) == 1  # the pool is full: deleted
    store.close()
    assert [p for p in (tmp_path / "population-1").rglob("*") if p.is_file()] == []


def test_small_checkpoints_are_written_whole_and_recycled_by_their_store(
    tmp_path: Path, monkeypatch
):
    """A small state is written in one call; its file, once collected, is kept by the store
    for its own next small save (up to SMALL_SPARES, none with spares=0), never through a
    symbolic link, and deleted by close()."""
    monkeypatch.setattr(checkpoints, "SMALL_SPARES", 2)
    store = LocalCheckpoints(tmp_path, spares=4)
    state = {"w": np.arange(1000.0), "b": np.float32(2.5), "step": 7}
    ref = store.save("population-1", 0, 1, state)
    path = tmp_path / ref.path
    assert path.stat().st_size == ref.size
    assert path.read_bytes() == serialization.dumps(state)  # the format, byte for byte
    assert checkpoints.checksum(path.read_bytes()) == ref.checksum
    inode = path.stat().st_ino
    store.delete(ref)
    assert not path.exists()
    again = store.save("population-1", 1, 1, {"w": np.arange(10.0)})  # shorter: cut to size
    assert (tmp_path / again.path).stat().st_ino == inode  # the same file, overwritten
    assert (tmp_path / again.path).stat().st_size == again.size
    np.testing.assert_array_equal(store.load(again)["w"], np.arange(10.0))
    refs = [store.save("population-1", m, 2, state) for m in range(3)]
    for r in [again, *refs]:
        store.delete(r)
    pool = tmp_path / "population-1" / ".spares"
    assert len(list(pool.iterdir())) == 2  # SMALL_SPARES: the others deleted
    outside = tmp_path / "outside.txt"
    outside.write_text("not poptune's")
    for spare in pool.iterdir():  # someone who can write to the folder plants links
        spare.unlink()
        spare.symlink_to(outside)
    planted = store.save("population-1", 0, 3, state)
    assert outside.read_text() == "not poptune's"
    assert not (tmp_path / planted.path).is_symlink()
    assert store.load(planted)["step"] == 7
    store.close()
    assert list(pool.iterdir()) == [] and outside.read_text() == "not poptune's"
    unkept = LocalCheckpoints(tmp_path / "none", spares=0)
    ref = unkept.save("population-1", 0, 1, state)
    unkept.delete(ref)
    assert [p for p in (tmp_path / "none").rglob("*") if p.is_file()] == []


def test_workers_share_one_pool_of_spares_per_population(tmp_path: Path):
    collector, writer = LocalCheckpoints(tmp_path), LocalCheckpoints(tmp_path)  # two workers
    old = collector.save("population-1", 0, 1, {"w": np.arange(float(_BIG))})
    inode = (tmp_path / old.path).stat().st_ino
    other_population = collector.save("population-2", 0, 1, {"w": np.arange(float(_BIG))})
    collector.delete(old)
    collector.delete(other_population)
    new = writer.save(
        "population-1", 3, 2, {"w": np.ones(_SMALLER)}
    )  # the other worker's save reuses the file
    assert (tmp_path / new.path).stat().st_ino == inode
    np.testing.assert_array_equal(writer.load(new)["w"], np.ones(_SMALLER))
    collector.close()  # removes its spare that nobody took, not files now in use
    assert [p.name for p in (tmp_path / "population-1").rglob("*") if p.is_file()] == [
        Path(new.path).name
    ]
    assert [p for p in (tmp_path / "population-2").rglob("*") if p.is_file()] == []


def test_spares_must_be_a_count(tmp_path: Path):
    with pytest.raises(
        ValueError,
        match=r"'spares' parameter of LocalCheckpoints must be an int >= 0\. Got -1 instead",
    ):
        LocalCheckpoints(tmp_path, spares=-1)
    store = LocalCheckpoints(tmp_path, spares=0)
    ref = store.save("population-1", 0, 1, {"w": np.zeros(3)})
    store.delete(ref)  # no pool: deleted at once
    assert [p for p in (tmp_path / "population-1").rglob("*") if p.is_file()] == []


def _large_state() -> dict:
    """Over DIRECT_BYTES, with sizes that are not multiples of a block."""
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal(DIRECT_BYTES // 8 + 12345),
        "b": rng.standard_normal(7).astype(np.float32),
        "step": 3,
    }


def test_large_states_go_around_the_page_cache_and_come_back_exact(tmp_path: Path):
    store = LocalCheckpoints(tmp_path, direct=True)
    state = _large_state()
    ref = store.save("population-1", 0, 1, state)
    path = tmp_path / ref.path
    assert path.stat().st_size == ref.size  # padded blocks cut back to the exact size
    assert checkpoints.checksum(path.read_bytes()) == ref.checksum
    loaded = store.load(ref)
    np.testing.assert_array_equal(loaded["w"], state["w"])
    np.testing.assert_array_equal(loaded["b"], state["b"])
    assert loaded["step"] == 3
    loaded["w"][0] = 42.0  # decoded in place, writable, and the file is untouched
    assert store.load(ref)["w"][0] == state["w"][0]
    buffered = LocalCheckpoints(tmp_path / "buffered", direct=False).save(
        "population-1", 0, 1, state
    )
    assert (buffered.size, buffered.checksum) == (ref.size, ref.checksum)  # the same bytes


def test_a_direct_save_into_a_longer_spare_is_cut_to_size(tmp_path: Path):
    store = LocalCheckpoints(tmp_path, direct=True)
    big = store.save("population-1", 0, 1, {"w": np.zeros(DIRECT_BYTES // 4)})  # 2 x DIRECT_BYTES
    inode = (tmp_path / big.path).stat().st_ino
    store.delete(big)
    ref = store.save("population-1", 0, 2, _large_state())
    assert (tmp_path / ref.path).stat().st_ino == inode
    assert (tmp_path / ref.path).stat().st_size == ref.size
    np.testing.assert_array_equal(store.load(ref)["w"], _large_state()["w"])


@pytest.mark.skipif(not handover._tmpfs(), reason="needs a tmpfs /dev/shm")
@pytest.mark.parametrize("write", ["direct", "buffered", "direct refused"])
def test_a_checkpoint_written_from_shared_memory_has_the_same_bytes(
    tmp_path: Path, write: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("POPTUNE_SHARED_MEMORY", "1")  # the handover is opt-in
    if write == "direct refused":

        def refuse(path: Path, flags: int) -> int:
            raise checkpoints._DirectRefused("Invalid argument")

        monkeypatch.setattr(checkpoints, "_open_direct", refuse)
    folder = population_folder(uuid.uuid4().hex[:16], 1)
    store = LocalCheckpoints(tmp_path / "a", direct=write != "buffered", shared_memory=True)
    ref = store.save(folder, 0, 1, _large_state())
    try:
        assert handover.segment_name(ref) in os.listdir("/dev/shm")  # the file came from there
        plain = LocalCheckpoints(tmp_path / "b", direct=False).save(folder, 0, 1, _large_state())
        assert (ref.size, ref.checksum) == (plain.size, plain.checksum)
        assert (tmp_path / "a" / ref.path).read_bytes() == (
            tmp_path / "b" / plain.path
        ).read_bytes()
        assert store.direct is (write == "direct")
    finally:
        store.close()
    assert handover.segment_name(ref) not in os.listdir("/dev/shm")


def test_a_filesystem_without_direct_io_falls_back_to_the_page_cache(tmp_path: Path, monkeypatch):
    def refuse(path: Path, flags: int) -> int:
        raise checkpoints._DirectRefused("Invalid argument")

    monkeypatch.setattr(checkpoints, "_open_direct", refuse)
    store = LocalCheckpoints(tmp_path, direct=True)
    ref = store.save("population-1", 0, 1, _large_state())
    assert store.direct is False  # asked once, then never again
    np.testing.assert_array_equal(store.load(ref)["w"], _large_state()["w"])
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_direct_io_can_be_turned_off_from_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("POPTUNE_DIRECT_IO", "0")
    assert LocalCheckpoints(tmp_path).direct is False
    monkeypatch.delenv("POPTUNE_DIRECT_IO")
    assert LocalCheckpoints(tmp_path).direct is hasattr(os, "O_DIRECT")


@pytest.mark.parametrize(
    "path",
    [
        "../../victim.txt",
        "/etc/passwd",
        "db-0123456789abcdef/population-1/../../x",
        "population-1/./member-0000/x.ckpt",
        "population-1//x.ckpt",
        "population-1\\..\\x.ckpt",
        "population-1/member-0000/x\0.ckpt",
        "population-1",  # the folder itself, not a file in it
        "population-2/member-0000/x.ckpt",  # another population's
        "db-fedcba9876543210/population-1/member-0000/x.ckpt",  # another database's
        "",
        None,
    ],
)
def test_a_path_outside_the_populations_folder_is_refused(path):
    from poptune.checkpoints import confined, population_folders

    with pytest.raises(UnsafeCheckpointPath, match="refusing to read or delete"):
        confined(path, population_folders("0123456789abcdef", 1))


def test_the_populations_own_and_legacy_paths_are_accepted():
    from poptune.checkpoints import confined, population_folders

    folders = population_folders("0123456789abcdef", 1)
    for path in (
        "db-0123456789abcdef/population-1/member-0000/step-000001-abc.ckpt",
        "db-0123456789abcdef/population-1/.spares/0a1b",
        "population-1/member-0003/step-000002-def.ckpt",  # written before databases had ids
    ):
        assert confined(path, folders) == path


def test_a_member_folder_swapped_for_a_link_after_a_save_is_refused(tmp_path: Path):
    """The folders a store remembers are checked for a symbolic link at every save."""
    store = LocalCheckpoints(tmp_path / "root")
    store.save("population-1", 0, 1, {"x": 1})
    outside = tmp_path / "outside"
    outside.mkdir()
    member = tmp_path / "root" / "population-1" / "member-0000"
    shutil.rmtree(member)
    member.symlink_to(outside)
    with pytest.raises(UnsafeCheckpointPath, match="symbolic link"):
        store.save("population-1", 0, 2, {"x": 2})
    assert list(outside.iterdir()) == []
