"""A self-contained HTML report: inline SVG figures, inline CSS, a few lines of plain JavaScript.

Nothing is loaded from the network, so the file opens anywhere. Every string that a user
controls (population, hyperparameter and metric names, values, error text) goes through
:func:`html.escape` before it reaches the page.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from ..records import IntervalRecord
from ._model import ReportModel

__all__ = [
    "CSS",
    "HIGHLIGHT_JS",
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
_PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
]  # fmt: skip
_WIDTH, _MARGIN = 920, (24, 16, 36, 64)  # top, right, bottom, left
_E = html.escape


@functools.lru_cache(maxsize=65536)  # the lineage asks for the same ranks on every redraw
def _viridis(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = math.floor(t)
    high = min(low + 1, len(_VIRIDIS) - 1)
    f = t - low
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_VIRIDIS[low], _VIRIDIS[high], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


class _Axis:
    """Maps data to pixels, linearly or logarithmically."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False):
        self.log = log and low > 0
        if self.log:
            low, high = math.log10(low), math.log10(high)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(max(value, 1e-300))
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        if self.log:
            first, last = math.floor(self.low), math.ceil(self.high)
            step = max(1, (last - first) // count)
            return [10.0**e for e in range(first, last + 1, step) if self.low <= e <= self.high]
        span = self.high - self.low
        raw = span / count
        magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
        step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
        first = math.ceil(self.low / step) * step
        ticks, value = [], first
        while value <= self.high + 1e-12 * span:
            ticks.append(value)
            value += step
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
    for tick in x.ticks(10):
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


def _svg(figure: str, height: int, parts: Iterable[str], title: str) -> str:
    return (
        f'<svg class="figure" id="{figure}" viewBox="0 0 {_WIDTH} {height}" width="100%" '
        f'role="img" aria-label="{_E(title)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts)
        + "</svg>"
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _by_member(model: ReportModel) -> dict[int, list[IntervalRecord]]:
    groups: dict[int, list[IntervalRecord]] = defaultdict(list)
    for interval in model.intervals:
        groups[interval.member].append(interval)
    return groups


def _polyline(points: list[tuple[float, float]], css: str, member: int, title: str) -> str:
    if not points:
        return ""
    text = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (
        f'<polyline class="{css}" data-member="{member}" points="{text}">'
        f"<title>{_E(title)}</title></polyline>"
    )


def _scores_figure(model: ReportModel) -> str:
    height = 340
    top, right, bottom, left = _MARGIN
    scores = model.finite_scores() or [0.0, 1.0]
    x = _Axis(0, max(model.budget, 1), left, _WIDTH - right)
    y = _Axis(min(scores), max(scores), height - bottom, top)
    parts = _frame(x, y, height, "interval (member's step)", model.metric)
    groups = _by_member(model)
    score_at: dict[tuple[int, int], float] = {}
    for member, intervals in sorted(groups.items()):
        segment: list[tuple[float, float]] = []
        colour = _PALETTE[member % len(_PALETTE)]
        css = "line best" if member == model.best_member else "line"
        for interval in intervals:
            if _finite(interval.score):
                score_at[(member, interval.step)] = float(interval.score)  # type: ignore[arg-type]
                segment.append((x(interval.step), y(interval.score)))  # type: ignore[arg-type]
            else:
                parts.append(
                    _polyline(segment, css, member, f"member {member}").replace(
                        "<polyline", f'<polyline style="stroke:{colour}"', 1
                    )
                )
                segment = []
        parts.append(
            _polyline(segment, css, member, f"member {member}").replace(
                "<polyline", f'<polyline style="stroke:{colour}"', 1
            )
        )
    for event in model.exploits:
        to = score_at.get((event.member, event.step))
        source = score_at.get((event.donor, event.donor_step))
        if to is None and source is None:
            continue
        title = (
            f"member {event.member} copied member {event.donor} (its step {event.donor_step}) "
            f"after step {event.step}"
        )
        tx, ty = x(event.step), y(to if to is not None else source)  # type: ignore[arg-type]
        if source is not None:
            sx, sy = x(event.donor_step), y(source)
            parts.append(
                f'<line class="copy" data-member="{event.member}" x1="{sx:.1f}" y1="{sy:.1f}" '
                f'x2="{tx:.1f}" y2="{ty:.1f}"><title>{_E(title)}</title></line>'
            )
        parts.append(
            f'<path class="exploit" data-member="{event.member}" '
            f'd="M{tx - 4:.1f},{ty + 4:.1f} L{tx:.1f},{ty - 4:.1f} L{tx + 4:.1f},{ty + 4:.1f} Z">'
            f"<title>{_E(title)}</title></path>"
        )
    return _svg("scores", height, parts, f"{model.metric} of every member over intervals")


def _hparam_figure(model: ReportModel, name: str) -> str:
    height = 260
    top, right, bottom, left = _MARGIN
    values = [i.hparams.get(name) for i in model.intervals]
    numeric = all(_finite(v) for v in values)
    labels: list[str] = []
    if numeric:
        # No interval yet (a population that has not trained): an empty figure, not a crash.
        low, high = (min(values), max(values)) if values else (0.0, 1.0)  # type: ignore[type-var]
        y = _Axis(low, high, height - bottom, top, log=name in model.log_scale)

        def position(value: Any) -> float:
            return y(value)
    else:
        labels = list(dict.fromkeys(str(v) for v in values))
        index = {label: i for i, label in enumerate(labels)}
        y = _Axis(-0.5, len(labels) - 0.5, height - bottom, top)

        def position(value: Any) -> float:
            return y(index[str(value)])

    steps = max([model.budget, *(e.step for e in model.schedule)])
    x = _Axis(0, max(steps, 1), left, _WIDTH - right)
    parts = _frame(x, y, height, "interval", name, labels)
    for member, intervals in sorted(_by_member(model).items()):
        points = [(x(i.step), position(i.hparams.get(name))) for i in intervals]
        colour = _PALETTE[member % len(_PALETTE)]
        parts.append(
            _polyline(points, "line thin", member, f"member {member}").replace(
                "<polyline", f'<polyline style="stroke:{colour}"', 1
            )
        )
    if model.schedule:
        points = [(x(e.step), position(e.hparams.get(name))) for e in model.schedule]
        text = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(
            f'<polyline class="lineage" points="{text}"><title>the winning lineage</title>'
            "</polyline>"
        )
    return _svg(f"hparam-{name}", height, parts, f"{name} of every member over intervals")


def _lineage_figure(model: ReportModel) -> str:
    top, right, bottom, left = _MARGIN
    rows = max(model.population, 1)
    row = max(8.0, min(26.0, 640 / rows))
    height = int(top + bottom + row * rows)
    steps = max([model.budget, 1])
    x = _Axis(0, steps, left, _WIDTH - right)
    y = _Axis(-0.5, rows - 0.5, top, height - bottom)
    parts = _frame(
        x, y, height, "interval (member's step)", "member", [str(m) for m in range(rows)]
    )
    # Colour by rank, not by value: scores bunch up late in training, ranks stay spread out.
    ranked = sorted(model.finite_scores()) or [0.0]
    sign = 1.0 if model.mode.value == "max" else -1.0
    radius = max(1.5, min(4.0, 360 / max(rows, steps)))
    edges, nodes = [], []
    for interval in model.intervals:
        cx, cy = x(interval.step), y(interval.member)
        winning = (interval.member, interval.step) in model.lineage_keys
        if interval.origin is not None:
            om, os_ = interval.origin
            ox, oy = x(os_), y(om)
            kind = "trained" if om == interval.member else "copied"
            css = f"edge {kind}{' win' if winning else ''}"
            if kind == "copied":
                mid = (ox + cx) / 2
                edges.append(
                    f'<path class="{css}" data-member="{interval.member}" '
                    f'd="M{ox:.1f},{oy:.1f} C{mid:.1f},{oy:.1f} {mid:.1f},{cy:.1f} '
                    f'{cx:.1f},{cy:.1f}"><title>member {interval.member} step {interval.step} '
                    f"copied from member {om} step {os_}</title></path>"
                )
            else:
                edges.append(
                    f'<line class="{css}" x1="{ox:.1f}" y1="{oy:.1f}" x2="{cx:.1f}" y2="{cy:.1f}"/>'
                )
        if _finite(interval.score):
            rank = bisect.bisect_left(ranked, float(interval.score))  # type: ignore[arg-type]
            t = rank / max(len(ranked) - 1, 1)
            fill = _viridis(t if sign > 0 else 1 - t)
        else:
            fill = "#d62728"
        title = (
            f"member {interval.member}, step {interval.step}: {model.metric} "
            f"{_fmt(interval.score)}; "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in interval.hparams.items())
        )
        nodes.append(
            f'<circle class="node{" win" if winning else ""}" data-member="{interval.member}" '
            f'cx="{cx:.1f}" cy="{cy:.1f}" r="{radius:.1f}" fill="{fill}">'
            f"<title>{_E(title)}</title></circle>"
        )
    return _svg("lineage", height, [*parts, *edges, *nodes], "lineage tree of the population")


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
.edge{fill:none}.edge.trained{stroke:#c9d1d9;stroke-width:1}.edge.copied{stroke:#d62728;
stroke-width:1;opacity:.6}.edge.win{stroke:#111;stroke-width:2.5;opacity:1}
.node.win{stroke:#111;stroke-width:1.5}.hl{stroke-width:3!important;opacity:1!important}
circle.hl{stroke:#111}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2}th{background:#f6f8fa}
pre{white-space:pre-wrap;font-size:12px;background:#f6f8fa;padding:8px;border-radius:6px}
.legend{font-size:12px;color:#57606a}
"""

HIGHLIGHT_JS = """
(function(){
  var active=null;
  function mark(member,on){
    document.querySelectorAll('[data-member="'+member+'"]').forEach(function(el){
      el.classList.toggle('hl',on);});
  }
  document.addEventListener('mouseover',function(event){
    var el=event.target.closest('[data-member]');
    var member=el?el.getAttribute('data-member'):null;
    if(member===active)return;
    if(active!==null)mark(active,false);
    active=member;
    if(member!==null)mark(member,true);
  });
  window.poptuneReportReady=true;
})();
"""


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
        ("exploits", str(len(model.exploits))),
        ("failures", str(len(model.failures))),
    ]
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


def figure_sections(model: ReportModel) -> str:
    """The report's body: scores, hyperparameters and lineage figures, the best member's
    schedule and the failures, as ``<section>`` elements."""
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
    hparams = "".join(
        f"<h2>{_E(name)}</h2>{_hparam_figure(model, name)}" for name in model.hparam_names
    )
    return f"""<section><h2>Scores</h2>
<p class="legend">One line per member; the best member is thick. Red triangles mark exploits,
with a dashed line from the copied (donor, step). Hover a line to follow a member everywhere.</p>
{_scores_figure(model)}</section>
<section><h2>Hyperparameters</h2>
<p class="legend">The value each member trained with at every interval; the dashed black line is
the winning lineage's schedule.</p>{hparams}</section>
<section><h2>Lineage</h2>
<p class="legend">One node per (member, interval), coloured by the rank of its
{_E(model.metric)} among all intervals (yellow is best); grey edges continue a member's own
training, red edges are copies; the winning lineage is outlined in black. Red nodes: NaN or
infinite scores.</p>{_lineage_figure(model)}</section>
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
