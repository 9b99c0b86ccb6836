"""What the dashboard shows, read from a storage and rendered as HTML (no web framework here).

The storage is the one source of truth: every page is a projection of it, so the dashboard works
the same whoever trains the population (``workers=1``, local processes, Ray, ``poptune worker``).
Reading never imports user code: a :class:`~poptune.results.Result` is built without its
trainable. Every string a user controls is escaped as text or a quoted attribute value (see
:mod:`poptune.report._escape`), and the pages run only their own script and style.
"""

from __future__ import annotations

import gzip
import json
import math
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field

from .._redact import redact_text
from ..config import PopulationConfig
from ..records import IntervalRecord, MemberRecord, PopulationRecord
from ..report import build_model
from ..report._escape import source_hash
from ..report._escape import text as _E
from ..report._html import (
    CSS,
    HIGHLIGHT_JS,
    FigureCache,
    figure_sections,
    member_table,
    strategies_line,
    summary_cards,
)
from ..report._model import ReportModel
from ..results import Result
from ..storage import Storage, Summary, default_storage_url, open_storage, redact_url

__all__ = ["STYLE_SOURCE", "Dashboard", "Update", "error_page", "version_of"]

_DASHBOARD_CSS = """
header{display:flex;justify-content:space-between;align-items:baseline;margin-bottom:8px}
header a{color:#0969da;text-decoration:none}#live-state{font-size:12px;color:#57606a}
#dashboard-error{background:#fff1f0;border:1px solid #f5c2c0;border-radius:6px;padding:8px 12px}
table.populations td,table.populations th{white-space:nowrap}progress{width:120px}
table.members{font-size:12px}
"""
_STYLE = CSS + _DASHBOARD_CSS

#: The Content-Security-Policy source of the pages' one ``<style>`` (the same on every page).
STYLE_SOURCE = source_hash(_STYLE)

# Polls the update URL; swaps the live part of the page when the server says it changed (the
# server answers 204 No Content while the population's version is the one we hold).
_LIVE_JS = """
(function(){
  var live=document.getElementById('live');
  var banner=document.getElementById('dashboard-error');
  var url=live.getAttribute('data-update');
  var period=Number(live.getAttribute('data-period'))*1000;
  var since=live.getAttribute('data-version')||'';
  function show(message){banner.textContent=message;banner.hidden=!message;}
  function poll(){
    var target=url+(url.indexOf('?')<0?'?':'&')+'since='+encodeURIComponent(since);
    fetch(target,{cache:'no-store',headers:{'Accept':'application/json'}})
      .then(function(response){
        if(response.status===204){show('');return;}
        return response.json().then(function(data){
          if(!response.ok){show(data.error||('HTTP '+response.status));return;}
          since=data.version;
          live.innerHTML=data.html;
          show('');
          window.poptuneUpdates=(window.poptuneUpdates||0)+1;
        });
      })
      .catch(function(){show('The dashboard server does not answer; retrying.');})
      .then(function(){setTimeout(poll,period);});
  }
  setTimeout(poll,period);
  window.poptuneDashboardReady=true;
})();
"""


def version_of(status: str, steps_done: int, copies: int, failures: int) -> str:
    """What must change for a population's figures to change: its status and how many
    intervals, copies (exploits and recoveries: each is drawn) and failures it recorded (an
    interval always advances ``steps_done``)."""
    return f"{status}-{steps_done}-{copies}-{failures}"


def _summary_version(record: PopulationRecord, summary: Summary) -> str:
    # Summary counts recoveries apart from exploits; the report's model has them all as copies:
    # both sides must count the same, or the page would never be up to date (a full read and
    # render at every poll, the live part swapped each time).
    copies = summary.exploits + summary.recoveries
    return version_of(record.status.value, summary.steps_done, copies, summary.failures)


