"""SQLAlchemy Core implementation of :class:`~poptune.storage.Storage` (SQLite by default).

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing half-way. The
schema uses only portable types so PostgreSQL takes it unchanged.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from ..records import (
    CheckpointRef,
    ExploitEvent,
    FailureRecord,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    Mode,
    PopulationRecord,
    PopulationStatus,
)
from ._base import (
    Claim,
    LeaseLost,
    PopulationExists,
    PopulationNotFound,
    StorageError,
    Summary,
)
from ._retry import retrying

__all__ = [
    "LEGACY_STEPS",
    "NETWORK_FILESYSTEMS",
    "SCHEMA_VERSION",
    "SQLStorage",
    "filesystem_type",
    "redact_url",
]

SCHEMA_VERSION = 4
_FINITE = 1.7976931348623157e308  # the largest finite float
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


NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "fuse.sshfs",
        "sshfs",
        "9p",
        "glusterfs",
        "fuse.glusterfs",
        "ceph",
        "fuse.ceph",
        "lustre",
        "afs",
        "gpfs",
        "beegfs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.rclone",
    }
)


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (from /proc/mounts), if it can be told."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    resolved = str(path.resolve())
    best, kind = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable storage URL>"


def _mark_legacy_steps(connection: Connection) -> int:
    """Schema 2 -> 3: the meaning of ``step`` changed (it now travels with copied weights).

    The tables are unchanged, and old rows are kept as they were recorded; each old population
    is marked, so it stays readable but is never continued under the new meaning.
    """
    for row in connection.execute(sa.select(populations.c.id, populations.c.config)).all():
        config = json.loads(row.config)
        config[LEGACY_STEPS] = True
        connection.execute(
            populations.update().where(populations.c.id == row.id).values(config=_dumps(config))
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
_MIGRATIONS: dict[int, Any] = {2: _mark_legacy_steps, 3: _name_checksums}


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def _score(value: float | None) -> float | None:
    # SQLite stores NaN as NULL anyway; make that explicit so every backend agrees.
    if value is None or math.isnan(value):
        return None
    return float(value)


class SQLStorage:
    """Population storage in any SQL database SQLAlchemy reaches (SQLite, PostgreSQL).

    Example:
        >>> storage = SQLStorage("sqlite:///runs/poptune.db")   # doctest: +SKIP
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StorageError(
                f"Cannot parse the storage URL {url!r}. Use a SQLAlchemy URL such as "
                "'sqlite:///runs/poptune.db' or 'postgresql+psycopg://user@host/db'."
            ) from None
        self._sqlite = parsed.get_backend_name() == "sqlite"
        if self._sqlite:
            database = parsed.database or ""
            if database in ("", ":memory:") or database.startswith("file::memory:"):
                raise StorageError(
                    f"The storage URL {url!r} is an in-memory SQLite database, which worker "
                    "processes cannot share and which is lost at exit. Use a file: "
                    "'sqlite:///runs/poptune.db'."
                )
            folder = Path(database).expanduser().parent
            folder.mkdir(parents=True, exist_ok=True)
            kind = filesystem_type(folder)
            if kind in NETWORK_FILESYSTEMS:
                warnings.warn(
                    f"The SQLite database {database} is on a network filesystem ({kind}), where "
                    "SQLite's locking is unreliable and workers on several machines can corrupt "
                    "it. Use PostgreSQL for populations shared between machines "
                    "(storage='postgresql+psycopg://...').",
                    RuntimeWarning,
                    stacklevel=2,
                )
        try:
            self._engine = self._create_engine(url)
            self._create_schema()
        except (OperationalError, ArgumentError, ImportError) as error:
            raise StorageError(
                f"Cannot open the storage {redact_url(url)}: {error}. Check the URL, that the "
                "server is running and that you may write there."
            ) from error

    # --- connection handling -------------------------------------------------------------

    def _create_engine(self, url: str) -> Engine:
        if not self._sqlite:
            return sa.create_engine(url, pool_pre_ping=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60.0})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control away from the sqlite3 module so that "begin" below
            # decides how each transaction starts.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            kind = connection.get_execution_options().get("poptune_begin", "DEFERRED")
            connection.exec_driver_sql(f"BEGIN {kind}")

        return engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self._engine.connect() as connection:
            if self._sqlite:
                connection = connection.execution_options(poptune_begin="IMMEDIATE")
            with connection.begin():
                yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as connection, connection.begin():
            yield connection

    def _create_schema(self) -> None:
        with self._write() as connection:
            if connection.dialect.name == "postgresql":
                # Processes opening a new database at once would race in CREATE TABLE (a
                # duplicate key in PostgreSQL's catalog): one creates, the others wait. (On
                # SQLite, BEGIN IMMEDIATE already serialises them.)
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
            metadata.create_all(connection)
            row = connection.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).first()
            if row is None:
                connection.execute(
                    meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                )
            elif int(row.value) != SCHEMA_VERSION:
                version = int(row.value)
                if version not in _MIGRATIONS:
                    raise StorageError(
                        f"The storage {redact_url(self.url)} has poptune schema version "
                        f"{row.value}, which this poptune (schema {SCHEMA_VERSION}) cannot "
                        "upgrade. Use the poptune version that created it, or a new database."
                    )
                while version != SCHEMA_VERSION:
                    version = _MIGRATIONS[version](connection)
                connection.execute(
                    meta_table.update()
                    .where(meta_table.c.key == "schema_version")
                    .values(value=str(SCHEMA_VERSION))
                )

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])  # type: ignore[misc]

    # --- populations ---------------------------------------------------------------------

    def create_population(
        self, name: str, config: Mapping[str, Any], hparams: Sequence[Mapping[str, Any]]
    ) -> PopulationRecord:
        """Create a population and its idle members in one transaction."""
        now = time.time()
        try:
            with self._write() as connection:
                result = connection.execute(
                    populations.insert().values(
                        name=name,
                        config=_dumps(config),
                        status=PopulationStatus.RUNNING.value,
                        error=None,
                        created_at=now,
                        failure_streak=0,
                    )
                )
                population_id = int(result.inserted_primary_key[0])
                connection.execute(
                    members.insert(),
                    [
                        {
                            "population_id": population_id,
                            "member_id": index,
                            "step": 0,
                            "hparams": _dumps(dict(values)),
                            "score": None,
                            "parent": None,
                            "status": MemberStatus.IDLE.value,
                            "restore_member": None,
                            "restore_step": None,
                            "exploit_pending": False,
                            "failures": 0,
                            "owner": None,
                            "token": 0,
                            "lease_until": None,
                        }
                        for index, values in enumerate(hparams)
                    ],
                )
        except IntegrityError:
            raise PopulationExists(f"A population named {name!r} already exists.") from None
        return self.population(name)

    def delete_population(self, population_id: int) -> list[CheckpointRef]:
        """Delete the population and everything recorded for it, in one transaction; return
        its checkpoints, whose files nothing can reach any more."""
        with self._write() as connection:
            c = checkpoints.c
            rows = connection.execute(
                sa.select(checkpoints).where(c.population_id == population_id)
            ).all()
            for table in (failures, exploits, checkpoints, intervals, members):
                connection.execute(table.delete().where(table.c.population_id == population_id))
            connection.execute(populations.delete().where(populations.c.id == population_id))
        return [_checkpoint(row) for row in rows]

    def population(self, name: str) -> PopulationRecord:
        """The population called ``name``."""
        with self._read() as connection:
            row = connection.execute(
                sa.select(populations).where(populations.c.name == name)
            ).first()
            if row is None:
                known = connection.execute(sa.select(populations.c.name)).scalars().all()
        if row is None:
            hint = f" Populations here: {', '.join(known)}." if known else " It is empty."
            raise PopulationNotFound(
                f"No population named {name!r} in {redact_url(self.url)}.{hint}"
            )
        return _population(row)

    def populations(self) -> list[PopulationRecord]:
        """Every population, oldest first."""
        with self._read() as connection:
            rows = connection.execute(sa.select(populations).order_by(populations.c.id)).all()
        return [_population(row) for row in rows]

    def set_status(self, population_id: int, status: PopulationStatus, error: str | None) -> None:
        """Set a population's status (and error text)."""
        with self._write() as connection:
            connection.execute(
                populations.update()
                .where(populations.c.id == population_id)
                .values(status=status.value, error=error)
            )

    def stop(self, population_id: int, reason: str) -> bool:
        """Mark a running population stopped, with ``reason``; ``False`` if it was not running
        (finished, stopped or failed meanwhile)."""
        with self._write() as connection:
            result = connection.execute(
                populations.update()
                .where(
                    populations.c.id == population_id,
                    populations.c.status == PopulationStatus.RUNNING.value,
                )
                .values(status=PopulationStatus.STOPPED.value, error=reason)
            )
        return bool(result.rowcount)

    def update_config(self, population_id: int, values: Mapping[str, Any]) -> None:
        """Set these keys of the population's stored configuration (others are kept)."""
        with self._write() as connection:
            _lock_population(connection, population_id)
            config = json.loads(
                connection.execute(
                    sa.select(populations.c.config).where(populations.c.id == population_id)
                ).scalar_one()
            )
            config.update(values)
            connection.execute(
                populations.update()
                .where(populations.c.id == population_id)
                .values(config=_dumps(config))
            )

    # --- claims --------------------------------------------------------------------------

    def claim(
        self,
        population_id: int,
        owner: str,
        budget: int,
        lease_seconds: float,
        sync: bool,
        prefer: Sequence[int] = (),
    ) -> Claim | None:
        """Claim the least-advanced claimable member, atomically, preferring ``prefer`` on ties."""
        with self._write() as connection:
            row = connection.execute(
                _CLAIM_SYNC if sync else _CLAIM,
                {"pid": population_id, "budget": budget, "prefer": list(prefer)},
            ).first()
            if row is None:
                return None
            token = int(row.token) + 1
            connection.execute(
                _TAKE,
                {
                    "pid": population_id,
                    "mid": row.member_id,
                    "v_owner": owner,
                    "v_token": token,
                    "v_lease": lease_seconds,
                },
            )
        checkpoint = None
        if row.c_path is not None:
            checkpoint = CheckpointRef(
                row.restore_member, row.restore_step, row.c_path, row.c_size, row.c_checksum
            )
        return Claim(population_id, _member(row), owner, token, checkpoint)

    @staticmethod
    def _fenced(connection: Connection, statement: Any, claim: Claim, **values: Any) -> None:
        parameters = {
            "f_pid": claim.population_id,
            "f_mid": claim.member.id,
            "f_token": claim.token,
            **values,
        }
        if connection.execute(statement, parameters).rowcount != 1:
            raise LeaseLost(
                f"Member {claim.member.id} is no longer held by {claim.owner} "
                f"(claim token {claim.token}); its write was refused."
            )

    def renew(self, claim: Claim, lease_seconds: float) -> None:
        """Extend the lease of ``claim``."""
        with self._write() as connection:
            self._fenced(connection, _RENEW, claim, v_lease=lease_seconds)

    def release(self, claim: Claim) -> None:
        """Give the member back unchanged."""
        with self._write() as connection:
            self._fenced(connection, _RELEASE, claim)

    # --- records -------------------------------------------------------------------------

    def record_interval(
        self,
        claim: Claim,
        interval: IntervalRecord,
        checkpoint: CheckpointRef,
        exploit_pending: bool,
        done: bool,
        mode: Mode,
    ) -> list[CheckpointRef]:
        """Record the interval, its checkpoint and the member's new state; release the member;
        collect the checkpoints nothing needs any more (returned, so their files can go).

        Idempotent: a retry of a call that did commit (its reply was lost with the connection)
        finds its own checkpoint (a unique path) recorded, and succeeds without writing again.
        """
        status = MemberStatus.DONE if done else MemberStatus.IDLE
        score = _score(interval.score)
        hparams = _dumps(dict(interval.hparams))
        origin = interval.origin
        with self._write() as connection:
            try:
                self._fenced(
                    connection,
                    _RECORD,
                    claim,
                    v_step=interval.step,
                    v_score=score,
                    v_hparams=hparams,
                    v_rm=checkpoint.member,
                    v_rs=checkpoint.step,
                    v_pending=exploit_pending,
                    v_status=status.value,
                )
            except LeaseLost:
                # Refused: either the claim was taken over, or this is the retry of a call
                # that committed (it released the member). Only the latter finds its own
                # checkpoint (a unique path) recorded; what it collected then is swept later.
                if _exists(
                    connection,
                    checkpoints,
                    population_id=claim.population_id,
                    member_id=checkpoint.member,
                    step=checkpoint.step,
                    path=checkpoint.path,
                ):
                    return []
                raise
            connection.execute(
                intervals.insert(),
                {
                    "population_id": claim.population_id,
                    "member_id": interval.member,
                    "step": interval.step,
                    "hparams": hparams,
                    "score": score,
                    "metrics": _dumps(dict(interval.metrics)),
                    "wall_time": interval.wall_time,
                    "finished_at": interval.finished_at,
                    "origin_member": None if origin is None else origin[0],
                    "origin_step": None if origin is None else origin[1],
                },
            )
            connection.execute(
                checkpoints.insert(),
                {
                    "population_id": claim.population_id,
                    "member_id": checkpoint.member,
                    "step": checkpoint.step,
                    "path": checkpoint.path,
                    "size": checkpoint.size,
                    "checksum": checkpoint.checksum,
                },
            )
            connection.execute(_STREAK_RESET, {"pid": claim.population_id})
            return _collect(connection, claim.population_id, mode)

    def record_exploit(
        self,
        claim: Claim,
        event: ExploitEvent,
        hparams: Mapping[str, Any],
        done: bool = False,
    ) -> CheckpointRef | None:
        """Point the member at the donor's checkpoint, step and score, if the checkpoint still
        exists, and log the event; release the member as done if ``done``.

        Idempotent: a retry of a call that did commit (its reply was lost) finds the event
        recorded (same member, step, donor and time) and writes nothing twice.
        """
        with self._write() as connection:
            _lock_population(connection, claim.population_id)
            row = connection.execute(
                _CHECKPOINT,
                {"pid": claim.population_id, "mid": event.donor, "step": event.donor_step},
            ).first()
            if row is None:
                return None
            if _exploit_recorded(connection, claim.population_id, event):
                return _checkpoint(row)
            self._fenced(
                connection,
                _EXPLOIT_DONE if done else _EXPLOIT,
                claim,
                v_hparams=_dumps(dict(hparams)),
                v_parent=event.donor,
                v_rm=event.donor,
                v_rs=event.donor_step,
                v_step=event.donor_step,
                v_score=_score(event.donor_score),
            )
            connection.execute(exploits.insert(), _exploit_row(claim.population_id, event))
        return _checkpoint(row)

    def record_failure(
        self,
        claim: Claim,
        failure: FailureRecord,
        retry: bool,
        reseed: tuple[ExploitEvent, Mapping[str, Any]] | None = None,
        done: bool = False,
    ) -> MemberStatus:
        """Log the failure; then retry the member, re-seed it from a donor, or mark it failed.

        Idempotent: a retry of a call that did commit (its reply was lost) finds the failure
        recorded (same member, step and time) and returns what became of the member.
        """
        with self._write() as connection:
            if _exists(
                connection,
                failures,
                population_id=claim.population_id,
                member_id=failure.member,
                step=failure.step,
                time=failure.time,
            ):
                m = members.c
                status = connection.execute(
                    sa.select(m.status).where(
                        m.population_id == claim.population_id, m.member_id == failure.member
                    )
                ).scalar_one()
                return MemberStatus(status)
            outcome = MemberStatus.FAILED
            if retry:
                self._fenced(connection, _RETRY, claim)
                outcome = MemberStatus.IDLE
            elif (
                reseed is not None
                and connection.execute(
                    _CHECKPOINT,
                    {
                        "pid": claim.population_id,
                        "mid": reseed[0].donor,
                        "step": reseed[0].donor_step,
                    },
                ).first()
            ):
                event, hparams = reseed
                outcome = MemberStatus.DONE if done else MemberStatus.IDLE
                self._fenced(
                    connection,
                    _RESEED,
                    claim,
                    v_hparams=_dumps(dict(hparams)),
                    v_parent=event.donor,
                    v_rm=event.donor,
                    v_rs=event.donor_step,
                    v_step=event.donor_step,
                    v_score=_score(event.donor_score),
                    v_status=outcome.value,
                )
                connection.execute(exploits.insert(), _exploit_row(claim.population_id, event))
            else:
                self._fenced(connection, _FAIL, claim)
            connection.execute(
                failures.insert(),
                {
                    "population_id": claim.population_id,
                    "member_id": failure.member,
                    "step": failure.step,
                    "error": failure.error,
                    "traceback": failure.traceback,
                    "time": failure.time,
                },
            )
            connection.execute(_STREAK_UP, {"pid": claim.population_id})
        return outcome

    def failure_streak(self, population_id: int) -> int:
        """How many failures were recorded since the last successful interval."""
        with self._read() as connection:
            return int(connection.execute(_STREAK, {"pid": population_id}).scalar_one())

    # --- reads ---------------------------------------------------------------------------

    def members(self, population_id: int) -> list[MemberRecord]:
        """Every member's current record."""
        with self._read() as connection:
            rows = connection.execute(
                sa.select(members)
                .where(members.c.population_id == population_id)
                .order_by(members.c.member_id)
            ).all()
        return [_member(row) for row in rows]

    def intervals(self, population_id: int, after_step: int = 0) -> list[IntervalRecord]:
        """Every recorded interval above step ``after_step`` (default: all), by member and
        step."""
        i = intervals.c
        where = [i.population_id == population_id]
        if after_step > 0:
            where.append(i.step > after_step)
        with self._read() as connection:
            rows = connection.execute(
                sa.select(intervals).where(*where).order_by(i.member_id, i.step)
            ).all()
        return [_interval(row) for row in rows]

    def interval(self, population_id: int, member: int, step: int) -> IntervalRecord | None:
        """The interval ``member`` recorded at ``step``, or ``None``."""
        with self._read() as connection:
            row = connection.execute(
                _INTERVAL, {"pid": population_id, "mid": member, "step": step}
            ).first()
        return None if row is None else _interval(row)

    def scores_since(self, population_id: int, step: int) -> list[tuple[int, int, float | None]]:
        """(member, step, score) of every interval after ``step``, by member then step."""
        i = intervals.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(i.member_id, i.step, i.score)
                .where(i.population_id == population_id, i.step > step)
                .order_by(i.member_id, i.step)
            ).all()
        return [(row.member_id, row.step, row.score) for row in rows]

    def best_by_step(self, population_id: int, mode: Mode) -> list[tuple[int, float]]:
        """(step, best finite score recorded at that step), by step: one row per step, however
        many members, so stop criteria read little after every interval."""
        i = intervals.c
        best = sa.func.max(i.score) if mode is Mode.MAX else sa.func.min(i.score)
        with self._read() as connection:
            rows = connection.execute(
                sa.select(i.step, best.label("best"))
                .where(
                    i.population_id == population_id,
                    i.score > -_FINITE,  # NULL (NaN) and infinities are no one's best
                    i.score < _FINITE,
                )
                .group_by(i.step)
                .order_by(i.step)
            ).all()
        return [(int(row.step), float(row.best)) for row in rows]

    def candidates(self, population_id: int, step: int | None = None) -> list[IntervalRecord]:
        """Latest (or exactly ``step``) checkpointed interval of every healthy member."""
        with self._read() as connection:
            if step is None:
                rows = connection.execute(_LATEST, {"pid": population_id}).all()
            else:
                rows = connection.execute(_AT_STEP, {"pid": population_id, "step": step}).all()
        return [_interval(row) for row in rows]

    def exploits(self, population_id: int) -> list[ExploitEvent]:
        """Every exploit event in recording order."""
        e = exploits.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(exploits).where(e.population_id == population_id).order_by(e.id)
            ).all()
        return [
            ExploitEvent(
                member=row.member_id,
                step=row.step,
                donor=row.donor_id,
                donor_step=row.donor_step,
                hparams_before=json.loads(row.hparams_before),
                hparams_after=json.loads(row.hparams_after),
                score=row.score,
                donor_score=row.donor_score,
                time=row.time,
            )
            for row in rows
        ]

    def failures(self, population_id: int) -> list[FailureRecord]:
        """Every failure of user code, oldest first."""
        f = failures.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(failures).where(f.population_id == population_id).order_by(f.id)
            ).all()
        return [
            FailureRecord(row.member_id, row.step, row.error, row.traceback, row.time)
            for row in rows
        ]

    def checkpoint(self, population_id: int, member: int, step: int) -> CheckpointRef | None:
        """The committed checkpoint of ``member`` at ``step``, or ``None``."""
        with self._read() as connection:
            row = connection.execute(
                _CHECKPOINT, {"pid": population_id, "mid": member, "step": step}
            ).first()
        return None if row is None else _checkpoint(row)

    def discard_checkpoint(self, population_id: int, ref: CheckpointRef) -> None:
        """Drop the row of a damaged checkpoint so that no one restores or copies it again."""
        c = checkpoints.c
        with self._write() as connection:
            connection.execute(
                checkpoints.delete().where(
                    c.population_id == population_id,
                    c.member_id == ref.member,
                    c.step == ref.step,
                    c.checksum == ref.checksum,
                )
            )

    def checkpoints(self, population_id: int) -> list[CheckpointRef]:
        """Every committed checkpoint."""
        c = checkpoints.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(checkpoints)
                .where(c.population_id == population_id)
                .order_by(c.member_id, c.step)
            ).all()
        return [_checkpoint(row) for row in rows]

    def collect_garbage(self, population_id: int, mode: Mode) -> list[CheckpointRef]:
        """Delete the checkpoint rows nothing needs; return them so their files can go too."""
        with self._write() as connection:
            return _collect(connection, population_id, mode)

    def summary(self, population_id: int, budget: int, mode: Mode) -> Summary:
        """Counts for a progress display."""
        m = members.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(m.member_id, m.step, m.score, m.status).where(
                    m.population_id == population_id
                )
            ).all()
            n_exploits = connection.execute(
                sa.select(sa.func.count())
                .select_from(exploits)
                .where(exploits.c.population_id == population_id)
            ).scalar_one()
            n_failures = connection.execute(
                sa.select(sa.func.count())
                .select_from(failures)
                .where(failures.c.population_id == population_id)
            ).scalar_one()
            status = connection.execute(
                sa.select(populations.c.status).where(populations.c.id == population_id)
            ).scalar_one()
        scored = [r for r in rows if r.score is not None and r.status != MemberStatus.FAILED.value]
        best = max(scored, key=lambda r: (mode.fitness(r.score), -r.member_id), default=None)
        return Summary(
            members=len(rows),
            steps_done=sum(r.step for r in rows),
            steps_total=budget * len(rows),
            running=sum(r.status == MemberStatus.RUNNING.value for r in rows),
            done=sum(r.status == MemberStatus.DONE.value for r in rows),
            failed=sum(r.status == MemberStatus.FAILED.value for r in rows),
            exploits=int(n_exploits),
            failures=int(n_failures),
            best_member=None if best is None else best.member_id,
            best_score=None if best is None else best.score,
            status=PopulationStatus(status),
        )

    def release_claims(self, population_id: int, owners: Sequence[str]) -> int:
        """Give back, unchanged, every member held by ``owners`` (workers that are gone or
        stopping); return how many."""
        if not owners:
            return 0
        m = members.c
        with self._write() as connection:
            result = connection.execute(
                members.update()
                .where(
                    m.population_id == population_id,
                    m.status == MemberStatus.RUNNING.value,
                    m.owner.in_(list(owners)),
                )
                .values(status=MemberStatus.IDLE.value, owner=None, lease_until=None)
            )
        return int(result.rowcount)

    def claims(self, population_id: int) -> dict[int, str]:
        """Member id -> owner, for every member currently held by a worker."""
        m = members.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(m.member_id, m.owner).where(
                    m.population_id == population_id, m.status == MemberStatus.RUNNING.value
                )
            ).all()
        return {row.member_id: row.owner for row in rows}

    def extend(self, population_id: int, intervals: int) -> None:
        """Give the population a budget of ``intervals`` (not less than its own), in one
        transaction: record it, make members done below it idle, and mark it running."""
        with self._write() as connection:
            _lock_population(connection, population_id)
            config = json.loads(
                connection.execute(
                    sa.select(populations.c.config).where(populations.c.id == population_id)
                ).scalar_one()
            )
            if intervals < int(config["intervals"]):
                raise ValueError(
                    f"A budget only grows: intervals={intervals} is less than the population's "
                    f"{config['intervals']}."
                )
            config["intervals"] = intervals
            connection.execute(
                populations.update()
                .where(populations.c.id == population_id)
                .values(config=_dumps(config), status=PopulationStatus.RUNNING.value, error=None)
            )
            m = members.c
            connection.execute(
                members.update()
                .where(
                    m.population_id == population_id,
                    m.status == MemberStatus.DONE.value,
                    m.step < intervals,
                )
                .values(status=MemberStatus.IDLE.value, owner=None, lease_until=None)
            )

    def reopen_members(self, population_id: int, budget: int) -> None:
        """Make failed members (and finished ones below ``budget``) idle again, to resume."""
        m = members.c
        with self._write() as connection:
            connection.execute(
                members.update()
                .where(
                    m.population_id == population_id,
                    sa.or_(
                        m.status == MemberStatus.FAILED.value,
                        sa.and_(m.status == MemberStatus.DONE.value, m.step < budget),
                    ),
                )
                .values(status=MemberStatus.IDLE.value, owner=None, lease_until=None, failures=0)
            )


