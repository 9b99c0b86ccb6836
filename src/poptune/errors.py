"""Every exception poptune raises, in one family.

``except pt.PoptuneError`` catches anything poptune refuses or fails at; each class also derives
from the builtin it has always derived from, so ``except ValueError`` (a bad parameter) or
``except KeyError`` (an unknown population) keep working. The modules that raise them re-export
them under their old names.

The tree::

    PoptuneError
    ├── InvalidParameterError   (ValueError, TypeError)  a parameter has the wrong type or value
    ├── NotRecordable           (TypeError)   a strategy's parameters cannot be recorded
    ├── SerializationError      (ValueError)  bytes that are not a poptune checkpoint
    ├── PopulationError         (RuntimeError) the population cannot continue
    ├── LoopError               (RuntimeError) a training function broke the loop's contract
    ├── PeersChanged            (RuntimeError) the candidates changed under a strategy
    ├── NoBestMember            (LookupError) no weights to call best
    ├── TrackerError            (RuntimeError) a tracker failed to open, write or close
    ├── StorageError            (RuntimeError) the storage cannot be opened or used
    ├── PopulationNotFound      (KeyError)    no population of that name
    ├── PopulationExists        (ValueError)  a population of that name already exists
    ├── PopulationBusy          (RuntimeError) a population being trained was not deleted
    ├── LeaseLost               (RuntimeError) the claim a write was made under is gone
    └── CheckpointError         (RuntimeError) a checkpoint cannot be read
        ├── CheckpointMissing   its file is not where the store looks
        └── CheckpointCorrupt   its bytes do not match what was recorded
            └── UnsafeCheckpointPath  its recorded path leads out of its folder
"""

from __future__ import annotations

__all__ = [
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMissing",
    "InvalidParameterError",
    "LeaseLost",
    "LoopError",
    "NoBestMember",
    "NotRecordable",
    "PeersChanged",
    "PoptuneError",
    "PopulationBusy",
    "PopulationError",
    "PopulationExists",
    "PopulationNotFound",
    "SerializationError",
    "StorageError",
    "TrackerError",
    "UnsafeCheckpointPath",
]


class PoptuneError(Exception):
    """The base of every exception poptune defines; the message says what was wrong, the
    value, and what to do."""


class InvalidParameterError(PoptuneError, ValueError, TypeError):
    """A parameter has the wrong type or value (both a ``ValueError`` and a ``TypeError``)."""


class NotRecordable(PoptuneError, TypeError):
    """A strategy whose parameters cannot be recorded with the population."""


class SerializationError(PoptuneError, ValueError):
    """The data is not a valid poptune checkpoint (wrong magic, truncated, inconsistent)."""


class PopulationError(PoptuneError, RuntimeError):
    """The population cannot continue (bad configuration, or every member failed)."""


class LoopError(PoptuneError, RuntimeError):
    """The training function broke the loop's contract (returned early, reported twice or not
    at all, reported without a state); the message says what to change."""


class PeersChanged(PoptuneError, RuntimeError):
    """The candidates at a step changed while a strategy was reading them (a member failed, or
    a damaged checkpoint was dropped): an answer given before no longer matches the storage.
    The worker then decides again on a snapshot of everyone."""


class NoBestMember(PoptuneError, LookupError):
    """No weights to call best: no interval yet, no finite score, or none of theirs is kept."""


class TrackerError(PoptuneError, RuntimeError):
    """A tracker failed to open, write or close; the message names the tracker and the cause."""


class StorageError(PoptuneError, RuntimeError):
    """The storage cannot be opened or used; the message says why and what to do."""


class PopulationNotFound(PoptuneError, KeyError):
    """No population of that name in the storage."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "population not found"


class PopulationExists(PoptuneError, ValueError):
    """A population of that name already exists."""


class PopulationBusy(PoptuneError, RuntimeError):
    """The population is being trained: a worker holds a member, or recorded an interval
    within the quiet period; it was not deleted."""


class LeaseLost(PoptuneError, RuntimeError):
    """The claim this write was made under is no longer held (released or taken over)."""


class CheckpointError(PoptuneError, RuntimeError):
    """A checkpoint cannot be read: its file is missing (:class:`CheckpointMissing`) or damaged
    (:class:`CheckpointCorrupt`). Catch this one to handle both."""


class CheckpointMissing(CheckpointError):
    """A checkpoint's file is not where the store looks for it: deleted, or the folder moved
    (then open the population with ``checkpoints=`` its new location)."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint file is truncated, cannot be decoded, or does not match its recorded
    checksum."""


class UnsafeCheckpointPath(CheckpointCorrupt):
    """A checkpoint path read from the storage does not lie inside its population's folder
    (``..``, an absolute path, a symbolic link leading out, another population's folder): the
    storage's rows were written by something other than poptune. Nothing is read or deleted."""
