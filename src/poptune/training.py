"""One interval of one member: the user's code trains and evaluates, and the result becomes the
interval's record (its score read from the metric; a metric the results lack stops the run)."""

from __future__ import annotations

import time
from typing import Any

from .failures import user_code
from .live import LiveMember
from .records import IntervalRecord, MemberRecord
from .runspec import RunSpec
from .seeding import TRAIN, derive_seed
from .status import stop_population
from .storage import Storage
from .trainable import metrics_of

__all__ = ["train_interval"]


def train_interval(
    spec: RunSpec,
    storage: Storage,
    population_id: int,
    live: LiveMember,
    member: MemberRecord,
    state: bool = True,
) -> tuple[IntervalRecord, Any]:
    """Train and evaluate ``member`` (held by ``live``) for its next interval, with its hparams
    (or the schedule's, in a replay) and the interval's seed; return the record and the state to
    checkpoint (``None`` without ``state``: an interval not checkpointed)."""
    step = member.step + 1
    hparams = dict(spec.config.schedule[step - 1] if spec.config.schedule else member.hparams)
    seed = derive_seed(spec.config.seed, TRAIN, member.id, step)
    live.holds = None  # from here on its weights are ahead of every checkpoint
    started = time.perf_counter()
    result = user_code(live.session.step, hparams, seed, step)
    wall_time = time.perf_counter() - started
    try:
        # a training function reports with interval.report(): its messages say so
        source = getattr(live.session, "reports_with", "evaluate()")
        score, metrics = metrics_of(result, spec.config.metric, source)
    except (KeyError, TypeError) as error:
        message = error.args[0] if error.args else str(error)
        raise stop_population(storage, population_id, message) from None
    interval = IntervalRecord(
        member=member.id,
        step=step,
        hparams=hparams,
        score=score,
        metrics=metrics,
        wall_time=wall_time,
        finished_at=time.time(),
        origin=member.restore,
    )
    return interval, user_code(live.session.state) if state else None