# Every public method is one transaction: retry it through transient errors.
for _name in (
    "_create_schema",
    "create_population",
    "delete_population",
    "population",
    "populations",
    "set_status",
    "claim",
    "renew",
    "release",
    "record_interval",
    "record_exploit",
    "record_failure",
    "failure_streak",
    "members",
    "intervals",
    "interval",
    "candidates",
    "scores_since",
    "best_by_step",
    "exploits",
    "failures",
    "checkpoint",
    "discard_checkpoint",
    "checkpoints",
    "collect_garbage",
    "summary",
    "release_claims",
    "claims",
    "reopen_members",
    "extend",
    "stop",
    "update_config",
):
    setattr(SQLStorage, _name, retrying(getattr(SQLStorage, _name)))


class db_clock(FunctionElement[float]):
    """The database server's clock in seconds since the epoch.

    Leases are computed and compared with it, so workers whose host clocks disagree still
    agree on when a lease expires.
    """

    type = sa.Float()
    inherit_cache = True


@compiles(db_clock)
def _clock_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "(CAST(strftime('%s', 'now') AS REAL))"


@compiles(db_clock, "sqlite")
def _clock_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_clock, "postgresql")
def _clock_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    return "EXTRACT(EPOCH FROM clock_timestamp())"


# --- statements on the hot path, built once (SQLAlchemy then reuses their compiled form) -------

