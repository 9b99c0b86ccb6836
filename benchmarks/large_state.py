"""Large member state: poptune against a plain multiprocessing loop that keeps members resident.

Each member is a torch MLP of about ``--params`` million float32 parameters trained with SGD
momentum, so its state (weights and momentum buffers) is 8 bytes per parameter: 200 MB at the
default 25 M. An interval is one SGD step on a small seeded synthetic batch plus
``--work-seconds`` of CPU work; evaluating is one forward pass on a fixed batch. The same
``LargeMLP`` members run twice in one invocation, plain loop first:

- plain: ``--workers`` forked processes, each building its share of the members once and
  training them alternately, ``--intervals`` each, in memory: no checkpoints, no exploit;
- poptune: ``pt.run(LargeMLP, population=..., intervals=..., workers=..., sync=False)`` with the
  default Truncation / Perturb / Every(1), on a fresh SQLite file and checkpoint folder.

What is measured, and how (nothing relies on the worker's internals):

- wall: ``time.perf_counter()`` around the whole call, process start-up and shutdown included.
- framework time per interval: ``LargeMLP`` stamps the start and end of every call the
  framework makes into it (``__init__``, ``load_state_dict``, ``train``, ``evaluate``,
  ``state_dict``) in a per-process timeline; each process also stamps when it was forked and
  when it exits (a ``multiprocessing`` after-fork hook and exit finalizer), and writes the
  timeline to a file. ``perf_counter`` is system-wide on Linux, so stamps of different
  processes compare. An interval's framework time is everything in its worker process between
  the end of the previous ``evaluate`` (or the process start) and the start of its ``train``,
  plus any gap between its ``train`` and ``evaluate``: claiming, exploiting, restoring, saving,
  recording, *and* the user's ``__init__``/``load_state_dict``/``state_dict`` (which a resident
  loop does not call; shown separately). The median and p90 are over every interval; the mean
  adds each process's tail (last ``evaluate`` to exit: the last save, the final bookkeeping,
  waiting for the last member), so mean x intervals = sum over processes of (lifetime - train -
  evaluate).
- bytes written: the growth of the parent's ``wchar`` in ``/proc/self/io`` over the variant:
  bytes passed to write-type system calls, whether or not they reach the disk. Linux adds a
  reaped child's counters to its parent's, so this covers every process the variant started
  (and theirs), whatever started them, and every file written, including checkpoints deleted
  since by garbage collection. The SQLite file, logs and the timelines add kilobytes, so for
  poptune it is the checkpoint bytes written. ``write_bytes`` (what reached the block layer)
  is shown too. Bytes written through ``mmap`` would not be counted.
- CPU: user + system time of every worker process (``ru_utime + ru_stime``, read at exit),
  summed; with the walls it tells framework CPU work (encoding, hashing, copying) from waiting
  (for the disk, for the other processes on a busy machine).
- peak memory: every process's ``ru_maxrss`` (its own peak RSS, read at exit; it includes pages
  shared with the parent, such as torch's libraries), max and sum over the variant's processes;
  the parent's is shown on its own line.
- shared memory: with ``--shared-memory`` (``POPTUNE_SHARED_MEMORY=1``; off by default),
  poptune's worker processes hand states of 16 MB and more to each other through segments in
  ``/dev/shm`` (see ``poptune.handover``); their bytes are written through ``mmap``, so they
  are not in the bytes written, and a segment's pages count in the RSS of a process only while
  it maps them. The segments left at the end are counted (0 expected).

Before either variant, the parent builds a tiny MLP and takes one SGD step, so that torch's
lazy imports (constructing the first optimizer imports ``torch._dynamo``: 2-4 s) are inherited
by the forked processes instead of being paid by every process of both variants, which only
adds noise. The CPU work is a busy loop on ``time.thread_time()``, the calling thread's CPU
time, not ``process_time()``: the CPU time of a background thread of the framework (a
checkpoint writer) would otherwise count as the user's work and shorten it, hiding the
framework's cost.

Run:  python benchmarks/large_state.py [--population 4] [--intervals 6] [--workers 2]
          [--work-seconds 1.0] [--params 25] [--quick] [--checkpoint-every 0 3] [--repeat 5]
          [--no-shared-memory]
``--checkpoint-every`` runs poptune once per value (0: a checkpoint after every interval, the
default; K: ``pt.run(checkpoint_every=K)``); ``--repeat N`` runs N rounds of the plain loop
then every variant and prints the median ratio with its spread.
Target (issue #26): poptune's wall <= 1.05 x the plain loop's (issue #10's was 1.15). The
verdict is printed; the exit code is 0 whatever it is (nonzero only on errors).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import multiprocessing
import multiprocessing.util
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

import poptune as pt
from poptune.integrations.torch import apply_hparams, seed_everything

INPUTS, OUTPUTS, SQUARE_LAYERS = 64, 10, 2
EVAL_BATCH = 32
TARGET_RATIO = 1.05
_RECORD_ENV = "POPTUNE_BENCH_TIMELINE"
# (params in millions, work seconds, intervals) of the configuration and of --quick.
DEFAULT = (25.0, 1.0, 6)
QUICK = (2.5, 0.2, 3)  # a 20 MB state: over the sizes of direct I/O and shared memory


def single_thread() -> None:
    """One torch thread per process: the workers share the machine's cores."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


