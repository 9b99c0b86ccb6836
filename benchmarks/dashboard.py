"""Server time and payload of the live dashboard for a large population (64 members x 100).

Builds a finished population in a fresh SQLite file: the population and its members are created
by ``pt.run`` (nothing trained), then the intervals, exploits and checkpoint rows that a PBT run
of that size records (truncation every 5 intervals: the bottom quarter copies the top quarter)
are written into the storage's tables in bulk, which is much faster than training it. Then it
measures, through the real Starlette app (in-process, ``TestClient``):

- a full update (``/api/population`` without ``since``): reading the storage, building the
  report model and rendering the figures; the page's poll pays this once per new version;
- an idle poll (``since`` = the current version): one summary query, answered 204;
- the population page and the list of populations;
- payload bytes, raw and gzipped (the browser asks for gzip; the server compresses an update
  once, at level 1, and the page through its middleware at level 6).

Run:  python benchmarks/dashboard.py [--members 64] [--intervals 100] [--repeats 20]
Needs the dashboard extra (pip install 'poptune[dashboard]') and httpx2 for the TestClient.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sqlalchemy as sa

import poptune as pt
from poptune.storage import SQLStorage
from poptune.storage._schema import checkpoints, exploits, intervals, members, populations
from poptune.testing import CreateOnlyRunner, Quadratic


def build_population(url: str, size: int, steps: int, seed: int = 0) -> None:
    """Store a finished PBT population of ``size`` members x ``steps`` intervals at ``url``."""
    space = {"h0": pt.Uniform(0.0, 1.0), "h1": pt.LogUniform(1e-3, 1.0)}
    pt.run(
        Quadratic,
        space=space,
        metric="q",
        population=size,
        intervals=steps,
        storage=url,
        name="big",
        progress=False,
        runner=CreateOnlyRunner(),
    )
    rng = np.random.default_rng(seed)
    hparams = [
        {"h0": float(rng.uniform()), "h1": float(10 ** rng.uniform(-3, 0))} for _ in range(size)
    ]
    score = [0.0] * size
    origin: list[tuple[int, int] | None] = [None] * size
    rows, events, started = [], [], 1.7e9
    for step in range(1, steps + 1):
        for member in range(size):
            quality = hparams[member]["h0"] * 0.5 + 0.5 * (1 + np.log10(hparams[member]["h1"]) / 3)
            score[member] += 0.01 * quality + 0.001 * float(rng.normal())
            rows.append(
                {
                    "population_id": 1,
                    "member_id": member,
                    "step": step,
                    "hparams": json.dumps(hparams[member]),
                    "score": score[member],
                    "metrics": json.dumps({"q": score[member], "surrogate": score[member] / 2}),
                    "wall_time": 0.5,
                    "finished_at": started + step,
                    "origin_member": None if origin[member] is None else origin[member][0],
                    "origin_step": None if origin[member] is None else origin[member][1],
                }
            )
            origin[member] = (member, step)
        if step % 5 == 0 and step < steps:
            ranked = sorted(range(size), key=lambda m: score[m])
            quarter = max(1, size // 4)
            for loser, donor in zip(ranked[:quarter], ranked[-quarter:], strict=True):
                before = dict(hparams[loser])
                hparams[loser] = {
                    k: v * float(rng.choice([0.8, 1.2])) for k, v in hparams[donor].items()
                }
                hparams[loser]["h0"] = min(hparams[loser]["h0"], 1.0)
                hparams[loser]["h1"] = min(max(hparams[loser]["h1"], 1e-3), 1.0)
                events.append(
                    {
                        "population_id": 1,
                        "member_id": loser,
                        "step": step,
                        "donor_id": donor,
                        "donor_step": step,
                        "hparams_before": json.dumps(before),
                        "hparams_after": json.dumps(hparams[loser]),
                        "score": score[loser],
                        "donor_score": score[donor],
                        "time": started + step,
                    }
                )
                score[loser] = score[donor]
                origin[loser] = (donor, step)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(intervals.insert(), rows)
        connection.execute(exploits.insert(), events)
        connection.execute(
            checkpoints.insert(),
            [
                {
                    "population_id": 1,
                    "member_id": m,
                    "step": steps,
                    "path": f"{m}/{steps}.ckpt",
                    "size": 1,
                    "checksum": "0",
                }
                for m in range(size)
            ],
        )
        for m in range(size):
            connection.execute(
                members.update()
                .where(members.c.population_id == 1, members.c.member_id == m)
                .values(
                    step=steps,
                    score=score[m],
                    hparams=json.dumps(hparams[m]),
                    status="done",
                    restore_member=m,
                    restore_step=steps,
                )
            )
        connection.execute(populations.update().values(status="finished"))
    engine.dispose()


def timed(call: Callable[[], object], repeats: int) -> list[tuple[float, float]]:
    """Wall time and this thread's CPU time of ``repeats`` calls, in milliseconds (on a busy
    machine the wall time includes waiting for a core; the CPU time does not)."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        call()
        times.append(((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000))
    return times


def describe(label: str, times: list[tuple[float, float]]) -> str:
    """p50 and p90 of the wall times, and the median CPU time."""
    walls = sorted(wall for wall, _ in times)
    p90 = walls[min(len(walls) - 1, int(0.9 * len(walls)))]
    cpu = statistics.median(cpu for _, cpu in times)
    return (
        f"{label:<34} p50 {statistics.median(walls):7.1f} ms   p90 {p90:7.1f} ms   "
        f"cpu {cpu:7.1f} ms"
    )


def main() -> None:
    """Build the population, then time the dashboard's requests and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--intervals", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from starlette.testclient import TestClient

    from poptune.dashboard import create_app
    from poptune.dashboard._pages import Dashboard

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'poptune.db'}"
        started = time.perf_counter()
        build_population(url, args.members, args.intervals)
        built = time.perf_counter() - started
        store = SQLStorage(url)
        record = store.population("big")
        n_intervals = len(store.intervals(record.id))
        n_exploits = len(store.exploits(record.id))
        store.close()
        print(
            f"{args.members} members x {args.intervals} intervals: {n_intervals} intervals, "
            f"{n_exploits} exploits (built in {built:.1f} s)"
        )
        with TestClient(create_app(url)) as client:
            board: Dashboard = client.app.state.dashboard
            gzip = {"Accept-Encoding": "gzip"}
            plain = {"Accept-Encoding": "identity"}
            api = "/api/population?name=big"

            def forget_last_intervals() -> None:
                # As if every member had just recorded one more interval: the next update
                # reads those 64 intervals (one query each) and renders everything again.
                board._updates.clear()
                cache = board._intervals["big"]
                for member, step in cache.steps.items():
                    cache.by_member[member].pop(step, None)
                    cache.steps[member] = step - 1

            def update() -> None:
                forget_last_intervals()
                board.update("big", None)

            def cold() -> None:
                board._updates.clear()
                board._intervals.clear()
                board.update("big", None)

            version = client.get(api).json()["version"]  # opens the storage, warms up
            print(describe("first view (read all + render)", timed(cold, args.repeats)))
            print(describe("update: +1 interval per member", timed(update, args.repeats)))
            full = client.get(api, headers=plain)
            assert full.status_code == 200
            print(
                describe(
                    "  same, over HTTP (JSON + gzip)",
                    timed(
                        lambda: (forget_last_intervals(), client.get(api, headers=gzip)),
                        args.repeats,
                    ),
                )
            )
            idle = client.get(f"{api}&since={version}")
            assert idle.status_code == 204
            print(
                describe(
                    "idle poll (204, summary only)",
                    timed(lambda: client.get(f"{api}&since={version}"), args.repeats * 5),
                )
            )
            print(
                describe(
                    "cached update (another browser)",
                    timed(lambda: client.get(api, headers=gzip), args.repeats),
                )
            )
            print(
                describe(
                    "population list (/api/populations)",
                    timed(lambda: client.get("/api/populations"), args.repeats),
                )
            )
            page = client.get("/population?name=big", headers=plain)
            zipped = client.get(api, headers=gzip)
            print(
                f"payload: update {len(full.content) / 1e6:.2f} MB raw, "
                f"{int(zipped.headers.get('content-length', len(zipped.content))) / 1e3:.0f} kB "
                f"gzipped; page {len(page.content) / 1e6:.2f} MB raw; idle poll "
                f"{len(idle.content)} bytes of body"
            )


if __name__ == "__main__":
    main()
