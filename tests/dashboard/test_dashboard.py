"""The live dashboard: its endpoints through Starlette's TestClient, and a real uvicorn server
in headless Chromium while a population trains in another process."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import poptune as pt
from poptune._text import unsafe_character
from poptune.testing import (
    XSS_PAYLOADS,
    XSS_PROBE,
    CreateOnlyRunner,
    Quadratic,
    SlowQuadratic,
    quadratic_space,
    xss_population,
)

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from starlette.testclient import TestClient

from poptune.dashboard import Dashboard, create_app
from poptune.dashboard._pages import _IntervalCache
from poptune.report._escape import source_hash
from poptune.report._html import figure_sections

NASTY = "<script>alert(1)</script>"
METRIC = "<img src=x onerror=alert(2)>"
FIXED = "<b>note</b>"
CHROMIUM = os.environ.get("POPTUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


class Hostile(Quadratic):
    """The toy problem under a metric name that would run script if it were not escaped."""

    def evaluate(self):
        return {METRIC: super().evaluate()["q"]}


@pytest.fixture
def hostile(storage_url: str, quick_run) -> pt.Result:
    space = {**quadratic_space(), FIXED: "</script>&amp;"}
    return quick_run(
        Hostile, space=space, metric=METRIC, storage=storage_url, name=NASTY, population=4,
        intervals=6,
    )  # fmt: skip


def test_every_page_escapes_user_strings(hostile, storage_url):
    client = TestClient(create_app(storage_url))
    pages = {
        "/": client.get("/"),
        "/api/populations": client.get("/api/populations"),
        "/population": client.get("/population", params={"name": NASTY}),
        "/api/population": client.get("/api/population", params={"name": NASTY}),
    }
    for path, response in pages.items():
        assert response.status_code == 200, path
        text = response.json()["html"] if path.startswith("/api") else response.text
        assert "<script>alert" not in text and "<img src=x" not in text, path
        assert "<b>note" not in text, path
        shown = "&lt;img src=x" if path == "/api/population" else "&lt;script&gt;alert(1)"
        assert shown in text, path  # the name, or the metric in the figures, as text
    page = pages["/population"].text
    assert 'id="scores"' in page and 'id="lineage"' in page and 'id="hparam-0"' in page
    assert '<table class="members">' in page
    assert "<script nonce=" in page and page.count("<script") == 1  # only our own script
    csp = pages["/population"].headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    missing = client.get("/population", params={"name": "nope"})  # an error page, no script
    for response in (pages["/population"], pages["/"], missing):
        policy = response.headers["content-security-policy"]
        (style,) = re.findall(r"<style>(.*?)</style>", response.text, re.S)
        assert f"style-src {source_hash(style)};" in policy  # its one style, by its hash
        assert "style=" not in response.text  # no inline style attribute (the policy blocks it)
    assert "?name=%3Cscript%3Ealert%281%29%3C%2Fscript%3E" in pages["/"].text  # the link


def test_update_is_204_until_the_population_changes(storage_url, quick_run):
    result = quick_run(
        storage=storage_url, name="later", population=2, intervals=3, runner=CreateOnlyRunner()
    )
    client = TestClient(create_app(storage_url))
    first = client.get("/api/population", params={"name": "later"})
    assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
    version = first.json()["version"]
    assert '<span id="intervals">0</span>' in first.json()["html"]
    idle = client.get("/api/population", params={"name": "later", "since": version})
    assert idle.status_code == 204 and idle.content == b""
    result.resume(progress=False)
    changed = client.get("/api/population", params={"name": "later", "since": version})
    assert changed.status_code == 200 and changed.json()["version"] != version
    assert '<span id="intervals">6</span>' in changed.json()["html"]
    again = client.get("/api/population", params={"name": "later", "since": version})
    assert again.content == changed.content  # the same version is rendered once, then shared


def test_a_population_with_recoveries_is_up_to_date_after_one_update(storage_url):
    """Re-seeds and fallbacks are copies the page draws, not exploits: the version the page is
    sent and the one it is compared with count them alike, so a finished population is read
    and rendered once, not at every poll (the live part was swapped in at each one)."""
    result = xss_population(storage_url)  # every member fails once and is re-seeded
    assert result.summary().recoveries > 0
    client = TestClient(create_app(storage_url))
    first = client.get("/api/population", params={"name": result.name})
    assert first.status_code == 200
    idle = client.get(
        "/api/population", params={"name": result.name, "since": first.json()["version"]}
    )
    assert idle.status_code == 204


def test_reading_only_new_intervals_gives_every_interval(storage_url, quick_run):
    result = quick_run(
        storage=storage_url, name="grows", population=4, intervals=8, runner=CreateOnlyRunner()
    )
    board = Dashboard(storage_url)
    assert board.model("grows").intervals == []
    result.resume(progress=False)
    assert result.exploits()  # members jumped steps by copying: those steps have no interval
    assert board.model("grows").intervals == result.intervals()  # one query per new interval
    board.close()


def test_new_intervals_are_read_in_one_range_or_one_query_each(storage_url, quick_run):
    quick_run(storage=storage_url, name="spread", population=4, intervals=8)
    board = Dashboard(storage_url)
    store = board.storage()
    record = store.population("spread")
    members = store.members(record.id)
    every = store.intervals(record.id)
    calls: list[tuple] = []

    class Spy:
        def intervals(self, population_id, after_step=0):
            calls.append(("range", after_step))
            return store.intervals(population_id, after_step=after_step)

        def interval(self, population_id, member, step):
            calls.append(("one", member, step))
            return store.interval(population_id, member, step)

    def read(*steps):
        calls.clear()
        at = [dataclasses.replace(m, step=s) for m, s in zip(members, steps, strict=True)]
        assert cache.read(Spy(), record.id, at) == [i for i in every if i.step <= steps[i.member]]
        return calls

    cache = _IntervalCache(record)
    assert read(1, 8, 8, 8) == [("range", 0)]
    assert read(2, 8, 8, 8) == [("one", 0, 2)]  # a straggler: one query, not 22 rows above it
    assert read(8, 8, 8, 8) == [("range", 2)]  # 6 new of the 24 above step 2: one range
    assert read(8, 8, 8, 8) == []  # nothing moved: nothing read
    board.close()


def test_updates_redraw_what_lands_while_a_population_trains(storage_url, quick_run):
    """What the dashboard keeps between updates (intervals read, figures drawn) never shows
    less, or other, than drawing everything afresh, while intervals and exploits land."""
    result = quick_run(
        SlowQuadratic, storage=storage_url, name="grows", population=4, intervals=12,
        runner=CreateOnlyRunner(),
    )  # fmt: skip
    board = Dashboard(storage_url)
    seen: list[tuple[int, int]] = []  # (intervals, exploits) of every update
    mismatches: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        since = None
        while not stop.is_set():
            model, figures = board._read("grows")
            if figure_sections(model, figures) != figure_sections(model):
                mismatches.append(f"at {len(model.intervals)} intervals")
            update = board.update("grows", since)
            if update is not None:
                since = update.version
                seen.append((update.html.count("<circle"), update.html.count("edge copied")))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result.resume(progress=False)
    finally:
        stop.set()
        watcher.join()
    assert mismatches == []
    intervals, exploits = result.intervals(), result.exploits()
    assert exploits  # copies landed while the dashboard was watching
    final = board.update("grows", None)
    assert final is not None
    assert final.html.count("<circle") == len(intervals)  # one node per interval, none stale
    copied = [i for i in intervals if i.origin is not None and i.origin[0] != i.member]
    assert final.html.count("edge copied") == len(copied)
    assert len({count for count, _ in seen}) >= 3  # it saw the population grow, update by update
    fresh = Dashboard(storage_url)
    assert figure_sections(fresh.model("grows")) == figure_sections(board.model("grows"))
    board.close()
    fresh.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite:///{tmp}/missing/poptune.db", "postgresql+psycopg://me:s3cret@127.0.0.1:9/nowhere"],
)
def test_a_missing_or_unreachable_storage_gives_a_clear_503_page(url, tmp_path):
    url = url.format(tmp=tmp_path)
    client = TestClient(create_app(url))
    for path in ("/", "/population?name=x"):
        response = client.get(path)
        assert response.status_code == 503
        assert "The storage cannot be read" in response.text
        assert "Traceback" not in response.text and "s3cret" not in response.text
        assert ("me:***@" in response.text) == ("s3cret" in url)
    api = client.get("/api/population", params={"name": "x"})
    assert api.status_code == 503 and "cannot be read" in api.json()["error"]
    assert not (tmp_path / "missing").exists()  # reading never creates a database


def test_an_unknown_population_is_404_and_lists_the_others(hostile, storage_url):
    client = TestClient(create_app(storage_url))
    page = client.get("/population", params={"name": "nope"})
    assert page.status_code == 404 and "nope" in page.text
    assert "&lt;script&gt;" in page.text and "<script>alert" not in page.text
    assert client.get("/population").status_code == 404
    assert client.get("/api/population", params={"name": "nope"}).status_code == 404


def test_read_only_and_loopback_names_only(hostile, storage_url):
    app = create_app(storage_url, allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1").post("/").status_code == 405
    assert TestClient(app, base_url="http://127.0.0.1").get("/").status_code == 200
    assert TestClient(app, base_url="http://attacker.example").get("/").status_code == 400


def test_import_poptune_imports_no_web_framework():
    code = (
        "import sys, poptune, poptune.cli; "
        "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- a real server, a real browser, a population training in another process ---------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, seconds: float, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as error:
            if error.code in ok:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer {ok} within {seconds} s")
        time.sleep(0.1)


TRAIN = """
import poptune as pt
from poptune.testing import SlowQuadratic

