"""The deterministic simulation (``poptune.simulation``): a seed replays step for step, a few
hundred seeds keep every invariant, the harness fails when a guarantee is broken on purpose, and
every violation it found stays fixed (one test per seed)."""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from poptune.housekeeping import Housekeeper
from poptune.records import Mode
from poptune.simulation import FAULTS, KINDS, SimulationResult
from poptune.testing import MemoryStorage, simulate, simulate_one
from tests._helpers import ckpt, make

SMOKE_SEEDS = 200


@pytest.mark.parametrize(("seed", "kind"), [(12, "member"), (10, "block"), (13, "function")])
def test_a_seed_replays_step_for_step(seed: int, kind: str):
    first, again = simulate_one(seed), simulate_one(seed)
    assert first.settings["kind"] == kind
    assert first.trace == again.trace and len(first.trace) > 50
    assert first.faults == again.faults and first.status == again.status


def test_a_few_hundred_seeds_keep_every_invariant_and_cover_every_fault_and_setting():
    settings: dict[str, Counter[Any]] = {}

    def count(result: SimulationResult) -> None:
        for key, value in result.settings.items():
            settings.setdefault(key, Counter())[value] += 1

    report = simulate(range(SMOKE_SEEDS), on_result=count)
    assert report.violations == [], "\n\n".join(str(v) for v in report.violations[:3])
    assert report.seeds == SMOKE_SEEDS
    assert set(report.faults) >= set(FAULTS)  # every kind injected, and resumes
    assert report.faults["resume"] > 0 and report.faults["steal"] > 0 and report.faults["raise"] > 0
    assert set(report.statuses) >= {"finished", "stopped"}
    assert set(settings["sync"]) == {True, False}
    assert set(settings["exploit"]) == {
        "truncation", "truncation-half", "tournament", "ttest", None
    }  # fmt: skip
    assert set(settings["explore"]) == {"perturb", "resample", "pb2"}
    assert set(settings["stop"]) == {None, "target", "plateau"}
    assert set(settings["resident"]) == {None, 1, 2}
    assert set(settings["background"]) == {True, False}
    assert set(settings["workers"]) == {1, 2, 3}
    assert set(settings["kind"]) == {"member", "block", "function"}
    assert set(settings["block"]) == {None, 2, 3, 4, 5}
    assert set(settings["own_blocks"]) == {None, True, False}
    assert set(settings["checkpoint_every"]) == {
        None, 2, 3, *(timedelta(seconds=s) for s in (1.5, 2.5, 4.0))
    }  # fmt: skip


def test_a_few_seeds_keep_every_invariant_on_sqlite():
    report = simulate(range(12), storage="sqlite")
    assert report.violations == [], "\n\n".join(str(v) for v in report.violations[:3])
    assert sum(report.faults.values()) > 0


@pytest.mark.skipif(
    not os.environ.get("POPTUNE_TEST_POSTGRES"), reason="needs $POPTUNE_TEST_POSTGRES"
)
def test_a_few_seeds_keep_every_invariant_on_postgresql():
    report = simulate(range(8), storage="postgres")
    assert report.violations == [], "\n\n".join(str(v) for v in report.violations[:3])


FENCED = {"worker", "trained", "origin", "duplicate", "sync", "donor", "checkpoint"}


@pytest.mark.parametrize(
    ("guarantee", "kind", "noticed"),
    [
        ("fencing", "member", FENCED),
        ("fencing", "block", FENCED),
        ("fencing", "function", FENCED),
        ("delete_after_commit", "member", {"missing", "ended"}),
        ("delete_after_commit", "block", {"missing", "ended"}),
        ("drifted_handover", "block", {"handover"}),
        ("no_tail_wait", "function", {"tail"}),
        ("no_tail_wait", "block", {"tail"}),
        ("timeless", "member", {"checkpoint"}),
        ("timeless", "function", {"checkpoint"}),
    ],
)
def test_the_simulator_reports_a_guarantee_broken_on_purpose(
    guarantee: str, kind: str, noticed: set[str]
):
    seeds = [seed for seed in range(300) if KINDS[seed % len(KINDS)] == kind][:60]
    for seed in seeds:
        result = simulate_one(seed, break_guarantee=guarantee)
        if result.violations:
            break
    else:
        pytest.fail(f"60 seeds with {guarantee} broken and no violation reported")
    violation = result.violations[0]
    assert {v.invariant for v in result.violations} & noticed
    assert str(violation).startswith(f"seed {seed}: ")
    assert len(violation.trace) > 5  # the steps that led to it, to read (a first commit: 9)


