"""The HTML report in a real headless Chromium, static plots, and the notebook summary."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import math
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import poptune as pt
from poptune._text import unsafe_character
from poptune.cli import main
from poptune.report import build_model, render_html
from poptune.report._html import _VIRIDIS, FigureCache, _Axis, _rank_colours, figure_sections
from poptune.testing import (
    XSS_PAYLOADS,
    XSS_PROBE,
    Quadratic,
    quadratic_space,
    synthetic_report_model,
    xss_population,
)

NASTY = "<script>alert(1)</script>"
METRIC = "<img src=x onerror=alert(2)>"
FIXED = "<b>note</b>"
CHROMIUM = os.environ.get("POPTUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


class Hostile(Quadratic):
    """The toy problem with user strings that would run script if they were not escaped."""

    def train(self, hparams):
        if hparams["h0"] > 0.97:
            raise RuntimeError("<script>alert(3)</script> diverged")
        super().train(hparams)

    def evaluate(self):
        return {METRIC: super().evaluate()["q"]}


@pytest.fixture
def hostile(storage_url: str, quick_run) -> pt.Result:
    space = {"h0": pt.Uniform(0.0, 1.0), "h1": pt.Uniform(0.0, 1.0), FIXED: "</script>&amp;"}
    start = [{"h0": 0.99, "h1": 0.5, FIXED: "</script>&amp;"}]
    return quick_run(
        Hostile, space=space, metric=METRIC, storage=storage_url, name=NASTY, population=6,
        intervals=8, initial=start, max_failures=0,
    )  # fmt: skip


def browser_page():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (or set POPTUNE_CHROMIUM)"
        )
    return playwright.sync_playwright()


def open_in_chromium(path: Path, screenshot: Path | None = None) -> dict:
    with browser_page() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        dialogs: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        page.wait_for_function("window.poptuneReportReady === true")
        figures = page.evaluate(
            """() => Array.from(document.querySelectorAll('svg.figure')).map(svg => ({
                id: svg.id,
                marks: svg.querySelectorAll('polyline, circle, path').length,
                width: svg.getBoundingClientRect().width,
                height: svg.getBoundingClientRect().height}))"""
        )
        name = page.text_content("#population-name")
        page.dispatch_event("#scores polyline[data-member='1']", "mouseover")
        highlighted = page.evaluate("document.querySelectorAll('.hl').length")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return {
        "errors": errors,
        "dialogs": dialogs,
        "figures": figures,
        "name": name,
        "highlighted": highlighted,
    }


def test_report_in_chromium_draws_everything_and_escapes_user_strings(hostile, tmp_path):
    path = hostile.report(tmp_path / "report.html")
    text = path.read_text()
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text  # self-contained: nothing is fetched
    shot = tmp_path / "report.png"
    page = open_in_chromium(path, shot)
    assert page["errors"] == [] and page["dialogs"] == []
    assert page["name"] == NASTY  # shown as text, not run
    ids = {f["id"] for f in page["figures"]}
    assert ids == {"scores", "hparam-0", "hparam-1", "lineage"}
    for figure in page["figures"]:
        assert figure["marks"] > 0 and figure["width"] > 100 and figure["height"] > 100, figure
    assert page["highlighted"] > 1  # hovering a member highlights it across figures
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "diverged" in text  # the failure is listed, escaped


def test_long_names_wrap_and_values_show_their_control_characters(tmp_path, quick_run):
    """A 255-character name does not make the page thousands of pixels wide; a value with a
    right-to-left override or an escape code shows them as escapes (not read backwards, not
    obeyed by a terminal that prints the saved page)."""
    spoof, escape = "\u202eexe.txt", "\x1b[31mred"
    long = "x" * 300
    space = {**quadratic_space(), "optimizer": pt.Choice([spoof, escape]), long: "fixed"}
    start = [
        {"h0": 0.5, "h1": 0.5, "optimizer": value, long: "fixed"}
        for value in space["optimizer"].options
    ]
    result = quick_run(space=space, name="L" * 255, population=2, intervals=2, initial=start)
    path = result.report(tmp_path / "r.html")
    raw = path.read_text()
    assert "\x1b" not in raw and "\u202e" not in raw
    with browser_page() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(path.as_uri())
        page.wait_for_function("window.poptuneReportReady === true")
        width = page.evaluate("document.documentElement.scrollWidth")
        shown = page.evaluate("document.body.textContent")
        browser.close()
    assert width <= 1100
    assert "\\u202eexe.txt" in shown and "\\x1b[31mred" in shown


def visit(url: str, bypass_csp: bool = False, ready: str = "poptuneReportReady") -> dict:
    """Open ``url`` in Chromium (its Content-Security-Policy obeyed, or bypassed to check the
    escaping alone): what ran or was injected, the console errors, the page's texts."""
    with browser_page() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(bypass_csp=bypass_csp)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: (errors.append(f"dialog {d.message}"), d.dismiss()))
        page.goto(url)
        page.wait_for_function(f"() => window.{ready} === true")
        page.wait_for_timeout(300)  # a <meta http-equiv=refresh content=0> would have left
        found = page.evaluate(XSS_PROBE)
        texts = page.evaluate(
            """() => ({
                name: document.querySelector('#population-name').textContent,
                headings: Array.from(document.querySelectorAll('h2, th, text.label'),
                                     el => el.textContent),
                ticks: Array.from(document.querySelectorAll('text.tick'), el => el.textContent),
                page: document.body.textContent,
                ids: Array.from(document.querySelectorAll('[id]'), el => el.id)})"""
        )
        page.dispatch_event("#scores polyline[data-member='1']", "mouseover")
        highlighted = page.evaluate("document.querySelectorAll('.hl').length")
        final_url = page.url
        browser.close()
    return {"found": found, "errors": errors, "url": final_url, "highlighted": highlighted,
            **texts}  # fmt: skip


