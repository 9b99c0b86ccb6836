"""The SQL schema: tables, the schema version, and the migrations that upgrade older databases.

The schema uses only portable types so SQLite and PostgreSQL take it unchanged. Every change to
it bumps :data:`SCHEMA_VERSION` and adds a migration to :data:`MIGRATIONS`; opening a storage
runs the missing ones, in place, in the transaction that opens it (see docs/upgrades.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._base import StorageError

__all__ = [
    "LEGACY_STEPS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "checkpoints",
    "dumps",
    "exploits",
    "failures",
    "intervals",
    "members",
    "meta_table",
    "metadata",
    "populations",
    "upgrade_schema",
]

SCHEMA_VERSION = 4
_LOCK = 0x706F7074756E65  # "poptune": the advisory lock that serialises schema creation
#: Set in the configuration of populations recorded before schema 3, whose ``step`` counted the
#: intervals a member trained itself rather than the intervals behind its weights. They can be
#: read but not continued.
LEGACY_STEPS = "legacy_steps"

metadata = sa.MetaData()

meta_table = sa.Table(
    "poptune_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

populations = sa.Table(
    "poptune_populations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    # failures recorded since the last successful interval, across all members
    sa.Column("failure_streak", sa.Integer, nullable=False, default=0),
)

members = sa.Table(
    "poptune_members",
    metadata,
    sa.Column("population_id", sa.Integer, sa.ForeignKey(populations.c.id), primary_key=True),
    sa.Column("member_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("hparams", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("parent", sa.Integer, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("restore_member", sa.Integer, nullable=True),
    sa.Column("restore_step", sa.Integer, nullable=True),
    sa.Column("exploit_pending", sa.Boolean, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("token", sa.Integer, nullable=False),
    sa.Column("lease_until", sa.Float, nullable=True),
)

intervals = sa.Table(
    "poptune_intervals",
    metadata,
    sa.Column("population_id", sa.Integer, sa.ForeignKey(populations.c.id), primary_key=True),
    sa.Column("member_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("hparams", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("wall_time", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=False),
    sa.Column("origin_member", sa.Integer, nullable=True),
    sa.Column("origin_step", sa.Integer, nullable=True),
    sa.Index("ix_poptune_intervals_score", "population_id", "score"),
)

checkpoints = sa.Table(
    "poptune_checkpoints",
    metadata,
    sa.Column("population_id", sa.Integer, sa.ForeignKey(populations.c.id), primary_key=True),
    sa.Column("member_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
)

exploits = sa.Table(
    "poptune_exploits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("population_id", sa.Integer, sa.ForeignKey(populations.c.id), nullable=False),
    sa.Column("member_id", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("donor_id", sa.Integer, nullable=False),
    sa.Column("donor_step", sa.Integer, nullable=False),
    sa.Column("hparams_before", sa.Text, nullable=False),
    sa.Column("hparams_after", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("donor_score", sa.Float, nullable=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Index("ix_poptune_exploits_population", "population_id"),
)

failures = sa.Table(
    "poptune_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("population_id", sa.Integer, sa.ForeignKey(populations.c.id), nullable=False),
    sa.Column("member_id", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("traceback", sa.Text, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
)


def _mark_legacy_steps(connection: Connection) -> int:
    """Schema 2 -> 3: the meaning of ``step`` changed (it now travels with copied weights).

    The tables are unchanged, and old rows are kept as they were recorded; each old population
    is marked, so it stays readable but is never continued under the new meaning.
    """
    for row in connection.execute(sa.select(populations.c.id, populations.c.config)).all():
        config = json.loads(row.config)
        config[LEGACY_STEPS] = True
        connection.execute(
            populations.update().where(populations.c.id == row.id).values(config=dumps(config))
        )
    return 3


def _name_checksums(connection: Connection) -> int:
    """Schema 3 -> 4: checkpoints record a named checksum (``"xxh3_128:<hex>"``) instead of a
    SHA-256. The column is renamed; the SHA-256 values already in it stay valid (a bare hex
    checksum is verified as SHA-256)."""
    connection.execute(sa.text("ALTER TABLE poptune_checkpoints RENAME COLUMN sha256 TO checksum"))
    return 4


#: schema version -> the function that upgrades a database from it, in place, and returns the
#: version it upgraded to. Each runs in the transaction that opens the storage.
MIGRATIONS: dict[int, Callable[[Connection], int]] = {2: _mark_legacy_steps, 3: _name_checksums}


def dumps(value: Any) -> str:
    """``value`` as the JSON text stored in the schema's text columns (NaN allowed)."""
    return json.dumps(value, allow_nan=True)


def upgrade_schema(connection: Connection, where: str) -> None:
    """Create the tables of an empty database, or upgrade an older one to
    :data:`SCHEMA_VERSION` in place, inside the caller's transaction.

    ``where`` names the storage in messages (password hidden). A database written by a newer
    poptune is refused: this one cannot know what the newer schema means.
    """
    if connection.dialect.name == "postgresql":
        # Processes opening a new database at once would race in CREATE TABLE (a duplicate key
        # in PostgreSQL's catalog): one creates, the others wait. (On SQLite, BEGIN IMMEDIATE
        # already serialises them.)
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    metadata.create_all(connection)
    row = connection.execute(
        sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
    ).first()
    if row is None:
        connection.execute(
            meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
        )
        return
    version = int(row.value)
    if version == SCHEMA_VERSION:
        return
    if version not in MIGRATIONS:
        raise StorageError(
            f"The storage {where} has poptune schema version {row.value}, which this poptune "
            f"(schema {SCHEMA_VERSION}) cannot upgrade. Use the poptune version that created "
            "it, or a new database."
        )
    while version != SCHEMA_VERSION:
        version = MIGRATIONS[version](connection)
    connection.execute(
        meta_table.update()
        .where(meta_table.c.key == "schema_version")
        .values(value=str(SCHEMA_VERSION))
    )