_B = sa.bindparam
_m, _i, _c = members.c, intervals.c, checkpoints.c
_RUNNING = MemberStatus.RUNNING.value

_CLAIM = (
    sa.select(
        members,
        _c.path.label("c_path"),
        _c.size.label("c_size"),
        _c.checksum.label("c_checksum"),
    )
    .select_from(
        members.outerjoin(
            checkpoints,
            sa.and_(
                _c.population_id == _m.population_id,
                _c.member_id == _m.restore_member,
                _c.step == _m.restore_step,
            ),
        )
    )
    .where(
        _m.population_id == _B("pid"),
        _m.step < _B("budget"),
        sa.exists().where(
            populations.c.id == _B("pid"),
            populations.c.status == PopulationStatus.RUNNING.value,
        ),
        sa.or_(
            _m.status == MemberStatus.IDLE.value,
            sa.and_(_m.status == _RUNNING, _m.lease_until < db_clock()),
        ),
    )
    .order_by(
        _m.step,
        sa.case((_m.member_id.in_(_B("prefer", expanding=True)), 0), else_=1),
        _m.member_id,
    )
    .limit(1)
    # PostgreSQL: lock the chosen row and skip rows other workers are claiming right now, so
    # concurrent claims never wait on each other (SQLite serialises writers instead).
    .with_for_update(skip_locked=True, of=members)
)
_CLAIM_SYNC = _CLAIM.where(
    _m.step
    == sa.select(sa.func.min(members.c.step))
    .where(
        members.c.population_id == _B("pid"),
        members.c.status != MemberStatus.FAILED.value,
    )
    .scalar_subquery()
)
_TAKE = (
    members.update()
    .where(_m.population_id == _B("pid"), _m.member_id == _B("mid"))
    .values(
        status=_RUNNING,
        owner=_B("v_owner"),
        token=_B("v_token"),
        lease_until=db_clock() + _B("v_lease", type_=sa.Float),
    )
)


