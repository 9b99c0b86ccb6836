"""Small trainables for tests, examples and benchmarks (no deep-learning framework needed).

They live in the package, not in ``tests/``, so that worker processes and ``poptune resume`` can
import them by reference (``poptune.testing:Quadratic``). Also the deterministic simulation's
entry points, :func:`simulate` and :func:`simulate_one` (see :mod:`poptune.simulation`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .simulation import simulate, simulate_one
from .storage._memory import MemoryStorage
from .trainable import Trainable

__all__ = [
    "XSS_PAYLOADS",
    "XSS_PROBE",
    "BurnCPU",
    "CountingQuadratic",
    "CreateOnlyRunner",
    "Failing",
    "MemoryStorage",
    "Noop",
    "Quadratic",
    "RecordsEnvironment",
    "Sleepy",
    "SlowQuadratic",
    "check_steps",
    "quadratic_block_loop",
    "quadratic_loop",
    "quadratic_space",
    "simulate",
    "simulate_one",
    "synthetic_report_model",
    "xss_population",
]


def quadratic_space() -> dict[str, Any]:
    """The toy problem's space: the surrogate's two coefficients h0, h1 in [0, 1]."""
    from .space import Uniform

    return {"h0": Uniform(0.0, 1.0), "h1": Uniform(0.0, 1.0)}


class Quadratic(Trainable):
    """The PBT paper's toy problem (Jaderberg et al. 2017, section 4.1, figure 2).

    The true objective is Q(θ) = 1.2 − (θ0² + θ1²), but a member can only follow the gradient
    of the surrogate Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²) for its hyperparameters h. θ starts at
    (0.9, 0.9); each interval takes ``steps`` gradient-ascent steps of size ``lr``. A member with
    h = (1, 0) never improves θ1: only exploiting and exploring reach Q = 1.2.

    ``evaluate`` returns ``{"q": Q(θ), "surrogate": Q̂(θ|h)}``.
    """

    steps = 4
    lr = 0.05

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.theta = np.array([0.9, 0.9])
        self.h = np.array([hparams["h0"], hparams["h1"]], dtype=float)

    def train(self, hparams: Mapping[str, Any]) -> None:
        """``steps`` steps of gradient ascent on the surrogate with the current h."""
        self.h = np.array([hparams["h0"], hparams["h1"]], dtype=float)
        for _ in range(self.steps):
            self.theta = self.theta + self.lr * (-2.0 * self.h * self.theta)

    def evaluate(self) -> dict[str, float]:
        """The true objective Q (what PBT optimises) and the surrogate the member follows."""
        return {
            "q": float(1.2 - np.sum(self.theta**2)),
            "surrogate": float(1.2 - np.sum(self.h * self.theta**2)),
        }

    def state_dict(self) -> dict[str, Any]:
        """θ is the whole state."""
        return {"theta": self.theta.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore θ (possibly a better member's)."""
        self.theta = np.array(state["theta"], dtype=float)