def check_payloads_shown_as_text(page: dict, result: pt.Result) -> None:
    """Every payload of :func:`xss_population` is on the page as the text it was stored as."""
    assert page["found"] == []
    assert page["name"] == result.name
    for payload in XSS_PAYLOADS[:-1]:  # every tuned hyperparameter's name, as a heading
        assert "".join(c for c in payload if not unsafe_character(c)) in page["headings"]
    assert " ".join(XSS_PAYLOADS[:4]) in page["headings"]  # the metric, as a column and a label
    for shown in (
        f"exploit: {XSS_PAYLOADS[2]}",  # the strategies' descriptions
        f"explore: {XSS_PAYLOADS[3]}",
        f"ready: {XSS_PAYLOADS[4]}",
        f"RuntimeError: {XSS_PAYLOADS[5]}\n{XSS_PAYLOADS[0]}",  # a failure's traceback
        "Stopped: 3 attempts in a row failed",  # the population's error
    ):
        assert shown in page["page"], shown
    choices = {v for i in result.intervals() for v in i.hparams.values() if isinstance(v, str)}
    assert len(choices) > 5 and choices <= set(page["ticks"])  # Choice values, as axis ticks
    assert all(re.fullmatch(r"[A-Za-z][\w-]*", i) for i in page["ids"]), page["ids"]


def test_no_stored_string_runs_script_in_the_report(tmp_path):
    result = xss_population(f"sqlite:///{tmp_path / 'p.db'}")
    path = result.report(tmp_path / "report.html")
    url = path.as_uri()
    escaped = visit(url, bypass_csp=True)  # the escaping alone keeps every payload inert
    check_payloads_shown_as_text(escaped, result)
    assert escaped["url"] == url and escaped["errors"] == []
    page = visit(url)  # the report under its own Content-Security-Policy: all of it works
    check_payloads_shown_as_text(page, result)
    assert page["url"] == url and page["errors"] == [] and page["highlighted"] > 1


def test_the_reports_policy_stops_script_that_escaping_missed(tmp_path):
    path = xss_population(f"sqlite:///{tmp_path / 'p.db'}").report(tmp_path / "report.html")
    text = path.read_text()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text)
    assert csp is not None and text.index(csp.group(0)) < text.index("<style")
    assert "default-src 'none'" in csp.group(1) and "unsafe-inline" not in csp.group(1)
    # As if a string had reached the page unescaped: the policy still runs none of it.
    missed = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"
    path.write_text(text.replace("<main>", "<main>" + missed, 1))
    page = visit(path.as_uri())
    assert "a payload ran: window.__pwned is set" not in page["found"]
    assert any("Content Security Policy" in error for error in page["errors"]), page["errors"]
    assert page["highlighted"] > 1  # the report's own script still runs


def test_a_64_by_100_population_renders_completely(tmp_path):
    path = tmp_path / "big.html"
    path.write_text(render_html(synthetic_report_model(64, 100)))
    page = open_in_chromium(path)
    assert page["errors"] == []
    lineage = next(f for f in page["figures"] if f["id"] == "lineage")
    assert lineage["marks"] >= 6400  # one node per (member, interval)


@pytest.mark.parametrize("kind", ["scores", "hparams", "lineage"])
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_static_plots(hostile, tmp_path, kind, suffix):
    pytest.importorskip("matplotlib")
    path = hostile.plot(kind, tmp_path / f"{kind}{suffix}")
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("kind", ["scores", "hparams", "lineage"])
def test_static_plots_draw_names_as_typed_not_as_math(tmp_path, kind):
    pytest.importorskip("matplotlib")
    from poptune.report import plot

    model = synthetic_report_model(3, 4)
    unparsable = r"$\frac{$ <b>"  # mathtext would fail on it; TeX would read it as a command
    intervals = [dataclasses.replace(i, hparams={"lr": 0.1, "units": unparsable})
                 for i in model.intervals]  # fmt: skip
    model = dataclasses.replace(model, name="a$b$", metric=unparsable, intervals=intervals)
    path = plot(model, kind, tmp_path / f"{kind}.svg")
    text = path.read_text()
    assert "a$b$" in text and r"$\frac{$ &lt;b&gt;" in text  # the names, as typed and escaped