pt.run(
    SlowQuadratic,
    space={"h0": pt.Uniform(0.0, 1.0), "h1": pt.Uniform(0.0, 1.0)},
    metric="q",
    population=4,
    intervals=150,  # about 30 s: still training when a slow machine has opened the page
    storage=STORAGE,
    name="live",
    seed=0,
    progress=False,
)
"""


def test_the_page_shows_new_intervals_without_reload(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or POPTUNE_CHROMIUM)")
    storage = f"sqlite:///{tmp_path / 'poptune.db'}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    script = tmp_path / "train.py"
    script.write_text(f"STORAGE = {storage!r}\n" + textwrap.dedent(TRAIN))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "poptune.cli", "dashboard", "--storage", storage, "--port",
         str(port), "--every", "0.3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    trainer = None
    try:
        _wait_for(f"{base}/", 20, ok=(200, 503))  # 503 until the trainer creates the file
        trainer = subprocess.Popen([sys.executable, str(script)], env=env)
        _wait_for(f"{base}/api/population?name=live", 20)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/population?name=live")
            # Predicates as functions: the page's Content-Security-Policy forbids eval.
            page.wait_for_function("() => window.poptuneDashboardReady === true")
            page.evaluate("window.notReloaded = true")
            first = int(page.text_content("#intervals"))
            page.wait_for_function(
                "(first) => Number(document.querySelector('#intervals').textContent) > first + 4",
                arg=first,
                timeout=15_000,
            )
            later = int(page.text_content("#intervals"))
            assert page.evaluate("window.notReloaded === true")  # swapped in, not reloaded
            assert page.evaluate("window.poptuneUpdates") >= 1
            nodes = page.evaluate("document.querySelectorAll('#lineage circle').length")
            assert nodes >= later  # the figures were redrawn with the new intervals
            assert page.text_content("#population-name") == "live"
            browser.close()
        assert errors == []
        assert later > first
    finally:
        for process in (trainer, server):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
    output = server.stdout.read().decode() if server.stdout else ""
    assert "Traceback" not in output, output


def _serve_in_thread(app: Any) -> tuple[str, Any, threading.Thread]:
    """``app`` served by uvicorn on a free loopback port in a thread: (base URL, server, thread)."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    _wait_for(f"{base}/", 20)
    return base, server, thread


