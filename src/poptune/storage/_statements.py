"""SQL statements and row helpers of :class:`~poptune.storage.SQLStorage`.

The statements on the hot path are built once (SQLAlchemy then reuses their compiled form); the
helpers run inside a transaction the caller holds and convert rows to records.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from ..records import (
    CheckpointRef,
    ExploitEvent,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    Mode,
    PopulationRecord,
    PopulationStatus,
)
from ._schema import (
    FINITE,
    checkpoints,
    dumps,
    exploits,
    intervals,
    loads,
    members,
    populations,
    shown,
    step_bests,
)


def score_value(value: float | None) -> float | None:
    """The score as stored: NaN becomes NULL (SQLite stores NaN as NULL anyway; make that
    explicit so every backend agrees)."""
    if value is None or math.isnan(value):
        return None
    return float(value)


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

# A claim takes the least-advanced claimable member, preferring on ties one the caller holds
# in memory at the step it is at (``:prefer``, (member_id, step) pairs). It is
# two or three index-driven reads instead of one sort of every member, so it costs the same
# whatever the population's size (members stay within a step or two of each other, so "every
# claimable member at the lowest step" can be most of the population):
# 1. CLAIM_ANY: the claimable member with the lowest (step, id) (walks ix_poptune_members_step
#    in order, skipping rows other workers are claiming); in sync mode CLAIM_SYNC_STEP, the
#    lowest step of any healthy member (a generation is claimable only when nobody is behind
#    it), then CLAIM_FIRST at that step;
# 2. CLAIM_PREFERRED: one of the caller's held members at that same step, if claimable.
_CLAIMABLE = (
    _m.population_id == _B("pid"),
    _m.step < _B("budget"),
    sa.or_(
        _m.status == MemberStatus.IDLE.value,
        sa.and_(_m.status == _RUNNING, _m.lease_until < db_clock()),
    ),
)
_RUNNING_POPULATION = sa.exists().where(
    populations.c.id == _B("pid"), populations.c.status == PopulationStatus.RUNNING.value
)
CLAIM_ANY = (
    sa.select(members)
    .where(*_CLAIMABLE, _RUNNING_POPULATION)
    .order_by(_m.step, _m.member_id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
CLAIM_SYNC_STEP = (
    sa.select(_m.step)
    .where(
        _m.population_id == _B("pid"),
        _m.status != MemberStatus.FAILED.value,
        _RUNNING_POPULATION,
    )
    .order_by(_m.step)
    .limit(1)
)


def _claim_at_step(*where: Any) -> Any:
    return (
        sa.select(members)
        .where(*_CLAIMABLE, _m.step == _B("step"), *where)
        .order_by(_m.member_id)
        .limit(1)
        # PostgreSQL: lock the chosen row and skip rows other workers are claiming right now,
        # so concurrent claims never wait on each other (SQLite serialises writers instead).
        .with_for_update(skip_locked=True)
    )


#: the members the caller holds at the step they are at: ``:prefer`` is (member_id, step) pairs
_HELD = sa.tuple_(_m.member_id, _m.step).in_(_B("prefer", expanding=True))
CLAIM_PREFERRED = _claim_at_step(_HELD)
CLAIM_FIRST = _claim_at_step()


def _claim_many(*where: Any) -> Any:
    """Up to ``:count`` claimable members, as one claim after another would take them: least
    advanced first, those the caller holds at their step on ties, then by id (a block's
    claim)."""
    preferred = sa.case((_HELD, 0), else_=1)
    return (
        sa.select(members)
        .where(*_CLAIMABLE, _RUNNING_POPULATION, *where)
        .order_by(_m.step, preferred, _m.member_id)
        .limit(_B("count"))
        .with_for_update(skip_locked=True)
    )


CLAIM_MANY = _claim_many()
CLAIM_MANY_AT_STEP = _claim_many(_m.step == _B("step"))
#: the checkpoints a block's members restore from, in one read
RESTORE_MANY = sa.select(_c.member_id, _c.step, _c.path, _c.size, _c.checksum).where(
    _c.population_id == _B("pid"),
    sa.tuple_(_c.member_id, _c.step).in_(_B("pairs", expanding=True)),
)
#: the fencing state of a block's members, locked for the transaction (PostgreSQL)
HOLDERS = (
    sa.select(_m.member_id, _m.token, _m.status)
    .where(_m.population_id == _B("pid"), _m.member_id.in_(_B("mids", expanding=True)))
    .with_for_update()
)
#: the copies of a block's members already logged (how a retried batch finds what committed)
LOGGED_COPIES = sa.select(
    exploits.c.member_id,
    exploits.c.step,
    exploits.c.donor_id,
    exploits.c.donor_step,
    exploits.c.time,
).where(
    exploits.c.population_id == _B("pid"),
    exploits.c.member_id.in_(_B("mids", expanding=True)),
    exploits.c.step.in_(_B("steps", expanding=True)),
)
RESTORE = sa.select(_c.path, _c.size, _c.checksum).where(
    _c.population_id == _B("pid"), _c.member_id == _B("mid"), _c.step == _B("step")
)
TAKE = (
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


RENEW = _fenced_update(lease_until=db_clock() + _B("v_lease", type_=sa.Float))
RELEASE = _fenced_update(status=MemberStatus.IDLE.value, owner=None, lease_until=None)
FAIL = _fenced_update(status=MemberStatus.FAILED.value, owner=None, lease_until=None)
RETRY = _fenced_update(
    status=MemberStatus.IDLE.value, owner=None, lease_until=None, failures=_m.failures + 1
)
RESEED = _fenced_update(
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
STREAK = sa.select(populations.c.failure_streak).where(populations.c.id == _B("pid"))
STREAK_UP = (
    populations.update()
    .where(populations.c.id == _B("pid"))
    .values(failure_streak=populations.c.failure_streak + 1)
)
# Only touches the row when there is a streak to reset, so successes do not contend on it.
STREAK_RESET = (
    populations.update()
    .where(populations.c.id == _B("pid"), populations.c.failure_streak > 0)
    .values(failure_streak=0)
)
RECORD = _fenced_update(
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
EXPLOIT = _fenced_update(**_EXPLOIT_VALUES)
EXPLOIT_DONE = _fenced_update(
    **_EXPLOIT_VALUES, status=MemberStatus.DONE.value, owner=None, lease_until=None
)
INTERVAL = sa.select(intervals).where(
    _i.population_id == _B("pid"), _i.member_id == _B("mid"), _i.step == _B("step")
)
CHECKPOINT = sa.select(checkpoints).where(
    _c.population_id == _B("pid"), _c.member_id == _B("mid"), _c.step == _B("step")
)


def _candidates(step: Any, *columns: Any) -> Any:
    return (
        sa.select(*(columns or (intervals,)))
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


LATEST = _candidates(_m.step)
AT_STEP = _candidates(_B("step"))
LATEST_SCORES = _candidates(_m.step, _i.member_id, _i.step, _i.score)
SCORES_AT_STEP = _candidates(_B("step"), _i.member_id, _i.step, _i.score)

# --- peers: what an exploit strategy asks of the candidates at one step, one row or one count.
# A candidate is a checkpoint row (every checkpoint row has its interval, and carries that
# interval's score) of a member that has not failed, so these read one index, never the
# intervals: (population_id, step, member_id, score) covers them, and the failed members are
# looked up once per statement.
_SCORE_ROW = (_c.member_id, _c.step, _c.score)
#: a finite score: NULL (NaN) and the infinities fall outside (PostgreSQL's NaN is above both)
_FINITE = _c.score.between(-FINITE, FINITE)
_FAILED = sa.select(_m.member_id).where(
    _m.population_id == _B("pid"), _m.status == MemberStatus.FAILED.value
)


def _peers(*columns: Any) -> Any:
    return sa.select(*columns).where(
        _c.population_id == _B("pid"), _c.step == _B("step"), _c.member_id.not_in(_FAILED)
    )


PEER = _peers(*_SCORE_ROW).where(_c.member_id == _B("mid"))
PEER_BY_MEMBER = _peers(*_SCORE_ROW).order_by(_c.member_id).limit(1).offset(_B("index"))


# The ranking rule, records.rank_key (higher fitness first, ties by the lower member id; a
# missing or non-finite score is fitness -inf, the worst), written in SQL below for the peers
# and for the best checkpoint; tests/storage/test_contract.py checks that they agree with it.


def _peer_best(mode: Mode) -> Any:
    """The ``:index``-th best candidate by ``rank_key``: finite scores first, best first, then
    by member id (the non-finite ones, all fitness ``-inf``, by member id alone)."""
    key = sa.case((_FINITE, _c.score), else_=0.0)
    return (
        _peers(*_SCORE_ROW)
        .order_by(
            sa.case((_FINITE, 0), else_=1),
            key.desc() if mode is Mode.MAX else key.asc(),
            _c.member_id,
        )
        .limit(1)
        .offset(_B("index"))
    )


def _peer_counts(above: Any) -> Any:
    """Size, lower member ids, members ranked above, finite scores: one pass over the step."""

    def number(condition: Any) -> Any:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    return _peers(
        sa.func.count(),
        number(_c.member_id < _B("mid")),
        number(sa.and_(_c.member_id != _B("mid"), above)),
        number(_FINITE),
    )


_TIE = sa.and_(_c.score == _B("score"), _c.member_id < _B("mid"))
#: keyed by the mode, or ``None`` for a member whose fitness is -inf (everyone finite is above);
#: "above" is ``rank_key(candidate) < rank_key(member)``, as :func:`records.count_peers` counts
PEER_COUNTS: dict[Mode | None, Any] = {
    Mode.MAX: _peer_counts(sa.and_(_FINITE, sa.or_(_c.score > _B("score"), _TIE))),
    Mode.MIN: _peer_counts(sa.and_(_FINITE, sa.or_(_c.score < _B("score"), _TIE))),
    None: _peer_counts(sa.or_(_FINITE, _c.member_id < _B("mid"))),
}
PEER_BEST = {mode: _peer_best(mode) for mode in Mode}
_GC_MEMBERS = sa.select(_m.member_id, _m.step, _m.restore_member, _m.restore_step, _m.status).where(
    _m.population_id == _B("pid")
)
_GC_OLD = sa.select(checkpoints).where(_c.population_id == _B("pid"), _c.step < _B("lowest"))
_GC_DELETE = checkpoints.delete().where(
    _c.population_id == _B("pid"), _c.member_id == _B("mid"), _c.step == _B("step")
)


def _best(order: Any) -> Any:
    # The best *finite* score, as Mode.fitness ranks: an infinity is a diverged run, and
    # keeping its checkpoint instead would let the best one before the divergence go. Ties as
    # rank_key breaks them (the lower member), then the earlier step.
    return (
        sa.select(_i.member_id, _i.step)
        .where(_i.population_id == _B("pid"), _i.score.between(-FINITE, FINITE))
        .order_by(order, _i.member_id, _i.step)
        .limit(1)
    )


_BEST_MAX = _best(_i.score.desc())
_BEST_MIN = _best(_i.score.asc())


def lock_population(connection: Connection, population_id: int, shared: bool = False) -> None:
    """Serialise checkpoint garbage collection with the copies that pin checkpoints.

    SQLite already runs one write transaction at a time. On PostgreSQL a transaction-scoped
    advisory lock per population makes "is the donor's checkpoint still there, then point the
    member at it" and "which checkpoints does no member point at, then delete them" atomic with
    respect to each other. Copies take it ``shared``: they exclude a collection, not each other,
    so many workers exploit at once.
    """
    if connection.dialect.name == "postgresql":
        lock = sa.func.pg_advisory_xact_lock_shared if shared else sa.func.pg_advisory_xact_lock
        connection.execute(sa.select(lock(population_id)))


def exploit_recorded(connection: Connection, population_id: int, event: ExploitEvent) -> bool:
    """Whether ``event`` is logged already (by this very call, whose reply was lost)."""
    return exists(
        connection,
        exploits,
        population_id=population_id,
        member_id=event.member,
        step=event.step,
        donor_id=event.donor,
        donor_step=event.donor_step,
        time=event.time,
    )


def exists(connection: Connection, table: sa.Table, **values: Any) -> bool:
    """Whether ``table`` has a row with these column values (how a retried write recognises
    that it already committed)."""
    condition = sa.and_(*(table.c[name] == value for name, value in values.items()))
    found = connection.execute(sa.select(sa.literal(1)).where(condition).limit(1)).first()
    return found is not None


def exploit_row(population_id: int, event: ExploitEvent) -> dict[str, Any]:
    return {
        "population_id": population_id,
        "member_id": event.member,
        "step": event.step,
        "donor_id": event.donor,
        "donor_step": event.donor_step,
        "hparams_before": dumps(dict(event.hparams_before)),
        "hparams_after": dumps(dict(event.hparams_after)),
        "score": score_value(event.score),
        "donor_score": score_value(event.donor_score),
        "time": event.time,
        "reason": event.reason.value,
    }


def collect(connection: Connection, population_id: int, mode: Mode) -> list[CheckpointRef]:
    """Delete the checkpoint rows that the keep rule does not protect; return them."""
    lock_population(connection, population_id)
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
    return [checkpoint_ref(row) for row in doomed]


def population_record(row: Any) -> PopulationRecord:
    return PopulationRecord(
        id=row.id,
        name=row.name,
        config=loads(row.config, f"the configuration of population {shown(row.name)}"),
        status=PopulationStatus(row.status),
        created_at=row.created_at,
        error=row.error,
    )


def member_record(row: Any) -> MemberRecord:
    restore = None if row.restore_member is None else (row.restore_member, row.restore_step)
    return MemberRecord(
        id=row.member_id,
        step=row.step,
        hparams=loads(row.hparams, f"the hparams of member {row.member_id}"),
        score=row.score,
        parent=row.parent,
        status=MemberStatus(row.status),
        restore=restore,
        exploit_pending=bool(row.exploit_pending),
        failures=int(row.failures),
    )


def interval_record(row: Any) -> IntervalRecord:
    origin = None if row.origin_member is None else (row.origin_member, row.origin_step)
    return IntervalRecord(
        member=row.member_id,
        step=row.step,
        hparams=loads(row.hparams, f"the hparams of {_interval(row)}"),
        score=row.score,
        metrics=loads(row.metrics, f"the metrics of {_interval(row)}"),
        wall_time=row.wall_time,
        finished_at=row.finished_at,
        origin=origin,
    )


def _interval(row: Any) -> str:
    return f"the interval of member {row.member_id} at step {row.step}"


def checkpoint_ref(row: Any) -> CheckpointRef:
    return CheckpointRef(row.member_id, row.step, row.path, row.size, row.checksum)


def _step_best(dialect: str) -> Any:
    """Insert a step's best score, or keep the better of the stored and the new one."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(step_bests)
    high, low = (
        (sa.func.greatest, sa.func.least) if dialect == "postgresql" else (sa.func.max, sa.func.min)
    )
    t = step_bests.c
    return insert.on_conflict_do_update(
        index_elements=[t.population_id, t.step],
        set_={"high": high(t.high, insert.excluded.high), "low": low(t.low, insert.excluded.low)},
    )


#: by dialect name: what record_interval runs for a finite score
STEP_BEST = {dialect: _step_best(dialect) for dialect in ("sqlite", "postgresql")}
