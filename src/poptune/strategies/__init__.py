"""PBT's strategy seams: ready (when), exploit (copy whom) and explore (mutate how)."""

from typing import TYPE_CHECKING

from ._base import (
    DeclaredExploit,
    DeclaredExplore,
    DeclaredStop,
    Exploit,
    Explore,
    NotRecordable,
    Ready,
    describe,
    rebuild,
)
from .exploit import Tournament, Truncation, TTest
from .explore import Chain, Perturb, Resample, chain
from .pb2 import PB2
from .ready import Every
from .stop import Plateau, Progress, Stop, Target, WallClock

__all__ = [
    "PB2",
    "Chain",
    "DeclaredExploit",
    "DeclaredExplore",
    "DeclaredStop",
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


if TYPE_CHECKING:
    # The built-ins declare their capabilities: mypy checks them against the protocols here.
    _EXPLOITS: tuple[DeclaredExploit, ...] = (Truncation(), Tournament(), TTest())
    _EXPLORES: tuple[DeclaredExplore, ...] = (PB2(), Chain([Perturb()]))
    _STOPS: tuple[DeclaredStop, ...] = (Target(1.0), Plateau(1), WallClock(1.0))
