"""The examples in poptune's docstrings, run by ``python -m pytest`` (pyproject.toml's
``testpaths`` names ``src/poptune``): this file collects them as ``--doctest-modules`` would,
for the package's modules only (the flag itself, in ``addopts``, would also import every script
under ``tests/``).

Each example runs in a fresh folder holding ``runs/poptune.db`` with a small trained population
named ``digits``, so ``pt.load("sqlite:///runs/poptune.db", "digits")`` and the commands'
defaults work as in the docs. Its namespace has ``pt``, ``Digits`` (a stand-in classifier whose
``accuracy`` grows fastest with ``lr`` near 0.05; ``MyTrainable`` is the same), ``result`` (that
population) and ``url`` (its storage). This file sits outside the package: it is not installed.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from _pytest.doctest import DoctestModule

import poptune as pt

#: Modules whose examples need an optional extra; their examples are not collected without it.
_EXTRAS = {
    "poptune/dashboard/_app.py": ("starlette", "httpx"),
    "poptune/integrations/lightning.py": ("lightning",),
    "poptune/integrations/torch.py": ("torch",),
    "poptune/integrations/transformers.py": ("transformers",),
    "poptune/integrations/vectorized.py": ("torch",),
    "poptune/trackers.py": ("tensorboard",),
}

collect_ignore = [
    path
    for path, modules in _EXTRAS.items()
    if any(importlib.util.find_spec(module) is None for module in modules)
]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> DoctestModule | None:
    """The examples of each module of the package (once, with or without --doctest-modules)."""
    if parent.config.option.doctestmodules or file_path.suffix != ".py":
        return None
    if file_path.name == "conftest.py" or "poptune" not in file_path.parts:
        return None
    return DoctestModule.from_parent(parent, path=file_path)


class Digits(pt.Trainable):
    """A stand-in for a digits classifier: each interval closes part of the gap to 100%
    accuracy, the largest part with ``lr`` at 0.05."""

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.accuracy = 0.5

    def train(self, hparams: Mapping[str, Any]) -> None:
        distance = abs(math.log10(hparams["lr"] / 0.05))
        self.accuracy += (1.0 - self.accuracy) * 0.5 / (1.0 + distance)

    def evaluate(self) -> dict[str, float]:
        return {"accuracy": self.accuracy}

    def state_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.accuracy = state["accuracy"]


@pytest.fixture(scope="session")
def _trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``runs/poptune.db``: population ``digits``, 4 members, 4 intervals."""
    folder = tmp_path_factory.mktemp("doctest-runs")
    result = pt.run(
        Digits,
        space={"lr": pt.LogUniform(1e-3, 0.5)},
        metric="accuracy",
        population=4,
        intervals=4,
        name="digits",
        seed=0,
        storage=f"sqlite:///{folder / 'runs' / 'poptune.db'}",
        progress=False,
    )
    # Closed now, not whenever the garbage collector gets to it: its last connection removes
    # the database's -wal file, which made a copy of the folder below fail now and then.
    result.storage.close()
    return folder


@pytest.fixture(autouse=True)
def _example_folder(
    request: pytest.FixtureRequest,
    _trained: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    doctest_namespace: dict[str, Any],
) -> Iterator[None]:
    """Every example runs in its own copy of the trained folder, whatever it writes there."""
    shutil.copytree(_trained / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    for variable in ("POPTUNE_STORAGE", "POPTUNE_CHECKPOINTS"):
        monkeypatch.delenv(variable, raising=False)
    url = "sqlite:///runs/poptune.db"
    doctest_namespace.update(
        pt=pt, Digits=Digits, MyTrainable=Digits, url=url, result=pt.load(url, "digits")
    )
    yield