def test_a_storage_the_simulator_cannot_use_is_refused():
    with pytest.raises(ValueError, match="storage must be 'memory', 'sqlite' or 'postgres'"):
        simulate_one(0, storage="mysql")


# --- violations the simulator found: one test per seed ------------------------------------------
# Each replays the seed's run (settings, interleaving and faults); the fix has its own unit test
# beside the code it changed, which holds whatever the simulator draws.


def test_seed_677_a_worker_paused_while_reading_its_peers_is_fenced_not_crashed():
    # A worker paused past its lease in Tournament's draw; the others finished the population
    # and collected that step, so its peers counted -1 others and the worker died with
    # ValueError('high <= 0'). Now the vanished peers are reported (PeersChanged), the decision
    # is made on a snapshot, and the stale interval is fenced off (tests/test_peers.py).
    result = simulate_one(677)
    assert result.faults["pause"] == 1
    assert result.violations == [], str(result.violations[0])


def test_seed_980_the_same_with_resident_members_and_a_background_writer():
    result = simulate_one(980)
    assert result.settings["resident"] == 1 and result.settings["background"]
    assert result.violations == [], str(result.violations[0])


def test_seed_4135_a_member_whose_donor_is_damaged_falls_back_on_its_own_checkpoint():
    # A block: member 0 copied member 1 at step 1, whose checkpoint was then corrupted. The
    # fallback skipped member 0's own intact checkpoint at that step, found nothing, and the
    # member failed three times and ended failed, the population "finished" short of the
    # budget. Now the member's own checkpoint at its step counts (tests/test_decisions.py).
    for seed in (4135, 5919, 3653):  # the same without the lost commit; with functions
        result = simulate_one(seed)
        assert result.faults["corrupt"] == 1
        assert result.violations == [], str(result.violations[0])
        assert result.status == "finished"


def test_seed_4615_a_block_member_whose_claim_is_lost_in_a_fallback_leaves_the_block_alone():
    # A block worker paused past its lease ('steal'); one of its members moved on and its
    # checkpoint was collected. Back, the worker fell back on another member's checkpoint for
    # it, the copy was refused, and LeaseLost killed the worker. Now that member leaves the
    # block alone, as a member's worker drops it (tests/test_blocks.py).
    for seed in (4615, 10954):
        result = simulate_one(seed)
        assert result.settings["kind"] == "block" and result.faults["steal"] == 1
        assert result.violations == [], str(result.violations[0])


# --- the seams the simulator runs the worker's threads through ----------------------------------


def test_a_housekeeper_without_threads_runs_its_passes_when_told():
    now = [0.0]
    storage = MemoryStorage(clock=lambda: now[0])
    pid = make(storage, n=1)
    claim = storage.claim(pid, "w", 5, 30.0, sync=False)
    assert claim is not None
    keeper = Housekeeper(storage, _NoFiles(), pid, Mode.MAX, ("m0",), 30.0, {0: claim})
    keeper.threaded = False
    keeper.start()  # starts no thread: nothing renews the lease by itself
    now[0] = 20.0
    keeper.renew_leases()  # one beat: the lease now ends at 50
    now[0] = 40.0
    assert storage.claim(pid, "other", 5, 30.0, sync=False) is None
    keeper.delete(ckpt(0, 1))
    assert keeper.checkpoints.deleted == []  # type: ignore[attr-defined]
    keeper.tidy()  # deletes what was queued, in this thread
    assert keeper.checkpoints.deleted == [ckpt(0, 1)]  # type: ignore[attr-defined]
    keeper.stop()  # a last collection, in this thread too


class _NoFiles:
    """A checkpoint store that only remembers what it was told to delete."""

    url = "nowhere"

    def __init__(self) -> None:
        self.deleted: list[Any] = []

    def delete(self, ref: Any) -> None:
        self.deleted.append(ref)
