"""Upgrades of databases written by older poptune releases, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from poptune.checkpoints import CheckpointCorrupt, open_checkpoints
from poptune.storage import SCHEMA_VERSION, SQLStorage


def test_a_schema_2_database_is_upgraded_readable_but_not_continued(storage_url, tmp_path):
    """Schema 2 counted a member's own intervals as its step; its populations stay readable
    after the upgrade but are never trained on under the new meaning."""
    import sqlalchemy as sa

    import poptune as pt
    from poptune.testing import Quadratic, quadratic_space

    options = dict(
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=3,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="old",
        seed=0,
        progress=False,
    )
    pt.run(Quadratic, **options).storage.close()
    _back_to_schema(storage_url, tmp_path / "checkpoints", 2)

    old = pt.load(storage_url, "old")  # upgrades in place
    assert old.config["legacy_steps"] is True
    assert len(old.intervals()) == 9 and old.best.step == 3 and len(old.schedule()) == 3
    with pytest.raises(pt.PopulationError, match=r"older poptune.*Start a new population"):
        old.resume(progress=False)
    with pytest.raises(pt.PopulationError, match="older poptune"):
        pt.run(Quadratic, **{**options, "intervals": 3})
    fresh = pt.run(Quadratic, **{**options, "name": "new"})  # new populations train as usual
    assert "legacy_steps" not in fresh.config and fresh.status == "finished"
    with SQLStorage(storage_url)._read() as connection:
        version = connection.execute(sa.text("SELECT value FROM poptune_meta")).scalar_one()
    assert version == str(SCHEMA_VERSION)


def _back_to_schema(url: str, checkpoints: Path, version: int) -> None:
    """Make a database look as poptune wrote it at ``version`` (2 or 3): checkpoints were
    checksummed with a bare SHA-256, in a column named ``sha256``."""
    import hashlib

    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text("SELECT population_id, member_id, step, path FROM poptune_checkpoints")
        ).all()
        connection.execute(
            sa.text("ALTER TABLE poptune_checkpoints RENAME COLUMN checksum TO sha256")
        )
        for row in rows:
            digest = hashlib.sha256((checkpoints / row.path).read_bytes()).hexdigest()
            connection.execute(
                sa.text(
                    "UPDATE poptune_checkpoints SET sha256 = :d "
                    "WHERE population_id = :p AND member_id = :m AND step = :s"
                ),
                {"d": digest, "p": row.population_id, "m": row.member_id, "s": row.step},
            )
        connection.execute(sa.text(f"UPDATE poptune_meta SET value='{version}'"))
    engine.dispose()


def test_a_schema_3_database_keeps_its_sha256_checkpoints_verified(storage_url, tmp_path):
    import poptune as pt
    from poptune.testing import Quadratic, quadratic_space

    options = dict(
        space=quadratic_space(),
        metric="q",
        population=3,
        intervals=2,
        storage=storage_url,
        checkpoints=tmp_path / "checkpoints",
        name="sha",
        seed=0,
        progress=False,
    )
    before = pt.run(Quadratic, **options)
    best = before.best.state()
    before.storage.close()
    _back_to_schema(storage_url, tmp_path / "checkpoints", 3)

    old = pt.load(storage_url, "sha")  # upgrades in place: the column is renamed
    refs = old.storage.checkpoints(old.record.id)
    assert refs and all(len(ref.checksum) == 64 for ref in refs)  # bare SHA-256, kept
    np.testing.assert_array_equal(old.best.state()["theta"], best["theta"])  # verified
    ref = refs[0]
    path = tmp_path / "checkpoints" / ref.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # a corrupted byte is still caught
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        open_checkpoints(tmp_path / "checkpoints").load(ref)
    new = pt.run(Quadratic, **{**options, "name": "new"})  # new checkpoints: named XXH3
    assert all(r.checksum.startswith("xxh3_128:") for r in new.storage.checkpoints(new.record.id))
