"""Checkpoints: atomic, checksummed, safe to load."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from poptune.checkpoints import CheckpointCorrupt, LocalCheckpoints, open_checkpoints


def test_round_trip_with_checksum(tmp_path: Path):
    store = LocalCheckpoints(tmp_path)
    state = {"w": np.arange(10, dtype=np.float32), "step": 3, "opt": {0: {"m": np.ones(2)}}}
    ref = store.save(1, 2, 3, state)
    assert (ref.member, ref.step, len(ref.sha256)) == (2, 3, 64)
    assert (tmp_path / ref.path).stat().st_size == ref.size
    loaded = store.load(ref)
    assert np.array_equal(loaded["w"], state["w"]) and loaded["opt"][0]["m"].tolist() == [1, 1]
    assert not list(tmp_path.rglob("*.tmp")), "no temporary file is left behind"


def test_every_attempt_gets_its_own_file(tmp_path: Path):
    store = LocalCheckpoints(tmp_path)
    first = store.save(1, 0, 1, {"x": 1})
    second = store.save(1, 0, 1, {"x": 2})  # a late writer for the same (member, step)
    assert first.path != second.path
    assert store.load(first) == {"x": 1}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "replace"])
def test_damaged_checkpoints_are_detected_before_decoding(tmp_path: Path, damage: str):
    store = LocalCheckpoints(tmp_path)
    ref = store.save(1, 0, 1, {"w": np.zeros(1000)})
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
    with pytest.raises(CheckpointCorrupt, match=r"member 0|recorded|SHA-256|missing"):
        store.load(ref)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/poptune-pwned",))


def test_a_malicious_pickle_with_a_matching_checksum_is_refused(tmp_path: Path):
    import hashlib

    from poptune.records import CheckpointRef

    marker = Path("/tmp/poptune-pwned")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps(_Exploit())
    path = tmp_path / "evil.ckpt"
    path.write_bytes(payload)
    ref = CheckpointRef(0, 1, "evil.ckpt", len(payload), hashlib.sha256(payload).hexdigest())
    with pytest.raises(CheckpointCorrupt, match="cannot be decoded"):
        LocalCheckpoints(tmp_path).load(ref)
    assert not marker.exists()


def test_unsupported_state_names_the_path(tmp_path: Path):
    with pytest.raises(TypeError, match=r"\['model'\]"):
        LocalCheckpoints(tmp_path).save(1, 0, 1, {"model": object()})
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.ckpt"))


def test_open_checkpoints(tmp_path: Path):
    assert open_checkpoints(f"file://{tmp_path}").root == tmp_path.resolve()
    with pytest.raises(ValueError, match=r"Cannot open the checkpoint location 'nosuch://x'"):
        open_checkpoints("nosuch://x")


def test_sweep_removes_only_old_uncommitted_files(tmp_path: Path):
    import time as time_module

    from poptune.checkpoints import sweep_orphans

    store = LocalCheckpoints(tmp_path)
    kept = store.save(1, 0, 1, {"x": 1})
    orphan = store.save(1, 0, 2, {"x": 2})
    fresh = store.save(1, 1, 1, {"x": 3})
    old = time_module.time() - 100
    for ref in (kept, orphan):
        os.utime(tmp_path / ref.path, (old, old))
    swept = sweep_orphans(store, 1, {kept.path}, older_than=60.0)
    assert swept == [orphan.path]
    assert set(store.files(1)) == {kept.path, fresh.path}  # a fresh file may be about to commit


def test_a_collected_file_is_overwritten_by_the_next_save_not_reallocated(tmp_path: Path):
    store = LocalCheckpoints(tmp_path, spares=1)
    big = store.save(1, 0, 1, {"w": np.arange(1000.0)})
    inode = (tmp_path / big.path).stat().st_ino
    store.delete(big)  # kept as a spare, under a name nobody looks up
    assert not (tmp_path / big.path).exists()
    small = store.save(1, 0, 2, {"w": np.arange(3.0)})
    assert (tmp_path / small.path).stat().st_ino == inode  # the same file, overwritten
    assert (tmp_path / small.path).stat().st_size == small.size  # and cut to its new size
    np.testing.assert_array_equal(store.load(small)["w"], np.arange(3.0))
    other = store.save(1, 1, 1, {"w": np.zeros(2)})
    store.delete(small)
    store.delete(other)  # the pool is full: deleted
    assert len(list((tmp_path / "population-1").rglob("*"))) == 3  # 2 folders and 1 spare
    store.close()
    assert [p for p in (tmp_path / "population-1").rglob("*") if p.is_file()] == []