def _model_version(model: ReportModel) -> str:
    return version_of(model.status, model.steps_done, len(model.exploits), len(model.failures))


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _score(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def population_href(name: str) -> str:
    """The page of population ``name`` (the name travels in the query string, so any name
    works, slashes included)."""
    return "/population?" + urllib.parse.urlencode({"name": name})


class _Snapshot(Result):
    """A :class:`Result` whose members and intervals were read once, for one model build
    (``build_model`` asks for the intervals twice: once to draw, once for the lineage)."""

    def __init__(
        self,
        storage: Storage,
        record: PopulationRecord,
        members: list[MemberRecord],
        intervals: list[IntervalRecord],
    ) -> None:
        super().__init__(storage, record, None, None)
        self._members = members
        self._intervals = intervals

    @property
    def members(self) -> list[MemberRecord]:
        """The members as read for this snapshot."""
        return self._members

    def intervals(self) -> list[IntervalRecord]:
        """The intervals as read for this snapshot, by member then step."""
        return self._intervals


class _IntervalCache:
    """The intervals of one population read so far, topped up with only the new ones.

    Exact because of the storage contract: an interval is written in the same transaction that
    moves its member to its step, a member's step only grows, and intervals are never deleted
    (but with their population). So every interval not read yet belongs to a member whose step
    grew since the last read, at a step above the one seen then. The records already read are
    kept (the same objects), so the figures can reuse what they drew of them.
    """

    # One query per new interval costs about six times what one more row of a range read
    # costs: read the range above the lowest step that moved unless that range is much larger.
    rows_per_query = 6

    def __init__(self, population: PopulationRecord) -> None:
        self.key = (population.id, population.created_at)
        self.steps: dict[int, int] = {}
        self.by_member: dict[int, dict[int, IntervalRecord]] = {}
        self._sorted: list[IntervalRecord] = []
        # The figures drawn of these very records: lives and dies with them.
        self.figures = FigureCache()

    def read(
        self, store: Storage, population_id: int, members: list[MemberRecord]
    ) -> list[IntervalRecord]:
        """Every interval of the population, by member then step."""
        steps = {m.id: m.step for m in members}
        moved = [m for m in members if m.step > self.steps.get(m.id, 0)]
        if moved:
            after = min(self.steps.get(m.id, 0) for m in moved)
            wanted = [
                (m.id, step)
                for m in moved
                for step in range(self.steps.get(m.id, 0) + 1, m.step + 1)
            ]
            in_range = sum(max(m.step - after, 0) for m in members)
            if in_range <= self.rows_per_query * len(wanted):
                for interval in store.intervals(population_id, after_step=after):
                    # Not above the step read with the members: the page counts those.
                    if interval.step <= steps.get(interval.member, 0):
                        known = self.by_member.setdefault(interval.member, {})
                        known.setdefault(interval.step, interval)
            else:
                for member, step in wanted:
                    found = store.interval(population_id, member, step)
                    if found is not None:  # None: the member copied its way past this step
                        self.by_member.setdefault(member, {})[step] = found
            self._sorted = [
                self.by_member[member][step]
                for member in sorted(self.by_member)
                for step in sorted(self.by_member[member])
            ]
        self.steps = steps
        return list(self._sorted)


@dataclass(frozen=True)
class Update:
    """The live part of a page and the version it shows, with its JSON body encoded once
    (plain and gzipped) for every browser that polls it."""

    version: str
    html: str
    body: bytes = field(repr=False)
    gzipped: bytes = field(repr=False)

    @classmethod
    def of(cls, version: str, html: str) -> Update:
        """Encode the JSON body ``{"version": ..., "html": ...}`` once."""
        body = json.dumps({"version": version, "html": html}).encode()
        # Level 1: a quarter of the CPU of level 6 for a payload about a quarter larger.
        return cls(version, html, body, gzip.compress(body, compresslevel=1, mtime=0))


class Dashboard:
    """The dashboard's reads: one storage, opened on first use (and retried until it opens),
    and the last rendered update of each population, shared by every browser that shows it.

    Example:
        >>> board = Dashboard("sqlite:///runs/poptune.db")
        >>> board.update("digits", since=None).version   # status, intervals, exploits...
        'finished-16-...'
    """

    cached_populations = 16

    def __init__(self, storage_url: str | None = None, poll_seconds: float = 1.0) -> None:
        self.url = storage_url if storage_url is not None else default_storage_url()
        self.poll_seconds = poll_seconds
        self._storage: Storage | None = None
        self._lock = threading.Lock()
        self._updates: OrderedDict[str, Update] = OrderedDict()
        self._intervals: OrderedDict[str, _IntervalCache] = OrderedDict()

    @property
    def redacted_url(self) -> str:
        """The storage URL with any password hidden."""
        return redact_url(self.url)

    def storage(self) -> Storage:
        """The open storage. Raises :class:`StorageError` if it cannot be opened (yet)."""
        with self._lock:
            if self._storage is None:
                self._storage = open_storage(self.url, mode="read")  # creates nothing
            return self._storage

    def scrub(self, text: str) -> str:
        """``text`` without the storage's secrets (its password, any URL in it)."""
        return redact_text(text, self.url)

    def close(self) -> None:
        """Release the storage's connections."""
        with self._lock:
            if self._storage is not None:
                self._storage.close()
                self._storage = None

    # --- the list of populations ---------------------------------------------------------

    def populations_table(self) -> str:
        """Every population: status, progress, best score, members, age (one summary each)."""
        store = self.storage()
        records = store.populations()
        if not records:
            return (
                f'<p class="muted">No populations in {_E(self.redacted_url)} yet; this page '
                "updates when one starts.</p>"
            )
        now = time.time()
        rows = []
        for record in records:
            config = PopulationConfig.of(record)
            summary = store.summary(record.id, config.intervals, config.mode)
            total = max(summary.steps_total, 1)
            rows.append(
                f'<tr><td><a href="{_E(population_href(record.name))}">{_E(record.name)}</a></td>'
                f"<td>{_E(record.status.value)}</td>"
                f'<td><progress max="{total}" value="{summary.steps_done}"></progress> '
                f"{summary.steps_done}/{summary.steps_total}</td>"
                f"<td>{_E(_score(summary.best_score))}</td>"
                f"<td>{_E(config.metric)} ({_E(config.mode.value)})</td>"
                f"<td>{summary.members}</td><td>{summary.exploits}</td>"
                f"<td>{_E(_age(now - record.created_at))}</td></tr>"
            )
        head = "".join(
            f"<th>{h}</th>"
            for h in ("name", "status", "progress", "best", "metric", "members", "exploits", "age")
        )
        return (
            f'<table class="populations"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def index_page(self, nonce: str) -> str:
        """The front page: the list of populations, refreshed live (``nonce``: the script's
        Content-Security-Policy nonce)."""
        return _page(
            "poptune dashboard",
            f'<h1>Populations</h1><p class="muted">in {_E(self.redacted_url)}</p>',
            self.populations_table(),
            update="/api/populations",
            version="",
            period=max(self.poll_seconds, 2.0),
            nonce=nonce,
        )

    # --- one population ------------------------------------------------------------------

    def version(self, name: str) -> str:
        """The population's current version: cheap (one summary), for idle polling."""
        store = self.storage()
        record = store.population(name)
        config = PopulationConfig.of(record)
        summary = store.summary(record.id, config.intervals, config.mode)
        return _summary_version(record, summary)

    def update(self, name: str, since: str | None) -> Update | None:
        """The live part of population ``name``'s page, or ``None`` if it is still ``since``.

        Raises:
            PopulationNotFound: if there is no such population (the message lists them).
            StorageError: if the storage cannot be read.
        """
        current = self.version(name)
        if since == current:
            return None
        with self._lock:
            cached = self._updates.get(name)
        if cached is not None and cached.version == current:
            return cached
        model, figures = self._read(name)
        update = Update.of(_model_version(model), _live_part(model, figures))
        with self._lock:
            self._updates[name] = update
            self._updates.move_to_end(name)
            while len(self._updates) > self.cached_populations:
                self._updates.popitem(last=False)
        return update

    def model(self, name: str) -> ReportModel:
        """Everything the report draws, read from the storage without importing user code.

        Members are read first, then only the intervals they recorded since the last call.
        """
        return self._read(name)[0]

    def _read(self, name: str) -> tuple[ReportModel, FigureCache]:
        """The model, and what the figures drew of this population before."""
        store = self.storage()
        record = store.population(name)
        members = store.members(record.id)
        with self._lock:
            cache = self._intervals.pop(name, None)
        if cache is None or cache.key != (record.id, record.created_at):
            cache = _IntervalCache(record)
        intervals = cache.read(store, record.id, members)
        with self._lock:
            self._intervals[name] = cache
            while len(self._intervals) > self.cached_populations:
                self._intervals.popitem(last=False)
        return build_model(_Snapshot(store, record, members, intervals)), cache.figures

    def population_page(self, name: str, nonce: str) -> str:
        """The page of one population: header, then the live part, refreshed by polling
        (``nonce``: the script's Content-Security-Policy nonce)."""
        update = self.update(name, None)
        assert update is not None
        store = self.storage()
        record = store.population(name)
        config = PopulationConfig.of(record)
        model_line = (
            f"{_E(config.metric)} ({_E(config.mode.value)}) · "
            f"{config.population} members · {config.intervals} intervals each"
        )
        head = (
            f'<h1>Population <span id="population-name">{_E(record.name)}</span></h1>'
            f'<p class="muted">{model_line} · {_E(self.redacted_url)}</p>'
        )
        return _page(
            f"poptune: {record.name}",
            head,
            update.html,
            update=population_href(name).replace("/population", "/api/population", 1),
            version=update.version,
            period=self.poll_seconds,
            nonce=nonce,
        )


def _live_part(model: ReportModel, figures: FigureCache | None = None) -> str:
    """What changes as intervals land: counts, cards, the member table and the figures
    (``figures``: what earlier renders of the population drew)."""
    error = f'<p class="error">Stopped: {_E(model.error)}</p>' if model.error else ""
    updated = time.strftime("%H:%M:%S")
    return (
        f'<p class="muted"><span id="intervals">{len(model.intervals)}</span> intervals recorded'
        f" · {_E(strategies_line(model))} · read at {updated}</p>"
        f"{error}{summary_cards(model)}"
        f"<section><h2>Members</h2>{member_table(model)}</section>"
        f"{figure_sections(model, figures)}"
    )


def _page(
    title: str, head: str, live: str, update: str, version: str, period: float, nonce: str
) -> str:
    """A whole dashboard page; ``live`` is the part the script replaces from ``update``."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_E(title)}</title><style>{_STYLE}</style></head>
<body><main>
<header><a href="/">poptune dashboard</a><span id="live-state">live: checks every
{period:g} s</span></header>
{head}
<p id="dashboard-error" class="error" role="alert" hidden></p>
<div id="live" data-update="{_E(update)}" data-version="{_E(version)}" data-period="{period:g}">
{live}
</div>
</main><script nonce="{_E(nonce)}">{HIGHLIGHT_JS}{_LIVE_JS}</script></body></html>
"""


def error_page(title: str, message: str, storage: str) -> str:
    """A plain page that says what went wrong and where (no stack trace)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>poptune dashboard: {_E(title)}</title><style>{_STYLE}</style></head>
<body><main><header><a href="/">poptune dashboard</a></header>
<h1>{_E(title)}</h1>
<p class="error" id="error-message">{_E(message)}</p>
<p class="muted">Storage: <code>{_E(storage)}</code>. The dashboard keeps serving: reload this
page once the storage is reachable.</p>
</main></body></html>
"""