def _fenced_update(**values: Any) -> Any:
    """An update that only applies while the claim (population, member, token) is held."""
    return (
        members.update()
        .where(
            _m.population_id == _B("f_pid"),
            _m.member_id == _B("f_mid"),
            _m.token == _B("f_token"),
            _m.status == _RUNNING,
        )
        .values(**values)
    )


_RENEW = _fenced_update(lease_until=db_clock() + _B("v_lease", type_=sa.Float))
_RELEASE = _fenced_update(status=MemberStatus.IDLE.value, owner=None, lease_until=None)
_FAIL = _fenced_update(status=MemberStatus.FAILED.value, owner=None, lease_until=None)
_RETRY = _fenced_update(
    status=MemberStatus.IDLE.value, owner=None, lease_until=None, failures=_m.failures + 1
)
_RESEED = _fenced_update(
    hparams=_B("v_hparams"),
    parent=_B("v_parent"),
    restore_member=_B("v_rm"),
    restore_step=_B("v_rs"),
    step=_B("v_step"),
    score=_B("v_score"),
    exploit_pending=False,
    failures=0,
    status=_B("v_status"),
    owner=None,
    lease_until=None,
)
_STREAK = sa.select(populations.c.failure_streak).where(populations.c.id == _B("pid"))
_STREAK_UP = (
    populations.update()
    .where(populations.c.id == _B("pid"))
    .values(failure_streak=populations.c.failure_streak + 1)
)
# Only touches the row when there is a streak to reset, so successes do not contend on it.
_STREAK_RESET = (
    populations.update()
    .where(populations.c.id == _B("pid"), populations.c.failure_streak > 0)
    .values(failure_streak=0)
)
_RECORD = _fenced_update(
    step=_B("v_step"),
    score=_B("v_score"),
    hparams=_B("v_hparams"),
    restore_member=_B("v_rm"),
    restore_step=_B("v_rs"),
    exploit_pending=_B("v_pending"),
    status=_B("v_status"),
    failures=0,
    owner=None,
    lease_until=None,
)
_EXPLOIT_VALUES: dict[str, Any] = {
    "hparams": _B("v_hparams"),
    "parent": _B("v_parent"),
    "restore_member": _B("v_rm"),
    "restore_step": _B("v_rs"),
    "step": _B("v_step"),
    "score": _B("v_score"),
    "exploit_pending": False,
}
_EXPLOIT = _fenced_update(**_EXPLOIT_VALUES)
_EXPLOIT_DONE = _fenced_update(
    **_EXPLOIT_VALUES, status=MemberStatus.DONE.value, owner=None, lease_until=None
)
_INTERVAL = sa.select(intervals).where(
    _i.population_id == _B("pid"), _i.member_id == _B("mid"), _i.step == _B("step")
)
_CHECKPOINT = sa.select(checkpoints).where(
    _c.population_id == _B("pid"), _c.member_id == _B("mid"), _c.step == _B("step")
)


