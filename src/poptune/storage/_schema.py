"""The SQL schema: tables, the schema version, and the migrations that upgrade older databases.

The schema uses only portable types so SQLite and PostgreSQL take it unchanged. Every change to
it bumps :data:`SCHEMA_VERSION` and adds a migration to :data:`MIGRATIONS`; opening a storage
runs the missing ones, in place, in the transaction that opens it (see docs/upgrades.md).
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._base import StorageError

__all__ = [
    "FINITE",
    "LEGACY_STEPS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "check_readable",
    "checkpoints",
    "create_database_id",
    "dumps",
    "exploits",
    "failures",
    "intervals",
    "loads",
    "members",
    "meta_table",
    "metadata",
    "next_population_id",
    "populations",
    "read_database_id",
    "shown",
    "step_bests",
    "stored_version",
    "upgrade_schema",
]

SCHEMA_VERSION = 9
#: the largest finite float: ``score BETWEEN -FINITE AND FINITE`` leaves out NULL (NaN), the
#: infinities and PostgreSQL's NaN
FINITE = sys.float_info.max
_LOCK = 0x706F7074756E65  # "poptune": the advisory lock that serialises schema creation
#: Set in the configuration of a population recorded before schema 3 (whose ``step`` counted the
#: intervals a member trained itself rather than the intervals behind its weights) that could not
#: be rewritten to the new meaning exactly; its value says why. It can be read but not
#: continued. Populations that could be rewritten (schema 5) no longer carry it.
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
    # claims walk the members in step order
    sa.Index("ix_poptune_members_step", "population_id", "step", "member_id"),
    # an exploit leaves out the failed members
    sa.Index("ix_poptune_members_status", "population_id", "status"),
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
    # exploits read the intervals at one step
    sa.Index("ix_poptune_intervals_step", "population_id", "step", "member_id"),
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
    # the score of the interval that wrote it: an exploit ranks the checkpoints at one step
    # from this table's index alone (schema 8)
    sa.Column("score", sa.Float, nullable=True),
    # an exploit's counts and rows at one step, and garbage collection below a step
    sa.Index("ix_poptune_checkpoints_peers", "population_id", "step", "member_id", "score"),
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
    # why the member copied: "exploit", "reseed" (it kept failing) or "fallback" (its
    # checkpoint was damaged); see records.CopyReason
    sa.Column("reason", sa.String(16), nullable=False, server_default="exploit"),
    sa.Index("ix_poptune_exploits_population", "population_id"),
)

#: the best finite score recorded at each step (both ways, so either mode reads it): what stop
#: criteria read after every interval, one row per step whatever the population's size
#: (schema 9); kept by record_interval, in its transaction
step_bests = sa.Table(
    "poptune_step_bests",
    metadata,
    sa.Column("population_id", sa.Integer, sa.ForeignKey(populations.c.id), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("high", sa.Float, nullable=False),
    sa.Column("low", sa.Float, nullable=False),
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


# --- schema 4 -> 5: rewrite legacy steps -------------------------------------------------------
#
# Snapshots of the tables as schema 4 has them: a migration must keep working on the schema it
# upgrades from, whatever later versions change in the tables above.
_t = sa.table
_c = sa.column
_V4_POPULATIONS = _t("poptune_populations", _c("id"), _c("config"))
_MEMBER_COLUMNS = ("population_id", "member_id", "step", "score", "status", "restore_member")
_V4_MEMBERS = _t("poptune_members", *map(_c, _MEMBER_COLUMNS), _c("restore_step"))
_INTERVAL_COLUMNS = (
    "population_id",
    "member_id",
    "step",
    "hparams",
    "score",
    "metrics",
    "wall_time",
    "finished_at",
    "origin_member",
    "origin_step",
)
_V4_INTERVALS = _t("poptune_intervals", *map(_c, _INTERVAL_COLUMNS))
_CHECKPOINT_COLUMNS = ("population_id", "member_id", "step", "path", "size", "checksum")
_V4_CHECKPOINTS = _t("poptune_checkpoints", *map(_c, _CHECKPOINT_COLUMNS))
_EXPLOIT_COLUMNS = ("id", "population_id", "member_id", "step", "donor_id", "donor_step", "time")
_V4_EXPLOITS = _t("poptune_exploits", *map(_c, _EXPLOIT_COLUMNS))
_FAILURE_COLUMNS = ("id", "population_id", "member_id", "step", "time")
_V4_FAILURES = _t("poptune_failures", *map(_c, _FAILURE_COLUMNS))


class _NotExact(Exception):
    """A legacy population whose rows cannot be rewritten to the new step exactly."""


def _rewrite_legacy_steps(connection: Connection) -> int:
    """Schema 4 -> 5: rewrite the populations recorded before schema 3 to the new meaning of
    ``step`` (the intervals behind a member's weights), so that they can be continued.

    Schema 2 counted the intervals a member trained itself, and an exploit kept the member's
    count. Every interval recorded the checkpoint it started from (``origin``), so the
    intervals behind each checkpoint follow exactly: ``1 +`` those behind its origin, ``0``
    behind no origin. Intervals, checkpoints, exploits (the copier's step and the donor's),
    failures, interval origins and members (step, score and restore point: the weights they
    hold) are rewritten with it; nothing else changes, and no row is added or dropped.

    A population is left as it was recorded, still marked, if its rows cannot be rewritten
    exactly: when a member copied weights that had trained fewer intervals than weights it had
    trained before, two of its intervals would start from as many intervals of training (in
    the new meaning a member never trains the same step twice), or when an interval's origin or
    an exploit's donor was not recorded. ``LEGACY_STEPS`` then says why.
    """
    rows = connection.execute(sa.select(_V4_POPULATIONS.c.id, _V4_POPULATIONS.c.config)).all()
    for population_id, text in rows:
        config = json.loads(text)
        if not config.get(LEGACY_STEPS):
            continue
        try:
            _rewrite_population(connection, population_id, int(config["intervals"]))
        except _NotExact as why:
            config[LEGACY_STEPS] = str(why)
        else:
            del config[LEGACY_STEPS]
        connection.execute(
            _V4_POPULATIONS.update()
            .where(_V4_POPULATIONS.c.id == population_id)
            .values(config=dumps(config))
        )
    return 5


_Key = tuple[int, int]  # (member, step in the old meaning) of a legacy interval


class _NewSteps:
    """The new step of each legacy interval (the intervals behind its weights): 1 + its
    origin's, 1 behind no origin; computed once per interval, along chains of origins."""

    def __init__(self, origins: dict[_Key, tuple[Any, Any]]) -> None:
        self.origins = origins
        self.behind: dict[_Key, int] = {}

    def __call__(self, key: _Key) -> int:
        """The new step of the interval ``key``; :class:`_NotExact` if a link is missing."""
        chain: list[_Key] = []
        at: _Key | None = key
        while at is not None and at not in self.behind:
            if at not in self.origins or at in chain:
                raise _NotExact(
                    f"interval (member {at[0]}, step {at[1]}) is referenced but not recorded"
                )
            chain.append(at)
            origin = self.origins[at]
            at = None if origin[0] is None else (origin[0], origin[1])
        for later in reversed(chain):
            origin = self.origins[later]
            before = 0 if origin[0] is None else self.behind[(origin[0], origin[1])]
            self.behind[later] = 1 + before
        return self.behind[key]

    def check_each_trained_once(self) -> None:
        """:class:`_NotExact` if two intervals of a member would start from weights as old."""
        for key in self.origins:
            self(key)
        seen: dict[_Key, int] = {}
        for (member, old), new in sorted(self.behind.items()):
            if (member, new) in seen:
                raise _NotExact(
                    f"member {member} trained twice from weights {new - 1} intervals old (its "
                    f"intervals {seen[(member, new)]} and {old}): it copied weights that had "
                    "trained less than its own"
                )
            seen[(member, new)] = old

    def held(self, member: int, old_step: int, donors: list[_Key]) -> int:
        """Intervals behind the weights ``member`` held at ``old_step``: the last copy's since
        its interval at that step, else that interval's."""
        if donors:
            return self(donors[-1])
        return 0 if old_step == 0 else self((member, old_step))


_Copies = dict[_Key, list[tuple[float, int, _Key]]]  # (member, old step) -> (time, id, donor)


def _exploit_updates(rows: list[Any], steps: _NewSteps) -> tuple[list[dict[str, Any]], _Copies]:
    """The new steps of the exploits (in recording order: what each member held when each
    happened), and the copies each member made at each old step."""
    copies: _Copies = {}
    updates = []
    for row in rows:
        donor = (row.donor_id, row.donor_step)
        earlier = [d for _, _, d in copies.get((row.member_id, row.step), [])]
        updates.append(
            {
                "x_id": row.id,
                "x_step": steps.held(row.member_id, row.step, earlier),
                "x_donor_step": steps(donor),
            }
        )
        copies.setdefault((row.member_id, row.step), []).append((row.time, row.id, donor))
    return updates, copies


def _failure_updates(rows: list[Any], copies: _Copies, steps: _NewSteps) -> list[dict[str, Any]]:
    """The new steps of the failures."""
    updates = []
    for row in rows:
        # A failure of interval s + 1 happened while the member held its weights of step s,
        # or those of the copies recorded before it (a re-seed is recorded after its failure).
        earlier = [d for t, _, d in copies.get((row.member_id, row.step - 1), []) if t < row.time]
        updates.append(
            {"x_id": row.id, "x_step": steps.held(row.member_id, row.step - 1, earlier) + 1}
        )
    return updates


def _member_updates(
    rows: list[Any], scores: dict[_Key, Any], steps: _NewSteps, budget: int
) -> list[dict[str, Any]]:
    """The members' new steps, scores, restore points and statuses: those of the weights
    they hold."""
    updates = []
    for row in rows:
        restore = None if row.restore_member is None else (row.restore_member, row.restore_step)
        step = 0 if restore is None else steps(restore)
        status = row.status
        if status == "idle" and step >= budget:
            status = "done"  # its weights trained the budget: nothing is left to train
        updates.append(
            {
                "x_mid": row.member_id,
                "x_step": step,
                "x_score": None if restore is None else scores[restore],
                "x_rs": None if restore is None else steps(restore),
                "x_status": status,
            }
        )
    return updates


def _move_rows(
    connection: Connection, population_id: int, steps: _NewSteps, moves: Sequence[Any]
) -> None:
    """Write the (table, rows, columns) keyed by step again at their new steps. Deleted and
    inserted again so that no intermediate state collides on the primary key."""

    def moved(row: Any, columns: Sequence[str]) -> dict[str, Any]:
        values = dict(zip(columns, row, strict=True))
        values["step"] = steps((row.member_id, row.step))
        if values.get("origin_member") is not None:
            values["origin_step"] = steps((row.origin_member, row.origin_step))
        return values

    for table, rows, columns in moves:
        connection.execute(table.delete().where(table.c.population_id == population_id))
        if rows:
            connection.execute(table.insert(), [moved(row, columns) for row in rows])


def _write_updates(
    connection: Connection,
    population_id: int,
    exploits: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    members: list[dict[str, Any]],
) -> None:
    """Write the new steps of the exploits, failures and members."""
    b = sa.bindparam
    if exploits:
        connection.execute(
            _V4_EXPLOITS.update()
            .where(_V4_EXPLOITS.c.id == b("x_id"))
            .values(step=b("x_step"), donor_step=b("x_donor_step")),
            exploits,
        )
    if failures:
        connection.execute(
            _V4_FAILURES.update().where(_V4_FAILURES.c.id == b("x_id")).values(step=b("x_step")),
            failures,
        )
    m = _V4_MEMBERS
    if members:
        connection.execute(
            m.update()
            .where(m.c.population_id == population_id, m.c.member_id == b("x_mid"))
            .values(
                step=b("x_step"), score=b("x_score"), restore_step=b("x_rs"), status=b("x_status")
            ),
            members,
        )


def _rewrite_population(connection: Connection, population_id: int, budget: int) -> None:
    """Rewrite one legacy population's steps in place, or raise :class:`_NotExact` having
    changed nothing."""

    def select(table: Any, *order: Any) -> list[Any]:
        query = sa.select(table).where(table.c.population_id == population_id)
        return list(connection.execute(query.order_by(*order)).all())

    interval_rows = select(_V4_INTERVALS, _V4_INTERVALS.c.member_id, _V4_INTERVALS.c.step)
    steps = _NewSteps(
        {(r.member_id, r.step): (r.origin_member, r.origin_step) for r in interval_rows}
    )
    steps.check_each_trained_once()
    exploits, copies = _exploit_updates(select(_V4_EXPLOITS, _V4_EXPLOITS.c.id), steps)
    failures = _failure_updates(select(_V4_FAILURES, _V4_FAILURES.c.id), copies, steps)
    scores = {(r.member_id, r.step): r.score for r in interval_rows}
    members = _member_updates(select(_V4_MEMBERS, _V4_MEMBERS.c.member_id), scores, steps, budget)
    checkpoint_rows = select(_V4_CHECKPOINTS)
    for row in checkpoint_rows:
        steps((row.member_id, row.step))  # every checkpoint belongs to a recorded interval
    # Everything is known and exact: write.
    _move_rows(
        connection,
        population_id,
        steps,
        [
            (_V4_CHECKPOINTS, checkpoint_rows, _CHECKPOINT_COLUMNS),
            (_V4_INTERVALS, interval_rows, _INTERVAL_COLUMNS),
        ],
    )
    _write_updates(connection, population_id, exploits, failures, members)


#: schema version -> the function that upgrades a database from it, in place, and returns the
#: version it upgraded to. All run in the one transaction that opens the storage: an upgrade
#: that fails half-way leaves the database as it was.
def _record_copy_reasons(connection: Connection) -> int:
    """Schema 5 -> 6: every copy records why it happened (``reason``), so recoveries are not
    counted as exploits.

    Older rows did not say. A re-seed was recorded in the same transaction as the failure that
    caused it, without a score of its own (the member had none): a copy with no score whose
    member has a failure recorded less than a second before it is marked ``reseed``. Every other
    old row stays ``exploit`` (a fallback from a damaged checkpoint left no trace to tell it by).
    """
    connection.execute(
        sa.text(
            "ALTER TABLE poptune_exploits ADD COLUMN reason VARCHAR(16) NOT NULL DEFAULT 'exploit'"
        )
    )
    connection.execute(
        sa.text(
            "UPDATE poptune_exploits SET reason = 'reseed' WHERE score IS NULL AND EXISTS ("
            " SELECT 1 FROM poptune_failures f"
            " WHERE f.population_id = poptune_exploits.population_id"
            " AND f.member_id = poptune_exploits.member_id"
            " AND poptune_exploits.time >= f.time"
            " AND poptune_exploits.time - f.time < 1.0)"
        )
    )
    return 6


def _index_steps(connection: Connection) -> int:
    """Schema 6 -> 7: indexes by step, so that a claim, an exploit's read of one step and a
    garbage collection cost the same whatever the population's size and age."""
    for name, table, columns in (
        ("ix_poptune_members_step", "poptune_members", "population_id, step, member_id"),
        ("ix_poptune_intervals_step", "poptune_intervals", "population_id, step, member_id"),
        ("ix_poptune_checkpoints_step", "poptune_checkpoints", "population_id, step"),
    ):
        connection.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))
    return 7


