"""What "best" means: one definition for result.best, ``poptune best``, the report and the
dashboard, which survives a population whose members all end on a NaN score."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
from click.testing import CliRunner

from poptune.cli import main
from poptune.dashboard._pages import Dashboard
from poptune.report import build_model
from poptune.results import NoBestMember, Scope
from poptune.testing import CreateOnlyRunner, Quadratic

INTERVALS = 5
SIZE = {"population": 4, "intervals": INTERVALS}


class Diverging(Quadratic):
    """A Quadratic whose score is NaN once its weights trained ``INTERVALS`` intervals: every
    member ends on NaN, as training that blows up at the end does."""

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        super().__init__(hparams, seed)
        self.trained = 0

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Train as Quadratic, counting the intervals behind these weights."""
        super().train(hparams)
        self.trained += 1

    def evaluate(self) -> dict[str, float]:
        """Q, or NaN at the last interval."""
        scores = super().evaluate()
        if self.trained >= INTERVALS:
            scores["q"] = math.nan
        return scores

    def state_dict(self) -> dict[str, Any]:
        """θ and the interval count (a copy takes the donor's)."""
        return {**super().state_dict(), "trained": self.trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore θ and the count."""
        super().load_state_dict(state)
        self.trained = int(state["trained"])


class AlwaysNaN(Quadratic):
    """A Quadratic that never reports a finite score."""

    def evaluate(self) -> dict[str, float]:
        """NaN."""
        return {"q": math.nan}


def test_best_survives_every_member_ending_on_nan(storage_url: str, quick_run) -> None:
    result = quick_run(Diverging, storage=storage_url, name="diverged", **SIZE)
    assert all(m.score is None for m in result.members)  # every member's last score: NaN
    finite = [i for i in result.intervals() if i.score is not None and math.isfinite(i.score)]
    assert finite, "the trainable must score before it diverges"
    top = max(i.score for i in finite if i.score is not None)

    best = result.best
    assert best.score == top and best.step < INTERVALS
    assert best.checkpoint is not None
    loaded = best.load()  # the weights from before the divergence, not the diverged ones
    assert loaded.trained == best.step
    assert loaded.evaluate()["q"] == pytest.approx(top)
    assert result.best_member("all") == best == result.best_member(Scope.ALL)

    # `poptune best`, the report and the dashboard say the same.
    out = CliRunner().invoke(main, ["best", "diverged", "--storage", storage_url])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert (data["member"], data["step"], data["score"], data["scope"]) == (
        best.member,
        best.step,
        best.score,
        "all",
    )
    assert data["checkpoint"] == best.checkpoint.path
    model = build_model(result)
    assert (model.best_member, model.best_score) == (best.member, best.score)
    assert model.schedule and model.schedule[-1].score == best.score
    board = Dashboard(storage_url)
    try:
        page = board.model("diverged")
    finally:
        board.close()
    assert (page.best_member, page.best_score) == (best.member, best.score)
    assert "no best yet" not in repr(result) and f"step {best.step}" in repr(result)
    summary = result.summary()  # poptune status / list and the dashboard's index show this
    assert (summary.best_member, summary.best_score) == (best.member, best.score)

    # Scope "last": what the members hold now is all NaN, and the message says what to use.
    with pytest.raises(NoBestMember, match=r"finite 'q' score now.*best_member\('all'\)"):
        result.best_member("last")
    out = CliRunner().invoke(
        main, ["best", "diverged", "--storage", storage_url, "--scope", "last"]
    )
    assert out.exit_code == 1 and "--scope all" in out.output


def test_scope_last_is_the_best_weights_held_now(storage_url: str, quick_run) -> None:
    result = quick_run(storage=storage_url, name="healthy", **SIZE)
    held = {m.restore: m.score for m in result.members}
    last = result.best_member("last")
    assert (last.member, last.step) in held
    assert last.score == max(s for s in held.values() if s is not None)
    assert last.checkpoint is not None and last.state()["theta"].shape == (2,)
    # "all" ranks every kept interval, the held ones among them.
    assert result.best.score is not None and result.best.score >= last.score
    out = CliRunner().invoke(main, ["best", "healthy", "--storage", storage_url, "--scope", "last"])
    data = json.loads(out.output)
    assert (data["member"], data["step"], data["score"]) == (last.member, last.step, last.score)
    with pytest.raises(ValueError, match=r"must be 'all' or 'last'\. Got 'best'"):
        result.best_member("best")


def test_no_finite_score_says_so(storage_url: str, quick_run) -> None:
    result = quick_run(AlwaysNaN, storage=storage_url, name="nan", **SIZE)
    with pytest.raises(NoBestMember, match=r"but not one finite 'q' score \(all NaN or inf"):
        _ = result.best
    with pytest.raises(NoBestMember) as last:  # no hint at scope "all", which fails too
        result.best_member("last")
    assert "none did before" in str(last.value) and "--scope all" not in str(last.value)
    assert build_model(result).best_member is None
    assert "no best yet" in repr(result)


def test_finite_scores_without_a_kept_checkpoint_say_so(storage_url: str, quick_run) -> None:
    result = quick_run(storage=storage_url, name="lost", **SIZE)
    for ref in result.storage.checkpoints(result.id):  # as if every file had failed its checksum
        result.storage.discard_checkpoint(result.id, ref)
    with pytest.raises(
        LookupError, match=r"finite 'q' scores .* none of their checkpoints is kept"
    ):
        _ = result.best


def test_a_population_without_intervals_has_no_best(quick_run) -> None:
    result = quick_run(name="empty", population=2, runner=CreateOnlyRunner())
    with pytest.raises(NoBestMember, match="no recorded interval yet"):
        _ = result.best
    with pytest.raises(NoBestMember, match="no healthy member holding trained weights"):
        result.best_member("last")


def test_a_lost_best_checkpoint_gives_the_next_best_kept_one(storage_url: str, quick_run) -> None:
    result = quick_run(storage=storage_url, name="damaged", **SIZE)
    first = result.best
    assert first.checkpoint is not None
    result.storage.discard_checkpoint(result.id, first.checkpoint)  # its file failed a checksum
    kept = {(c.member, c.step) for c in result.storage.checkpoints(result.id)}
    candidates = [i for i in result.intervals() if (i.member, i.step) in kept]
    second = result.best
    assert second.score == max(i.score for i in candidates if i.score is not None)
    assert (second.member, second.step) != (first.member, first.step)
    assert second.state()["theta"].shape == (2,)
