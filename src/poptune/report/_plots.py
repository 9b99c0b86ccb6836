"""Static figures for papers (matplotlib, extra ``report``): scores, hyperparameters, lineage."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._text import printable
from ._model import ReportModel
from ._model import finite as _finite

__all__ = ["KINDS", "plot"]

KINDS = ("scores", "hparams", "lineage")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "Static plots need matplotlib: pip install matplotlib (or 'poptune[report]')."
        ) from None
    return plt


def _whole_numbers() -> Any:
    """A tick locator for an axis of intervals: whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def plot(model: ReportModel, kind: str, path: str | Path) -> Path:
    """Draw one figure of ``kind`` (scores, hparams or lineage) to ``path`` (.png, .svg, .pdf)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}.")
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"Cannot tell the image format of {str(path)!r}: use .png, .svg or .pdf.")
    plt = _pyplot()
    # Names are drawn as typed: never as mathtext ("$...$" would be typeset, or fail to parse)
    # nor through LaTeX (a matplotlibrc with text.usetex would hand stored names to TeX).
    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
        _draw(plt, model, kind, path)
    return path


def _draw(plt: Any, model: ReportModel, kind: str, path: Path) -> None:
    figure = {"scores": _scores, "hparams": _hparams, "lineage": _lineage}[kind](plt, model)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)


def _by_member(model: ReportModel) -> list[tuple[int, list[Any]]]:
    """Each member's intervals, in recording order, by member id."""
    groups: dict[int, list[Any]] = defaultdict(list)
    for interval in model.intervals:
        groups[interval.member].append(interval)
    return sorted(groups.items())


def _scores(plt: Any, model: ReportModel) -> Any:
    """Each member's scores by interval (the best member's bold), exploits and recoveries
    marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for member, intervals in _by_member(model):
        points = [(i.step, i.score) for i in intervals if _finite(i.score)]
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, lw=2.5 if member == model.best_member else 1, alpha=0.8)
    score = {(i.member, i.step): i.score for i in model.intervals if _finite(i.score)}
    for recovery, colour, label in (
        (False, "#d62728", "exploit"),
        (True, "#7f7f7f", "recovery"),
    ):
        marks = [(e.step, score[(e.member, e.step)]) for e in model.exploits
                 if (e.member, e.step) in score and e.is_exploit is not recovery]  # fmt: skip
        if marks:
            xs, ys = zip(*marks, strict=True)
            axis.scatter(xs, ys, marker="^", color=colour, s=18, zorder=3, label=label)
            axis.legend(loc="lower right")
    axis.set_xlabel("interval")
    axis.xaxis.set_major_locator(_whole_numbers())
    axis.set_ylabel(model.metric)
    axis.set_title(f"{model.name}: {model.metric} per member")
    return figure


def _hparams(plt: Any, model: ReportModel) -> Any:
    """One panel per hyperparameter: every member's values, and the winning lineage's."""
    names = model.hparam_names or ["(none)"]
    figure, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), squeeze=False)
    members = _by_member(model)
    for axis, name in zip(axes[:, 0], names, strict=True):
        shown = _values(model, name)
        for _member, intervals in members:
            axis.plot(
                [i.step for i in intervals],
                [shown(i.hparams.get(name)) for i in intervals],
                lw=0.8,
                alpha=0.6,
            )
        if model.schedule:
            axis.plot(
                [e.step for e in model.schedule],
                [shown(e.hparams.get(name)) for e in model.schedule],
                color="black",
                lw=2.2,
                ls="--",
                label="winning lineage",
            )
            axis.legend(loc="best", fontsize=8)
        if name in model.log_scale:
            axis.set_yscale("log")
        axis.set_ylabel(name)
    axes[-1, 0].set_xlabel("interval")
    for row in axes[:, 0]:
        row.xaxis.set_major_locator(_whole_numbers())
    figure.suptitle(f"{model.name}: hyperparameters")
    return figure


def _values(model: ReportModel, name: str) -> Callable[[Any], Any]:
    """How hyperparameter ``name``'s values are drawn: as numbers if all are finite numbers,
    else every one as a category labelled with its text (``None`` too, which matplotlib cannot
    place; control characters written as escapes, which an SVG cannot hold)."""
    if all(_finite(i.hparams.get(name)) for i in model.intervals):
        return lambda value: value
    return lambda value: printable(value, limit=40)


def _lineage(plt: Any, model: ReportModel) -> Any:
    """Every interval as a point (member by interval, coloured by score), joined to the
    checkpoint it started from: red where it was a copy, black along the winning lineage."""
    figure, axis = plt.subplots(figsize=(8, max(3.0, 0.22 * model.population + 1.5)))
    for interval in model.intervals:
        if interval.origin is None:
            continue
        om, os_ = interval.origin
        copied = om != interval.member
        winning = (interval.member, interval.step) in model.lineage_keys
        axis.plot(
            [os_, interval.step],
            [om, interval.member],
            color="black" if winning else ("#d62728" if copied else "#c9d1d9"),
            lw=2 if winning else 0.8,
            zorder=1,
        )
    finite = [i for i in model.intervals if _finite(i.score)]
    points = axis.scatter(
        [i.step for i in finite],
        [i.member for i in finite],
        c=[i.score for i in finite],
        cmap="viridis" if model.mode.value == "max" else "viridis_r",
        s=14,
        zorder=2,
    )
    figure.colorbar(points, ax=axis, label=model.metric)
    axis.set_xlabel("interval")
    axis.xaxis.set_major_locator(_whole_numbers())
    axis.set_ylabel("member")
    axis.set_title(f"{model.name}: lineage (red: copies, black: winning lineage)")
    return figure