class BurnCPU(Trainable):
    """A synthetic trainable for overhead measurements: each step burns ``step_seconds`` of CPU.

    Its state is a float32 array of ``state_bytes`` bytes (default 1 MB), so checkpointing costs
    what a small real model's would. The score improves with ``lr`` times the steps taken.
    """

    step_seconds = 0.020
    steps_per_interval = 5
    state_bytes = 1_000_000

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.weights = np.zeros(self.state_bytes // 4, dtype=np.float32)
        self.progress = 0.0

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Burn CPU for ``steps_per_interval`` steps (busy loop, not sleep)."""
        for _ in range(self.steps_per_interval):
            deadline = time.process_time() + self.step_seconds
            while time.process_time() < deadline:
                pass
            self.progress += float(hparams["lr"])
        self.weights[:8] += 1.0

    def evaluate(self) -> float:
        """Higher is better."""
        return self.progress

    def state_dict(self) -> dict[str, Any]:
        """The weights array and the progress counter."""
        return {"weights": self.weights, "progress": self.progress}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore weights and progress."""
        self.weights = state["weights"]
        self.progress = float(state["progress"])


class CountingQuadratic(Quadratic):
    """A Quadratic that counts, per process, how often it is built and loaded, and reports
    which instance trained each interval (``instance`` metric), to test members kept in memory.
    """

    builds = 0
    loads = 0
    seeds: list[int] = []  # noqa: RUF012 - per-process test record, reset by the test

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        super().__init__(hparams, seed)
        type(self).builds += 1
        self.instance = type(self).builds

    def reseed(self, seed: int) -> None:
        """Record the interval's seed."""
        type(self).seeds.append(seed)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Count, then restore θ."""
        type(self).loads += 1
        super().load_state_dict(state)

    def evaluate(self) -> dict[str, float]:
        """Q, the surrogate, and the number of the instance that trained."""
        return {**super().evaluate(), "instance": float(self.instance)}


class Failing(Quadratic):
    """A Quadratic whose ``train`` raises when ``h0 > fail_above`` (every member by default)."""

    fail_above = -1.0

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Raise ``RuntimeError`` when h0 exceeds ``fail_above``, else train normally."""
        if hparams["h0"] > self.fail_above:
            raise RuntimeError(f"boom: training diverged with h0={hparams['h0']:.3f}")
        super().train(hparams)


class SlowQuadratic(Quadratic):
    """A Quadratic whose intervals take ``delay`` seconds of wall time (for interrupt tests)."""

    delay = 0.05

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Sleep ``delay`` seconds, then train normally."""
        time.sleep(self.delay)
        super().train(hparams)


class Noop(Trainable):
    """A trainable that does (almost) nothing, for measuring the framework's own cost per
    interval: its score grows by ``lr`` per interval; its state is one float."""

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        self.x = 0.0

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Add ``lr`` to the score."""
        self.x += float(hparams["lr"])

    def evaluate(self) -> dict[str, float]:
        """``{"score": x}``."""
        return {"score": self.x}

    def state_dict(self) -> dict[str, float]:
        """``{"x": x}``."""
        return {"x": self.x}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``x``."""
        self.x = float(state["x"])


class Sleepy(Noop):
    """A :class:`Noop` whose intervals take ``seconds`` of wall time and no CPU: a stand-in for
    a GPU worker, to simulate many workers on a machine with few cores."""

    seconds = 0.5

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Sleep ``seconds``, then add ``lr`` to the score."""
        time.sleep(self.seconds)
        super().train(hparams)


# What a trainable's module-level code would see (e.g. one that initialises CUDA on import).
_VISIBLE_AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES")


class RecordsEnvironment(Quadratic):
    """A Quadratic whose metrics say which process trained it and what environment it saw.

    ``evaluate`` adds ``pid`` and, as strings (``None`` when unset), ``CUDA_VISIBLE_DEVICES``
    and ``POPTUNE_DEVICE``, so a test can check the device each worker process was given; and
    ``CUDA_VISIBLE_DEVICES at import``, its value when this module was imported (in a forked
    worker: the parent's).

    With the fixed hparams ``rendezvous`` (a folder) and ``workers`` (a count), the first
    ``train`` of each process waits until ``workers`` processes have arrived, so that every
    worker trains (and reports) at least once, however fast the others are.
    """

    timeout = 60.0

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Meet the other workers once per process, then train normally."""
        if "rendezvous" in hparams:
            _meet(Path(hparams["rendezvous"]), int(hparams["workers"]), self.timeout)
        super().train(hparams)

    def evaluate(self) -> dict[str, Any]:
        """The Quadratic's metrics plus the process id and its device variables."""
        return {
            **super().evaluate(),
            "pid": os.getpid(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "POPTUNE_DEVICE": os.environ.get("POPTUNE_DEVICE"),
            "CUDA_VISIBLE_DEVICES at import": _VISIBLE_AT_IMPORT,
        }


def _meet(folder: Path, processes: int, timeout: float) -> None:
    """Mark this process as arrived in ``folder``; wait until ``processes`` have arrived."""
    marker = folder / str(os.getpid())
    if marker.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker.touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.iterdir()))} of {processes} arrived")
        time.sleep(0.01)


