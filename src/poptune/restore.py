"""Getting a member ready to train: its live trainable, holding the weights it restores from.

The :class:`Restorer` continues a member in memory when the worker holds its committed weights,
else loads its checkpoint (from a live donor held here, or from the store, verified by its
checksum), and copes with a checkpoint that cannot be restored: a damaged one is dropped and the
member falls back to another member's, a missing file stops the population.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NoReturn

from . import serialization
from .checkpoints import CheckpointCorrupt, CheckpointMissing, CheckpointStore, confined
from .decisions import Decider
from .failures import _UserCodeFailed, user_code
from .housekeeping import Housekeeper
from .live import LiveMember, LiveMembers, open_session
from .records import CheckpointRef, MemberRecord
from .runspec import RunSpec
from .seeding import TRAIN, derive_seed
from .status import stop_population
from .storage import Claim, Storage

__all__ = ["Restorer"]

log = logging.getLogger("poptune")


class Restorer:
    """Restores the members of one population into ``live``, the worker's members in memory.

    ``folders`` are the population's checkpoint folders (a recorded path outside them is
    refused); ``decider`` picks the fallback of a damaged checkpoint, whose file
    ``housekeeper`` deletes.
    """

    def __init__(
        self,
        spec: RunSpec,
        storage: Storage,
        checkpoints: CheckpointStore,
        population_id: int,
        folders: Sequence[str],
        live: LiveMembers,
        decider: Decider,
        housekeeper: Housekeeper,
    ) -> None:
        self.spec = spec
        self.storage = storage
        self.checkpoints = checkpoints
        self.population_id = population_id
        self.folders = folders
        self.live = live
        self.decider = decider
        self.housekeeper = housekeeper

    def restore(
        self, claim: Claim, member: MemberRecord, ref: CheckpointRef | None
    ) -> tuple[MemberRecord, LiveMember]:
        """The member's live trainable, holding the weights it restores from.

        If this worker holds the member and its weights equal the committed checkpoint it
        restores from, training continues in memory. Otherwise the checkpoint (the donor's after
        an exploit, or the member's own when it moved here) is loaded into the live instance,
        which is built first if this worker does not hold the member: copied from the donor's
        live instance if this worker holds it unchanged since that checkpoint, else read from
        the store and verified by its checksum.

        A checkpoint whose file is missing stops the population with a message (nothing is
        dropped: the folder may have moved, see :meth:`_stop_on_missing`). A truncated or
        corrupted checkpoint is never trained on: its row is dropped (so no one copies it) and
        the member falls back to the best healthy member's latest checkpoint at its step or
        later (recorded as an exploit without explore). Its own older checkpoints are not used:
        their weights trained fewer intervals than its step says.
        """
        live = self.live.get(member.id)
        if member.restore is None:  # the first interval: fresh weights
            return member, self.build(member)
        if live is not None and ref is not None and live.holds == ref:
            return member, live
        member, ref, state = self.read(claim, member, ref)
        live = live if live is not None else self.build(member)
        user_code(live.session.load, state)
        live.holds = ref
        return member, live

    def read(
        self, claim: Claim, member: MemberRecord, ref: CheckpointRef | None
    ) -> tuple[MemberRecord, CheckpointRef, Any]:
        """The state ``member`` restores from (checkpoint ``ref``, or a fallback's: see
        :meth:`restore`), with the member and checkpoint as they then are."""
        assert member.restore is not None  # its first interval restores nothing
        while True:
            if ref is not None:
                try:
                    state = self._state_of(ref)
                except CheckpointMissing as error:
                    if self.storage.checkpoint(self.population_id, ref.member, ref.step) != ref:
                        damaged = (ref.member, ref.step)  # collected meanwhile: pick again
                    else:
                        self._stop_on_missing(error)
                except CheckpointCorrupt as error:
                    log.warning("%s Falling back to another checkpoint.", error)
                    self.storage.discard_checkpoint(self.population_id, ref)
                    self.housekeeper.delete(ref)
                    damaged = (ref.member, ref.step)
                else:
                    return member, ref, state
            else:
                log.warning(
                    "Checkpoint %s of member %d is not in the storage; falling back.",
                    member.restore,
                    member.id,
                )
                damaged = member.restore
            fallback = self.decider.fallback(claim, member, damaged)
            if fallback is None:
                raise _UserCodeFailed(
                    f"No intact checkpoint to restore member {member.id} from: {damaged} is "
                    f"damaged and no other member has a checkpoint at step {member.step} or later "
                    "yet."
                )
            member, ref = fallback

    def build(self, member: MemberRecord) -> LiveMember:
        """A new live instance of the member's trainable (user code), kept by this worker."""
        seed = derive_seed(self.spec.config.seed, TRAIN, member.id, member.step + 1)
        session = user_code(open_session, self.spec.trainable, member.hparams, seed, member.id)
        live = LiveMember(member.id, session)
        self.live.add(live)
        return live

    def _state_of(self, ref: CheckpointRef) -> Any:
        """The state checkpointed as ``ref``: copied from the live member of this worker that
        still holds exactly it (a donor trained here), else read from the checkpoint store."""
        donor = self.live.peek(ref.member)
        if donor is not None and donor.holds == ref:
            return serialization.copy(user_code(donor.session.state))
        confined(ref.path, self.folders)  # a row's path never reaches outside the population
        return self.checkpoints.load(ref)

    def _stop_on_missing(self, error: CheckpointMissing) -> NoReturn:
        """Stop the population: a committed checkpoint's file is not in the folder. Dropping
        the rows of missing files would throw away a population whose folder merely moved."""
        message = (
            f"{error} The storage records it, so the checkpoint folder is probably not where "
            f"this worker looks ({self.checkpoints.url}): if the run directory moved or is "
            "mounted elsewhere here, open the population with checkpoints= its new location "
            "(pt.load(storage, name, checkpoints=...).resume(), or --checkpoints). Nothing "
            "was dropped."
        )
        raise stop_population(self.storage, self.population_id, message) from error