# --- the per-process timeline ------------------------------------------------------------------


class Timeline:
    """The calls the framework made into the members of this process, with their times.

    A process started by ``multiprocessing`` begins its timeline when it is forked and writes it
    (with its peak RSS and bytes written) to ``<folder>/<pid>.json`` when it exits; any other
    process begins at its first call and writes at exit. The folder comes from the parent
    (inherited on fork, or through the environment).
    """

    def __init__(self) -> None:
        self.folder: str | None = None
        self.pid: int | None = None
        self.role = "worker"
        self.started = 0.0
        self.io_at_start: dict[str, int] = {}
        self.calls: list[tuple[str, float, float]] = []

    def begin(self, role: str = "worker", register_exit: bool = True) -> None:
        """Start this process's timeline (called after a fork, or on the first call)."""
        self.pid, self.role, self.started = os.getpid(), role, time.perf_counter()
        self.io_at_start, self.calls = _proc_io(), []
        if register_exit:
            # multiprocessing children leave through os._exit (no atexit) after the finalizers.
            multiprocessing.util.Finalize(None, self.write, exitpriority=100)
            atexit.register(self.write)

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """Record the wall time of one call into user code (while a variant is recorded)."""
        if self.folder is None and _RECORD_ENV not in os.environ:
            yield
            return
        if self.pid != os.getpid():
            self.begin()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.calls.append((kind, started, time.perf_counter()))

    def write(self) -> None:
        """Write the timeline, peak RSS and bytes written of this process (once)."""
        folder = self.folder or os.environ.get(_RECORD_ENV)
        if self.pid != os.getpid() or folder is None:
            return
        ended = time.perf_counter()
        io = {k: v - self.io_at_start.get(k, 0) for k, v in _proc_io().items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record = {
            "pid": self.pid,
            "role": self.role,
            "started": self.started,
            "ended": ended,
            "maxrss": usage.ru_maxrss * 1024,
            "cpu": usage.ru_utime + usage.ru_stime,
            "io": io,
            "calls": self.calls,
        }
        Path(folder, f"{self.pid}.json").write_text(json.dumps(record))
        self.pid = None


def _proc_io() -> dict[str, int]:
    """This process's I/O counters (all its threads, living and dead) from /proc/self/io."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value) for key, _, value in (line.partition(": ") for line in lines)}


TIMELINE = Timeline()


def _after_fork(timeline: Timeline) -> None:
    single_thread()
    timeline.begin()


multiprocessing.util.register_after_fork(TIMELINE, _after_fork)


# --- the member -------------------------------------------------------------------------------


def mlp_width(params: float) -> int:
    """The hidden width that gives the MLP about ``params`` parameters.

    The MLP is ``INPUTS -> w -> w -> w -> OUTPUTS`` (two w x w layers), with
    ``2 w^2 + (INPUTS + OUTPUTS + 3) w + OUTPUTS`` parameters.
    """
    linear = INPUTS + OUTPUTS + SQUARE_LAYERS + 1
    return max(1, round((-linear + math.sqrt(linear**2 + 8 * (params - OUTPUTS))) / 4))


def mlp_params(width: int) -> int:
    """How many parameters :func:`build_mlp` gives for ``width``."""
    return SQUARE_LAYERS * width**2 + (INPUTS + OUTPUTS + SQUARE_LAYERS + 1) * width + OUTPUTS


def build_mlp(width: int) -> torch.nn.Sequential:
    """The member's model: ReLU layers of ``width`` units."""
    layers: list[torch.nn.Module] = [torch.nn.Linear(INPUTS, width), torch.nn.ReLU()]
    for _ in range(SQUARE_LAYERS):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, OUTPUTS))
    return torch.nn.Sequential(*layers)