def _open_after_an_update(browser: Any, url: str, bypass_csp: bool) -> tuple[Any, list[str]]:
    """A page of ``url`` once its script swapped in the live part fetched as JSON, and the
    list its errors go to (script errors, console errors such as policy violations, dialogs)."""
    page = browser.new_page(bypass_csp=bypass_csp)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda d: (errors.append(d.message), d.dismiss()))

    def stale(route: Any) -> None:
        # A finished population's page is never updated: a stale version makes its script
        # fetch the live part (JSON) and swap it in.
        response = route.fetch()
        text = response.text().replace('data-version="', 'data-version="old', 1)
        route.fulfill(response=response, body=text)

    page.route(lambda address: address == url, stale)  # the page only, not what it polls
    page.goto(url)
    page.wait_for_function("() => window.poptuneUpdates >= 1", timeout=15_000)
    return page, errors


def _highlights(page: Any) -> bool:
    """Hovering a member's line highlights its lineage. The page swaps in fresh figures now
    and then, which drops a highlight: hover again if one landed in between."""
    for _ in range(10):
        page.dispatch_event("#scores polyline[data-member='1']", "mouseover")
        if page.evaluate("document.querySelectorAll('.hl').length") > 1:
            return True
        page.wait_for_timeout(200)
    return False


