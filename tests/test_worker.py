"""The worker's decisions, end to end on the paper's toy problem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import poptune as pt
from poptune.checkpoints import LocalCheckpoints
from poptune.records import CheckpointRef
from poptune.testing import MemoryStorage, quadratic_loop


def _keep_own(
    member: pt.Candidate, population: Sequence[pt.Candidate], rng: np.random.Generator
) -> pt.Candidate:
    return member


def test_an_exploit_that_chooses_the_member_itself_explores_its_hparams(tmp_path, quick_run):
    """Choosing oneself means "keep my weights, explore my hyperparameters" (the paper's
    explore-only ablation), not "do nothing"."""
    result = quick_run(
        storage=MemoryStorage(), checkpoints=tmp_path / "checkpoints", population=2,
        intervals=6, exploit=_keep_own, explore=pt.Perturb((0.8, 1.2)), ready=pt.Every(1),
        initial=[{"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0}], sync=True,
    )  # fmt: skip
    exploits = result.exploits()
    assert exploits and all(e.donor == e.member for e in exploits)
    assert all(e.donor_step == e.step for e in exploits)  # its own weights, no step taken
    assert any(e.hparams_after != e.hparams_before for e in exploits)
    for member in range(2):  # every interval continued the member's own checkpoint
        own = [i for i in result.intervals() if i.member == member]
        assert [i.step for i in own] == list(range(1, 7))
        assert all(i.origin in (None, (member, i.step - 1)) for i in own)
    h0 = [i.hparams["h0"] for i in result.intervals() if i.member == 0]
    assert len(set(h0)) > 1  # the hparams it trained with changed over time


# --- checkpoint_every: a checkpoint every k intervals --------------------------------------------


class CountingCheckpoints(LocalCheckpoints):
    """A local store that remembers which (member, step) it saved and loaded."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.saved: list[tuple[int, int]] = []
        self.loaded: list[tuple[int, int]] = []

    def save(self, folder: str, member: int, step: int, state: Any) -> CheckpointRef:
        self.saved.append((member, step))
        return super().save(folder, member, step, state)

    def load(self, ref: CheckpointRef) -> Any:
        self.loaded.append((ref.member, ref.step))
        return super().load(ref)


def test_checkpoint_every_saves_the_multiples_and_the_budget_and_records_every_score(
    tmp_path, quick_run, writes
):
    store = CountingCheckpoints(tmp_path / "checkpoints")
    result = quick_run(checkpoints=store, population=4, intervals=7, checkpoint_every=3, seed=0)
    assert result.status == "finished"
    assert sorted(store.saved) == [(m, s) for m in range(4) for s in (3, 6, 7)]  # not 28
    intervals = result.intervals()
    assert sorted((i.member, i.step) for i in intervals) == [
        (m, s) for m in range(4) for s in range(1, 8)
    ]
    assert all(i.score is not None for i in intervals)
    exploits = result.exploits()
    assert exploits  # members are ready every interval, and exploit at the checkpoints
    assert all(e.step % 3 == 0 and e.donor_step == e.step for e in exploits)
    copied = {(e.member, e.step): (e.donor, e.donor_step) for e in exploits}
    for i in intervals:  # each continues its own previous interval, or the donor it copied
        own = None if i.step == 1 else (i.member, i.step - 1)
        assert i.origin == copied.get((i.member, i.step - 1), own)
    assert {c.step for c in result.storage.checkpoints(result.record.id)} <= {3, 6, 7}
    assert result.config.checkpoint_every == 3


def test_checkpoint_every_in_generations_is_the_same_for_any_number_of_workers(quick_run):
    options = {"population": 4, "intervals": 6, "checkpoint_every": 2, "sync": True, "seed": 3}
    one = quick_run(name="one", **options)
    two = quick_run(name="two", workers=2, **options)
    assert one.exploits()

    def fingerprint(result: pt.Population) -> Any:
        return (
            [(i.member, i.step, i.score, dict(i.hparams), i.origin) for i in result.intervals()],
            [(e.member, e.step, e.donor, e.donor_step) for e in result.exploits()],
        )

    assert fingerprint(one) == fingerprint(two)


def test_checkpoint_every_is_kept_by_resume_or_changed(tmp_path, quick_run):
    store = CountingCheckpoints(tmp_path / "checkpoints")
    first = quick_run(checkpoints=store, population=2, intervals=4, checkpoint_every=2)
    assert sorted(store.saved) == [(m, s) for m in range(2) for s in (2, 4)]
    kept = first.resume(intervals=6, progress=False, checkpoints=store)
    assert kept.config.checkpoint_every == 2
    assert sorted(store.saved)[-2:] == [(1, 4), (1, 6)]
    store.saved.clear()
    every = kept.resume(intervals=8, checkpoint_every=None, progress=False, checkpoints=store)
    assert every.config.checkpoint_every is None
    assert sorted(store.saved) == [(m, s) for m in range(2) for s in (7, 8)]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_a_checkpoint_every_that_is_not_a_positive_int_is_refused(quick_run, value):
    with pytest.raises(
        pt.InvalidParameterError, match=r"The 'checkpoint_every' parameter must be an int"
    ):
        quick_run(checkpoint_every=value)


def test_checkpoint_every_with_a_block_is_refused(quick_run):
    with pytest.raises(pt.InvalidParameterError, match=r"left out \(or 1\) with block="):
        quick_run(quadratic_loop, block=2, checkpoint_every=3)