def synthetic_report_model(members: int, steps: int) -> Any:
    """A report model of a large population built from made-up records, without training it
    (to check that the HTML report stays responsive, e.g. for 64 members x 100 intervals)."""
    from .records import IntervalRecord, MemberRecord, MemberStatus, Mode
    from .report import ReportModel

    intervals = []
    for m in range(members):
        for s in range(1, steps + 1):
            origin = None if s == 1 else ((m + 1) % members if s % 7 == 0 else m, s - 1)
            h = {"lr": 10 ** (-3 + (m * s) % 7 / 3), "units": 16 * (1 + (m + s) % 4)}
            score = s / steps - m / 1000
            intervals.append(IntervalRecord(m, s, h, score, {}, 0.1, float(s), origin))
    records = [
        MemberRecord(m, steps, {}, 1.0 - m / 1000, None, MemberStatus.DONE) for m in range(members)
    ]
    return ReportModel(
        name="synthetic",
        metric="accuracy",
        mode=Mode.MAX,
        status="finished",
        error=None,
        population=members,
        budget=steps,
        members=records,
        intervals=intervals,
        exploits=[],
        failures=[],
        schedule=[],
        lineage_keys=set(),
        hparam_names=["lr", "units"],
        log_scale={"lr"},
        best_member=0,
        best_score=1.0,
        wall_time=1.0,
    )


class CreateOnlyRunner:
    """A runner that trains nothing: ``pt.run(..., runner=CreateOnlyRunner())`` only stores the
    population, for tests whose workers join later (other processes, ``poptune worker``). It
    keeps what a runner is handed, so a test can build workers on the same storage."""

    def run(self, target: Any, storage: Any, checkpoints: Any, on_started: Any = None) -> None:
        """Remember the target, storage and checkpoints; start nothing."""
        self.target, self.storage, self.checkpoints = target, storage, checkpoints


def check_steps(result: Any) -> None:
    """Assert the step invariants of a population (for tests of any storage or runner).

    - ``step`` is the number of intervals behind the weights: every interval starts from a
      checkpoint one step earlier (its own, or a donor's after an exploit), and the first from
      nothing;
    - no member trains a step twice, and no interval exceeds the budget, so the population
      trained at most ``population x intervals`` intervals;
    - every exploit's donor interval was recorded, at or after the copier's step;
    - no step is lost or counted twice: each member's step is the intervals it trained plus the
      steps it gained by copying weights further ahead.

    Raises:
        AssertionError: naming the first interval or exploit that breaks an invariant.
    """
    budget = result.config.intervals
    records = result.intervals()
    keys = {(i.member, i.step) for i in records}
    assert len(keys) == len(records), "a (member, step) was recorded twice"
    for interval in records:
        where = f"interval (member {interval.member}, step {interval.step})"
        assert 1 <= interval.step <= budget, f"{where} is outside the budget {budget}"
        if interval.step == 1:
            assert interval.origin is None, f"{where} started from {interval.origin}"
        else:
            assert interval.origin is not None, f"{where} started from nothing"
            assert interval.origin[1] == interval.step - 1, (
                f"{where} started from {interval.origin}: its weights trained "
                f"{interval.origin[1] + 1} intervals, not {interval.step}"
            )
    assert len(records) <= len(result.members) * budget
    gained = dict.fromkeys((m.id for m in result.members), 0)
    for event in result.exploits():
        assert (event.donor, event.donor_step) in keys, f"{event} copied an unrecorded interval"
        assert event.donor_step >= event.step, f"{event} copied weights behind its own"
        gained[event.member] += event.donor_step - event.step
    for member in result.members:
        trained = sum(1 for i in records if i.member == member.id)
        assert member.step == trained + gained[member.id], (
            f"member {member.id} is at step {member.step}, but trained {trained} intervals and "
            f"gained {gained[member.id]} steps by copying"
        )


#: member -> how many times :func:`quadratic_loop` started for it in this process.
_LOOP_STARTS: dict[int, int] = {}


