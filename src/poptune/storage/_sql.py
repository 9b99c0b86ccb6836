"""SQLAlchemy Core implementation of :class:`~poptune.storage.Storage` (SQLite by default).

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing half-way. The
schema uses only portable types so PostgreSQL takes it unchanged.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

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

__all__ = ["SCHEMA_VERSION", "SQLStorage", "redact_url"]

SCHEMA_VERSION = 1

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
    sa.Column("sha256", sa.String(64), nullable=False),
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


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable storage URL>"


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
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
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
            metadata.create_all(connection)
            row = connection.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).first()
            if row is None:
                connection.execute(
                    meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                )
            elif int(row.value) != SCHEMA_VERSION:
                raise StorageError(
                    f"The storage {redact_url(self.url)} has poptune schema version {row.value}, "
                    f"but this poptune uses version {SCHEMA_VERSION}. Use the poptune version "
                    "that created it, or a new database."
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

    # --- claims --------------------------------------------------------------------------

    def claim(
        self, population_id: int, owner: str, budget: int, lease_seconds: float, sync: bool
    ) -> Claim | None:
        """Claim the least-advanced claimable member, atomically."""
        m = members.c
        now = time.time()
        with self._write() as connection:
            query = (
                sa.select(members)
                .where(
                    m.population_id == population_id,
                    m.step < budget,
                    sa.exists().where(
                        populations.c.id == population_id,
                        populations.c.status == PopulationStatus.RUNNING.value,
                    ),
                    sa.or_(
                        m.status == MemberStatus.IDLE.value,
                        sa.and_(m.status == MemberStatus.RUNNING.value, m.lease_until < now),
                    ),
                )
                .order_by(m.step, m.member_id)
                .limit(1)
            )
            if sync:
                lowest = (
                    sa.select(sa.func.min(m.step))
                    .where(
                        m.population_id == population_id,
                        m.status != MemberStatus.FAILED.value,
                    )
                    .scalar_subquery()
                )
                query = query.where(m.step == lowest)
            row = connection.execute(query).first()
            if row is None:
                return None
            token = int(row.token) + 1
            connection.execute(
                members.update()
                .where(m.population_id == population_id, m.member_id == row.member_id)
                .values(
                    status=MemberStatus.RUNNING.value,
                    owner=owner,
                    token=token,
                    lease_until=now + lease_seconds,
                )
            )
        member = _member(row)
        return Claim(population_id, member, owner, token)

    def _fenced(self, claim: Claim) -> Any:
        m = members.c
        return members.update().where(
            m.population_id == claim.population_id,
            m.member_id == claim.member.id,
            m.token == claim.token,
            m.status == MemberStatus.RUNNING.value,
        )

    @staticmethod
    def _check(result: Any, claim: Claim) -> None:
        if result.rowcount != 1:
            raise LeaseLost(
                f"Member {claim.member.id} is no longer held by {claim.owner} "
                f"(claim token {claim.token}); its write was refused."
            )

    def renew(self, claim: Claim, lease_seconds: float) -> None:
        """Extend the lease of ``claim``."""
        with self._write() as connection:
            result = connection.execute(
                self._fenced(claim).values(lease_until=time.time() + lease_seconds)
            )
            self._check(result, claim)

    def release(self, claim: Claim) -> None:
        """Give the member back unchanged."""
        with self._write() as connection:
            result = connection.execute(
                self._fenced(claim).values(
                    status=MemberStatus.IDLE.value, owner=None, lease_until=None
                )
            )
            self._check(result, claim)

    # --- records -------------------------------------------------------------------------

    def record_interval(
        self,
        claim: Claim,
        interval: IntervalRecord,
        checkpoint: CheckpointRef,
        exploit_pending: bool,
        done: bool,
    ) -> None:
        """Record the interval, its checkpoint and the member's new state; release the member."""
        status = MemberStatus.DONE if done else MemberStatus.IDLE
        score = _score(interval.score)
        with self._write() as connection:
            result = connection.execute(
                self._fenced(claim).values(
                    step=interval.step,
                    score=score,
                    hparams=_dumps(dict(interval.hparams)),
                    restore_member=checkpoint.member,
                    restore_step=checkpoint.step,
                    exploit_pending=exploit_pending,
                    status=status.value,
                    owner=None,
                    lease_until=None,
                )
            )
            self._check(result, claim)
            origin = interval.origin
            connection.execute(
                intervals.insert().values(
                    population_id=claim.population_id,
                    member_id=interval.member,
                    step=interval.step,
                    hparams=_dumps(dict(interval.hparams)),
                    score=score,
                    metrics=_dumps(dict(interval.metrics)),
                    wall_time=interval.wall_time,
                    finished_at=interval.finished_at,
                    origin_member=None if origin is None else origin[0],
                    origin_step=None if origin is None else origin[1],
                )
            )
            connection.execute(
                checkpoints.insert().values(
                    population_id=claim.population_id,
                    member_id=checkpoint.member,
                    step=checkpoint.step,
                    path=checkpoint.path,
                    size=checkpoint.size,
                    sha256=checkpoint.sha256,
                )
            )

    def record_exploit(self, claim: Claim, event: ExploitEvent, hparams: Mapping[str, Any]) -> bool:
        """Point the member at the donor's checkpoint, if it still exists, and log the event."""
        c = checkpoints.c
        with self._write() as connection:
            exists = connection.execute(
                sa.select(c.step).where(
                    c.population_id == claim.population_id,
                    c.member_id == event.donor,
                    c.step == event.donor_step,
                )
            ).first()
            if exists is None:
                return False
            result = connection.execute(
                self._fenced(claim).values(
                    hparams=_dumps(dict(hparams)),
                    parent=event.donor,
                    restore_member=event.donor,
                    restore_step=event.donor_step,
                    exploit_pending=False,
                )
            )
            self._check(result, claim)
            connection.execute(
                exploits.insert().values(
                    population_id=claim.population_id,
                    member_id=event.member,
                    step=event.step,
                    donor_id=event.donor,
                    donor_step=event.donor_step,
                    hparams_before=_dumps(dict(event.hparams_before)),
                    hparams_after=_dumps(dict(event.hparams_after)),
                    score=_score(event.score),
                    donor_score=_score(event.donor_score),
                    time=event.time,
                )
            )
        return True

    def record_failure(self, claim: Claim, failure: FailureRecord) -> None:
        """Log the failure and mark the member failed."""
        with self._write() as connection:
            result = connection.execute(
                self._fenced(claim).values(
                    status=MemberStatus.FAILED.value, owner=None, lease_until=None
                )
            )
            self._check(result, claim)
            connection.execute(
                failures.insert().values(
                    population_id=claim.population_id,
                    member_id=failure.member,
                    step=failure.step,
                    error=failure.error,
                    traceback=failure.traceback,
                    time=failure.time,
                )
            )

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

    def intervals(self, population_id: int) -> list[IntervalRecord]:
        """Every recorded interval by member and step."""
        i = intervals.c
        with self._read() as connection:
            rows = connection.execute(
                sa.select(intervals)
                .where(i.population_id == population_id)
                .order_by(i.member_id, i.step)
            ).all()
        return [_interval(row) for row in rows]

    def candidates(self, population_id: int, step: int | None = None) -> list[IntervalRecord]:
        """Latest (or exactly ``step``) checkpointed interval of every healthy member."""
        i, m, c = intervals.c, members.c, checkpoints.c
        query = (
            sa.select(intervals)
            .join(
                members,
                sa.and_(m.population_id == i.population_id, m.member_id == i.member_id),
            )
            .join(
                checkpoints,
                sa.and_(
                    c.population_id == i.population_id,
                    c.member_id == i.member_id,
                    c.step == i.step,
                ),
            )
            .where(i.population_id == population_id, m.status != MemberStatus.FAILED.value)
            .where(i.step == (m.step if step is None else step))
            .order_by(i.member_id)
        )
        with self._read() as connection:
            rows = connection.execute(query).all()
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
        c = checkpoints.c
        with self._read() as connection:
            row = connection.execute(
                sa.select(checkpoints).where(
                    c.population_id == population_id, c.member_id == member, c.step == step
                )
            ).first()
        return None if row is None else _checkpoint(row)

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
        m, c, i = members.c, checkpoints.c, intervals.c
        with self._write() as connection:
            member_rows = connection.execute(
                sa.select(m.member_id, m.step, m.restore_member, m.restore_step, m.status).where(
                    m.population_id == population_id
                )
            ).all()
            healthy = [r.step for r in member_rows if r.status != MemberStatus.FAILED.value]
            if not healthy:
                return []
            lowest = min(healthy)
            rows = connection.execute(
                sa.select(checkpoints).where(c.population_id == population_id, c.step < lowest)
            ).all()
            if not rows:
                return []
            keep = {(r.member_id, r.step) for r in member_rows}
            keep |= {(r.restore_member, r.restore_step) for r in member_rows}
            order = i.score.desc() if mode is Mode.MAX else i.score.asc()
            best = connection.execute(
                sa.select(i.member_id, i.step)
                .where(i.population_id == population_id, i.score.is_not(None))
                .order_by(order, i.member_id, i.step)
                .limit(1)
            ).first()
            if best is not None:
                keep.add((best.member_id, best.step))
            doomed = [row for row in rows if (row.member_id, row.step) not in keep]
            for row in doomed:
                connection.execute(
                    checkpoints.delete().where(
                        c.population_id == population_id,
                        c.member_id == row.member_id,
                        c.step == row.step,
                    )
                )
        return [_checkpoint(row) for row in doomed]

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
                .values(status=MemberStatus.IDLE.value, owner=None, lease_until=None)
            )


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
    return CheckpointRef(row.member_id, row.step, row.path, row.size, row.sha256)
