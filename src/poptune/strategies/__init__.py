"""PBT's strategy seams: ready (when), exploit (copy whom) and explore (mutate how)."""

from ._base import Exploit, Explore, NotRecordable, Ready, describe, rebuild
from .exploit import Tournament, Truncation, TTest
from .explore import Chain, Perturb, Resample, chain
from .pb2 import PB2
from .ready import Every
from .stop import Plateau, Progress, Stop, Target, WallClock

__all__ = [
    "PB2",
    "Chain",
    "Every",
    "Exploit",
    "Explore",
    "NotRecordable",
    "Perturb",
    "Plateau",
    "Progress",
    "Ready",
    "Resample",
    "Stop",
    "TTest",
    "Target",
    "Tournament",
    "Truncation",
    "WallClock",
    "chain",
    "describe",
    "rebuild",
]
