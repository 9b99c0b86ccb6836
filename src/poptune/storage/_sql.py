"""SQLAlchemy Core implementation of :class:`~poptune.storage.Storage` (SQLite by default).

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing half-way. The
tables and migrations are in ``_schema.py``, the statements and row helpers in
``_statements.py``; this module opens connections and runs each contract method as one
transaction.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool

from .._validation import invalid
from ..records import (
    CheckpointRef,
    CopyReason,
    ExploitEvent,
    FailureRecord,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    Mode,
    PeerCounts,
    PopulationRecord,
    PopulationStatus,
)
from ._base import (
    Claim,
    Copy,
    LeaseLost,
    PopulationExists,
    PopulationNotFound,
    Recording,
    Storage,
    StorageError,
    Summary,
    best_kept,
    check_idle,
    is_storable,
    not_found,
)
from ._retry import retrying
from ._schema import (
    FINITE,
    LEGACY_STEPS,
    SCHEMA_VERSION,
    check_readable,
    checkpoints,
    create_database_id,
    dumps,
    exploits,
    failures,
    intervals,
    loads,
    members,
    next_population_id,
    populations,
    read_database_id,
    shown,
    step_bests,
    stored_version,
    upgrade_schema,
)
from ._statements import (
    AT_STEP,
    CHECKPOINT,
    CLAIM_ANY,
    CLAIM_FIRST,
    CLAIM_MANY,
    CLAIM_MANY_AT_STEP,
    CLAIM_PREFERRED,
    CLAIM_SYNC_STEP,
    EXPLOIT,
    EXPLOIT_DONE,
    FAIL,
    HOLDERS,
    INTERVAL,
    LATEST,
    LATEST_SCORES,
    LOGGED_COPIES,
    PEER,
    PEER_BEST,
    PEER_BY_MEMBER,
    PEER_COUNTS,
    RECORD,
    RELEASE,
    RENEW,
    RESEED,
    RESTORE,
    RESTORE_MANY,
    RETRY,
    SCORES_AT_STEP,
    STEP_BEST,
    STREAK,
    STREAK_RESET,
    STREAK_UP,
    TAKE,
    checkpoint_ref,
    collect,
    db_clock,
    exists,
    exploit_recorded,
    exploit_row,
    interval_record,
    lock_population,
    member_record,
    population_record,
    score_value,
)
from ._urls import redact_text, redact_url

__all__ = [
    "LEGACY_STEPS",
    "NETWORK_FILESYSTEMS",
    "OPEN_MODES",
    "SCHEMA_VERSION",
    "OpenMode",
    "SQLStorage",
    "filesystem_type",
    "redact_url",
]


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


#: Database connections one SQLStorage (one worker) holds at most on a server (PostgreSQL).
CONNECTIONS = 1
#: Seconds a thread waits for that connection while another of the worker's threads uses it.
CONNECT_TIMEOUT = 120.0


#: How a storage is opened (see :class:`SQLStorage`).
OpenMode = Literal["read", "write", "create"]
OPEN_MODES: tuple[OpenMode, ...] = ("read", "write", "create")
_SQLITE_HEADER = b"SQLite format 3\x00"


# Every SQLite engine of this process. SQLite forbids carrying an open connection across
# fork(): the child copies the parent's belief that it holds the WAL's locks, which the kernel
# does not pass on, so when the parent later closes that connection (a Result going out of use,
# a garbage collection) it resets the WAL under the workers still writing to it, losing their
# commits ("disk I/O error", rows vanishing). Before any fork, their pooled connections close;
# an engine opens a new one when next used.
_SQLITE_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _close_sqlite_connections() -> None:
    """Close the pooled connections of every SQLite engine (a fork is about to happen)."""
    for engine in list(_SQLITE_ENGINES):
        engine.dispose()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(before=_close_sqlite_connections)


class SQLStorage(Storage):
    """Population storage in any SQL database SQLAlchemy reaches (SQLite, PostgreSQL).

    ``mode`` says what opening may do to the database:

    - ``"read"``: nothing. The database must exist and hold poptune's tables at this
      poptune's schema version; no file, folder or table is created and nothing is upgraded
      (an older schema is refused with "needs a one-time upgrade").
    - ``"write"``: upgrade an older schema in place (see docs/upgrades.md), but create nothing:
      the database must already be poptune's (``resume``, ``worker``, ``delete``).
    - ``"create"`` (the default, what ``pt.run`` does): also create the SQLite file, its folder
      and the tables of an empty database. A SQLite file that already holds other tables (not
      poptune's) is refused unless ``allow_other_tables``: poptune does not add its tables to
      another application's file by accident. (A PostgreSQL database is shared on purpose,
      other teams' tables beside poptune's, so there its tables are simply added.)

    A storage opened for reading can still be written through afterwards (``pt.load(...)
    .resume()``): the mode governs what opening does, and a database that opened for reading is
    poptune's, at this schema.

    Example:
        >>> storage = SQLStorage("sqlite:///runs/poptune.db")
        >>> SQLStorage("sqlite:///runs/poptune.db", mode="read").populations()[0].name
        'digits'

    Raises:
        StorageError: one line naming the storage, what is wrong and what to do.
    """

    def __init__(
        self, url: str, mode: OpenMode = "create", allow_other_tables: bool = False
    ) -> None:
        self.url = url
        self._database_id: str | None = None
        #: the schema version opening upgraded the database from (``None``: nothing upgraded)
        self.upgraded_from: int | None = None
        if mode not in OPEN_MODES:
            raise invalid("mode", " or ".join(map(repr, OPEN_MODES)), mode, "SQLStorage")
        parsed = _parse(url)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        where = redact_url(url)
        if self._sqlite:
            database = parsed.database or ""
            if database in ("", ":memory:") or database.startswith("file::memory:"):
                raise StorageError(
                    f"The storage URL {redact_url(url)!r} is an in-memory SQLite database, which "
                    "worker processes cannot share and which is lost at exit. Use a file: "
                    "'sqlite:///runs/poptune.db'."
                )
            path = Path(database).expanduser()
            _check_sqlite_file(path, mode, allow_other_tables)
            folder = path.parent
            if mode == "create":
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise StorageError(
                        f"Cannot create the folder {folder.resolve()} for the storage "
                        f"{path.name}: {error.strerror}. Check the storage URL and that you may "
                        "write there."
                    ) from None
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
        may = "read" if mode == "read" else "write"
        try:
            self._engine = self._create_engine(url)
            if mode == "read":
                self._check_schema()
            else:
                self._create_schema(mode == "create")
        except ImportError as error:  # the database's driver
            raise StorageError(
                f"Cannot open the storage {where}: its driver is not installed "
                f"({redact_text(_one_line(error), url)}) For PostgreSQL: pip install "
                "'poptune[postgres]'."
            ) from error
        except (DBAPIError, ArgumentError) as error:
            raise StorageError(
                f"Cannot open the storage {where}: {redact_text(_one_line(error), url)} Check "
                f"the URL, that the server is running and that you may {may} there."
            ) from error

    # --- connection handling -------------------------------------------------------------

    def _create_engine(self, url: str) -> Engine:
        if not self._sqlite:
            # One connection per storage object, shared by the worker's threads (each
            # transaction is short): a server's max_connections bounds workers one to one.
            return sa.create_engine(
                url,
                pool_pre_ping=True,
                pool_size=CONNECTIONS,
                max_overflow=0,
                pool_timeout=CONNECT_TIMEOUT,
            )
        engine = sa.create_engine(url, connect_args={"timeout": 60.0})
        _SQLITE_ENGINES.add(engine)

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

    def _present(self, population_id: int, value: Any) -> Any:
        """``value``, read from the population's row; ``None`` means the row is gone."""
        if value is None:
            raise PopulationNotFound(
                f"Population {population_id} is no longer in {redact_url(self.url)}: it was "
                "deleted."
            )
        return value

    def _config(self, connection: Connection, population_id: int) -> dict[str, Any]:
        """The population's stored configuration, read in the caller's transaction."""
        stored = connection.execute(
            sa.select(populations.c.config).where(populations.c.id == population_id)
        ).scalar()
        return dict(
            loads(
                self._present(population_id, stored),
                f"the configuration of population id {population_id}",
            )
        )

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as connection, connection.begin():
            yield connection

    @retrying(opening=True)
    def _create_schema(self, create: bool) -> None:
        with self._write() as connection:
            self.upgraded_from = upgrade_schema(connection, redact_url(self.url), create)

    @retrying(opening=True)
    def _check_schema(self) -> None:
        """Read mode: the database must be poptune's, at this schema; nothing is written."""
        where = redact_url(self.url)
        with self._read() as connection:
            version = stored_version(connection, where)
        if version is None:
            raise StorageError(
                f"No poptune database at {where}: it holds no poptune tables. Check the storage "
                "URL (--storage, $POPTUNE_STORAGE); reading creates nothing."
            )
        check_readable(version, where)

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy (in a worker process) opens a database its original opened: there it is.
        self.__init__(state["url"], mode="write")  # type: ignore[misc]

    # --- populations ---------------------------------------------------------------------

    @retrying
    def create_population(
        self, name: str, config: Mapping[str, Any], hparams: Sequence[Mapping[str, Any]]
    ) -> PopulationRecord:
        """Create a population and its idle members in one transaction."""
        now = time.time()
        try:
            with self._write() as connection:
                # SQLite would give a deleted population's id again: see next_population_id
                chosen = {"id": next_population_id(connection)} if self._sqlite else {}
                result = connection.execute(
                    populations.insert().values(
                        **chosen,
                        name=name,
                        config=dumps(config),
                        status=PopulationStatus.RUNNING.value,
                        error=None,
                        created_at=now,
                        failure_streak=0,
                    )
                )
                key = result.inserted_primary_key
                assert key is not None  # an INSERT of one row always has one
                population_id = int(key[0])
                connection.execute(
                    members.insert(),
                    [
                        {
                            "population_id": population_id,
                            "member_id": index,
                            "step": 0,
                            "hparams": dumps(dict(values)),
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

    @retrying
    def database_id(self, create: bool = True) -> str | None:
        """The id of this database, created by the first writer that asks (see the contract)."""
        if self._database_id is None:
            with self._read() as connection:
                self._database_id = read_database_id(connection, redact_url(self.url))
        if self._database_id is None and create:
            try:
                with self._write() as connection:
                    self._database_id = create_database_id(connection, redact_url(self.url))
            except IntegrityError:  # another process created it first (PostgreSQL): read it
                with self._read() as connection:
                    self._database_id = read_database_id(connection, redact_url(self.url))
        return self._database_id

    @retrying
    def delete_population(
        self,
        population_id: int,
        quiet_seconds: float = 0.0,
        now: float | None = None,
        check_only: bool = False,
    ) -> list[CheckpointRef]:
        """Delete the population and everything recorded for it, in one transaction, unless
        it is being trained; return its checkpoints, whose files nothing can reach any more."""
        with self._write() as connection:
            lock_population(connection, population_id)
            m = members.c
            every = sa.select(m.member_id, m.owner, m.lease_until, m.status).where(
                m.population_id == population_id
            )
            if not self._sqlite:  # a claim waits for this delete, then finds no member
                every = every.with_for_update()
            last = connection.execute(
                sa.select(sa.func.max(intervals.c.finished_at)).where(
                    intervals.c.population_id == population_id
                )
            ).scalar()
            status = connection.execute(
                sa.select(populations.c.status).where(populations.c.id == population_id)
            ).scalar()
            if status is None:
                return []  # deleted already (a retry whose first reply was lost)
            held = [
                (row.member_id, row.owner, row.lease_until)
                for row in connection.execute(every).all()
                if row.status == MemberStatus.RUNNING.value
            ]
            check_idle(held, last, PopulationStatus(status), quiet_seconds, now)
            if check_only:
                return []
            c = checkpoints.c
            rows = connection.execute(
                sa.select(checkpoints).where(c.population_id == population_id)
            ).all()
            for table in (failures, exploits, checkpoints, step_bests, intervals, members):
                connection.execute(table.delete().where(table.c.population_id == population_id))
            connection.execute(populations.delete().where(populations.c.id == population_id))
        return [checkpoint_ref(row) for row in rows]

    @retrying
    def population(self, name: str) -> PopulationRecord:
        """The population called ``name``."""
        with self._read() as connection:
            row = None
            if is_storable(name):  # no population has a name the database cannot hold
                row = connection.execute(
                    sa.select(populations).where(populations.c.name == name)
                ).first()
            if row is None:
                known = connection.execute(sa.select(populations.c.name)).scalars().all()
        if row is None:
            raise not_found(name, redact_url(self.url), known)
        return population_record(row)

    @retrying
    def populations(self) -> list[PopulationRecord]:
        """Every population, oldest first."""
        with self._read() as connection:
            rows = connection.execute(sa.select(populations).order_by(populations.c.id)).all()
        return [population_record(row) for row in rows]

    @retrying
    def set_status(self, population_id: int, status: PopulationStatus, error: str | None) -> None:
        """Set a population's status (and error text)."""
        with self._write() as connection:
            connection.execute(
                populations.update()
                .where(populations.c.id == population_id)
                .values(status=status.value, error=error)
            )

    @retrying
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

    @retrying
    def update_config(self, population_id: int, values: Mapping[str, Any]) -> None:
        """Set these keys of the population's stored configuration (others are kept)."""
        with self._write() as connection:
            lock_population(connection, population_id)
            config = self._config(connection, population_id)
            config.update(values)
            connection.execute(
                populations.update()
                .where(populations.c.id == population_id)
                .values(config=dumps(config))
            )

    # --- claims --------------------------------------------------------------------------

    @retrying
    def claim(
        self,
        population_id: int,
        owner: str,
        budget: int,
        lease_seconds: float,
        sync: bool,
        prefer: Sequence[tuple[int, int]] = (),
    ) -> Claim | None:
        """Claim the least-advanced claimable member, atomically, preferring the ``(member,
        step)`` pairs of ``prefer`` on ties."""
        with self._write() as connection:
            params: dict[str, Any] = {"pid": population_id, "budget": budget}
            if sync:
                lowest = connection.execute(CLAIM_SYNC_STEP, params).first()
                if lowest is None:
                    return None
                params["step"] = lowest[0]
                row = connection.execute(CLAIM_FIRST, params).first()
            else:
                row = connection.execute(CLAIM_ANY, params).first()
                if row is not None:
                    params["step"] = row.step
            if row is None:  # nothing claimable (sync: its generation trains elsewhere)
                return None
            held = _pairs(prefer)
            if held and (row.member_id, row.step) not in held:
                preferred = connection.execute(CLAIM_PREFERRED, {**params, "prefer": held}).first()
                row = preferred if preferred is not None else row
            token = int(row.token) + 1
            connection.execute(
                TAKE,
                {
                    "pid": population_id,
                    "mid": row.member_id,
                    "v_owner": owner,
                    "v_token": token,
                    "v_lease": lease_seconds,
                },
            )
            restore = None
            if row.restore_member is not None:
                restore = connection.execute(
                    RESTORE,
                    {"pid": population_id, "mid": row.restore_member, "step": row.restore_step},
                ).first()
        checkpoint = None
        if restore is not None:
            checkpoint = CheckpointRef(
                row.restore_member, row.restore_step, restore.path, restore.size, restore.checksum
            )
        return Claim(population_id, member_record(row), owner, token, checkpoint)

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

    @retrying
    def renew(self, claim: Claim, lease_seconds: float) -> None:
        """Extend the lease of ``claim``."""
        with self._write() as connection:
            self._fenced(connection, RENEW, claim, v_lease=lease_seconds)

    @retrying
    def release(self, claim: Claim) -> None:
        """Give the member back unchanged."""
        with self._write() as connection:
            self._fenced(connection, RELEASE, claim)

    # --- records -------------------------------------------------------------------------

    @retrying
    def record_interval(
        self,
        claim: Claim,
        interval: IntervalRecord,
        checkpoint: CheckpointRef,
        exploit_pending: bool,
        done: bool,
        earlier: Sequence[IntervalRecord] = (),
    ) -> None:
        """Record the interval (after ``earlier``, the member's intervals since its last
        checkpoint), its checkpoint and the member's new state; release the member.

        Idempotent: a retry of a call that did commit (its reply was lost with the connection)
        finds its own checkpoint (a unique path) recorded, and succeeds without writing again.
        """
        member, row, checkpoint_row = _recording_rows(
            Recording(claim, interval, checkpoint, exploit_pending, done)
        )
        with self._write() as connection:
            try:
                self._fenced(connection, RECORD, claim, **member)
            except LeaseLost:
                # Refused: either the claim was taken over, or this is the retry of a call
                # that committed (it released the member). Only the latter finds its own
                # checkpoint (a unique path) recorded.
                if exists(
                    connection,
                    checkpoints,
                    population_id=claim.population_id,
                    member_id=checkpoint.member,
                    step=checkpoint.step,
                    path=checkpoint.path,
                ):
                    return
                raise
            rows = [*(_interval_row(claim.population_id, i) for i in earlier), row]
            connection.execute(intervals.insert(), rows)
            connection.execute(checkpoints.insert(), checkpoint_row)
            best = [
                {
                    "population_id": claim.population_id,
                    "step": r["step"],
                    "high": r["score"],
                    "low": r["score"],
                }
                for r in rows
                if r["score"] is not None and math.isfinite(r["score"])
            ]
            if best:
                connection.execute(STEP_BEST[connection.dialect.name], best)
            connection.execute(STREAK_RESET, {"pid": claim.population_id})

    @retrying
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
            lock_population(connection, claim.population_id, shared=True)
            row = connection.execute(
                CHECKPOINT,
                {"pid": claim.population_id, "mid": event.donor, "step": event.donor_step},
            ).first()
            if row is None:
                return None
            if exploit_recorded(connection, claim.population_id, event):
                return checkpoint_ref(row)
            self._copy(connection, EXPLOIT_DONE if done else EXPLOIT, claim, event, hparams)
        return checkpoint_ref(row)

    def _copy(
        self,
        connection: Connection,
        statement: Any,
        claim: Claim,
        event: ExploitEvent,
        hparams: Mapping[str, Any],
        **values: Any,
    ) -> None:
        """Point the member at the donor's checkpoint, step and score with ``hparams`` (an
        exploit's or a re-seed's ``statement``) and log the event, in the caller's transaction."""
        self._fenced(
            connection,
            statement,
            claim,
            v_hparams=dumps(dict(hparams)),
            v_parent=event.donor,
            v_rm=event.donor,
            v_rs=event.donor_step,
            v_step=event.donor_step,
            v_score=score_value(event.donor_score),
            **values,
        )
        connection.execute(exploits.insert(), exploit_row(claim.population_id, event))

    # --- blocks: many members in one transaction ---------------------------------------

    @retrying
    def claim_block(
        self,
        population_id: int,
        owner: str,
        budget: int,
        lease_seconds: float,
        sync: bool,
        count: int,
        prefer: Sequence[tuple[int, int]] = (),
    ) -> list[Claim]:
        """Claim up to ``count`` members as :meth:`claim` would, one after another, in one
        transaction of three statements (four in sync mode)."""
        with self._write() as connection:
            params: dict[str, Any] = {"pid": population_id, "budget": budget}
            statement = CLAIM_MANY
            if sync:
                lowest = connection.execute(CLAIM_SYNC_STEP, params).first()
                if lowest is None:
                    return []
                params["step"], statement = lowest[0], CLAIM_MANY_AT_STEP
            rows = connection.execute(
                statement, {**params, "prefer": _pairs(prefer), "count": count}
            ).all()
            if not rows:
                return []
            taken = [
                {
                    "pid": population_id,
                    "mid": row.member_id,
                    "v_owner": owner,
                    "v_token": int(row.token) + 1,
                    "v_lease": lease_seconds,
                }
                for row in rows
            ]
            connection.execute(TAKE, taken)
            pairs = [
                (r.restore_member, r.restore_step) for r in rows if r.restore_member is not None
            ]
            found = {}
            if pairs:
                for ref in connection.execute(RESTORE_MANY, {"pid": population_id, "pairs": pairs}):
                    found[ref.member_id, ref.step] = checkpoint_ref(ref)
        claims = [
            Claim(
                population_id,
                member_record(row),
                owner,
                int(row.token) + 1,
                found.get((row.restore_member, row.restore_step)),
            )
            for row in rows
        ]
        return sorted(claims, key=lambda c: c.member.id)

    @retrying
    def record_intervals(self, recordings: Sequence[Recording]) -> list[int]:
        """Record every interval whose claim still holds, in one transaction of a few
        statements whatever the block's size; return the members refused.

        Idempotent as :meth:`record_interval`: a retry finds the checkpoints it recorded.
        """
        if not recordings:
            return []
        population_id = recordings[0].claim.population_id
        with self._write() as connection:
            holders = {
                row.member_id: row
                for row in connection.execute(
                    HOLDERS, {"pid": population_id, "mids": [r.claim.member.id for r in recordings]}
                )
            }
            held, refused = [], []
            for r in recordings:
                row = holders.get(r.claim.member.id)
                if (
                    row is not None
                    and row.token == r.claim.token
                    and row.status == MemberStatus.RUNNING.value
                ):
                    held.append(r)
                elif not exists(
                    connection,
                    checkpoints,
                    population_id=population_id,
                    member_id=r.checkpoint.member,
                    step=r.checkpoint.step,
                    path=r.checkpoint.path,
                ):  # else: the retry of a call that committed, which released the member
                    refused.append(r.claim.member.id)
            if held:
                self._record_held(connection, population_id, held)
        return sorted(refused)

    @staticmethod
    def _record_held(connection: Connection, population_id: int, held: Sequence[Recording]) -> None:
        """Write the intervals of ``held`` (claims checked in the caller's transaction)."""
        rows = [_recording_rows(r) for r in held]
        connection.execute(RECORD, [member for member, _, _ in rows])
        connection.execute(intervals.insert(), [interval for _, interval, _ in rows])
        connection.execute(checkpoints.insert(), [ckpt for _, _, ckpt in rows])
        best = [
            {
                "population_id": population_id,
                "step": c["step"],
                "high": c["score"],
                "low": c["score"],
            }
            for _, _, c in rows
            if c["score"] is not None and math.isfinite(c["score"])
        ]
        if best:
            connection.execute(STEP_BEST[connection.dialect.name], best)
        connection.execute(STREAK_RESET, {"pid": population_id})

    @retrying
    def record_exploits(self, copies: Sequence[Copy]) -> list[CheckpointRef | None]:
        """Record every copy as :meth:`record_exploit` does, in one transaction of a few
        statements whatever the block's size.

        Idempotent as :meth:`record_exploit`: a retry finds its events recorded.
        """
        if not copies:
            return []
        pid = copies[0].claim.population_id
        with self._write() as connection:
            lock_population(connection, pid, shared=True)
            pairs = sorted({(c.event.donor, c.event.donor_step) for c in copies})
            donors = {
                (row.member_id, row.step): checkpoint_ref(row)
                for row in connection.execute(RESTORE_MANY, {"pid": pid, "pairs": pairs})
            }
            mids = [c.claim.member.id for c in copies]
            holders = {
                r.member_id: r for r in connection.execute(HOLDERS, {"pid": pid, "mids": mids})
            }
            logged = {
                tuple(row)
                for row in connection.execute(
                    LOGGED_COPIES,
                    {"pid": pid, "mids": mids, "steps": [c.event.step for c in copies]},
                )
            }
            refs: list[CheckpointRef | None] = []
            writes: dict[bool, list[Copy]] = {False: [], True: []}
            for c in copies:
                e, ref, holder = (
                    c.event,
                    donors.get((c.event.donor, c.event.donor_step)),
                    holders.get(c.claim.member.id),
                )
                if ref is not None and (e.member, e.step, e.donor, e.donor_step, e.time) in logged:
                    refs.append(ref)  # the retry of a call that committed
                elif (
                    ref is None
                    or holder is None
                    or holder.token != c.claim.token
                    or holder.status != MemberStatus.RUNNING.value
                ):
                    refs.append(None)  # the donor's checkpoint is gone, or the claim was lost
                else:
                    refs.append(ref)
                    writes[c.done].append(c)
            for done, batch in writes.items():
                if batch:
                    connection.execute(
                        EXPLOIT_DONE if done else EXPLOIT, [_copy_values(c) for c in batch]
                    )
                    connection.execute(
                        exploits.insert(), [exploit_row(pid, c.event) for c in batch]
                    )
        return refs

    @retrying
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
            if reseed is not None:  # it may point the member at a donor's checkpoint
                lock_population(connection, claim.population_id, shared=True)
            if exists(
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
                self._fenced(connection, RETRY, claim)
                outcome = MemberStatus.IDLE
            elif (
                reseed is not None
                and connection.execute(
                    CHECKPOINT,
                    {
                        "pid": claim.population_id,
                        "mid": reseed[0].donor,
                        "step": reseed[0].donor_step,
                    },
                ).first()
            ):
                event, hparams = reseed
                outcome = MemberStatus.DONE if done else MemberStatus.IDLE
                self._copy(connection, RESEED, claim, event, hparams, v_status=outcome.value)
            else:
                self._fenced(connection, FAIL, claim)
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
            connection.execute(STREAK_UP, {"pid": claim.population_id})
        return outcome

    @retrying
    def failure_streak(self, population_id: int) -> int:
        """How many failures were recorded since the last successful interval."""
        with self._read() as connection:
            streak = connection.execute(STREAK, {"pid": population_id}).scalar()
        return int(self._present(population_id, streak))

    # --- reads ---------------------------------------------------------------------------

    @retrying
    def members(self, population_id: int) -> list[MemberRecord]:
        """Every member's current record."""
        with self._read() as connection:
            rows = connection.execute(
                sa.select(members)
                .where(members.c.population_id == population_id)
                .order_by(members.c.member_id)
            ).all()
        return [member_record(row) for row in rows]

    @retrying
    def intervals(
        self, population_id: int, after_step: int = 0, until_step: int | None = None
    ) -> list[IntervalRecord]:
        """Every recorded interval above step ``after_step`` (default: all) and at most
        ``until_step`` (default: no bound), by member and step."""
        i = intervals.c
        where = [i.population_id == population_id]
        if after_step > 0:
            where.append(i.step > after_step)
        if until_step is not None:
            where.append(i.step <= until_step)
        with self._read() as connection:
            rows = connection.execute(
                sa.select(intervals).where(*where).order_by(i.member_id, i.step)
            ).all()
        return [interval_record(row) for row in rows]

    @retrying
    def interval(self, population_id: int, member: int, step: int) -> IntervalRecord | None:
        """The interval ``member`` recorded at ``step``, or ``None``."""
        with self._read() as connection:
            row = connection.execute(
                INTERVAL, {"pid": population_id, "mid": member, "step": step}
            ).first()
        return None if row is None else interval_record(row)

    @retrying
    def scores_since(
        self, population_id: int, step: int, member: int | None = None
    ) -> list[tuple[int, int, float | None]]:
        """(member, step, score) of every interval after ``step`` (of ``member`` alone, if
        given), by member then step."""
        i = intervals.c
        query = sa.select(i.member_id, i.step, i.score).where(
            i.population_id == population_id, i.step > step
        )
        if member is not None:
            query = query.where(i.member_id == member)
        with self._read() as connection:
            rows = connection.execute(query.order_by(i.member_id, i.step)).all()
        return [(row[0], row[1], row[2]) for row in rows]  # by position: the hot path

    @retrying
    def best_by_step(self, population_id: int, mode: Mode) -> list[tuple[int, float]]:
        """(step, best finite score recorded at that step), by step: one stored row per step
        (kept by :meth:`record_interval`), however many members, so stop criteria read little
        after every interval."""
        t = step_bests.c
        best = t.high if mode is Mode.MAX else t.low
        with self._read() as connection:
            rows = connection.execute(
                sa.select(t.step, best).where(t.population_id == population_id).order_by(t.step)
            ).all()
        return [(int(row[0]), float(row[1])) for row in rows]

    @retrying
    def candidates(self, population_id: int, step: int | None = None) -> list[IntervalRecord]:
        """Latest (or exactly ``step``) checkpointed interval of every healthy member."""
        with self._read() as connection:
            if step is None:
                rows = connection.execute(LATEST, {"pid": population_id}).all()
            else:
                rows = connection.execute(AT_STEP, {"pid": population_id, "step": step}).all()
        return [interval_record(row) for row in rows]

    @retrying
    def candidate_scores(
        self, population_id: int, step: int | None = None
    ) -> list[tuple[int, int, float | None]]:
        """``(member, step, score)`` of :meth:`candidates`, by member (no JSON decoded)."""
        with self._read() as connection:
            if step is None:
                rows = connection.execute(LATEST_SCORES, {"pid": population_id}).all()
            else:
                rows = connection.execute(
                    SCORES_AT_STEP, {"pid": population_id, "step": step}
                ).all()
        return [(row[0], row[1], row[2]) for row in rows]  # by position: the hot path

    @retrying
    def peer(
        self, population_id: int, step: int, member: int
    ) -> tuple[int, int, float | None] | None:
        """``(member, step, score)`` if ``member`` is a candidate at ``step``, else ``None``."""
        with self._read() as connection:
            row = connection.execute(
                PEER, {"pid": population_id, "step": step, "mid": member}
            ).first()
        return None if row is None else (row[0], row[1], row[2])

    @retrying
    def peer_counts(
        self, population_id: int, step: int, mode: Mode, member: int, fitness: float
    ) -> PeerCounts:
        """Where a member ``member`` with ``fitness`` stands among the candidates at ``step``:
        one aggregate over the step's index, no candidate read."""
        finite = fitness > -math.inf
        score = (fitness if mode is Mode.MAX else -fitness) if finite else None
        with self._read() as connection:
            row = connection.execute(
                PEER_COUNTS[mode if finite else None],
                {"pid": population_id, "step": step, "mid": member, "score": score},
            ).one()
        return PeerCounts(size=row[0], before=row[1] or 0, better=row[2] or 0, finite=row[3] or 0)

    @retrying
    def peer_at(
        self, population_id: int, step: int, index: int, mode: Mode | None = None
    ) -> tuple[int, int, float | None] | None:
        """The ``index``-th candidate at ``step`` by member id (with ``mode``: the ``index``-th
        best), one row read, or ``None``."""
        if index < 0:
            return None
        with self._read() as connection:
            row = connection.execute(
                PEER_BY_MEMBER if mode is None else PEER_BEST[mode],
                {"pid": population_id, "step": step, "index": index},
            ).first()
        return None if row is None else (row[0], row[1], row[2])

    @retrying
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
                hparams_before=loads(row.hparams_before, f"the hparams before {_copy_event(row)}"),
                hparams_after=loads(row.hparams_after, f"the hparams after {_copy_event(row)}"),
                score=row.score,
                donor_score=row.donor_score,
                time=row.time,
                reason=CopyReason(row.reason),
            )
            for row in rows
        ]

    @retrying
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

    @retrying
    def checkpoint(self, population_id: int, member: int, step: int) -> CheckpointRef | None:
        """The committed checkpoint of ``member`` at ``step``, or ``None``."""
        with self._read() as connection:
            row = connection.execute(
                CHECKPOINT, {"pid": population_id, "mid": member, "step": step}
            ).first()
        return None if row is None else checkpoint_ref(row)

    @retrying
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

    @retrying
    def checkpoints(self, population_id: int) -> list[CheckpointRef]:
        """Every committed checkpoint."""
        c = checkpoints.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(checkpoints)
                .where(c.population_id == population_id)
                .order_by(c.member_id, c.step)
            ).all()
        return [checkpoint_ref(row) for row in rows]

    @retrying
    def collect_garbage(self, population_id: int, mode: Mode) -> list[CheckpointRef]:
        """Delete the checkpoint rows nothing needs; return them so their files can go too."""
        with self._write() as connection:
            return collect(connection, population_id, mode)

    @retrying
    def summary(self, population_id: int, budget: int, mode: Mode) -> Summary:
        """Counts for a progress display."""
        m = members.c
        # a live lease, on the database server's clock (leases are timed on it, not here)
        live = sa.case((m.lease_until > db_clock(), 1), else_=0).label("live")
        with self._read() as connection:
            rows = connection.execute(
                sa.select(m.member_id, m.step, m.score, m.status, live).where(
                    m.population_id == population_id
                )
            ).all()
            copies: dict[str, int] = dict(
                connection.execute(
                    sa.select(exploits.c.reason, sa.func.count())
                    .where(exploits.c.population_id == population_id)
                    .group_by(exploits.c.reason)
                ).all()
            )
            n_exploits = copies.pop(CopyReason.EXPLOIT.value, 0)
            n_failures = connection.execute(
                sa.select(sa.func.count())
                .select_from(failures)
                .where(failures.c.population_id == population_id)
            ).scalar_one()
            status = self._present(
                population_id,
                connection.execute(
                    sa.select(populations.c.status).where(populations.c.id == population_id)
                ).scalar(),
            )
            c = checkpoints.c
            kept = connection.execute(
                sa.select(c.member_id, c.step, c.score).where(
                    c.population_id == population_id, c.score.between(-FINITE, FINITE)
                )
            ).all()
        best = best_kept([(r.member_id, r.step, r.score) for r in kept], mode)
        return Summary(
            members=len(rows),
            steps_done=sum(r.step for r in rows),
            steps_total=budget * len(rows),
            running=sum(r.status == MemberStatus.RUNNING.value and r.live == 1 for r in rows),
            done=sum(r.status == MemberStatus.DONE.value for r in rows),
            failed=sum(r.status == MemberStatus.FAILED.value for r in rows),
            exploits=int(n_exploits),
            recoveries=int(sum(copies.values())),
            failures=int(n_failures),
            best_member=None if best is None else best[0],
            best_score=None if best is None else best[2],
            best_step=None if best is None else best[1],
            status=PopulationStatus(status),
        )

    @retrying
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

    @retrying
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

    @retrying
    def extend(self, population_id: int, intervals: int) -> None:
        """Give the population a budget of ``intervals`` (not less than its own), in one
        transaction: record it, make members done below it idle, and mark it running."""
        with self._write() as connection:
            lock_population(connection, population_id)
            config = self._config(connection, population_id)
            if intervals < int(config["intervals"]):
                raise ValueError(
                    f"A budget only grows: intervals={intervals} is less than the population's "
                    f"{config['intervals']}."
                )
            config["intervals"] = intervals
            connection.execute(
                populations.update()
                .where(populations.c.id == population_id)
                .values(config=dumps(config), status=PopulationStatus.RUNNING.value, error=None)
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

    @retrying
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


def _parse(url: str) -> URL:
    """``url`` parsed, or a :class:`StorageError` that says what is wrong with it."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018  # a non-numeric port fails here or in make_url
    except ArgumentError:
        raise StorageError(
            f"Cannot parse the storage URL {shown(redact_url(url), 100)}. Use a SQLAlchemy URL "
            "such as 'sqlite:///runs/poptune.db' or 'postgresql+psycopg://user@host/db'."
        ) from None
    except ValueError:
        raise StorageError(
            f"The storage URL has the port {shown(_port_text(url))}, which is not a number. "
            "Write host:PORT with PORT from 1 to 65535 (PostgreSQL listens on 5432 by default), "
            "e.g. 'postgresql+psycopg://user@host:5432/db'."
        ) from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise StorageError(
            f"The storage URL {redact_url(url)!r} has the port {parsed.port}, outside 1 to "
            "65535. Write the server's port (PostgreSQL listens on 5432 by default)."
        )
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(
            f"The storage URL {shown(redact_url(url), 100)} names the database "
            f"{shown(parsed.get_backend_name(), 40)}, which poptune cannot store in: use SQLite "
            "('sqlite:///runs/poptune.db', a file) or PostgreSQL "
            "('postgresql+psycopg://user@host/db', pip install 'poptune[postgres]')."
        )
    return parsed


def _port_text(url: str) -> str:
    """What stands where the port goes in ``url`` (its host part, after the credentials)."""
    netloc = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    return netloc.rpartition("]")[2].partition(":")[2]


def _one_line(error: BaseException) -> str:
    """A database error as one line: the driver's message without SQLAlchemy's statement dump
    and without the line breaks some drivers (psycopg) put in theirs."""
    original = error.orig if isinstance(error, DBAPIError) else error
    text = " ".join(str(original).split())
    return text if text.endswith((".", "?", "!")) else f"{text}."


def _check_sqlite_file(path: Path, mode: OpenMode, allow_other_tables: bool) -> None:
    """Refuse, before SQLite touches it, what is not a poptune database ``mode`` may open.

    Connecting in poptune's way changes a file (WAL mode), so an existing file is first looked
    at read-only: whether it is a SQLite database at all, and whose tables it holds. Only SQLite
    opens it: closing any other descriptor of a file drops every POSIX lock this process holds
    on it, so a connection already open here would lose its lock and another process could
    then reset the WAL under it (SQLite's "How To Corrupt", section 2.2).

    Raises:
        StorageError: one line naming the path, what it is, and what to do.
    """
    shown_path = path.resolve()
    check = "Check the storage URL (--storage, $POPTUNE_STORAGE)"
    if path.is_dir():
        raise StorageError(
            f"The storage {shown_path} is a folder, not a SQLite database file. Name a file in "
            f"it, e.g. 'sqlite:///{shown_path / 'poptune.db'}'."
        )
    if not path.exists():
        if mode == "create":
            return
        raise StorageError(
            f"No poptune database at {shown_path}: the file does not exist. {check}; "
            f"{'reading' if mode == 'read' else 'this command'} creates nothing (pt.run does)."
        )
    tables, version = _sqlite_contents(path, shown_path)
    if version is not None:
        return  # poptune's: its schema version is checked (or upgraded) once it is open
    if mode == "create" and (not tables or allow_other_tables):
        return
    what = (
        f"another application's SQLite database (tables: {_names(tables)})"
        if tables
        else "an empty SQLite file"
    )
    if mode == "create":
        raise StorageError(
            f"The storage {shown_path} is {what}: poptune will not add its tables to it. Use a "
            "file of its own (e.g. 'sqlite:///runs/poptune.db'), or, to share this one on "
            "purpose, pass storage=pt.open_storage(URL, allow_other_tables=True)."
        )
    raise StorageError(f"No poptune database at {shown_path}: it is {what}. {check}.")


def _sqlite_contents(path: Path, shown_path: Path) -> tuple[list[str], int | None]:
    """The tables of the SQLite database at ``path`` and its poptune schema version (``None``:
    not poptune's), read through a read-only connection that changes nothing in the file."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    engine = sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, timeout=60.0),
        poolclass=NullPool,
    )
    try:
        with engine.connect() as connection:
            tables = sa.inspect(connection).get_table_names()
            return tables, stored_version(connection, str(shown_path))
    except DBAPIError as error:
        reason = getattr(error.orig, "sqlite_errorname", None)
        if reason == "SQLITE_NOTADB":
            _refuse_other_file(path, shown_path)
        if reason == "SQLITE_CANTOPEN" and not os.access(path, os.R_OK):
            raise StorageError(
                f"Cannot read the storage {shown_path}: permission denied. Check that it is the "
                "database file and that you may read it."
            ) from None
        raise StorageError(
            f"The storage {shown_path} is not a usable SQLite database: {_one_line(error)} "
            "If it is poptune's, restore it from a backup; otherwise check the storage URL "
            "(--storage, $POPTUNE_STORAGE)."
        ) from None
    finally:
        engine.dispose()


def _refuse_other_file(path: Path, shown_path: Path) -> None:
    """Refuse a file SQLite says is not a database and whose first bytes are not SQLite's,
    naming them (a damaged SQLite file is left to the caller's message). Reading them is safe
    only now: no connection of this process can have a file that is not a database open."""
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError:
        return
    if header == _SQLITE_HEADER:
        return
    raise StorageError(
        f"The storage {shown_path} is not a SQLite database (its first bytes are "
        f"{shown(header[:8])}): not a poptune storage, and poptune will not write over it. "
        "Check the storage URL (--storage, $POPTUNE_STORAGE): poptune's default is "
        "'sqlite:///runs/poptune.db'."
    )


def _names(tables: Sequence[str], most: int = 5) -> str:
    listed = ", ".join(shown(name, 40) for name in tables[:most])
    return listed + (f" and {len(tables) - most} more" if len(tables) > most else "")


def _pairs(prefer: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``prefer``'s ``(member, step)`` pairs as the statements bind them."""
    return [(int(member), int(step)) for member, step in prefer]


def _copy_event(row: Any) -> str:
    return f"the copy by member {row.member_id} at step {row.step}"


def _interval_row(
    population_id: int,
    interval: IntervalRecord,
    score: float | None = None,
    hparams: str | None = None,
) -> dict[str, Any]:
    """The row of ``interval`` in the intervals table (``score`` and ``hparams``: as already
    converted by the caller, if it has them)."""
    origin = interval.origin
    return {
        "population_id": population_id,
        "member_id": interval.member,
        "step": interval.step,
        "hparams": dumps(dict(interval.hparams)) if hparams is None else hparams,
        "score": score_value(interval.score) if score is None else score,
        "metrics": dumps(dict(interval.metrics)),
        "wall_time": interval.wall_time,
        "finished_at": interval.finished_at,
        "origin_member": None if origin is None else origin[0],
        "origin_step": None if origin is None else origin[1],
    }


def _recording_rows(r: Recording) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The member update, interval row and checkpoint row that :meth:`SQLStorage.record_interval`
    writes for ``r`` (and :meth:`SQLStorage.record_intervals` for each member of a block)."""
    interval, checkpoint, claim = r.interval, r.checkpoint, r.claim
    score = score_value(interval.score)
    hparams = dumps(dict(interval.hparams))
    status = MemberStatus.DONE if r.done else MemberStatus.IDLE
    member = {
        "f_pid": claim.population_id,
        "f_mid": claim.member.id,
        "f_token": claim.token,
        "v_step": interval.step,
        "v_score": score,
        "v_hparams": hparams,
        "v_rm": checkpoint.member,
        "v_rs": checkpoint.step,
        "v_pending": r.exploit_pending,
        "v_status": status.value,
    }
    row = _interval_row(claim.population_id, interval, score, hparams)
    ckpt = {
        "population_id": claim.population_id,
        "member_id": checkpoint.member,
        "step": checkpoint.step,
        "path": checkpoint.path,
        "size": checkpoint.size,
        "checksum": checkpoint.checksum,
        "score": score,
    }
    return member, row, ckpt


def _copy_values(c: Copy) -> dict[str, Any]:
    """The fenced member update of one block copy (what :meth:`SQLStorage._copy` writes)."""
    event = c.event
    return {
        "f_pid": c.claim.population_id,
        "f_mid": c.claim.member.id,
        "f_token": c.claim.token,
        "v_hparams": dumps(dict(c.hparams)),
        "v_parent": event.donor,
        "v_rm": event.donor,
        "v_rs": event.donor_step,
        "v_step": event.donor_step,
        "v_score": score_value(event.donor_score),
    }
