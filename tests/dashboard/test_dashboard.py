"""The live dashboard: its endpoints through Starlette's TestClient, and a real uvicorn server
in headless Chromium while a population trains in another process."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import poptune as pt
from poptune.testing import CreateOnlyRunner, Quadratic, SlowQuadratic

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from starlette.testclient import TestClient

from poptune.dashboard import Dashboard, create_app
from poptune.dashboard._pages import _IntervalCache
from poptune.report._html import figure_sections

NASTY = "<script>alert(1)</script>"
METRIC = "<img src=x onerror=alert(2)>"
FIXED = "<b>note</b>"
CHROMIUM = os.environ.get("POPTUNE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


class Hostile(Quadratic):
    """The toy problem under a metric name that would run script if it were not escaped."""

    def evaluate(self):
        return {METRIC: super().evaluate()["q"]}


def _space() -> dict:
    return {"h0": pt.Uniform(0.0, 1.0), "h1": pt.Uniform(0.0, 1.0)}


@pytest.fixture
def hostile(storage_url: str) -> pt.Result:
    space = {**_space(), FIXED: "</script>&amp;"}
    return pt.run(
        Hostile,
        space=space,
        metric=METRIC,
        population=4,
        intervals=6,
        storage=storage_url,
        name=NASTY,
        seed=0,
        progress=False,
    )


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
    assert 'id="scores"' in page and 'id="lineage"' in page and 'id="hparam-h0"' in page
    assert '<table class="members">' in page
    assert "<script nonce=" in page and page.count("<script") == 1  # only our own script
    csp = pages["/population"].headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "default-src 'none'" in csp
    assert "?name=%3Cscript%3Ealert%281%29%3C%2Fscript%3E" in pages["/"].text  # the link


def test_update_is_204_until_the_population_changes(storage_url):
    result = pt.run(
        Quadratic,
        space=_space(),
        metric="q",
        population=2,
        intervals=3,
        storage=storage_url,
        name="later",
        progress=False,
        runner=CreateOnlyRunner(),
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


def test_reading_only_new_intervals_gives_every_interval(storage_url):
    result = pt.run(
        Quadratic,
        space=_space(),
        metric="q",
        population=4,
        intervals=8,
        storage=storage_url,
        name="grows",
        progress=False,
        runner=CreateOnlyRunner(),
    )
    board = Dashboard(storage_url)
    assert board.model("grows").intervals == []
    result.resume(progress=False)
    assert result.exploits()  # members jumped steps by copying: those steps have no interval
    assert board.model("grows").intervals == result.intervals()  # one query per new interval
    board.close()


def test_new_intervals_are_read_in_one_range_or_one_query_each(storage_url):
    pt.run(
        Quadratic,
        space=_space(),
        metric="q",
        population=4,
        intervals=8,
        storage=storage_url,
        name="spread",
        seed=0,
        progress=False,
    )
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


def test_updates_redraw_what_lands_while_a_population_trains(storage_url):
    """What the dashboard keeps between updates (intervals read, figures drawn) never shows
    less, or other, than drawing everything afresh, while intervals and exploits land."""
    result = pt.run(
        SlowQuadratic,
        space=_space(),
        metric="q",
        population=4,
        intervals=12,
        storage=storage_url,
        name="grows",
        seed=0,
        progress=False,
        runner=CreateOnlyRunner(),
    )
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