def test_static_plots_draw_any_choice_value(tmp_path):
    """``None`` made matplotlib raise a ConversionError; an escape code in a value made an SVG
    no XML parser (nor Chromium) reads."""
    pytest.importorskip("matplotlib")
    import xml.etree.ElementTree as ElementTree

    from poptune.report import plot

    model = synthetic_report_model(3, 4)
    values = [None, "\x1b[31mred", "adam"]  # member 0: None only
    intervals = [dataclasses.replace(i, hparams={"lr": 0.1, "units": values[i.member % 3]})
                 for i in model.intervals]  # fmt: skip
    model = dataclasses.replace(model, intervals=intervals, schedule=[])
    path = plot(model, "hparams", tmp_path / "hparams.svg")
    text = path.read_text()
    ElementTree.fromstring(text.encode())  # well-formed
    assert "\x1b" not in text  # the label is drawn as glyphs: its text is not in the file


def test_plot_refuses_bad_kind_and_format(hostile, tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="Unknown plot kind 'pie'"):
        hostile.plot("pie", tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        hostile.plot("scores", tmp_path / "x.gif")


def test_cli_report_and_plot(hostile, storage_url, tmp_path):
    out = CliRunner().invoke(
        main, ["report", NASTY, "--storage", storage_url, "-o", str(tmp_path / "r.html")]
    )
    assert out.exit_code == 0 and (tmp_path / "r.html").stat().st_size > 5000
    pytest.importorskip("matplotlib")
    out = CliRunner().invoke(
        main,
        [
            "plot",
            NASTY,
            "--storage",
            storage_url,
            "--kind",
            "lineage",
            "-o",
            str(tmp_path / "l.svg"),
        ],
    )
    assert out.exit_code == 0 and (tmp_path / "l.svg").exists()


def test_status_watch_stops_when_the_population_is_done(hostile, storage_url):
    out = CliRunner().invoke(main, ["status", NASTY, "--storage", storage_url, "--watch"])
    assert out.exit_code == 0 and "finished" in out.output


def test_notebook_summary_is_escaped(hostile):
    html = hostile._repr_html_()
    assert "<table>" in html and "&lt;script&gt;" in html and NASTY not in html


def test_report_of_a_population_without_scores(storage_url, quick_run):
    fixed = {"h0": 0.5, "h1": 0.5}
    result = quick_run(space=fixed, storage=storage_url, name="tiny", population=2, intervals=1)
    model = build_model(result)
    assert model.hparam_names == []
    assert "Population" in render_html(model)


# --- the lineage figure: one path per member's own training, colours by rank, a cache ------


def _viridis_of_one(t: float) -> str:
    """The colour of one node as the report computed it before colours were vectorised."""
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    low = math.floor(t)
    high = min(low + 1, len(_VIRIDIS) - 1)
    f = t - low
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_VIRIDIS[low], _VIRIDIS[high], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


@pytest.mark.parametrize("maximise", [True, False])
def test_rank_colours_are_the_per_node_colours(maximise):
    rng = np.random.default_rng(0)
    scores: list = [float(v) for v in rng.normal(size=3000)]
    scores += [0.5, 0.5, 0.5, 1, 2, None, math.nan, math.inf, -math.inf, 10**300 * 1.0]
    rng.shuffle(scores)
    ranked = sorted(s for s in scores if s is not None and math.isfinite(s))
    expected = []
    for score in scores:
        if score is None or not math.isfinite(score):
            expected.append("#d62728")
            continue
        t = bisect.bisect_left(ranked, float(score)) / max(len(ranked) - 1, 1)
        expected.append(_viridis_of_one(t if maximise else 1 - t))
    assert _rank_colours(scores, maximise) == expected
    assert _rank_colours([None, math.nan], maximise) == ["#d62728", "#d62728"]
    assert _rank_colours([], maximise) == []


def test_each_members_own_training_is_one_path(tmp_path):
    model = synthetic_report_model(16, 30)
    figure = figure_sections(model)
    lineage = figure[figure.index('<svg class="figure" id="lineage"') :]
    trained = re.findall(r'<path class="edge trained" d="([^"]+)"/>', lineage)
    assert len(trained) == 16  # one per member, not one per interval
    segments = sum(d.count("L") for d in trained)
    own = sum(1 for i in model.intervals if i.origin is not None and i.origin[0] == i.member)
    assert segments == own
    assert lineage.count("<circle") == 16 * 30
    assert lineage.count('<path class="edge copied"') == len(model.intervals) - own - 16


def test_a_figure_cache_draws_what_drawing_afresh_draws():
    full = synthetic_report_model(12, 40)
    cache = FigureCache()

    def check(model):
        assert figure_sections(model, cache) == figure_sections(model)

    early = [i for i in full.intervals if i.step <= 20]
    check(dataclasses.replace(full, intervals=early))
    # New intervals land, the winning lineage moves, the ranks (colours) shift.
    check(dataclasses.replace(full, lineage_keys={(0, s) for s in range(1, 41)}))
    check(full)
    # A record read again (another object, other values) is drawn again.
    changed = list(full.intervals)
    changed[5] = dataclasses.replace(changed[5], score=-1.0, hparams={"lr": 0.5, "units": 8})
    check(dataclasses.replace(full, intervals=changed))
    # A longer budget moves every node: nothing drawn before is reused.
    check(dataclasses.replace(full, budget=60))


def test_recoveries_are_drawn_and_counted_apart_from_exploits(tmp_path, monkeypatch, quick_run):
    from poptune.testing import Failing

    monkeypatch.setattr(Failing, "fail_above", 0.6)
    start = [{"h0": 0.2, "h1": 0.5}, {"h0": 0.3, "h1": 0.5}, {"h0": 0.9, "h1": 0.5}]
    result = quick_run(
        Failing, name="recovering", intervals=4, initial=start, sync=True, max_failures=1,
        exploit=None,
    )  # fmt: skip
    assert [e.reason for e in result.exploits()] == [pt.CopyReason.RESEED]
    page = result.report(tmp_path / "r.html").read_text()
    assert '<span class="muted">exploits</span><b>0</b>' in page
    assert '<span class="muted">recoveries</span><b>1</b>' in page
    assert page.count('class="recovery"') == 1 and 'class="exploit"' not in page
    assert "re-seeded after failing: a recovery, not an exploit" in page


class _RoundingApart(Quadratic):
    """Scores a rounding error apart: 0.3 or 0.1 + 0.2, by the member's h0."""

    def evaluate(self):
        return {"q": 0.3 if self.h[0] < 0.5 else 0.1 + 0.2, "surrogate": 0.0}


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (and growing a list until memory runs out) past ``seconds``."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (0.3, 0.1 + 0.2),  # a rounding error apart: the tick step stopped moving the value
        (1e20, math.nextafter(1e20, math.inf)),
        (1e20, 1e20),  # equal and large: +-0.5 left the span at 0
        (-1e308, 1e308),  # the span overflowed
        (0.0, 0.0),
        (-5.0, 7.0),
    ],
)
def test_an_axis_has_a_few_ticks_whatever_its_values(low, high):
    with _deadline(2):
        axis = _Axis(low, high, 300.0, 0.0)
        ticks = axis.ticks(5)
        steps = axis.ticks(10, integer=True)
    assert 1 <= len(ticks) <= 6 and len(steps) <= 11
    assert all(axis.low <= t <= axis.high for t in ticks), (axis.low, axis.high, ticks)
    for value in (low, high):  # drawn inside the figure, as a number
        assert 0.0 <= axis(value) <= 300.0 and 0.0 <= float(axis.text()(value)) <= 300.0


