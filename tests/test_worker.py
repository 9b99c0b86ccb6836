"""The worker's decisions, end to end on the paper's toy problem."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import poptune as pt
from poptune.testing import MemoryStorage


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