def quadratic_loop(ctx: Any) -> None:
    """The paper's toy problem (:class:`Quadratic`) as a training function: θ stays in memory
    across intervals; after an exploit (or a move) it is replaced by ``interval.state``.

    It reports the true objective ``q``, the surrogate, and ``starts``: how many times this
    member's function was started in this process (1 if nothing ever restarted).
    """
    starts = _LOOP_STARTS
    starts[ctx.member] = starts.get(ctx.member, 0) + 1
    theta = np.array([0.9, 0.9])
    for interval in ctx.intervals():
        if interval.state is not None:
            theta = np.array(interval.state["theta"], dtype=float)
        h = np.array([interval.hparams["h0"], interval.hparams["h1"]], dtype=float)
        for _ in range(Quadratic.steps):
            theta = theta + Quadratic.lr * (-2.0 * h * theta)
        interval.report(
            {
                "q": float(1.2 - np.sum(theta**2)),
                "surrogate": float(1.2 - np.sum(h * theta**2)),
                "starts": float(starts[ctx.member]),
            },
            state={"theta": theta.copy()},
        )


quadratic_loop.starts = _LOOP_STARTS  # type: ignore[attr-defined]


def quadratic_block_loop(ctx: Any) -> None:
    """The paper's toy problem (:class:`Quadratic`) for a block of members (``block=N``): row
    i of one array is ``ctx.members[i]``'s θ, trained together; a state handed in replaces its
    row. It reports ``q``, the surrogate and ``members``: how many members the call trains."""
    theta = np.tile([0.9, 0.9], (len(ctx.members), 1))
    for block in ctx.intervals():
        for i, interval in enumerate(block):
            if interval.state is not None:
                theta[i] = np.asarray(interval.state["theta"], dtype=float)
        h = np.array([[i.hparams["h0"], i.hparams["h1"]] for i in block], dtype=float)
        for _ in range(Quadratic.steps):
            theta = theta + Quadratic.lr * (-2.0 * h * theta)
        q = 1.2 - np.sum(theta**2, axis=1)
        surrogate = 1.2 - np.sum(h * theta**2, axis=1)
        block.report(
            [
                {"q": float(a), "surrogate": float(b), "members": float(len(ctx.members))}
                for a, b in zip(q, surrogate, strict=True)
            ],
            states=[{"theta": row.copy()} for row in theta],
        )


#: Strings that run script, add markup or navigate if a page writes them unescaped in any
#: context (text, a quoted attribute, a script, SVG, a URL, a template). One that runs sets
#: ``window.__pwned``; see :data:`XSS_PROBE` and :func:`xss_population`.
XSS_PAYLOADS = (
    'k"><svg/onload=window.__pwned=1>',
    "k'><svg/onload=window.__pwned=1>",
    "</script><script>window.__pwned=1</script>",
    "<img src=x onerror=window.__pwned=1>",
    '<meta http-equiv="refresh" content="0;url=about:blank#pwned">',
    "javascript:window.__pwned=1//",
    '<a href="javascript:window.__pwned=1">link</a>',
    "{{constructor.constructor('window.__pwned=1')()}}",
    "${window.__pwned=1}",
    "\u2028\u2029</title></style><svg><script>window.__pwned=1</script></svg>",
    "<!--<script>window.__pwned=1//-->",
    '<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe>',
    "]]><svg onload=window.__pwned=1>",
    "<style>*{display:none}</style><base href=//pwned.invalid/>",
    "&lt;b&gt; &amp; \"both\" 'quotes'",
)

#: A function for a browser page (Playwright's ``page.evaluate``): what an unescaped
#: :data:`XSS_PAYLOADS` string left in the page, as a list of texts (empty if none).
XSS_PROBE = """() => {
  const found = [];
  if (window.__pwned !== undefined) found.push('a payload ran: window.__pwned is set');
  const allowed = new Set(['html', 'head', 'meta', 'title', 'style', 'link', 'body', 'main',
    'header', 'h1', 'h2', 'p', 'span', 'div', 'b', 'a', 'code', 'section', 'details', 'summary',
    'pre', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'progress', 'script', 'svg', 'line',
    'text', 'polyline', 'path', 'circle']);
  for (const el of document.querySelectorAll('*')) {
    const tag = el.localName;
    if (!allowed.has(tag)) found.push('an injected <' + tag + '>');
    for (const attribute of el.attributes) {
      if (attribute.name.startsWith('on')) found.push('an event handler ' + attribute.name);
    }
    if (tag === 'meta' && el.httpEquiv && el.httpEquiv !== 'Content-Security-Policy')
      found.push('an injected <meta http-equiv=' + el.httpEquiv + '>');
    if (tag === 'a' && !(el.getAttribute('href') || '').startsWith('/'))
      found.push('a link to ' + el.getAttribute('href'));
  }
  if (document.querySelectorAll('script').length > 1) found.push('an injected <script>');
  if (document.querySelectorAll('style').length > 1) found.push('an injected <style>');
  return found;
}"""


