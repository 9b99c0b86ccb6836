"""What a person reads: an HTML report of a population, and static figures for papers.

Example:
    >>> result = pt.load("sqlite:///runs/poptune.db", "digits")
    >>> result.report("report.html")
    PosixPath('report.html')
"""

from __future__ import annotations

from pathlib import Path

from ..results import Result
from ._html import render_html
from ._model import ReportModel, build_model
from ._plots import KINDS, plot

__all__ = ["KINDS", "ReportModel", "build_model", "plot", "render_html", "write_report"]


def write_report(result: Result, path: str | Path) -> Path:
    """Write a self-contained HTML report of ``result`` to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(build_model(result)), encoding="utf-8")
    return path
