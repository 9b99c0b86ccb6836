"""What a report shows, computed once from a population's records (pure data, no drawing)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import PopulationConfig
from ..records import ExploitEvent, FailureRecord, IntervalRecord, MemberRecord, Mode
from ..results import Result, ScheduleEntry
from ..space import LogUniform

__all__ = ["ReportModel", "build_model"]


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a bool, None, NaN or an infinity)."""
    if value.__class__ is float:  # the common case, checked without isinstance (NaN is False)
        return -math.inf < value < math.inf
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ReportModel:
    """Everything the HTML page and the static plots draw."""

    name: str
    metric: str
    mode: Mode
    status: str
    error: str | None
    population: int
    budget: int
    members: list[MemberRecord]
    intervals: list[IntervalRecord]
    exploits: list[ExploitEvent]
    failures: list[FailureRecord]
    schedule: list[ScheduleEntry]
    lineage_keys: set[tuple[int, int]]
    hparam_names: list[str]
    log_scale: set[str]
    best_member: int | None
    best_score: float | None
    wall_time: float
    config: PopulationConfig | None = None

    @property
    def steps_done(self) -> int:
        """Intervals trained so far, over all members."""
        return sum(m.step for m in self.members)

    def finite_scores(self) -> list[float]:
        """Every finite recorded score."""
        return [i.score for i in self.intervals if i.score is not None and math.isfinite(i.score)]


def build_model(result: Result) -> ReportModel:
    """Read everything a report needs from the storage, once."""
    record = result.record
    intervals = result.intervals()
    members = result.members
    try:
        best = result.best
        schedule = result.schedule()
        best_member, best_score = best.member, best.score
    except LookupError:
        schedule, best_member, best_score = [], None, None
    lineage_keys = {(e.member, e.member_step) for e in schedule}
    space = result.config.space
    names = list(space.distributions)
    log_scale = {name for name, spec in space.distributions.items() if isinstance(spec, LogUniform)}
    if intervals:
        start = min(i.finished_at - i.wall_time for i in intervals)
        wall = max(i.finished_at for i in intervals) - start
    else:
        wall = 0.0
    return ReportModel(
        name=record.name,
        metric=result.metric,
        mode=result.mode,
        status=record.status.value,
        error=record.error,
        population=result.config.population,
        budget=result.config.intervals,
        members=members,
        intervals=intervals,
        exploits=result.exploits(),
        failures=result.failures(),
        schedule=schedule,
        lineage_keys=lineage_keys,
        hparam_names=names,
        log_scale=log_scale,
        best_member=best_member,
        best_score=best_score,
        wall_time=wall,
        config=result.config,
    )
