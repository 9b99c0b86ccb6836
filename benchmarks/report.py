"""How responsive the HTML report stays for a large population (64 members x 100 intervals).

Prints the time to render the HTML in Python, its size, the time headless Chromium takes to
load and draw it, and the time a hover highlight takes to apply (the page's only interaction).

Run:  python benchmarks/report.py [--members 64] [--intervals 100]
Needs playwright and Chromium (/usr/bin/chromium, or $POPTUNE_CHROMIUM).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from poptune.report import render_html
from poptune.testing import synthetic_report_model


def main() -> None:
    """Render, load and hover; print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--intervals", type=int, default=100)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    started = time.perf_counter()
    page_html = render_html(synthetic_report_model(args.members, args.intervals))
    render = time.perf_counter() - started
    chromium = os.environ.get("POPTUNE_CHROMIUM", "/usr/bin/chromium")
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        path = Path(folder) / "big.html"
        path.write_text(page_html)
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        started = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_function("window.poptuneReportReady === true")
        page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        load = time.perf_counter() - started
        hovers = []
        for member in range(0, args.members, max(1, args.members // 8)):
            started = time.perf_counter()
            page.dispatch_event(f"#scores polyline[data-member='{member}']", "mouseover")
            page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            hovers.append(time.perf_counter() - started)
        browser.close()
    hovers.sort()
    print(f"{args.members} members x {args.intervals} intervals")
    print(f"render {render * 1000:.0f} ms, {len(page_html) / 1e6:.2f} MB of HTML")
    print(f"Chromium load and first paint {load * 1000:.0f} ms")
    print(
        f"hover highlight median {hovers[len(hovers) // 2] * 1000:.0f} ms, "
        f"max {hovers[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