def test_hovering_a_member_again_after_an_update_highlights_it_again(tmp_path, quick_run):
    # The highlight remembered the member hovered last and ignored a second hover of it; the
    # live part swapped in meanwhile had no highlight, so the same line stayed plain.
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or POPTUNE_CHROMIUM)")
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    quick_run(storage=storage, name="hover", population=3, intervals=3)
    base, server, thread = _serve_in_thread(create_app(storage, poll_seconds=0.2))
    line = "#scores polyline[data-member='1']"
    highlighted = "() => document.querySelectorAll('.hl').length"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page, errors = _open_after_an_update(browser, f"{base}/population?name=hover", False)
            page.dispatch_event(line, "mouseover")
            assert page.evaluate(highlighted) > 1
            # what the page's script does with an update: the live part replaced by the
            # server's HTML, which carries no highlight
            page.evaluate(
                """() => {
                    const live = document.getElementById('live');
                    const fresh = live.cloneNode(true);
                    fresh.querySelectorAll('.hl').forEach((e) => e.classList.remove('hl'));
                    live.innerHTML = fresh.innerHTML;
                }"""
            )
            assert page.evaluate(highlighted) == 0
            page.dispatch_event(line, "mouseover")
            assert page.evaluate(highlighted) > 1
            assert errors == []
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_no_stored_string_runs_script_in_the_dashboard(tmp_path):
    """A population whose every stored string is an XSS payload, on the dashboard's pages in
    Chromium, with their Content-Security-Policy bypassed (escaping alone) and obeyed: nothing
    runs, nothing is injected, nothing navigates, every name reads as text, and the live part
    swapped in from JSON is as inert as the page."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or POPTUNE_CHROMIUM)")
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    result = xss_population(storage)
    base, server, thread = _serve_in_thread(create_app(storage, poll_seconds=0.2))
    index, population = f"{base}/", f"{base}/population?name={urllib.parse.quote(result.name)}"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            for bypass_csp in (True, False):
                where = "policy bypassed" if bypass_csp else "policy obeyed"
                page, errors = _open_after_an_update(browser, index, bypass_csp)
                assert page.evaluate(XSS_PROBE) == [], where
                assert page.url == index and errors == [], (where, errors)
                assert page.text_content("table.populations a") == result.name
                page.close()

                page, errors = _open_after_an_update(browser, population, bypass_csp)
                assert page.evaluate(XSS_PROBE) == [], where
                assert page.url == population and errors == [], (where, errors)
                assert page.text_content("#population-name") == result.name
                headings = page.eval_on_selector_all("h2, th", "els => els.map(e => e.textContent)")
                names = {
                    "".join(c for c in p if not unsafe_character(c)) for p in XSS_PAYLOADS[:-1]
                }
                assert names <= set(headings), where  # hyperparameter names
                shown = page.text_content("main")
                assert f"explore: {XSS_PAYLOADS[3]}" in shown  # a strategy's description
                assert f"RuntimeError: {XSS_PAYLOADS[5]}" in shown  # a failure
                assert _highlights(page), where
                page.close()
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_taken_port_is_said_before_any_address_is_announced(tmp_path):
    """uvicorn printed its error after poptune had announced the URL (another program's)."""
    from click.testing import CliRunner

    from poptune.cli import main

    storage = f"sqlite:///{tmp_path / 'poptune.db'}"
    pt.open_storage(storage).close()  # an empty poptune database
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = CliRunner().invoke(main, ["dashboard", "--storage", storage, "--port", str(port)])
    assert out.exit_code == 1, out.output
    assert f"Cannot serve the dashboard at 127.0.0.1:{port}" in out.output
    assert "pick another --port" in out.output and "http://" not in out.output
    assert "Traceback" not in out.output
