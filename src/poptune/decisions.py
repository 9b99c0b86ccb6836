"""The worker's decisions: exploit and explore, and the copies that recover a member.

A :class:`Decider` picks a donor for a member (the exploit strategy, against its peers at equal
training), explores the donor's hparams (the explore strategy), and re-seeds a member that keeps
failing or one whose checkpoint is damaged (fallback). It reads the population from the storage
as the strategies ask; the only thing it writes is the copy itself (``Storage.record_exploit``),
which re-checks that the donor's checkpoint is still there. A re-seed is handed back to the
worker, which records it with the failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import PopulationError
from .peers import ListPeers, Peers, PeersChanged, StoredPeers, with_history
from .records import (
    Candidate,
    CheckpointRef,
    CopyReason,
    ExploitEvent,
    ExploreData,
    IntervalChange,
    IntervalRecord,
    MemberRecord,
    rank_key,
)
from .runspec import RunSpec
from .seeding import EXPLOIT, RESEED, rng_for
from .storage import Claim, Copy, Storage
from .strategies import _capabilities as capabilities

__all__ = ["Decider", "after_copy"]


class Decider:
    """Exploit, explore and recovery copies for the members of one population.

    ``spec`` gives the strategies and the configuration; every decision draws from its own
    generator (see :mod:`poptune.seeding`), so it is the same whichever worker makes it.
    """

    def __init__(self, spec: RunSpec, storage: Storage, population_id: int) -> None:
        self.spec = spec
        self.storage = storage
        self.population_id = population_id

    def exploit_and_explore(self, claim: Claim) -> tuple[MemberRecord, CheckpointRef | None]:
        """Copy a better member's (weights, hparams, step) from one recorded step, then explore.

        Members are compared at equal training: a member at step t is ranked against the
        interval every healthy member recorded at step t, and copies the chosen donor's
        checkpoint from that step. Comparing against members that trained further would reward
        training time rather than hyperparameters (and, with the step travelling with the
        weights, let the population collapse onto whichever member ran ahead). Every member at
        or past t recorded a checkpoint at t, and garbage collection keeps every checkpoint at
        or above the lowest step of a healthy member, so these donors are still there.

        Returns the member as it now is and the checkpoint its next interval starts from.
        """
        member, spec = claim.member, self.spec
        unchanged = (replace(member, exploit_pending=False), claim.checkpoint)
        if spec.exploit is None:
            return unchanged
        peers = self._peers(member)
        if peers is None:
            return unchanged
        rng = rng_for(spec.config.seed, EXPLOIT, member.id, member.step)
        try:
            donor = spec.exploit(peers.me, peers, rng)
        except PeersChanged:  # a member failed while the strategy read: decide on a snapshot
            peers = self._snapshot(member)
            if peers is None:
                return unchanged
            rng = rng_for(spec.config.seed, EXPLOIT, member.id, member.step)
            donor = spec.exploit(peers.me, peers, rng)
        if donor is None:
            return unchanged
        # A strategy that picks the member itself keeps its weights and explores its hparams
        # (the paper's explore-only ablation): recorded like any copy, of its own checkpoint.
        donor = self._with_hparams(donor)
        if donor is None:  # its interval is gone: the population was deleted meanwhile
            return unchanged
        hparams = self._explore(donor, rng)
        event = _copy_event(member, donor, hparams, peers.me.score)
        copied = self.storage.record_exploit(
            claim, event, hparams, done=donor.step >= spec.config.intervals
        )
        if copied is None:  # the donor's checkpoint was collected meanwhile
            return unchanged
        return after_copy(member, event), copied

    def block_copies(self, claims: Sequence[Claim]) -> list[tuple[int, Copy]]:
        """The copies :meth:`exploit_and_explore` would make for the members of a block that
        are due (same generators; the peers at each of the block's steps read once, with their
        hparams, as one snapshot), with the index of each one's claim. Nothing is recorded:
        the block worker records them together (``Storage.record_exploits``) and applies each
        committed one with :func:`after_copy`.
        """
        spec = self.spec
        if spec.exploit is None:
            return []
        steps: dict[int, tuple[dict[int, Candidate], ListPeers | None]] = {}
        copies: list[tuple[int, Copy]] = []
        for index, claim in enumerate(claims):
            member = claim.member
            if not member.exploit_pending:
                continue
            if member.step not in steps:
                population = self._step_candidates(member.step)
                peers = ListPeers(population, population[0]) if population else None
                steps[member.step] = {c.member: c for c in population}, peers
            candidates, peers = steps[member.step]
            me = candidates.get(member.id)
            if me is None or peers is None:  # not a candidate there (its checkpoint was dropped)
                continue
            rng = rng_for(spec.config.seed, EXPLOIT, member.id, member.step)
            donor = spec.exploit(me, peers.seen_by(me), rng)  # one sorting for the block
            if donor is None:
                continue
            hparams = self._explore(donor, rng)
            event = _copy_event(member, donor, hparams, me.score)
            done = donor.step >= spec.config.intervals
            copies.append((index, Copy(claim, event, hparams, done)))
        return copies

    def _step_candidates(self, step: int) -> list[Candidate]:
        """Every candidate at ``step``, with its hparams (and history, if the strategy asks)."""
        return with_history(
            [self.candidate(i) for i in self.storage.candidates(self.population_id, step)],
            self.storage,
            self.population_id,
            self.spec.config.mode,
            capabilities.history(self.spec.exploit),
        )

    def fallback(
        self, claim: Claim, member: MemberRecord, damaged: tuple[int, int]
    ) -> tuple[MemberRecord, CheckpointRef] | None:
        """Point ``member``, whose checkpoint ``damaged`` (member, step) cannot be restored, at
        the best healthy member's latest checkpoint at its step or later (recorded as a copy
        without explore). ``None`` if there is none yet.

        The member's own latest checkpoint counts too, when it is at that step: a member that
        had just copied a donor whose checkpoint turned out damaged still has its own weights
        at that step (its older checkpoints are below its step, so never chosen)."""
        population = [
            c
            for c in self._candidates()
            if (c.member, c.step) != damaged and member.step <= c.step < self.spec.config.intervals
        ]
        for candidate in sorted(population, key=lambda c: rank_key(c.fitness, c.member)):
            donor = self._with_hparams(candidate)
            if donor is None:
                continue
            event = _copy_event(member, donor, donor.hparams, member.score, CopyReason.FALLBACK)
            ref = self.storage.record_exploit(claim, event, donor.hparams)
            if ref is not None:
                return after_copy(member, event), ref
        return None

    def reseed(self, member: MemberRecord) -> tuple[ExploitEvent, dict[str, Any]] | None:
        """A donor's latest checkpoint and explored hparams for a member that keeps failing
        (the caller records them with the failure), or ``None`` if no member is healthy."""
        spec = self.spec
        population = [
            c
            for c in self._candidates()
            if c.member != member.id and c.fitness > -math.inf and c.step >= member.step
        ]
        if not population:
            return None
        rng = rng_for(spec.config.seed, RESEED, member.id, member.step, member.failures)
        me = Candidate(member.id, member.step, None, -math.inf, dict(member.hparams))
        chosen = spec.exploit(me, [*population, me], rng) if spec.exploit is not None else None
        if chosen is None or chosen.member == member.id:
            chosen = min(population, key=lambda c: rank_key(c.fitness, c.member))
        donor = self._with_hparams(chosen)
        if donor is None:
            return None
        hparams = self._explore(donor, rng)
        return _copy_event(member, donor, hparams, None, CopyReason.RESEED), hparams

    def candidate(self, interval: IntervalRecord) -> Candidate:
        """What the strategies see of a recorded ``interval``."""
        return Candidate(
            member=interval.member,
            step=interval.step,
            score=interval.score,
            fitness=self.spec.config.mode.fitness(interval.score),
            hparams=interval.hparams,
        )

    def _candidates(self, step: int | None = None) -> list[Candidate]:
        """What the exploit strategy chooses from: each healthy member's checkpointed interval
        at ``step`` (default: its latest). Scores only, read without decoding any hparams,
        unless the strategy asks for every candidate's hparams (``needs_hparams = True``)."""
        if capabilities.needs_hparams(self.spec.exploit):
            return [self.candidate(i) for i in self.storage.candidates(self.population_id, step)]
        fitness = self.spec.config.mode.fitness
        rows = self.storage.candidate_scores(self.population_id, step)
        return [Candidate(member, at, score, fitness(score)) for member, at, score in rows]

    def _peers(self, member: MemberRecord) -> Peers | None:
        """``member``'s peers at its step, for the exploit strategy: read from the storage as
        the strategy asks (a few one-row queries, whatever the population's size), or all at
        once for a strategy that needs every candidate's hparams. ``None`` if the member is
        not a candidate there (it failed, or its checkpoint was dropped)."""
        exploit = self.spec.exploit
        if capabilities.needs_hparams(exploit):
            return self._snapshot(member)
        return StoredPeers.open(
            self.storage,
            self.population_id,
            member.id,
            member.step,
            self.spec.config.mode,
            history=capabilities.history(exploit),
        )

    def _snapshot(self, member: MemberRecord) -> ListPeers | None:
        """``member``'s peers read at once (with their history, if the strategy asks for it)."""
        population = with_history(
            self._candidates(member.step),
            self.storage,
            self.population_id,
            self.spec.config.mode,
            capabilities.history(self.spec.exploit),
        )
        me = next((c for c in population if c.member == member.id), None)
        return None if me is None else ListPeers(population, me)

    def _with_hparams(self, donor: Candidate) -> Candidate | None:
        """``donor`` with the hparams recorded with its interval (read now if the candidates
        were read without them), or ``None`` if that interval is not there."""
        if capabilities.needs_hparams(self.spec.exploit):
            return donor
        interval = self.storage.interval(self.population_id, donor.member, donor.step)
        return None if interval is None else replace(donor, hparams=dict(interval.hparams))

    def _explore(self, donor: Candidate, rng: np.random.Generator) -> dict[str, Any]:
        """Explore the donor's recorded hparams; a strategy leaving the space stops the run."""
        spec = self.spec
        window = capabilities.window(spec.explore)
        if window > 0:  # a strategy that learns from the population's recent intervals
            data = self._explore_data(donor, window)
            explored = spec.explore(dict(donor.hparams), spec.config.space, rng, data=data)
        else:
            explored = spec.explore(dict(donor.hparams), spec.config.space, rng)
        try:
            return spec.config.space.validate(explored)
        except ValueError as error:
            raise PopulationError(
                f"The explore strategy returned invalid hparams: {error}"
            ) from None

    def _explore_data(self, donor: Candidate, window: int) -> ExploreData:
        """The population's intervals at steps ``donor.step - window + 1 .. donor.step``, each
        with the fitness it started from (its origin interval's). Later steps are left out, so
        a synchronous run sees the same data whatever the workers' timing."""
        fitness = self.spec.config.mode.fitness
        rows = self.storage.intervals(
            self.population_id, after_step=donor.step - window - 1, until_step=donor.step
        )
        scores = {(r.member, r.step): fitness(r.score) for r in rows}
        changes = [
            IntervalChange(r.member, r.step, r.hparams, scores[r.origin], scores[r.member, r.step])
            for r in rows
            if donor.step - window < r.step <= donor.step and r.origin in scores
        ]
        changes.sort(key=lambda c: (c.step, c.member))
        return ExploreData(donor.step, donor.fitness, tuple(changes))


def _copy_event(
    member: MemberRecord,
    donor: Candidate,
    hparams: Mapping[str, Any],
    score: float | None,
    reason: CopyReason = CopyReason.EXPLOIT,
) -> ExploitEvent:
    """``member`` copies ``donor``'s (weights, hparams) recorded at ``donor.step``."""
    return ExploitEvent(
        reason=reason,
        member=member.id,
        step=member.step,
        donor=donor.member,
        donor_step=donor.step,
        hparams_before=dict(member.hparams),
        hparams_after=dict(hparams),
        score=score,
        donor_score=donor.score,
        time=time.time(),
    )


def after_copy(member: MemberRecord, event: ExploitEvent) -> MemberRecord:
    """The member as it is once ``event`` is recorded: the donor's weights and step (the
    intervals behind those weights), the new hparams."""
    return replace(
        member,
        step=event.donor_step,
        score=event.donor_score,
        hparams=dict(event.hparams_after),
        parent=event.donor,
        restore=(event.donor, event.donor_step),
        exploit_pending=False,
    )
