"""Whether the workers of this machine that hold members are still alive.

A worker's claim names its owner ``host:pid:token``. A worker elsewhere is left to its lease;
one of this machine whose process is gone (killed, crashed, a zombie nobody reaps) has its
members taken back at once, so that resuming, replacing or deleting a population need not wait
for the lease to run out.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from .records import PopulationRecord
from .storage import Storage

__all__ = ["alive", "expire_dead_local_claims"]

log = logging.getLogger("poptune")


def expire_dead_local_claims(storage: Storage, record: PopulationRecord) -> None:
    """Free members held by workers of this machine whose process is gone (killed, crashed),
    instead of waiting for their leases to run out. Workers elsewhere are left to their leases."""
    host = socket.gethostname()
    dead = set()
    for owner in storage.claims(record.id).values():
        owner_host, _, rest = (owner or "").partition(":")
        pid_text = rest.partition(":")[0]
        if owner_host == host and pid_text.isdigit() and not alive(int(pid_text)):
            dead.add(owner)
    if dead and storage.release_claims(record.id, sorted(dead)):
        log.warning("Took back members held by %d dead worker(s) of this machine.", len(dead))


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie does not; a process of another
    user does, as far as this one can tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker whose parent died too may linger as a zombie nobody reaps
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