class _PayloadRepr:
    """A stateless strategy shown by its ``repr``: the payload ``XSS_PAYLOADS[index]``."""

    index = 0

    def __repr__(self) -> str:
        return XSS_PAYLOADS[self.index]


class _PayloadExploit(_PayloadRepr):
    """Truncation selection under a payload's name."""

    index = 2

    def __call__(self, member: Any, population: Any, rng: np.random.Generator) -> Any:
        """Copy a member of the top half if ``member`` is in the bottom half."""
        from .strategies import Truncation

        return Truncation(0.5)(member, population, rng)


class _PayloadExplore(_PayloadRepr):
    """Keeps the copied hyperparameters, under a payload's name."""

    index = 3

    def __call__(
        self, hparams: Mapping[str, Any], space: Any, rng: np.random.Generator
    ) -> dict[str, Any]:
        """The copied hyperparameters, unchanged."""
        return dict(hparams)


class _PayloadReady(_PayloadRepr):
    """Ready after every interval, under a payload's name."""

    index = 4

    def __call__(self, member: Any) -> bool:
        """Always."""
        return True


class _PayloadQuadratic(Quadratic):
    """:class:`Quadratic` scored under a payload metric, with extra metrics named by payloads,
    whose ``train`` raises an error whose message is a payload at its third interval."""

    def __init__(self, hparams: Mapping[str, Any], seed: int) -> None:
        super().__init__(hparams, seed)
        self.trained = 0

    def train(self, hparams: Mapping[str, Any]) -> None:
        """Train, or raise ``RuntimeError(payload)`` at the third call."""
        self.trained += 1
        if self.trained == 3:
            raise RuntimeError(XSS_PAYLOADS[5] + "\n" + XSS_PAYLOADS[0])
        super().train(hparams)

    def evaluate(self) -> dict[str, float]:
        """The score under the payload metric name, and a metric for every payload."""
        q = super().evaluate()["q"]
        return {_XSS_METRIC: q, **{payload: 0.5 for payload in XSS_PAYLOADS}}


_XSS_METRIC = " ".join(XSS_PAYLOADS[:4])


def xss_population(storage: Any, population: int = 3, intervals: int = 4) -> Any:
    """Train a small population whose every stored string is one of :data:`XSS_PAYLOADS`: its
    name, its metric and extra metrics, its hyperparameters' names and (``Choice`` of strings)
    values, a fixed value, its strategies' descriptions and its failures' messages; every member
    fails at its third interval, so the population also stops with an error. Returns it."""
    from ._text import unsafe_character
    from ._validation import POPULATION_NAME_LENGTH
    from .population import load, run
    from .space import Choice, Uniform
    from .worker import PopulationError

    def as_name(payload: str) -> str:
        # pt.run refuses names with control characters (U+2028...); values keep them all.
        return "".join(c for c in payload if not unsafe_character(c))

    n = len(XSS_PAYLOADS)
    space: dict[str, Any] = {"h0": Uniform(0.0, 1.0), "h1": Uniform(0.0, 1.0)}
    for i, payload in enumerate(XSS_PAYLOADS[:-1]):
        space[as_name(payload)] = Choice([XSS_PAYLOADS[(i + 1) % n], XSS_PAYLOADS[(i + 2) % n]])
    space[as_name(XSS_PAYLOADS[-1])] = XSS_PAYLOADS[0]  # a fixed value
    name = as_name(" ".join(XSS_PAYLOADS))[:POPULATION_NAME_LENGTH]  # what storages keep
    # Every member fails, as intended: the population is stored all the same.
    with contextlib.suppress(PopulationError):
        run(
            _PayloadQuadratic,
            space=space,
            metric=_XSS_METRIC,
            population=population,
            intervals=intervals,
            storage=storage,
            name=name,
            seed=0,
            progress=False,
            exploit=_PayloadExploit(),
            explore=_PayloadExplore(),
            ready=_PayloadReady(),
            max_failures=0,
        )
    return load(storage, name)
