"""Checkpoints on an S3-compatible server (moto's server mode on loopback), end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import poptune as pt
from poptune import checkpoints
from poptune.checkpoints import (
    CheckpointCorrupt,
    CheckpointMissing,
    FsspecCheckpoints,
    open_checkpoints,
    population_folder,
)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3 API on 127.0.0.1 with an empty bucket; yields the bucket's URL."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", endpoint)
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)  # pick up the FSSPEC_S3_* variable now
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="poptune")
    try:
        yield "s3://poptune/checkpoints"
    finally:
        fsspec.config.conf.pop("s3", None)
        server.stop()


def test_round_trip_checksum_and_damage(s3: str):
    store = open_checkpoints(s3)
    assert isinstance(store, FsspecCheckpoints)
    ref = store.save("population-1", 0, 1, {"w": [1.0, 2.0]})
    assert store.load(ref) == {"w": [1.0, 2.0]}
    assert set(store.files("population-1")) == {ref.path}
    store.fs.pipe_file(f"{store.root}/{ref.path}", b"garbage")  # replaced behind our back
    with pytest.raises(CheckpointCorrupt, match="bytes but"):
        store.load(ref)
    store.delete(ref)
    with pytest.raises(CheckpointMissing, match="missing"):
        store.load(ref)
    assert store.files("population-1") == {}


def test_a_population_with_checkpoints_on_s3(s3: str, quick_run):
    url = quick_run.storage
    result = quick_run(name="s3", population=4, intervals=4, workers=2, checkpoints=s3)
    assert result.config.checkpoints == s3  # recorded: joining workers need only the storage
    assert [m.step for m in result.members] == [4] * 4
    store = open_checkpoints(s3)
    committed = result.storage.checkpoints(result.record.id)
    assert {c.path for c in committed} == set(
        store.files(population_folder(result.storage.database_id(), result.record.id))
    )  # GC reached S3
    for ref in committed:
        data = store.fs.cat_file(f"{store.root}/{ref.path}")
        assert checkpoints.checksum(data) == ref.checksum
    assert pt.load(url, "s3").best.state()["theta"].shape == (2,)


def test_databases_sharing_one_prefix_keep_each_others_objects(s3: str, tmp_path, quick_run):
    """Two databases given the same object-store prefix both number their first population 1;
    neither one's orphan sweep nor its delete reaches the other's objects."""
    options = dict(name="p", population=2, checkpoints=s3, lease_seconds=0.25)
    a_url, b_url = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    a = quick_run(storage=a_url, **options)
    store = open_checkpoints(s3)
    a_objects = {
        ref.path: store.fs.cat_file(f"{store.root}/{ref.path}")
        for ref in a.storage.checkpoints(a.id)
    }
    time.sleep(0.6)  # older than two leases: what b's sweep would take for orphans
    b = quick_run(storage=b_url, **options)
    assert a.id == b.id
    pt.delete(b_url, "p")
    for path, data in a_objects.items():
        assert store.fs.cat_file(f"{store.root}/{path}") == data
    assert not store.files(population_folder(b.storage.database_id(), b.id))
    assert pt.load(a_url, "p").best.state()["theta"].shape == (2,)
