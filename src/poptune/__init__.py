"""poptune: Population Based Training (Jaderberg et al., 2017) for Python.

Example:
    >>> import poptune as pt
    >>> result = pt.run(MyTrainable, space={"lr": pt.LogUniform(1e-4, 1e-1)},
    ...                 metric="accuracy", population=4, intervals=5, workers=2)
    >>> result.best.hparams
    {'lr': ...}
    >>> len(result.schedule())     # the winning lineage's hparams, interval by interval
    5
"""

from .checkpoints import LocalCheckpoints
from .config import PopulationConfig
from .errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMissing,
    InvalidParameterError,
    LeaseLost,
    LoopError,
    NoBestMember,
    NotRecordable,
    PeersChanged,
    PoptuneError,
    PopulationBusy,
    PopulationError,
    PopulationExists,
    PopulationNotFound,
    SerializationError,
    StorageError,
    TrackerError,
    UnsafeCheckpointPath,
)
from .loop import Context, Interval
from .peers import Peers, as_peers
from .population import Population, delete, load, replay, resume, run
from .records import (
    Candidate,
    CheckpointRef,
    CopyReason,
    ExploitEvent,
    ExploreData,
    FailureRecord,
    IntervalChange,
    IntervalRecord,
    MemberRecord,
    MemberStatus,
    Mode,
    PopulationStatus,
)
from .results import Best, EdgeKind, Lineage, LineageEdge, Result, ScheduleEntry
from .runners import InProcessRunner, LocalProcessRunner, RayRunner
from .serialization import Directory
from .space import Choice, Distribution, IntUniform, LogUniform, Space, Uniform
from .storage import SQLStorage, Storage, open_storage
from .strategies import (
    PB2,
    Chain,
    Every,
    Exploit,
    Explore,
    Perturb,
    Plateau,
    Ready,
    Resample,
    Target,
    Tournament,
    Truncation,
    TTest,
    WallClock,
    chain,
)
from .trackers import MLflow, TensorBoard, Tracker, WandB
from .trainable import Trainable
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "PB2",
    "Best",
    "Candidate",
    "Chain",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMissing",
    "CheckpointRef",
    "Choice",
    "Context",
    "CopyReason",
    "Directory",
    "Distribution",
    "EdgeKind",
    "Every",
    "Exploit",
    "ExploitEvent",
    "Explore",
    "ExploreData",
    "FailureRecord",
    "InProcessRunner",
    "IntUniform",
    "Interval",
    "IntervalChange",
    "IntervalRecord",
    "InvalidParameterError",
    "LeaseLost",
    "Lineage",
    "LineageEdge",
    "LocalCheckpoints",
    "LocalProcessRunner",
    "LogUniform",
    "LoopError",
    "MLflow",
    "MemberRecord",
    "MemberStatus",
    "Mode",
    "NoBestMember",
    "NotRecordable",
    "Peers",
    "PeersChanged",
    "Perturb",
    "Plateau",
    "PoptuneError",
    "Population",
    "PopulationBusy",
    "PopulationConfig",
    "PopulationError",
    "PopulationExists",
    "PopulationNotFound",
    "PopulationStatus",
    "RayRunner",
    "Ready",
    "Resample",
    "Result",
    "SQLStorage",
    "ScheduleEntry",
    "SerializationError",
    "Space",
    "Storage",
    "StorageError",
    "TTest",
    "Target",
    "TensorBoard",
    "Tournament",
    "Tracker",
    "TrackerError",
    "Trainable",
    "Truncation",
    "Uniform",
    "UnsafeCheckpointPath",
    "WallClock",
    "WandB",
    "Worker",
    "__version__",
    "as_peers",
    "chain",
    "delete",
    "load",
    "open_storage",
    "replay",
    "resume",
    "run",
]