def _candidates(step: Any) -> Any:
    return (
        sa.select(intervals)
        .join(members, sa.and_(_m.population_id == _i.population_id, _m.member_id == _i.member_id))
        .join(
            checkpoints,
            sa.and_(
                _c.population_id == _i.population_id,
                _c.member_id == _i.member_id,
                _c.step == _i.step,
            ),
        )
        .where(_i.population_id == _B("pid"), _m.status != MemberStatus.FAILED.value)
        .where(_i.step == step)
        .order_by(_i.member_id)
    )


_LATEST = _candidates(_m.step)
_AT_STEP = _candidates(_B("step"))
_GC_MEMBERS = sa.select(_m.member_id, _m.step, _m.restore_member, _m.restore_step, _m.status).where(
    _m.population_id == _B("pid")
)
_GC_OLD = sa.select(checkpoints).where(_c.population_id == _B("pid"), _c.step < _B("lowest"))
_GC_DELETE = checkpoints.delete().where(
    _c.population_id == _B("pid"), _c.member_id == _B("mid"), _c.step == _B("step")
)


def _best(order: Any) -> Any:
    return (
        sa.select(_i.member_id, _i.step)
        .where(_i.population_id == _B("pid"), _i.score.is_not(None))
        .order_by(order, _i.member_id, _i.step)
        .limit(1)
    )