def test_a_report_of_scores_a_rounding_error_apart_is_written(tmp_path, quick_run):
    """0.3 and 0.1 + 0.2: the report and the dashboard's figures drew ticks until memory ran
    out."""
    result = quick_run(_RoundingApart, population=4, intervals=2)
    assert {i.score for i in result.intervals()} == {0.3, 0.1 + 0.2}
    with _deadline(30):
        page = result.report(tmp_path / "r.html").read_text()
    assert page.count("<svg") >= 2 and not re.search(r'="-?(nan|inf)', page)  # coordinates


def test_step_axes_have_whole_number_ticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_run
):
    """A few intervals must not give ticks at interval 2.5, in the HTML or the static plots."""
    from poptune.report._html import _Axis

    for high in (2, 3, 4, 7, 30, 1000):
        ticks = _Axis(1, high, 0, 600).ticks(10, integer=True)
        assert ticks and all(float(t).is_integer() for t in ticks), (high, ticks)
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    result = quick_run(population=2, intervals=3)
    seen: list[list[float]] = []
    save = Figure.savefig

    def capture(figure: Figure, *args: object, **kwargs: object) -> None:
        seen.extend(list(axis.get_xticks()) for axis in figure.axes)  # what the image shows
        save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    for kind in ("scores", "hparams"):
        result.plot(kind, tmp_path / f"{kind}.png")
    assert len(seen) >= 3  # the scores' axis and one per hyperparameter
    for ticks in seen:
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
