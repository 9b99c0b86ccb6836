"""A self-contained HTML report: inline SVG figures, inline CSS, a few lines of plain JavaScript.

Nothing is loaded from the network, so the file opens anywhere. Every string that a user
controls (population, hyperparameter and metric names, values, strategy descriptions, error
text) is escaped as text or a quoted attribute value before it reaches the page, and never makes
an element id (see :mod:`._escape`); the page's Content-Security-Policy runs only its own inline
script and style.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..records import IntervalRecord
from ._escape import element_id, policy, source_hash
from ._escape import text as _E
from ._model import ReportModel
from ._model import finite as _finite

__all__ = [
    "CSS",
    "HIGHLIGHT_JS",
    "REPORT_POLICY",
    "FigureCache",
    "figure_sections",
    "member_table",
    "render_html",
    "strategies_line",
    "summary_cards",
]

# viridis, sampled at 9 points: perceptually uniform and readable for colour-blind people
_VIRIDIS = [
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
]  # fmt: skip
_VIRIDIS_RGB = np.array(_VIRIDIS, dtype=float)
_PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
]  # fmt: skip
_WIDTH, _MARGIN = 920, (24, 16, 36, 64)  # top, right, bottom, left


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


#: Values at most this far apart, relative to their size, are drawn as one (a flat line).
_FLAT = 1e-12
#: The largest value an axis spans to: two of them apart is still a finite float.
_HUGE = 8e307


class _Axis:
    """Maps data to pixels, linearly or logarithmically."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False):
        self.log = log and low > 0
        if self.log:
            low, high = math.log10(low), math.log10(high)
        # finite values ~1e308 apart: a finite span, and the values beyond it drawn at its ends
        self.clip = not math.isfinite(high - low)
        if self.clip:
            low, high = max(low, -_HUGE), min(high, _HUGE)
        if not high - low > _FLAT * max(abs(low), abs(high)):
            # equal, or a rounding error apart (0.3 and 0.1 + 0.2): a flat line in the middle,
            # never a span too small for a tick to move the value it is added to
            middle = low / 2 + high / 2
            pad = max(0.5, abs(middle) * 1e-3)
            low, high = middle - pad, middle + pad
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(max(value, 1e-300))
        if self.clip:
            value = min(max(value, self.low), self.high)
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def text(self) -> Callable[[float], str]:
        """``value -> f"{self(value):.1f}"``, with the attribute look-ups hoisted out: the
        figures call it once per point (tens of thousands of times for a large population)."""
        start, low, span, width = self.start, self.low, self.high - self.low, self.end - self.start
        if self.log:
            log10 = math.log10
            return lambda value: f"{start + (log10(max(value, 1e-300)) - low) / span * width:.1f}"
        if self.clip:
            return lambda value: f"{self(value):.1f}"
        return lambda value: f"{start + (value - low) / span * width:.1f}"

    def ticks(self, count: int = 5, integer: bool = False) -> list[float]:
        """About ``count`` round values inside the axis; whole numbers only if ``integer``
        (an axis of steps: no tick at interval 2.5)."""
        if self.log:
            lowest, highest = math.floor(self.low), math.ceil(self.high)
            every = max(1, (highest - lowest) // count)
            return [
                10.0**e for e in range(lowest, highest + 1, every) if self.low <= e <= self.high
            ]
        span = self.high - self.low
        raw = span / count
        magnitude = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
        step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
        if integer:
            step = max(1.0, float(round(step)))
        first = math.ceil(self.low / step)
        ticks: list[float] = []
        for index in range(first, first + count + 2):  # at most count + 1 fit: step >= span/count
            value = float(index * step)
            if value > self.high + 1e-12 * span:
                break
            ticks.append(value)
        return ticks


def _frame(
    x: _Axis, y: _Axis, height: int, x_label: str, y_label: str, y_labels: Sequence[str] = ()
) -> list[str]:
    top, right, bottom, left = _MARGIN
    parts = [
        f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{_WIDTH - right}" '
        f'y2="{height - bottom}"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>',
    ]
    for tick in x.ticks(10, integer=True):  # the x axis counts intervals
        px = x(tick)
        parts.append(
            f'<text class="tick" x="{px:.1f}" y="{height - bottom + 14}" '
            f'text-anchor="middle">{_fmt(round(tick, 6))}</text>'
        )
    if y_labels:
        ticks = [(i, label) for i, label in enumerate(y_labels)]
        for index, label in ticks:
            parts.append(
                f'<text class="tick" x="{left - 6}" y="{y(index) + 4:.1f}" '
                f'text-anchor="end">{_E(label)}</text>'
            )
    else:
        for tick in y.ticks(5):
            py = y(tick)
            parts.append(
                f'<line class="grid" x1="{left}" y1="{py:.1f}" x2="{_WIDTH - right}" '
                f'y2="{py:.1f}"/><text class="tick" x="{left - 6}" y="{py + 4:.1f}" '
                f'text-anchor="end">{_fmt(tick)}</text>'
            )
    parts.append(
        f'<text class="label" x="{(left + _WIDTH - right) / 2}" y="{height - 4}" '
        f'text-anchor="middle">{_E(x_label)}</text>'
        f'<text class="label" x="12" y="{(top + height - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {(top + height - bottom) / 2})">{_E(y_label)}</text>'
    )
    return parts


def _svg(figure_id: str, height: int, parts: Iterable[str], title: str) -> str:
    """A figure; ``figure_id`` comes from :func:`element_id`, never from a stored name."""
    return (
        f'<svg class="figure" id="{figure_id}" viewBox="0 0 {_WIDTH} {height}" width="100%" '
        f'role="img" aria-label="{_E(title)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts)
        + "</svg>"
    )


class _Memo(dict[Hashable, str]):
    """``memo[key]`` computes ``text(key)`` the first time only: pixel positions of steps,
    member rows and repeated hyperparameter values are formatted once per figure."""

    def __init__(self, text: Callable[[Any], str]) -> None:
        super().__init__()
        self.text = text

    def __missing__(self, key: Hashable) -> str:
        value = self[key] = self.text(key)
        return value


def _by_member(model: ReportModel) -> dict[int, list[IntervalRecord]]:
    groups: dict[int, list[IntervalRecord]] = defaultdict(list)
    for interval in model.intervals:
        groups[interval.member].append(interval)
    return groups


def _polyline(points: list[str], css: str, member: int, title: str, colour: str) -> str:
    """One member's line through ``points`` (``"x,y"`` texts), or nothing if it has none."""
    if not points:
        return ""
    return (
        # A presentation attribute, not style="": the page's policy allows no inline style.
        f'<polyline stroke="{colour}" class="{css}" data-member="{member}" '
        f'points="{" ".join(points)}"><title>{_E(title)}</title></polyline>'
    )


def _scores_figure(model: ReportModel, groups: dict[int, list[IntervalRecord]]) -> str:
    height = 340
    top, right, bottom, left = _MARGIN
    scores = model.finite_scores() or [0.0, 1.0]
    x = _Axis(0, max(model.budget, 1), left, _WIDTH - right)
    y = _Axis(min(scores), max(scores), height - bottom, top)
    parts = _frame(x, y, height, "interval (member's step)", model.metric)
    xs, ys = _Memo(x.text()), y.text()
    score_at: dict[tuple[int, int], float] = {}
    for member, intervals in sorted(groups.items()):
        segment: list[str] = []
        colour = _PALETTE[member % len(_PALETTE)]
        css = "line best" if member == model.best_member else "line"
        for interval in intervals:
            score = interval.score
            if _finite(score):
                score_at[(member, interval.step)] = float(score)  # type: ignore[arg-type]
                segment.append(f"{xs[interval.step]},{ys(score)}")  # type: ignore[arg-type]
            else:  # a NaN or infinite score breaks the line
                parts.append(_polyline(segment, css, member, f"member {member}", colour))
                segment = []
        parts.append(_polyline(segment, css, member, f"member {member}", colour))
    for event in model.exploits:
        to = score_at.get((event.member, event.step))
        source = score_at.get((event.donor, event.donor_step))
        if to is None and source is None:
            continue
        title = (
            f"member {event.member} copied member {event.donor} (its step {event.donor_step}) "
            f"after step {event.step}"
        )
        kind = "exploit"
        if not event.is_exploit:  # a recovery: drawn, but not as PBT's exploit
            kind = "recovery"
            title += f" ({_RECOVERY[event.reason.value]}: a recovery, not an exploit)"
        tx, ty = x(event.step), y(to if to is not None else source)  # type: ignore[arg-type]
        if source is not None:
            sx, sy = x(event.donor_step), y(source)
            parts.append(
                f'<line class="copy" data-member="{event.member}" x1="{sx:.1f}" y1="{sy:.1f}" '
                f'x2="{tx:.1f}" y2="{ty:.1f}"><title>{_E(title)}</title></line>'
            )
        parts.append(
            f'<path class="{kind}" data-member="{event.member}" '
            f'd="M{tx - 4:.1f},{ty + 4:.1f} L{tx:.1f},{ty - 4:.1f} L{tx + 4:.1f},{ty + 4:.1f} Z">'
            f"<title>{_E(title)}</title></path>"
        )
    return _svg(
        element_id("scores"), height, parts, f"{model.metric} of every member over intervals"
    )


def _hparam_figure(model: ReportModel, number: int, groups: dict[int, list[IntervalRecord]]) -> str:
    """The figure of the ``number``-th hyperparameter (its id is the number, not the name)."""
    name = model.hparam_names[number]
    height = 260
    top, right, bottom, left = _MARGIN
    values = [i.hparams.get(name) for i in model.intervals]
    numeric = all(_finite(v) for v in values)
    labels: list[str] = []
    if numeric:
        # No interval yet (a population that has not trained): an empty figure, not a crash.
        numbers = [float(v) for v in values]  # type: ignore[arg-type]  # all finite numbers
        low, high = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
        y = _Axis(low, high, height - bottom, top, log=name in model.log_scale)
        # Keyed by value: a member keeps its value for many intervals (1 and 1.0 share a key
        # and a position).
        position: Callable[[Any], str] = _Memo(y.text()).__getitem__
    else:
        labels = list(dict.fromkeys(str(v) for v in values))
        index = {label: i for i, label in enumerate(labels)}
        y = _Axis(-0.5, len(labels) - 0.5, height - bottom, top)
        to_text = y.text()
        positions = _Memo(lambda label: to_text(index[label]))

        def by_label(value: Any) -> str:
            return positions[str(value)]

        position = by_label

    steps = max([model.budget, *(e.step for e in model.schedule)])
    x = _Axis(0, max(steps, 1), left, _WIDTH - right)
    xs = _Memo(x.text())
    parts = _frame(x, y, height, "interval", name, labels)
    for member, intervals in sorted(groups.items()):
        points = [f"{xs[i.step]},{position(i.hparams.get(name))}" for i in intervals]
        colour = _PALETTE[member % len(_PALETTE)]
        parts.append(_polyline(points, "line thin", member, f"member {member}", colour))
    if model.schedule:
        text = " ".join(f"{xs[e.step]},{position(e.hparams.get(name))}" for e in model.schedule)
        parts.append(
            f'<polyline class="lineage" points="{text}"><title>the winning lineage</title>'
            "</polyline>"
        )
    return _svg(
        element_id("hparam", number), height, parts, f"{name} of every member over intervals"
    )


def _rank_colours(scores: Sequence[Any], maximise: bool) -> list[str]:
    """The fill of each score: viridis at its rank among the finite scores (yellow is best),
    red for NaN, infinite or missing ones. Computed for all scores at once (numpy), because
    ranks shift whenever a score lands, so every node's colour is recomputed on every render."""
    finite = [_finite(score) for score in scores]
    values = np.array([s if ok else 0.0 for s, ok in zip(scores, finite, strict=True)], float)
    ranked = np.sort(values[np.array(finite, bool)]) if any(finite) else np.zeros(1)
    t = np.searchsorted(ranked, values, side="left") / max(len(ranked) - 1, 1)
    if not maximise:
        t = 1 - t
    t = np.clip(t, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    low = np.floor(t)
    below = _VIRIDIS_RGB[low.astype(int)]
    above = _VIRIDIS_RGB[np.minimum(low.astype(int) + 1, len(_VIRIDIS) - 1)]
    # np.rint rounds half to even, as round() does: the colours of the per-node formula.
    rgb = np.rint(below + (above - below) * (t - low)[:, None]).astype(np.int64)
    codes = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).tolist()
    names = {code: f"#{code:06x}" for code in set(codes)}
    return [names[c] if ok else "#d62728" for c, ok in zip(codes, finite, strict=True)]


class FigureCache:
    """What the lineage figure drew of each interval, kept from one render of a population to
    the next (the dashboard keeps one per population; the report draws without one).

    A recorded interval never changes, so its node (position, size, hover text) and its edge
    are drawn once; a render then only recolours the nodes (ranks move as scores land) and marks
    the winning lineage. A piece is reused only for the very record object it was drawn from
    and under the same layout (population size, budget, metric name), so a re-read or an
    extended budget draws afresh.
    """

    def __init__(self) -> None:
        self._layout: tuple[Any, ...] = ()
        self._pieces: dict[tuple[int, int], _Piece] = {}

    def pieces(self, layout: tuple[Any, ...]) -> dict[tuple[int, int], _Piece]:
        """The pieces drawn under ``layout``; none if the layout changed since."""
        if layout != self._layout:
            self._layout, self._pieces = layout, {}
        return self._pieces


class _Piece(NamedTuple):
    """One interval's part of the lineage figure, without what depends on the others."""

    interval: IntervalRecord
    trained: tuple[str, str, str, str] | None  # a segment of the member's own line
    copied: tuple[str, str]  # a copy edge, before and after its " win" class
    node: tuple[str, str]  # the node, before and after its fill colour


def _piece(
    interval: IntervalRecord, xs: _Memo, ys: _Memo, x: _Axis, radius: str, metric: str
) -> _Piece:
    member, step = interval.member, interval.step
    cx, cy = xs[step], ys[member]
    trained, copied = None, ("", "")
    if interval.origin is not None:
        om, os_ = interval.origin
        ox, oy = xs[os_], ys[om]
        if om == member:
            trained = (ox, oy, cx, cy)
        else:
            mid = f"{(x(os_) + x(step)) / 2:.1f}"
            copied = (
                '<path class="edge copied',
                f'" data-member="{member}" d="M{ox},{oy} C{mid},{oy} {mid},{cy} {cx},{cy}">'
                f"<title>member {member} step {step} copied from member {om} step {os_}"
                "</title></path>",
            )
    setting = _E(", ".join(f"{k}={_fmt(v)}" for k, v in interval.hparams.items()))
    node = (
        f'" data-member="{member}" cx="{cx}" cy="{cy}" r="{radius}" fill="',
        f'"><title>member {member}, step {step}: {metric} {_E(_fmt(interval.score))}; '
        f"{setting}</title></circle>",
    )
    return _Piece(interval, trained, copied, node)


def _path(segments: list[tuple[str, str, str, str]]) -> str:
    """The ``d`` of one path through ``(x1, y1, x2, y2)`` segments; a segment that starts where
    the previous one ended continues the line instead of starting a new one."""
    d, end = [], ("", "")
    for x1, y1, x2, y2 in segments:
        d.append(f"L{x2},{y2}" if (x1, y1) == end else f"M{x1},{y1}L{x2},{y2}")
        end = (x2, y2)
    return "".join(d)


def _lineage_figure(model: ReportModel, cache: FigureCache | None = None) -> str:
    top, right, bottom, left = _MARGIN
    rows = max(model.population, 1)
    row = max(8.0, min(26.0, 640 / rows))
    height = int(top + bottom + row * rows)
    steps = max([model.budget, 1])
    x = _Axis(0, steps, left, _WIDTH - right)
    y = _Axis(-0.5, rows - 0.5, top, height - bottom)
    xs, ys = _Memo(x.text()), _Memo(y.text())
    parts = _frame(
        x, y, height, "interval (member's step)", "member", [str(m) for m in range(rows)]
    )
    radius = f"{max(1.5, min(4.0, 360 / max(rows, steps))):.1f}"
    metric = _E(model.metric)
    pieces = (cache or FigureCache()).pieces((rows, steps, model.metric))
    # Colour by rank, not by value: scores bunch up late in training, ranks stay spread out.
    fills = _rank_colours([i.score for i in model.intervals], model.mode.value == "max")
    lineage_keys = model.lineage_keys
    # A member's own training is one path per member (and one for its part of the winning
    # lineage): a <line> per interval costs the server and the browser several times more for
    # the same picture. Copies keep one path each, with its title.
    own: dict[int, list[tuple[str, str, str, str]]] = defaultdict(list)
    own_winning: dict[int, list[tuple[str, str, str, str]]] = defaultdict(list)
    copies, nodes = [], []
    for interval, fill in zip(model.intervals, fills, strict=True):
        key = (interval.member, interval.step)
        piece = pieces.get(key)
        if piece is None or piece.interval is not interval:
            piece = pieces[key] = _piece(interval, xs, ys, x, radius, metric)
        win = " win" if key in lineage_keys else ""
        if piece.trained is not None:
            (own_winning if win else own)[interval.member].append(piece.trained)
        elif piece.copied[0]:
            copies.append(f"{piece.copied[0]}{win}{piece.copied[1]}")
        nodes.append(f'<circle class="node{win}{piece.node[0]}{fill}{piece.node[1]}')
    # The winning lineage last, so that its black line is never under a grey or red one.
    edges = [
        *(f'<path class="edge trained" d="{_path(s)}"/>' for _, s in sorted(own.items())),
        *copies,
        *(
            f'<path class="edge trained win" d="{_path(s)}"/>'
            for _, s in sorted(own_winning.items())
        ),
    ]
    return _svg(
        element_id("lineage"), height, [*parts, *edges, *nodes], "lineage tree of the population"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], css: str = "") -> str:
    head = "".join(f"<th>{_E(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_E(_fmt(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}main{max-width:980px;margin:0 auto;padding:24px}h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px}section{background:#fff;border:1px solid #d0d7de;
border-radius:8px;padding:12px 16px;margin-bottom:16px}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:18px}.muted{color:#57606a}.error{color:#b42318;white-space:pre-wrap}
svg.figure{display:block;margin:6px 0}.axis{stroke:#57606a}.grid{stroke:#eaeef2}
.tick{font-size:10px;fill:#57606a}.label{font-size:12px;fill:#1f2328}
.line{fill:none;stroke-width:1.4;opacity:.75}.line.thin{stroke-width:1}.line.best{stroke-width:3;opacity:1}
.lineage{fill:none;stroke:#111;stroke-width:3;stroke-dasharray:6 3}
.copy{stroke:#d62728;stroke-width:1;stroke-dasharray:3 2;opacity:.7}.exploit{fill:#d62728}
.recovery{fill:#7f7f7f}
.edge{fill:none}.edge.trained{stroke:#c9d1d9;stroke-width:1}.edge.copied{stroke:#d62728;
stroke-width:1;opacity:.6}.edge.win{stroke:#111;stroke-width:2.5;opacity:1}
.node.win{stroke:#111;stroke-width:1.5}.hl{stroke-width:3!important;opacity:1!important}
circle.hl{stroke:#111}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2}th{background:#f6f8fa}
pre{white-space:pre-wrap;font-size:12px;background:#f6f8fa;padding:8px;border-radius:6px}
.legend{font-size:12px;color:#57606a}h1,h2,td,th,.card,p{overflow-wrap:anywhere}
"""

HIGHLIGHT_JS = """
(function(){
  var active=null;
  function mark(member,on){
    document.querySelectorAll('[data-member="'+CSS.escape(member)+'"]').forEach(function(el){
      el.classList.toggle('hl',on);});
  }
  document.addEventListener('mouseover',function(event){
    var el=event.target.closest('[data-member]');
    var member=el?el.getAttribute('data-member'):null;
    // the same member again: nothing to do, unless the dashboard swapped in fresh figures
    // since (they carry no highlight yet)
    if(member===active&&(el===null||el.classList.contains('hl')))return;
    if(active!==null)mark(active,false);
    active=member;
    if(member!==null)mark(member,true);
  });
  window.poptuneReportReady=true;
})();
"""


#: The report's Content-Security-Policy: its own inline script and style (by their SHA-256), and
#: nothing else; no network at all.
REPORT_POLICY = policy(script=source_hash(HIGHLIGHT_JS), style=source_hash(CSS))

_RECOVERY = {"reseed": "re-seeded after failing", "fallback": "its checkpoint was damaged"}


def _recovery_legend(model: ReportModel) -> str:
    if all(e.is_exploit for e in model.exploits):
        return ""
    return (
        "; grey triangles mark recoveries (a member re-seeded after failing, or restored from "
        "another member when its checkpoint was damaged), not exploits"
    )


def summary_cards(model: ReportModel) -> str:
    """The row of cards at the top: best score, status, budget used, wall time, counts."""
    best = (
        "—"
        if model.best_score is None
        else f"{_fmt(model.best_score)} (member {model.best_member})"
    )
    cards = [
        ("best " + model.metric, best),
        ("status", model.status),
        ("budget used", f"{model.steps_done}/{model.population * model.budget} intervals"),
        ("wall time", f"{model.wall_time:.1f} s"),
        ("exploits", str(sum(e.is_exploit for e in model.exploits))),
        ("failures", str(len(model.failures))),
    ]
    recoveries = sum(not e.is_exploit for e in model.exploits)
    if recoveries:
        cards.append(("recoveries", str(recoveries)))
    card_html = "".join(
        f'<div class="card"><span class="muted">{_E(k)}</span><b>{_E(v)}</b></div>'
        for k, v in cards
    )
    return f'<div class="cards">{card_html}</div>'


def strategies_line(model: ReportModel) -> str:
    """The population's exploit, explore and ready strategies in one line (not escaped)."""
    return ", ".join(
        f"{role}: {_describe(getattr(model.config, role, None))}"
        for role in ("exploit", "explore", "ready")
    )


def figure_sections(model: ReportModel, cache: FigureCache | None = None) -> str:
    """The report's body: scores, hyperparameters and lineage figures, the best member's
    schedule and the failures, as ``<section>`` elements. ``cache``: what an earlier render of
    the same population drew (see :class:`FigureCache`); the output is the same without it."""
    schedule_rows = [
        [e.step, e.member, e.member_step, *[e.hparams.get(n) for n in model.hparam_names], e.score]
        for e in model.schedule
    ]
    schedule = (
        _table(["step", "member", "member step", *model.hparam_names, model.metric], schedule_rows)
        if schedule_rows
        else '<p class="muted">No scored member yet.</p>'
    )
    failures = ""
    if model.failures:
        items = "".join(
            f"<details><summary>member {f.member}, step {f.step}: {_E(f.error)}</summary>"
            f"<pre>{_E(f.traceback)}</pre></details>"
            for f in model.failures[-50:]
        )
        failures = f"<section><h2>Failures ({len(model.failures)})</h2>{items}</section>"
    groups = _by_member(model)  # each member's intervals, by step
    hparams = "".join(
        f"<h2>{_E(name)}</h2>{_hparam_figure(model, index, groups)}"
        for index, name in enumerate(model.hparam_names)
    )
    return f"""<section><h2>Scores</h2>
<p class="legend">One line per member; the best member is thick. Red triangles mark exploits,
with a dashed line from the copied (donor, step){_recovery_legend(model)}. Hover a line to follow
a member everywhere.</p>
{_scores_figure(model, groups)}</section>
<section><h2>Hyperparameters</h2>
<p class="legend">The value each member trained with at every interval; the dashed black line is
the winning lineage's schedule.</p>{hparams}</section>
<section><h2>Lineage</h2>
<p class="legend">One node per (member, interval), coloured by the rank of its
{_E(model.metric)} among all intervals (yellow is best); grey edges continue a member's own
training, red edges are copies; the winning lineage is outlined in black. Red nodes: NaN or
infinite scores.</p>{_lineage_figure(model, cache)}</section>
<section><h2>Schedule of the best member</h2>{schedule}</section>
{failures}"""


def member_table(model: ReportModel) -> str:
    """Every member as it is now: status, step, score, parent and next hparams (best starred)."""
    names = list(model.hparam_names)
    rows = []
    for member in model.members:
        star = " ★" if member.id == model.best_member else ""
        cells = [
            f"{member.id}{star}",
            member.status.value,
            member.step,
            "—" if member.score is None else member.score,
            "—" if member.parent is None else member.parent,
            *["—" if member.hparams.get(n) is None else member.hparams.get(n) for n in names],
        ]
        rows.append(cells)
    headers = ["member", "status", "step", model.metric, "parent", *names]
    return _table(headers, rows, "members")


def render_html(model: ReportModel) -> str:
    """The whole report as one HTML document."""
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    error = f'<p class="error">Stopped: {_E(model.error)}</p>' if model.error else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{REPORT_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>poptune report: {_E(model.name)}</title><style>{CSS}</style></head>
<body><main>
<h1>Population <span id="population-name">{_E(model.name)}</span></h1>
<p class="muted">{_E(model.metric)} ({_E(model.mode.value)}) · {model.population} members ·
{model.budget} intervals each · {_E(strategies_line(model))} · report made {created}</p>
{error}
{summary_cards(model)}
{figure_sections(model)}
</main><script>{HIGHLIGHT_JS}</script></body></html>
"""


def _describe(description: Any) -> str:
    if not description:
        return "none"
    kind = description.get("type", "?")
    if kind == "callable":
        return str(description.get("ref") or description.get("repr"))
    if kind == "object":
        return str(description.get("repr") or description.get("ref"))
    if kind == "Chain":
        return "chain(" + ", ".join(_describe(step) for step in description["steps"]) + ")"
    params = ", ".join(f"{k}={v}" for k, v in description.items() if k != "type")
    return f"{kind}({params})"