_BEST_MAX = _best(_i.score.desc())
_BEST_MIN = _best(_i.score.asc())


def _lock_population(connection: Connection, population_id: int) -> None:
    """Serialise checkpoint garbage collection with the copies that pin checkpoints.

    SQLite already runs one write transaction at a time. On PostgreSQL a transaction-scoped
    advisory lock per population makes "is the donor's checkpoint still there, then point the
    member at it" and "which checkpoints does no member point at, then delete them" atomic with
    respect to each other.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(population_id)))


def _exploit_recorded(connection: Connection, population_id: int, event: ExploitEvent) -> bool:
    """Whether ``event`` is logged already (by this very call, whose reply was lost)."""
    return _exists(
        connection,
        exploits,
        population_id=population_id,
        member_id=event.member,
        step=event.step,
        donor_id=event.donor,
        donor_step=event.donor_step,
        time=event.time,
    )


def _exists(connection: Connection, table: sa.Table, **values: Any) -> bool:
    """Whether ``table`` has a row with these column values (how a retried write recognises
    that it already committed)."""
    condition = sa.and_(*(table.c[name] == value for name, value in values.items()))
    found = connection.execute(sa.select(sa.literal(1)).where(condition).limit(1)).first()
    return found is not None


def _exploit_row(population_id: int, event: ExploitEvent) -> dict[str, Any]:
    return {
        "population_id": population_id,
        "member_id": event.member,
        "step": event.step,
        "donor_id": event.donor,
        "donor_step": event.donor_step,
        "hparams_before": _dumps(dict(event.hparams_before)),
        "hparams_after": _dumps(dict(event.hparams_after)),
        "score": _score(event.score),
        "donor_score": _score(event.donor_score),
        "time": event.time,
    }


def _collect(connection: Connection, population_id: int, mode: Mode) -> list[CheckpointRef]:
    """Delete the checkpoint rows that the keep rule does not protect; return them."""
    _lock_population(connection, population_id)
    member_rows = connection.execute(_GC_MEMBERS, {"pid": population_id}).all()
    healthy = [r.step for r in member_rows if r.status != MemberStatus.FAILED.value]
    if not healthy:
        return []
    rows = connection.execute(_GC_OLD, {"pid": population_id, "lowest": min(healthy)}).all()
    if not rows:
        return []
    keep = {(r.member_id, r.step) for r in member_rows}
    keep |= {(r.restore_member, r.restore_step) for r in member_rows}
    best = connection.execute(
        _BEST_MAX if mode is Mode.MAX else _BEST_MIN, {"pid": population_id}
    ).first()
    if best is not None:
        keep.add((best.member_id, best.step))
    doomed = [row for row in rows if (row.member_id, row.step) not in keep]
    if doomed:
        connection.execute(
            _GC_DELETE,
            [{"pid": population_id, "mid": r.member_id, "step": r.step} for r in doomed],
        )
    return [_checkpoint(row) for row in doomed]


def _population(row: Any) -> PopulationRecord:
    return PopulationRecord(
        id=row.id,
        name=row.name,
        config=json.loads(row.config),
        status=PopulationStatus(row.status),
        created_at=row.created_at,
        error=row.error,
    )


def _member(row: Any) -> MemberRecord:
    restore = None if row.restore_member is None else (row.restore_member, row.restore_step)
    return MemberRecord(
        id=row.member_id,
        step=row.step,
        hparams=json.loads(row.hparams),
        score=row.score,
        parent=row.parent,
        status=MemberStatus(row.status),
        restore=restore,
        exploit_pending=bool(row.exploit_pending),
        failures=int(row.failures),
    )


def _interval(row: Any) -> IntervalRecord:
    origin = None if row.origin_member is None else (row.origin_member, row.origin_step)
    return IntervalRecord(
        member=row.member_id,
        step=row.step,
        hparams=json.loads(row.hparams),
        score=row.score,
        metrics=json.loads(row.metrics),
        wall_time=row.wall_time,
        finished_at=row.finished_at,
        origin=origin,
    )


def _checkpoint(row: Any) -> CheckpointRef:
    return CheckpointRef(row.member_id, row.step, row.path, row.size, row.checksum)
