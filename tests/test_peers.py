"""Peers: the built-in exploit strategies decide exactly as when they read a list, and peers read
from every storage answer exactly as a list of the same candidates does."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest

import poptune as pt
from poptune.peers import ListPeers, PeersChanged, StoredPeers, as_peers
from poptune.records import Candidate, FailureRecord, Mode
from poptune.storage import SQLStorage
from poptune.strategies.exploit import welch_p_value
from tests._helpers import ckpt, make, train

# --- the strategies as they were written for lists, before peers: the oracle ----------------


def _list_opponent(member: Candidate, population: Sequence[Candidate], rng):
    others = sorted((c for c in population if c.member != member.member), key=lambda c: c.member)
    return others[int(rng.integers(len(others)))] if others else None


def _list_truncation(fraction: float, member: Candidate, population, rng):
    others = [c for c in population if c.member != member.member]
    ranked = sorted([*others, member], key=lambda c: (-c.fitness, c.member))
    if len(ranked) < 2:
        return None
    cut = min(len(ranked) // 2, max(1, math.ceil(fraction * len(ranked))))
    position = next(i for i, c in enumerate(ranked) if c.member == member.member)
    if position < len(ranked) - cut:
        return None
    top = [c for c in ranked[:cut] if c.fitness > -math.inf and c.member != member.member]
    return top[int(rng.integers(len(top)))] if top else None


def _list_tournament(member: Candidate, population, rng):
    opponent = _list_opponent(member, population, rng)
    return opponent if opponent is not None and opponent.fitness > member.fitness else None


def _list_ttest(alpha: float, member: Candidate, population, rng):
    opponent = _list_opponent(member, population, rng)
    if opponent is None or opponent.fitness == -math.inf:
        return None
    if member.fitness == -math.inf:
        return opponent
    mine = [f for f in member.history if math.isfinite(f)]
    theirs = [f for f in opponent.history if math.isfinite(f)]
    if len(mine) < 2 or len(theirs) < 2 or sum(theirs) / len(theirs) <= sum(mine) / len(mine):
        return None
    return opponent if welch_p_value(theirs, mine) < alpha else None


SCORE_POOL = [0.5, 0.5, 0.1, -0.3, None, float("nan"), math.inf, -math.inf, 0.9, 2.0, 0.0]


def _population(draw: random.Random, mode: Mode) -> list[Candidate]:
    members = draw.sample(range(40), draw.randint(0, 14))
    population = []
    for member in members:
        score = draw.choice(SCORE_POOL)
        history = tuple(draw.choice([0.1, 0.2, 0.4, 0.8, -math.inf]) for _ in range(3))
        population.append(Candidate(member, 3, score, mode.fitness(score), history=history))
    return population


def test_the_built_in_strategies_decide_as_they_did_on_lists():
    """1,500 random populations (ties, NaN, infinities, missing scores, a member absent from
    the list as a re-seed passes it): the same donor and the same random draws as before."""
    draw = random.Random(0)
    strategies = [
        (pt.Truncation(0.2), lambda m, p, r: _list_truncation(0.2, m, p, r)),
        (pt.Truncation(0.5), lambda m, p, r: _list_truncation(0.5, m, p, r)),
        (pt.Tournament(), _list_tournament),
        (pt.TTest(window=3, alpha=0.3), lambda m, p, r: _list_ttest(0.3, m, p, r)),
    ]
    copies = 0
    for case in range(1500):
        mode = draw.choice(list(Mode))
        population = _population(draw, mode)
        if population and draw.random() < 0.8:
            member = draw.choice(population)
        else:  # not among the candidates, with no score (as a re-seed asks)
            member = Candidate(99, 3, None, -math.inf, history=(0.1, 0.2, 0.3))
        for strategy, oracle in strategies:
            ours, theirs = np.random.default_rng(case), np.random.default_rng(case)
            got = strategy(member, list(population), ours)
            expected = oracle(member, list(population), theirs)
            assert got == expected, (strategy, member, population)
            assert ours.bit_generator.state == theirs.bit_generator.state
            copies += expected is not None
    assert copies > 1000  # the cases exercise copying, not only keeping


# --- peers read from each storage answer as a list of the same candidates ---------------------

SCORES = [0.5, 0.5, 0.1, -0.3, None, float("nan"), math.inf, -math.inf, 0.9, 0.5, 2.0, 0.1]


def _trained(storage) -> int:
    """Members 0-11 at step 1 with SCORES; member 0 then fails, member 3's checkpoint is found
    damaged, and member 1 trains on to step 2 (its step-1 checkpoint stays)."""
    pid = make(storage, n=len(SCORES))
    for score in SCORES:
        train(storage, pid, score)
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)
    assert claim.member.id == 0
    storage.record_failure(claim, FailureRecord(0, 2, "boom", "boom", 1.0), retry=False)
    storage.discard_checkpoint(pid, ckpt(3, 1))
    assert train(storage, pid, 0.7) == (1, 2)
    return pid


def _listed(storage, pid: int, step: int, member: int, mode: Mode) -> ListPeers:
    rows = storage.candidate_scores(pid, step)
    population = [Candidate(m, s, score, mode.fitness(score)) for m, s, score in rows]
    return ListPeers(population, next(c for c in population if c.member == member))


def _answers(peers, foreign: list[Candidate]) -> dict:
    size = len(peers)
    return {
        "len": size,
        "finite": peers.finite,
        "rank": peers.rank(peers.me),
        "position": peers.position(peers.me.member),
        "best": [peers.best(k) for k in range(size)],
        "by member": [peers[i] for i in range(size)],
        "last": peers[-1],
        "everyone": list(peers),
        "others": [peers.other(k) for k in range(peers.others())],
        "foreign ranks": [peers.rank(c) for c in foreign],
        "foreign positions": [peers.position(c.member) for c in foreign],
    }


@pytest.mark.parametrize("mode", list(Mode))
def test_peers_read_from_the_storage_answer_as_a_list(storage, mode):
    pid = _trained(storage)
    members = [m for m, _, _ in storage.candidate_scores(pid, 1)]
    assert members == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]  # 0 failed, 3's checkpoint dropped
    foreign = [
        Candidate(m, 1, score, mode.fitness(score))
        for m in (0, 5, 9, 12)
        for score in (0.5, 0.1, None, 3.0, -1.0)
    ]
    for member in members:
        stored = StoredPeers.open(storage, pid, member, 1, mode)
        assert stored is not None
        listed = _listed(storage, pid, 1, member, mode)
        assert stored.me == listed.me
        assert _answers(stored, foreign) == _answers(listed, foreign)
        with pytest.raises(IndexError):
            stored.best(len(stored))
        with pytest.raises(IndexError):
            stored[len(stored)]
        assert [stored.best(k) for k in range(len(stored))] == [  # answered from what it read
            listed.best(k) for k in range(len(listed))
        ]
        with pytest.raises(IndexError):
            stored.best(-1)
    assert StoredPeers.open(storage, pid, 0, 1, mode) is None  # failed
    assert StoredPeers.open(storage, pid, 3, 1, mode) is None  # its checkpoint is gone
    assert StoredPeers.open(storage, pid, 2, 2, mode) is None  # never reached step 2


def test_stored_peers_carry_each_members_recent_history(storage):
    pid = make(storage, n=2)
    for score in (0.1, 0.2, 0.3, float("nan"), 0.5, 0.6):  # members alternate, steps 1-3
        train(storage, pid, score)
    peers = StoredPeers.open(storage, pid, 0, 3, Mode.MAX, history=2)
    assert peers.me.history == (0.3, 0.5)  # member 0's steps 2 and 3
    assert peers.other(0).history == (-math.inf, 0.6)  # member 1's: NaN is the worst
    assert [c.history for c in peers] == [(0.3, 0.5), (-math.inf, 0.6)]


def test_a_member_that_fails_while_peers_are_read_is_reported(storage):
    pid = make(storage, n=3)
    for score in (0.1, 0.2, 0.3):
        train(storage, pid, score)
    peers = StoredPeers.open(storage, pid, 0, 1, Mode.MAX)
    assert len(peers) == 3
    storage.discard_checkpoint(pid, ckpt(2, 1))
    assert peers.best(0).member == 1  # one fewer: the best is another
    with pytest.raises(PeersChanged, match="changed while its peers were read"):
        peers.best(2)  # the count said three
    assert [c.member for c in peers] == [0, 1]  # iterating reads everyone as they are now
    with pytest.raises(PeersChanged):
        peers[2]  # answered from that read, which is still one short of the count


def test_peers_whose_every_candidate_is_gone_are_reported_not_counted_below_zero(storage):
    # Simulation seed 677: a worker paused past its lease while reading its peers; the others
    # finished and collected the step. Tournament then drew among "-1 others" and crashed.
    pid = make(storage, n=2)
    for score in (0.1, 0.2):
        train(storage, pid, score)
    peers = StoredPeers.open(storage, pid, 0, 1, Mode.MAX)
    assert peers is not None
    for member in (0, 1):
        storage.discard_checkpoint(pid, ckpt(member, 1))
    with pytest.raises(PeersChanged, match="no longer a candidate at step 1"):
        peers.others()
    with pytest.raises(PeersChanged):
        pt.Tournament()(peers.me, peers, np.random.default_rng(0))


def test_strategies_called_with_a_list_get_list_peers():
    me = Candidate(1, 1, 0.2, 0.2)
    population = [Candidate(0, 1, 0.9, 0.9), me]
    peers = as_peers(population, me)
    assert isinstance(peers, ListPeers) and as_peers(peers, me) is peers
    assert pt.Truncation(0.5)(me, population, np.random.default_rng(0)) == population[0]


# --- the worker: exploits read a few rows, and a change mid-read is decided on a snapshot -----


class _Counting(SQLStorage):
    """Counts the reads of every candidate at once; optionally loses a row mid-decision."""

    def __init__(self, url: str, glitches: int = 0) -> None:
        super().__init__(url)
        self.full_reads = 0
        self.glitches = glitches

    def candidate_scores(self, population_id, step=None):
        self.full_reads += 1
        return super().candidate_scores(population_id, step)

    def peer_at(self, population_id, step, index, mode=None):
        if self.glitches:
            self.glitches -= 1
            return None
        return super().peer_at(population_id, step, index, mode)


# Large enough that every strategy exploits; in generations, so two runs decide alike.
EXPLOITING = {"population": 8, "intervals": 6, "sync": True, "seed": 3}


@pytest.mark.parametrize("exploit", [pt.Truncation(0.25), pt.Tournament(), pt.TTest(window=2)])
def test_the_worker_exploits_without_reading_everyone(exploit, tmp_path, quick_run):
    storage = _Counting(f"sqlite:///{tmp_path / 'p.db'}")
    result = quick_run(storage=storage, exploit=exploit, **EXPLOITING)
    assert result.exploits()  # it did exploit
    assert storage.full_reads == 0


def test_a_change_while_the_strategy_reads_is_decided_again_on_a_snapshot(tmp_path, quick_run):
    clean_storage = _Counting(f"sqlite:///{tmp_path / 'clean.db'}")
    clean = quick_run(storage=clean_storage, exploit=pt.Truncation(0.25), **EXPLOITING)
    storage = _Counting(f"sqlite:///{tmp_path / 'glitched.db'}", glitches=3)
    glitched = quick_run(storage=storage, exploit=pt.Truncation(0.25), **EXPLOITING)
    assert storage.glitches == 0 and storage.full_reads > 0  # it fell back to snapshots
    key = [(e.member, e.step, e.donor, e.donor_step, e.hparams_after) for e in clean.exploits()]
    assert key == [
        (e.member, e.step, e.donor, e.donor_step, e.hparams_after) for e in glitched.exploits()
    ]


def test_list_peers_rank_is_the_count_of_better_peers():
    """ListPeers ranks by a search in its ranking: the same as counting (records.count_peers)
    over ties, -inf scores, and candidates of a member whose listed score differs."""
    from poptune.records import count_peers

    rng = random.Random(0)
    for _ in range(300):
        size = rng.randint(1, 12)
        scores = [rng.choice([0.1, 0.5, 0.9, -math.inf, rng.random()]) for _ in range(size)]
        population = [Candidate(m, 1, s, s) for m, s in enumerate(scores)]
        me = rng.choice(population)
        peers = ListPeers(population, me)
        asked = [*population, *(Candidate(rng.randint(0, size), 1, s, s) for s in (0.5, -1.0))]
        for c in asked:
            others = [p for p in population if p.member != me.member] + [me]
            assert peers.rank(c) == count_peers(others, c.member, c.fitness).better