@cache
def _teacher() -> torch.Tensor:
    """The fixed map the members learn: targets are ``tanh(inputs @ teacher)``."""
    return torch.randn(INPUTS, OUTPUTS, generator=torch.Generator().manual_seed(0))


def synthetic_batch(generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random inputs and their targets."""
    inputs = torch.randn(size, INPUTS, generator=generator)
    return inputs, torch.tanh(inputs @ _teacher())


@cache
def _evaluation_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_batch(torch.Generator().manual_seed(1), EVAL_BATCH)


def burn_cpu(seconds: float) -> None:
    """Busy-loop for ``seconds`` of this thread's CPU time: a fixed amount of work."""
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


class LargeMLP(pt.Trainable):
    """A member with a large state: an MLP of ``hparams["width"]`` units and SGD momentum.

    ``lr`` and ``momentum`` are tuned; ``width``, ``batch`` and ``work_seconds`` are fixed
    values of the space, so forked, spawned and joining workers all build the same member.
    Every call the framework makes is stamped into :data:`TIMELINE`.
    """

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        with TIMELINE.timed("init"):
            single_thread()
            self.generator = seed_everything(seed)
            self.model = build_mlp(int(hparams["width"]))
            self.optimizer = torch.optim.SGD(
                self.model.parameters(), lr=hparams["lr"], momentum=hparams["momentum"]
            )

    def train(self, hparams: Mapping[str, Any]) -> None:
        """One SGD step on a fresh batch, then the fixed CPU work."""
        with TIMELINE.timed("train"):
            apply_hparams(self.optimizer, hparams, names=("lr", "momentum"))
            inputs, targets = synthetic_batch(self.generator, int(hparams["batch"]))
            loss = torch.nn.functional.mse_loss(self.model(inputs), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            # Free the gradients: between intervals a member is its weights and momentum.
            self.optimizer.zero_grad(set_to_none=True)
            burn_cpu(float(hparams["work_seconds"]))

    def evaluate(self) -> dict[str, float]:
        """The negative mean squared error on a fixed batch (higher is better)."""
        with TIMELINE.timed("evaluate"), torch.no_grad():
            inputs, targets = _evaluation_batch()
            return {"score": -float(torch.nn.functional.mse_loss(self.model(inputs), targets))}

    def state_dict(self) -> dict[str, Any]:
        """The model's and the optimizer's state dicts (momentum buffers included)."""
        with TIMELINE.timed("state_dict"):
            return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load both state dicts."""
        with TIMELINE.timed("load_state_dict"):
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])


def make_space(width: int, work_seconds: float, batch: int = 16) -> dict[str, Any]:
    """The tuned hparams (lr, momentum) and the fixed ones that shape the member."""
    return {
        "lr": pt.LogUniform(1e-4, 1e-2),
        "momentum": pt.Uniform(0.5, 0.99),
        "width": width,
        "batch": batch,
        "work_seconds": float(work_seconds),
    }


def warm_up() -> None:
    """Do torch's one-time work (lazy imports, kernel set-up) in the parent, before forking."""
    hparams = make_space(width=8, work_seconds=0.0) | {"lr": 1e-3, "momentum": 0.9}
    member = LargeMLP(hparams, seed=0)
    member.train(hparams)
    member.evaluate()
    member.load_state_dict(member.state_dict())


# --- the two variants ---------------------------------------------------------------------------


@dataclass
class Measurement:
    """One variant's figures: its wall time and the timelines of its processes."""

    label: str
    wall: float
    began: float
    finished: float
    processes: list[dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)


@contextmanager
def recording(folder: Path) -> Iterator[None]:
    """Timelines of every process started inside go to ``folder``; the parent's too."""
    folder.mkdir(parents=True)
    TIMELINE.folder = str(folder)
    os.environ[_RECORD_ENV] = str(folder)
    TIMELINE.begin(role="parent", register_exit=False)
    try:
        yield
    finally:
        TIMELINE.write()
        TIMELINE.folder = None
        del os.environ[_RECORD_ENV]


def _read_timelines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def _plain_worker(hparams: Sequence[Mapping[str, Any]], seeds: Sequence[int], rounds: int) -> None:
    """Build these members once and train them alternately, ``rounds`` intervals each."""
    members = [LargeMLP(h, s) for h, s in zip(hparams, seeds, strict=True)]
    for _ in range(rounds):
        for member, h in zip(members, hparams, strict=True):
            member.train(h)
            member.evaluate()


def run_plain(
    space: Mapping[str, Any], population: int, intervals: int, workers: int, seed: int, folder: Path
) -> Measurement:
    """The members resident in ``workers`` forked processes: no storage, checkpoints or exploit."""
    sampler = pt.Space(space)
    hparams = [sampler.sample(np.random.default_rng([seed, m])) for m in range(population)]
    seeds = [seed * 1000 + m for m in range(population)]
    context = multiprocessing.get_context("fork")
    with recording(folder):
        began = time.perf_counter()
        processes = [
            context.Process(
                target=_plain_worker,
                args=(hparams[w::workers], seeds[w::workers], intervals),
                name=f"plain-worker-{w}",
            )
            for w in range(min(workers, population))
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        finished = time.perf_counter()
    failed = [f"{p.name}: exit code {p.exitcode}" for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"The plain loop failed ({', '.join(failed)}).")
    return Measurement("plain loop", finished - began, began, finished, _read_timelines(folder))


def run_poptune(
    space: Mapping[str, Any],
    population: int,
    intervals: int,
    workers: int,
    seed: int,
    folder: Path,
    checkpoint_every: int | None = None,
) -> Measurement:
    """The same members trained by ``pt.run`` on a fresh SQLite storage and checkpoint folder
    (checkpointed every ``checkpoint_every`` intervals; ``None``: every interval)."""
    run_folder = folder.parent / f"poptune-run-{folder.name}"
    checkpoints = run_folder / "checkpoints"
    with recording(folder):
        began = time.perf_counter()
        result = pt.run(
            LargeMLP,
            space=space,
            metric="score",
            mode="max",
            population=population,
            intervals=intervals,
            workers=workers,
            sync=False,
            storage=f"sqlite:///{run_folder / 'large_state.db'}",
            checkpoints=checkpoints,
            name="large-state",
            seed=seed,
            progress=False,
            # only when asked: the same script then measures a poptune from before the option
            **({"checkpoint_every": checkpoint_every} if checkpoint_every else {}),
        )
        finished = time.perf_counter()
    files = [p for p in checkpoints.rglob("*") if p.is_file()]
    storage = pt.open_storage(f"sqlite:///{run_folder / 'large_state.db'}")
    try:
        segment = f"poptune-{os.geteuid()}-{storage.database_id(create=False)}-"
    finally:
        storage.close()
    notes = {
        "segments left": sum(n.startswith(segment) for n in _listdir("/dev/shm")),
        "exploits": len(result.exploits()),
        "checkpoint files left": len(files),
        "checkpoint bytes left": sum(p.stat().st_size for p in files),
        "largest checkpoint": max((p.stat().st_size for p in files), default=0),
        "status": result.status,
    }
    label = "poptune" if checkpoint_every is None else f"poptune, checkpoint {checkpoint_every}"
    return Measurement(label, finished - began, began, finished, _read_timelines(folder), notes)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:  # no /dev/shm here: no segments either
        return []


# --- figures ------------------------------------------------------------------------------------

_USER = ("train", "evaluate")  # the other calls (init, load/state_dict) are framework time


def nearest_rank(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` by nearest rank (as benchmarks/overhead.py)."""
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))] if ordered else math.nan


def figures(measurement: Measurement) -> dict[str, float]:
    """Wall, framework time per interval, bytes written and peak RSS of one variant."""
    workers = [p for p in measurement.processes if p["role"] == "worker"]
    training = [p for p in measurement.processes if any(c[0] == "train" for c in p["calls"])]
    per_interval: list[float] = []
    tails: list[float] = []
    user = called = 0.0
    for process in training:
        boundary = process["started"]  # end of the last train/evaluate, or the process start
        before_train = 0.0
        for kind, start, end in sorted(process["calls"], key=lambda call: call[1]):
            if kind in _USER:
                user += end - start
                if kind == "train":
                    before_train = start - boundary
                else:
                    per_interval.append(before_train + start - boundary)
                boundary = end
            else:
                called += end - start
        tails.append(process["ended"] - boundary)
    intervals = len(per_interval)
    starts = [c[1] for p in training for c in p["calls"] if c[0] == "train"]
    ends = [c[2] for p in training for c in p["calls"] if c[0] == "evaluate"]
    parent = next(p for p in measurement.processes if p["role"] == "parent")
    return {
        "wall": measurement.wall,
        "intervals": intervals,
        "user": user,
        "startup": min(starts) - measurement.began if starts else math.nan,
        "shutdown": measurement.finished - max(ends) if ends else math.nan,
        "median": statistics.median(per_interval) if per_interval else math.nan,
        "p90": nearest_rank(per_interval, 0.9),
        "mean": (sum(per_interval) + sum(tails)) / intervals if intervals else math.nan,
        "called": called / intervals if intervals else math.nan,
        # The parent's counters include those of every child it reaped.
        "wchar": parent["io"].get("wchar", 0),
        "write_bytes": parent["io"].get("write_bytes", 0),
        "processes": len(workers),
        "cpu": sum(p["cpu"] for p in workers),
        "rss_max": max((p["maxrss"] for p in workers), default=0),
        "rss_sum": sum(p["maxrss"] for p in workers),
        "rss_parent": parent["maxrss"],
    }


def print_table(plain: Measurement, poptune: Measurement) -> float:
    """Print both variants side by side and the verdict; return poptune's wall / plain's."""
    a, b = figures(plain), figures(poptune)
    ms, mb = 1e3, 1e-6
    rows = [
        ("wall, start-up included (s)", "wall", 1, "{:.2f}"),
        ("intervals trained", "intervals", 1, "{:.0f}"),
        ("user train + evaluate, all processes (s)", "user", 1, "{:.2f}"),
        ("start-up: call -> first train (s)", "startup", 1, "{:.2f}"),
        ("shutdown: last evaluate -> return (s)", "shutdown", 1, "{:.2f}"),
        ("framework time per interval, median (ms)", "median", ms, "{:.1f}"),
        ("framework time per interval, p90 (ms)", "p90", ms, "{:.1f}"),
        ("  mean, start-up and tails included (ms)", "mean", ms, "{:.1f}"),
        ("  of which __init__/load/state_dict (ms)", "called", ms, "{:.1f}"),
        ("bytes written, checkpoints + db (MB)", "wchar", mb, "{:.0f}"),
        ("  of which reached the block layer (MB)", "write_bytes", mb, "{:.0f}"),
        ("worker processes", "processes", 1, "{:.0f}"),
        ("CPU of worker processes, user + sys (s)", "cpu", 1, "{:.1f}"),
        ("peak RSS, largest worker process (MB)", "rss_max", mb, "{:.0f}"),
        ("peak RSS, sum over worker processes (MB)", "rss_sum", mb, "{:.0f}"),
        ("peak RSS, parent process so far (MB)", "rss_parent", mb, "{:.0f}"),
    ]
    print(f"{'':<44}{'plain loop':>12}{'poptune':>12}")
    for title, key, scale, form in rows:
        print(f"{title:<44}{form.format(a[key] * scale):>12}{form.format(b[key] * scale):>12}")
    notes = poptune.notes
    print(
        f"poptune: {notes['exploits']} exploits; status {notes['status']}; at the end "
        f"{notes['checkpoint files left']} checkpoint files, "
        f"{notes['checkpoint bytes left'] * mb:.0f} MB (one checkpoint: "
        f"{notes['largest checkpoint'] * mb:.1f} MB); "
        f"{notes['segments left']} shared-memory segments"
    )
    ratio = b["wall"] / a["wall"]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"ratio poptune / plain wall: {ratio:.3f} (target <= {TARGET_RATIO:.2f}: {verdict}; "
        f"poptune adds {b['wall'] - a['wall']:.2f} s over {b['intervals']} intervals)"
    )
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plain loop, then poptune, and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--intervals", type=int, default=None, help=f"default {DEFAULT[2]}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--work-seconds",
        type=float,
        default=None,
        help=f"CPU seconds per interval (default {DEFAULT[1]:g})",
    )
    parser.add_argument(
        "--params",
        type=float,
        default=None,
        help=f"millions of parameters (default {DEFAULT[0]:g})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        nargs="+",
        default=None,
        help="run poptune once per value: checkpoint_every=K (0: every interval, the default)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of plain + every variant, for a spread"
    )
    parser.add_argument(
        "--shared-memory",
        action="store_true",
        help="run poptune with POPTUNE_SHARED_MEMORY=1: donors between workers through /dev/shm",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK[0]:g} M params, {QUICK[1]} s work, {QUICK[2]} intervals",
    )
    args = parser.parse_args(argv)
    params, work_seconds, intervals = QUICK if args.quick else DEFAULT
    params = args.params if args.params is not None else params
    work_seconds = args.work_seconds if args.work_seconds is not None else work_seconds
    intervals = args.intervals if args.intervals is not None else intervals
    if args.population < 2 or args.workers < 1 or intervals < 1 or params <= 0:
        parser.error("need --population >= 2, --workers >= 1, --intervals >= 1, --params > 0")
    if args.shared_memory:
        os.environ["POPTUNE_SHARED_MEMORY"] = "1"  # inherited by the worker processes
    single_thread()
    warm_up()
    width = mlp_width(params * 1e6)
    space = make_space(width, work_seconds)
    count = mlp_params(width)
    print(
        f"population {args.population}, {intervals} intervals, {args.workers} workers; MLP of "
        f"{count / 1e6:.2f} M parameters (width {width}), state {8 * count / 1e6:.0f} MB "
        f"(weights + momentum); each interval 1 SGD step (batch {space['batch']}) + "
        f"{work_seconds:g} s CPU work"
    )
    print(
        f"poptune from {Path(pt.__file__).parent}; torch {torch.__version__}, 1 thread; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at the start"
    )
    variants = args.checkpoint_every or [0]
    ratios: dict[int, list[float]] = {v: [] for v in variants}
    framework: dict[int, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="poptune-large-state-") as name:
        folder = Path(name)
        options = (space, args.population, intervals, args.workers, args.seed)
        for round_ in range(args.repeat):
            plain = run_plain(*options, folder / f"timelines-plain-{round_}")
            for every in variants:
                poptune = run_poptune(
                    *options, folder / f"timelines-{every}-{round_}", checkpoint_every=every or None
                )
                if round_ == args.repeat - 1 or args.repeat == 1:
                    print(f"--- {poptune.label} (round {round_ + 1} of {args.repeat})")
                    print_table(plain, poptune)
                ratios[every].append(poptune.wall / plain.wall)
                framework[every].append(figures(poptune)["median"])
    if args.repeat > 1:
        print(f"over {args.repeat} rounds (plain loop, then each variant, in turn):")
        for every in variants:
            name = "every interval" if not every else f"checkpoint_every={every}"
            r, f = sorted(ratios[every]), sorted(framework[every])
            print(
                f"  {name:<22} wall / plain: median {statistics.median(r):.3f} "
                f"(min {r[0]:.3f}, max {r[-1]:.3f}); framework time per interval, median of "
                f"medians {statistics.median(f) * 1e3:.1f} ms (min {f[0] * 1e3:.1f}, max "
                f"{f[-1] * 1e3:.1f}); rounds {', '.join(f'{x:.3f}' for x in ratios[every])}"
            )
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end: other work skews both walls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