def _score_checkpoints(connection: Connection) -> int:
    """Schema 7 -> 8: each checkpoint row carries its interval's score, and is indexed by step
    with it, so an exploit counts and ranks the candidates at one step from one index (a few
    rows read, whatever the population's size) instead of joining three tables."""
    connection.execute(sa.text("ALTER TABLE poptune_checkpoints ADD COLUMN score FLOAT"))
    connection.execute(
        sa.text(
            "UPDATE poptune_checkpoints SET score = (SELECT i.score FROM poptune_intervals i"
            " WHERE i.population_id = poptune_checkpoints.population_id"
            " AND i.member_id = poptune_checkpoints.member_id"
            " AND i.step = poptune_checkpoints.step)"
        )
    )
    connection.execute(sa.text("DROP INDEX IF EXISTS ix_poptune_checkpoints_step"))
    for name, table, columns in (
        (
            "ix_poptune_checkpoints_peers",
            "poptune_checkpoints",
            "population_id, step, member_id, score",
        ),
        ("ix_poptune_members_status", "poptune_members", "population_id, status"),
    ):
        connection.execute(sa.text(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"))
    return 8


def _best_by_step(connection: Connection) -> int:
    """Schema 8 -> 9: the best finite score of each step is kept in ``poptune_step_bests``
    (created empty by ``create_all`` before the migrations run), filled here from the
    intervals, so stop criteria read one row per step instead of every interval."""
    connection.execute(sa.text("DELETE FROM poptune_step_bests"))
    connection.execute(
        sa.text(
            "INSERT INTO poptune_step_bests (population_id, step, high, low)"
            " SELECT population_id, step, max(score), min(score) FROM poptune_intervals"
            " WHERE score BETWEEN :low AND :high GROUP BY population_id, step"
        ),
        {"low": -FINITE, "high": FINITE},
    )
    return 9


MIGRATIONS: dict[int, Callable[[Connection], int]] = {
    2: _mark_legacy_steps,
    3: _name_checksums,
    4: _rewrite_legacy_steps,
    5: _record_copy_reasons,
    6: _index_steps,
    7: _score_checkpoints,
    8: _best_by_step,
}


def dumps(value: Any) -> str:
    """``value`` as the JSON text stored in the schema's text columns (NaN allowed)."""
    return json.dumps(value, allow_nan=True)


def loads(text: Any, what: str, kind: type = dict) -> Any:
    """The JSON ``text`` read back from a text column, which must hold a ``kind``.

    ``what`` names the value in the message (e.g. "the configuration of population 'digits'").
    Stored text is untrusted: a row edited by hand or damaged is a :class:`StorageError` that
    shows the start of the text, not a parser's traceback.

    Raises:
        StorageError: if ``text`` is not JSON of that kind.
    """
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as error:
        why = f"which is not valid JSON ({error})"
    else:
        if isinstance(value, kind):
            return value
        why = f"which is JSON but not {'an object' if kind is dict else kind.__name__}"
    raise StorageError(
        f"{what[0].upper()}{what[1:]} is stored as {shown(text)}, {why}: the database was "
        "edited by hand or is damaged. Restore it from a backup (or that row from a copy)."
    )


def shown(value: Any, limit: int = 60) -> str:
    """A stored value as a message may show it: quoted, escaped (no control characters reach the
    terminal) and cut at ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...'"


def stored_version(connection: Connection, where: str) -> int | None:
    """The schema version recorded in ``poptune_meta``, or ``None`` where there is no such table
    (or it holds no version): not a poptune database, or an empty one.

    Raises:
        StorageError: if the recorded version is not a number.
    """
    if not sa.inspect(connection).has_table(meta_table.name):
        return None
    value = connection.execute(
        sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
    ).scalar()
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise StorageError(
            f"The storage {where} records its poptune schema version as {shown(value)} (key "
            "'schema_version' of the table poptune_meta), which is not a number: the table was "
            "edited by hand or is damaged. Restore the database from a backup, or set that "
            "value back to the version it had (see docs/upgrades.md)."
        ) from None


def check_readable(version: int, where: str) -> None:
    """Refuse to read a database whose schema is not this poptune's, without changing it.

    Reading never upgrades (see docs/upgrades.md): an older schema needs one explicit upgrade,
    a newer one a newer poptune.

    Raises:
        StorageError: if ``version`` is not :data:`SCHEMA_VERSION`.
    """
    if version > SCHEMA_VERSION:
        raise _newer(version, where)
    if version < SCHEMA_VERSION:
        raise StorageError(
            f"The storage {where} has poptune schema version {version}, older than this "
            f"poptune's ({SCHEMA_VERSION}): it needs a one-time upgrade, which reading does "
            "not do. Back it up, then run `poptune upgrade --storage URL` once (resume, worker "
            "and pt.run upgrade it too); see docs/upgrades.md. Nothing was changed."
        )


def _newer(version: int, where: str) -> StorageError:
    return StorageError(
        f"The storage {where} was written by a newer poptune (schema version {version}; "
        f"this poptune reads schema {SCHEMA_VERSION} and older). Upgrade poptune "
        "(pip install -U poptune) on every machine that opens it; nothing was changed."
    )


def upgrade_schema(connection: Connection, where: str, create: bool = True) -> int | None:
    """Create the tables of an empty database (if ``create``), or upgrade an older one to
    :data:`SCHEMA_VERSION` in place, inside the caller's transaction.

    ``where`` names the storage in messages (password hidden). A database written by a newer
    poptune is refused: this one cannot know what the newer schema means. So is one that has
    tables named ``poptune_...`` but no recorded version: they are not poptune's (or not any
    more), and creating the missing ones beside them would label them with this schema.

    Returns the version it upgraded from, or ``None`` if it upgraded nothing.

    Raises:
        StorageError: for a newer, unknown or unreadable schema; without ``create``, for a
            database that holds no poptune schema.
    """
    if connection.dialect.name == "postgresql":
        # Processes opening a new database at once would race in CREATE TABLE (a duplicate key
        # in PostgreSQL's catalog): one creates, the others wait. (On SQLite, BEGIN IMMEDIATE
        # already serialises them.)
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    version = stored_version(connection, where)
    if version is None:
        if not create:
            raise StorageError(
                f"No poptune database at {where}: it holds no poptune tables. Check the storage "
                "URL (--storage, $POPTUNE_STORAGE); pt.run(..., storage=URL) stores a population "
                "there."
            )
        # Only poptune's own table names: creating them beside such tables would label those
        # with this schema. Any other table (poptune_settings, another application's) is left
        # alone, as the tables of every other name are.
        ours = set(metadata.tables) - {meta_table.name}
        found = sorted(set(sa.inspect(connection).get_table_names()) & ours)
        if found:
            raise StorageError(
                f"The storage {where} has tables with poptune's names ({', '.join(found[:5])}) "
                "but no poptune_meta table with their schema version: another application's, "
                "or a poptune database whose poptune_meta table was dropped. Nothing was "
                "changed; use another database (or PostgreSQL schema), or, if they are "
                "poptune's, restore the database from a backup."
            )
        metadata.create_all(connection)
        connection.execute(
            meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
        )
        return None
    if version == SCHEMA_VERSION:
        return None
    if version > SCHEMA_VERSION:
        raise _newer(version, where)
    if version not in MIGRATIONS:
        raise StorageError(
            f"The storage {where} has poptune schema version {version}, older than this "
            f"poptune can upgrade (schema {min(MIGRATIONS)} and newer). Open it once with a "
            "poptune release between, which upgrades it, or start a new database."
        )
    metadata.create_all(connection)  # the tables a migration fills (e.g. schema 9's step_bests)
    upgraded_from = version
    while version != SCHEMA_VERSION:
        version = MIGRATIONS[version](connection)
    connection.execute(
        meta_table.update()
        .where(meta_table.c.key == "schema_version")
        .values(value=str(SCHEMA_VERSION))
    )
    return upgraded_from


_DATABASE_ID = "database_id"


def read_database_id(connection: Connection, where: str) -> str | None:
    """The database's id (see :meth:`poptune.storage.Storage.database_id`), or ``None`` if it
    has none yet. No schema version carries it: any version may get one, when first needed."""
    row = connection.execute(
        sa.select(meta_table.c.value).where(meta_table.c.key == _DATABASE_ID)
    ).first()
    if row is None:
        return None
    if re.fullmatch(r"[0-9a-f]{16}", row.value) is None:
        raise StorageError(
            f"The storage {where} has a database id {row.value[:40]!r} that poptune did not "
            "write (16 hexadecimal digits expected): its poptune_meta table was changed by "
            "hand. Restore the database from a backup."
        )
    return str(row.value)


def create_database_id(connection: Connection, where: str) -> str:
    """The database's id, created now if it has none (in the caller's write transaction)."""
    existing = read_database_id(connection, where)
    if existing is not None:
        return existing
    created = uuid.uuid4().hex[:16]
    connection.execute(meta_table.insert().values(key=_DATABASE_ID, value=created))
    return created


#: The meta key of the highest population id SQLite ever gave in this database.
_LAST_POPULATION_ID = "last_population_id"


def next_population_id(connection: Connection) -> int:
    """The id for a population created now in a SQLite database (in the caller's write
    transaction, which records it): above every id the database ever gave, never one that a
    deleted population had.

    SQLite gives a table without ``AUTOINCREMENT`` the highest id present plus one, so it
    would give a deleted population's id (the last one created) to the next, and a worker
    that outlived the deleted population, or a checkpoint left in its folder, would be taken
    for the new one's. The table cannot be changed to ``AUTOINCREMENT`` in place; the highest
    id given is kept in ``poptune_meta`` instead (a database written before it had this key
    starts from its highest id present). PostgreSQL's sequences never give an id twice.
    """
    row = connection.execute(
        sa.select(meta_table.c.value).where(meta_table.c.key == _LAST_POPULATION_ID)
    ).first()
    present = connection.execute(sa.select(sa.func.max(populations.c.id))).scalar()
    given = int(row.value) if row is not None and row.value.isdigit() else 0
    chosen = max(given, int(present or 0)) + 1
    if row is None:
        connection.execute(meta_table.insert().values(key=_LAST_POPULATION_ID, value=str(chosen)))
    else:
        connection.execute(
            meta_table.update()
            .where(meta_table.c.key == _LAST_POPULATION_ID)
            .values(value=str(chosen))
        )
    return chosen
