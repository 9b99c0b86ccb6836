"""Trackers: TensorBoard, MLflow and Weights & Biases views of a population, fed from its
storage.

The storage is the one source of truth, so a tracker is a projection of it: an :class:`Exporter`
reads what is new in the storage since a tracker's last position and hands it to the tracker,
which writes it and remembers the new position where it writes (a marker file next to the
TensorBoard events, a tag on each MLflow run, a marker file in the W&B folder). That is why
the same export works for ``workers=1``, local processes, Ray and ``poptune worker`` processes
on other machines, and why exporting twice writes nothing twice.

Two ways to run it: ``poptune export NAME --tensorboard DIR --mlflow URI --wandb PROJECT
[--follow]``, or ``pt.run(..., trackers=[pt.TensorBoard(dir), pt.MLflow(uri),
pt.WandB(project)])``, which runs the same exporter on a thread beside the workers. Neither
imports TensorBoard, MLflow or W&B before it writes.

Example:
    >>> result = pt.run(Digits, space={"lr": pt.LogUniform(1e-3, 0.5)}, metric="accuracy",
    ...                 population=2, intervals=2, trackers=[pt.TensorBoard("runs/tb")])
    >>> sorted(path.name for path in Path("runs/tb/Digits").iterdir())
    ['member-0', 'member-1', 'poptune-export.json']
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import json
import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._filenames import safe_path
from ._net import unreachable
from ._redact import redact_text, redact_url
from ._text import printable
from ._validation import check_str, invalid
from .errors import TrackerError
from .records import ExploitEvent, IntervalRecord, PopulationStatus
from .results import Result
from .storage import command_hint

__all__ = [
    "BackgroundExport",
    "MLflow",
    "Position",
    "TensorBoard",
    "Tracker",
    "TrackerError",
    "TrackerExporter",
    "WandB",
    "check_trackers",
    "describe_exploit",
]

log = logging.getLogger("poptune")


# --- the position: what a tracker already has ------------------------------------------------


@dataclass(frozen=True)
class Position:
    """How far a population was exported to one tracker: per member, the step of the last
    interval and of the last exploit written.

    A member's steps only grow (an exploit takes the donor's step, which is at least its own,
    and the next interval comes after it), and one member's records are committed in order, so
    "after the last step written" is exactly "not written yet", for any number of workers.
    """

    intervals: Mapping[int, int] = field(default_factory=dict)
    exploits: Mapping[int, int] = field(default_factory=dict)

    def new_intervals(self, intervals: Iterable[IntervalRecord]) -> list[IntervalRecord]:
        """The intervals after this position, by member then step."""
        fresh = [i for i in intervals if i.step > self.intervals.get(i.member, 0)]
        return sorted(fresh, key=lambda i: (i.member, i.step))

    def new_exploits(self, exploits: Iterable[ExploitEvent]) -> list[ExploitEvent]:
        """The exploits after this position, in the order they happened."""
        return [e for e in exploits if e.step > self.exploits.get(e.member, -1)]

    def advance(
        self, intervals: Iterable[IntervalRecord], exploits: Iterable[ExploitEvent]
    ) -> Position:
        """This position moved past ``intervals`` and ``exploits``."""
        done = dict(self.intervals)
        for interval in intervals:
            done[interval.member] = max(done.get(interval.member, 0), interval.step)
        copied = dict(self.exploits)
        for event in exploits:
            copied[event.member] = max(copied.get(event.member, -1), event.step)
        return Position(done, copied)

    def to_dict(self) -> dict[str, dict[str, int]]:
        """A JSON-able form (``from_dict`` reads it back equal)."""
        return {
            "intervals": {str(k): v for k, v in sorted(self.intervals.items())},
            "exploits": {str(k): v for k, v in sorted(self.exploits.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Position:
        """The position ``to_dict`` wrote."""
        return cls(
            {int(k): int(v) for k, v in data.get("intervals", {}).items()},
            {int(k): int(v) for k, v in data.get("exploits", {}).items()},
        )


# --- the tracker contract --------------------------------------------------------------------


class Tracker(abc.ABC):
    """Where an :class:`TrackerExporter` writes a population: TensorBoard, MLflow, your own.

    The exporter calls :meth:`open` once, then :meth:`export` with what is new each time it
    looks, then :meth:`close`. A tracker persists its position together with what it writes,
    so that a later exporter (another process, another day) continues where it stopped.
    """

    @abc.abstractmethod
    def open(self, result: Result) -> Position:
        """Prepare to write ``result``'s population; return what is already written."""

    @abc.abstractmethod
    def export(self, intervals: Sequence[IntervalRecord], exploits: Sequence[ExploitEvent]) -> None:
        """Write these new intervals (by member then step) and exploits, then move the
        persisted position past them."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release everything :meth:`open` took."""

    def redact(self, text: str) -> str:
        """``text`` (an error message about this tracker) without the secrets of where it
        writes; override it when the tracker knows a URL with a password or token."""
        return redact_text(text)


def check_trackers(trackers: Any) -> list[Tracker]:
    """Validate ``pt.run``'s ``trackers`` parameter: a list of :class:`Tracker` objects."""
    if trackers is None:
        return []
    if isinstance(trackers, Tracker) or not isinstance(trackers, list | tuple):
        raise invalid(
            "trackers",
            "a list of trackers, e.g. [pt.TensorBoard('runs/tb'), "
            "pt.MLflow('sqlite:///mlflow.db')]",
            trackers,
        )
    for index, tracker in enumerate(trackers):
        if not isinstance(tracker, Tracker):
            raise invalid(
                f"trackers[{index}]",
                "a tracker such as pt.TensorBoard('runs/tb') or pt.MLflow('sqlite:///mlflow.db')",
                tracker,
            )
    return list(trackers)


def _require(module: str, extra: str) -> None:
    """Fail now, with the fix, if an optional dependency is missing (without importing it)."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"This tracker needs {module}, which is not installed: pip install 'poptune[{extra}]'."
        )


def _number(value: Any) -> float | None:
    """A metric or hparam as a float, or ``None`` if it is not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _short(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def describe_exploit(event: ExploitEvent, metric: str) -> str:
    """One line: who copied whom, at which steps and scores, and the hparams it explored."""
    changes = ", ".join(
        f"{key}: {_short(event.hparams_before.get(key))} → {_short(value)}"
        for key, value in event.hparams_after.items()
    )
    why = "" if event.is_exploit else f" ({event.reason.value}: a recovery, not an exploit)"
    return (
        f"member {event.member} ({metric} {_short(event.score)} at step {event.step}) copied{why} "
        f"member {event.donor} ({metric} {_short(event.donor_score)} at step "
        f"{event.donor_step}); explored {changes}"
    )


# --- TensorBoard -----------------------------------------------------------------------------

_MARKER = "poptune-export.json"


class TensorBoard(Tracker):
    """Writes a population to TensorBoard event files under ``logdir/<population>/member-<id>``:
    one run per member with, per step, the score (``score``), every numeric metric
    (``metrics/<name>``), every hyperparameter (``hparams/<name>``; text if not a number),
    and each exploit as a text event (``exploit``) at the step it happened.

    Its position is ``logdir/<population>/poptune-export.json``, written after the events.
    ``<population>`` is the name as a safe file name: an ordinary name (letters, digits, ``._-``)
    as it is, any other with its unsafe characters replaced and a short hash appended
    (:func:`~poptune._filenames.safe_filename`), so a stored name never writes outside ``logdir``.

    Example (what ``pt.run(..., trackers=[pt.TensorBoard("runs/tb")])`` does as it trains;
    then ``tensorboard --logdir runs/tb``):
        >>> tracker = pt.TensorBoard("runs/tb")
        >>> with TrackerExporter(pt.load("sqlite:///runs/poptune.db", "digits"), [tracker]) as e:
        ...     e.export()
        >>> e.written[id(tracker)]   # intervals and exploits written
        (16, ...)
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        if not isinstance(logdir, str | os.PathLike) or not os.fspath(logdir):
            raise invalid("logdir", "a folder path", logdir, "TensorBoard")
        _require("tensorboard", "tensorboard")
        self.logdir = Path(os.fspath(logdir)).expanduser()
        self._root: Path | None = None
        self._metric = ""
        self._identity: dict[str, Any] = {}
        self._position = Position()
        self._writers: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"TensorBoard({redact_url(str(self.logdir))!r})"

    def open(self, result: Result) -> Position:
        """Read the marker of an earlier export of this population, if any."""
        # The name comes from the storage: never a path of its own (``../../x``, ``/etc``).
        self._root = safe_path(self.logdir, result.name)
        self._metric = result.metric
        record = result.record
        self._identity = {"population": record.name, "created_at": record.created_at}
        marker = self._root / _MARKER
        if not marker.exists():
            self._position = Position()
            return self._position
        data = json.loads(marker.read_text())
        if data.get("created_at") != record.created_at:
            raise ValueError(
                f"{self._root} holds an export of another population named {record.name!r} "
                "(deleted and created again since?). Export to another logdir, or delete that "
                "folder first."
            )
        self._position = Position.from_dict(data)
        return self._position

    def export(self, intervals: Sequence[IntervalRecord], exploits: Sequence[ExploitEvent]) -> None:
        """Append the events, flush them, then move the marker past them."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if self._root is None:
            raise RuntimeError("TensorBoard.export() before open().")
        for interval in intervals:
            values = []
            if interval.score is not None:
                values.append(Summary.Value(tag="score", simple_value=interval.score))
            for key, value in interval.metrics.items():
                number = _number(value)
                if number is not None:
                    values.append(Summary.Value(tag=f"metrics/{key}", simple_value=number))
            for key, value in interval.hparams.items():
                number = _number(value)
                if number is not None:
                    values.append(Summary.Value(tag=f"hparams/{key}", simple_value=number))
                else:
                    values.append(_text_value(f"hparams/{key}", str(value)))
            self._write(interval.member, interval.finished_at, interval.step, Summary(value=values))
        for event in exploits:
            text = describe_exploit(event, self._metric)
            summary = Summary(value=[_text_value("exploit", text)])
            self._write(event.member, event.time, event.step, summary)
        for writer in self._writers.values():
            writer.flush()
        self._position = self._position.advance(intervals, exploits)
        if intervals or exploits:
            _write_json(self._root / _MARKER, {**self._identity, **self._position.to_dict()})

    def _write(self, member: int, wall_time: float, step: int, summary: Any) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        writer = self._writers.get(member)
        if writer is None:  # created only when there is something to write: no empty files
            assert self._root is not None
            writer = EventFileWriter(str(self._root / f"member-{member}"), flush_secs=5)
            self._writers[member] = writer
        writer.add_event(Event(wall_time=wall_time, step=step, summary=summary))

    def close(self) -> None:
        """Flush and close every event file."""
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()


def _text_value(tag: str, text: str) -> Any:
    """A summary value the TensorBoard text plugin shows."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.text.metadata import create_summary_metadata

    tensor = TensorProto(
        dtype=7,  # DT_STRING
        string_val=[text.encode("utf-8")],
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
    )
    return Summary.Value(tag=tag, metadata=create_summary_metadata(tag, ""), tensor=tensor)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically: a reader sees the old marker or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


# --- MLflow ----------------------------------------------------------------------------------

_TAG = "poptune."
_ROLE, _KEY, _MEMBER = f"{_TAG}role", f"{_TAG}population_key", f"{_TAG}member"
_DONE_STEP, _DONE_EXPLOIT = f"{_TAG}exported_step", f"{_TAG}exported_exploit_step"
_BATCH = 900  # MLflow takes at most 1000 metrics+params+tags per log_batch call


class MLflow(Tracker):
    """Writes a population to MLflow: one parent run per population (its configuration as
    params), and one child run per member with, per step, every numeric metric, the score
    (``score``) and every numeric hyperparameter (``hparams.<name>``); its initial hparams as
    params; tags ``poptune.parent`` (the member it last copied), ``poptune.parent_step`` and one
    ``poptune.exploit.<step>`` per exploit.

    Runs are found again by tags (the population's name and creation time, the member id), and
    each child run's position is a tag written in the same ``log_batch`` as its metrics.
    ``tracking_uri`` is any MLflow tracking URI: ``sqlite:///mlflow.db``, a server's URL...

    Example (skipped: MLflow takes seconds to create its database):
        >>> pt.run(..., trackers=[pt.MLflow("sqlite:///runs/mlflow.db")])   # doctest: +SKIP
    """

    def __init__(self, tracking_uri: str, experiment: str = "poptune") -> None:
        if not isinstance(tracking_uri, str) or not tracking_uri.strip():
            raise invalid(
                "tracking_uri",
                "a tracking URI such as 'sqlite:///mlflow.db' or 'http://host:5000'",
                tracking_uri,
                "MLflow",
            )
        self.tracking_uri = tracking_uri
        self.experiment = check_str("experiment", experiment, owner="MLflow")
        _require("mlflow", "mlflow")
        self._client: Any = None
        self._result: Result | None = None
        self._experiment_id = ""
        self._key = ""
        self._parent = ""
        self._runs: dict[int, str] = {}
        self._position = Position()

    def __repr__(self) -> str:
        return f"MLflow({redact_url(self.tracking_uri)!r}, experiment={self.experiment!r})"

    def redact(self, text: str) -> str:
        """``text`` without the password or token of the tracking URI."""
        return redact_text(text, self.tracking_uri)

    def open(self, result: Result) -> Position:
        """Find (or create) the experiment and the population's parent run; read each member
        run's position from its tags."""
        from mlflow.tracking import MlflowClient

        _check_reachable(self.tracking_uri)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self._result = result
        record = result.record
        # The creation time tells a population from an older one of the same name.
        identity = f"{record.name}\0{record.created_at!r}".encode()
        self._key = hashlib.sha256(identity).hexdigest()[:32]
        self._experiment_id = self._experiment()
        parents = self._search("population")
        if parents:
            self._parent = parents[0].info.run_id
        else:
            run = self._client.create_run(
                self._experiment_id,
                start_time=int(record.created_at * 1000),
                tags={
                    _ROLE: "population",
                    _KEY: self._key,
                    f"{_TAG}population": record.name,
                    f"{_TAG}metric": result.metric,
                    f"{_TAG}mode": result.mode.value,
                },
                run_name=record.name,
            )
            self._parent = run.info.run_id
            self._log(self._parent, params=_population_params(result.config.to_dict()))
        position = Position()
        self._runs = {}
        for run in self._search("member"):
            member = int(run.data.tags[_MEMBER])
            self._runs[member] = run.info.run_id
            tags = run.data.tags
            done = {member: int(tags[_DONE_STEP])} if _DONE_STEP in tags else {}
            copied = {member: int(tags[_DONE_EXPLOIT])} if _DONE_EXPLOIT in tags else {}
            position = Position({**position.intervals, **done}, {**position.exploits, **copied})
        self._position = position
        return position

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(self.experiment))
        except MlflowException:  # another exporter created it at the same moment
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def _search(self, role: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self._client.search_runs(
                [self._experiment_id],
                filter_string=f"tags.`{_KEY}` = '{self._key}' and tags.`{_ROLE}` = '{role}'",
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def export(self, intervals: Sequence[IntervalRecord], exploits: Sequence[ExploitEvent]) -> None:
        """One ``log_batch`` series per member: its metrics and hparams per step, its exploit
        tags, and its new position."""
        from mlflow.entities import Metric, RunTag

        members = sorted({i.member for i in intervals} | {e.member for e in exploits})
        for member in members:
            mine = [i for i in intervals if i.member == member]
            copies = [e for e in exploits if e.member == member]
            run_id = self._member_run(member, mine)
            metrics = []
            for interval in mine:
                stamp = int(interval.finished_at * 1000)
                values = {"score": interval.score}
                values.update(_beside_score(interval.metrics, "metrics.", self._metric()))
                values.update({f"hparams.{k}": v for k, v in interval.hparams.items()})
                for key, value in values.items():
                    number = _number(value)
                    if number is not None:
                        metrics.append(Metric(key, number, stamp, interval.step))
            tags = [
                RunTag(f"{_TAG}exploit.{e.step}", describe_exploit(e, self._metric()))
                for e in copies
            ]
            if copies:
                tags += [
                    RunTag(f"{_TAG}parent", str(copies[-1].donor)),
                    RunTag(f"{_TAG}parent_step", str(copies[-1].donor_step)),
                ]
            position = self._position.advance(mine, copies)
            if member in position.intervals:
                tags.append(RunTag(_DONE_STEP, str(position.intervals[member])))
            if member in position.exploits:
                tags.append(RunTag(_DONE_EXPLOIT, str(position.exploits[member])))
            self._log(run_id, metrics=metrics, tags=tags)
            self._position = position

    def _metric(self) -> str:
        return self._result.metric if self._result is not None else "score"

    def _member_run(self, member: int, intervals: Sequence[IntervalRecord]) -> str:
        """The member's child run, created on first sight with its initial hparams as params."""
        if member in self._runs:
            return self._runs[member]
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        first = min(intervals, key=lambda i: i.step) if intervals else None
        hparams = first.hparams if first is not None else self._initial_hparams(member)
        run = self._client.create_run(
            self._experiment_id,
            start_time=int((first.finished_at - first.wall_time) * 1000) if first else None,
            tags={
                _ROLE: "member",
                _KEY: self._key,
                _MEMBER: str(member),
                MLFLOW_PARENT_RUN_ID: self._parent,
            },
            run_name=f"member-{member}",
        )
        self._runs[member] = run.info.run_id
        self._log(run.info.run_id, params={k: str(v)[:6000] for k, v in hparams.items()})
        return run.info.run_id

    def _initial_hparams(self, member: int) -> Mapping[str, Any]:
        assert self._result is not None
        found = self._result.storage.interval(self._result.id, member, 1)
        return found.hparams if found is not None else {}

    def _log(
        self,
        run_id: str,
        metrics: Sequence[Any] = (),
        params: Mapping[str, str] | None = None,
        tags: Sequence[Any] = (),
    ) -> None:
        """``log_batch`` in chunks MLflow accepts; the tags (with the position) go last."""
        from mlflow.entities import Param

        chunks = [list(metrics[i : i + _BATCH]) for i in range(0, len(metrics), _BATCH)]
        for index, chunk in enumerate(chunks or [[]]):
            last = index == len(chunks or [[]]) - 1
            self._client.log_batch(
                run_id,
                metrics=chunk,
                params=[Param(k, v) for k, v in (params or {}).items()] if index == 0 else [],
                tags=list(tags) if last else [],
            )

    def close(self) -> None:
        """Mark the runs finished (or failed) once the population stopped; running otherwise."""
        if self._client is None or self._result is None:
            return
        status = self._result.record.status
        if status is not PopulationStatus.RUNNING:
            state = "FINISHED" if status is PopulationStatus.FINISHED else "FAILED"
            for run_id in [*self._runs.values(), self._parent]:
                self._client.set_terminated(run_id, status=state)
        self._client = None


# --- Weights & Biases ------------------------------------------------------------------------

#: ``wandb.init`` arguments the tracker sets itself, one run per member and one per population.
_WANDB_OWN = ("project", "entity", "id", "resume", "group", "job_type", "name", "config", "reinit")
_WANDB_MARKER_FOLDER = "poptune-export"
_WANDB_GROUP_LIMIT = 128  # W&B refuses a longer group name
_WANDB_SETTINGS = ("metric", "mode", "population", "intervals", "exploit", "explore", "ready")


class WandB(Tracker):
    """Writes a population to Weights & Biases: one run per member (``job_type="member"``,
    grouped by the population's name) and one for the population (``job_type="population"``).

    A member's run has, as its config, its first hyperparameters and the population's settings
    (under ``poptune``); at each of its steps, the score (``score``), every metric and every
    current hyperparameter (``hparams/<name>``); at each exploit, what it copied
    (``exploit/donor``, ``exploit/donor_step``, ``exploit/before/<name>``,
    ``exploit/after/<name>`` and a sentence, ``exploit``), with the config updated to the
    explored hyperparameters. Once the population stopped, its run holds the best member (in
    its summary), the winning schedule (a ``wandb.Table``, ``schedule``) and the HTML report
    (``report``).

    Run ids come from the population's name and creation time, so a later export resumes the
    same runs; its position is a marker file in the W&B folder
    (``<dir>/wandb/poptune-export/``), written after each batch, so exporting again writes
    nothing twice. ``init_kwargs`` go to every ``wandb.init`` (``dir=``, ``mode="offline"``,
    ``tags=``, ``settings=``...); the console capture and system metrics of the exporting
    process are off unless ``settings`` says otherwise (they would describe the exporter, not
    the training), and W&B prints where the runs are for the population's run only.
    ``WANDB_MODE=offline`` writes runs for ``wandb sync`` without a network.

    Example (skipped: needs a W&B login, or ``WANDB_MODE=offline``; the same from the command
    line: ``poptune export digits --wandb pbt-digits --follow``):
        >>> pt.run(..., trackers=[pt.WandB("pbt-digits")])   # doctest: +SKIP
    """

    def __init__(self, project: str, entity: str | None = None, **init_kwargs: Any) -> None:
        self.project = check_str("project", project, owner="WandB")
        self.entity = None if entity is None else check_str("entity", entity, owner="WandB")
        taken = sorted(set(init_kwargs) & set(_WANDB_OWN))
        if taken:
            raise invalid(
                "init_kwargs",
                f"arguments of wandb.init other than {', '.join(_WANDB_OWN)}, which WandB sets "
                "itself (one run per member, resumed by id)",
                {name: init_kwargs[name] for name in taken},
                "WandB",
                hint="Pass only other arguments such as dir=, mode= or tags=.",
            )
        _require("wandb", "wandb")
        self.init_kwargs = dict(init_kwargs)
        self._result: Result | None = None
        self._key = ""
        self._marker: Path | None = None
        self._identity: dict[str, Any] = {}
        self._position = Position()
        self._reported: Position | None = None
        self._runs: dict[int, Any] = {}

    def __repr__(self) -> str:
        entity = "" if self.entity is None else f", entity={self.entity!r}"
        return f"WandB({self.project!r}{entity})"

    def redact(self, text: str) -> str:
        """``text`` without any URL's secrets, nor the W&B API key (of the environment or of
        ``settings``)."""
        text = redact_text(text, getattr(self.init_kwargs.get("settings"), "base_url", None))
        keys = (
            os.environ.get("WANDB_API_KEY"),
            getattr(self.init_kwargs.get("settings"), "api_key", None),
        )
        for key in keys:
            if isinstance(key, str) and key:
                text = text.replace(key, "***")
        return text

    def open(self, result: Result) -> Position:
        """Read the marker of an earlier export of this population to this project, if any."""
        record = result.record
        self._result = result
        # The creation time tells a population from an older one of the same name.
        identity = f"{record.name}\0{record.created_at!r}".encode()
        self._key = hashlib.sha256(identity).hexdigest()[:24]
        where = f"{self.entity or ''}/{self.project}/{self._key}"
        self._marker = safe_path(self._dir() / "wandb" / _WANDB_MARKER_FOLDER, where, ".json")
        self._identity = {
            "population": record.name,
            "created_at": record.created_at,
            "project": self.project,
            "entity": self.entity,
        }
        self._position, self._reported = Position(), None
        if self._marker.exists():
            data = json.loads(self._marker.read_text())
            self._position = Position.from_dict(data)
            if "reported" in data:
                self._reported = Position.from_dict(data["reported"])
        return self._position

    def export(self, intervals: Sequence[IntervalRecord], exploits: Sequence[ExploitEvent]) -> None:
        """Log each member's new steps and exploits in step order, then move the marker."""
        members = sorted({i.member for i in intervals} | {e.member for e in exploits})
        for member in members:
            mine = [i for i in intervals if i.member == member]
            copies = [e for e in exploits if e.member == member]
            run = self._member_run(member, mine)
            # An exploit after interval s is logged with it, at step s: one row per step.
            rows: dict[int, dict[str, Any]] = {}
            for interval in mine:
                row = rows.setdefault(interval.step, {})
                row["_timestamp"] = interval.finished_at
                if interval.score is not None:
                    row["score"] = interval.score
                row.update(_beside_score(interval.metrics, "metrics/", self._metric()))
                row.update({f"hparams/{k}": v for k, v in interval.hparams.items()})
            for event in copies:
                rows.setdefault(event.step, {"_timestamp": event.time}).update(
                    self._exploit_row(event)
                )
            for step in sorted(rows):
                run.log(rows[step], step=step)
            for event in copies:
                run.config.update(dict(event.hparams_after), allow_val_change=True)
            if copies:
                run.summary.update(
                    {"parent": copies[-1].donor, "parent_step": copies[-1].donor_step}
                )
        self._position = self._position.advance(intervals, exploits)
        if intervals or exploits:
            self._save()

    def _exploit_row(self, event: ExploitEvent) -> dict[str, Any]:
        row: dict[str, Any] = {
            "exploit": describe_exploit(event, self._metric()),
            "exploit/donor": event.donor,
            "exploit/donor_step": event.donor_step,
            "exploit/reason": event.reason.value,
        }
        if event.score is not None:
            row["exploit/score"] = event.score
        if event.donor_score is not None:
            row["exploit/donor_score"] = event.donor_score
        row.update({f"exploit/before/{k}": v for k, v in event.hparams_before.items()})
        row.update({f"exploit/after/{k}": v for k, v in event.hparams_after.items()})
        return row

    def _metric(self) -> str:
        return self._result.metric if self._result is not None else "score"

    def _dir(self) -> Path:
        """The folder W&B writes under (runs in its ``wandb`` sub-folder), given to every
        ``wandb.init``: W&B reads ``$WANDB_DIR`` once per process, the marker must be beside
        the runs of each export."""
        folder = self.init_kwargs.get("dir") or os.environ.get("WANDB_DIR") or "."
        return Path(os.fspath(folder)).expanduser()

    def _settings(self) -> dict[str, Any]:
        """The population's settings, as a member's and the population's config show them
        (never the checkpoint URL, which may carry credentials)."""
        assert self._result is not None
        config = self._result.config.to_dict()
        settings = {key: config[key] for key in _WANDB_SETTINGS if key in config}
        return {"name": self._result.name, **settings}

    def _init(self, run_id: str, job_type: str, name: str, config: Mapping[str, Any]) -> Any:
        import wandb

        assert self._result is not None
        options = {**self.init_kwargs, "dir": str(self._dir())}
        self._dir().mkdir(parents=True, exist_ok=True)
        if "settings" not in options:
            # W&B's few lines on where a run is (its URL, or the folder to sync) for the
            # population's run only: a population of 32 would print them 32 times more.
            options["settings"] = wandb.Settings(
                console="off",
                quiet=True,
                silent=job_type != "population",
                x_disable_stats=True,
                x_disable_meta=True,
            )
        return wandb.init(
            project=self.project,
            entity=self.entity,
            id=run_id,
            resume="allow",
            # One process holds a run per member at once.
            reinit="create_new",
            group=self._result.name[:_WANDB_GROUP_LIMIT],
            job_type=job_type,
            name=name,
            config=dict(config),
            **options,
        )

    def _member_run(self, member: int, intervals: Sequence[IntervalRecord]) -> Any:
        """The member's run, started (or resumed) on first sight."""
        if member in self._runs:
            return self._runs[member]
        assert self._result is not None
        first = min(intervals, key=lambda i: i.step) if intervals else None
        if first is None or first.step != 1:
            found = self._result.storage.interval(self._result.id, member, 1)
            first = found if found is not None else first
        hparams = dict(first.hparams) if first is not None else {}
        config = {**hparams, "poptune": {**self._settings(), "member": member}}
        run = self._init(f"{self._key}-m{member}", "member", f"member-{member}", config)
        self._runs[member] = run
        return run

    def _save(self) -> None:
        assert self._marker is not None
        data: dict[str, Any] = {**self._identity, **self._position.to_dict()}
        if self._reported is not None:
            data["reported"] = self._reported.to_dict()
        _write_json(self._marker, data)

    def close(self) -> None:
        """Once the population stopped, write (or update) its run: the best member, the winning
        schedule and the report; then finish every run."""
        try:
            if (
                self._result is not None
                and self._reported != self._position
                and self._result.record.status is not PopulationStatus.RUNNING
            ):
                self._report()
        finally:
            runs, self._runs = self._runs, {}
            failed = (
                self._result is not None and self._result.record.status is PopulationStatus.ERROR
            )
            for run in runs.values():
                run.finish(exit_code=1 if failed else 0)

    def _report(self) -> None:
        """The population's run: best member, schedule table, HTML report, at a step that
        grows with what was exported (so writing it again adds a row, never rewrites one)."""
        import wandb

        from .report import build_model, render_html
        from .results import NoBestMember

        assert self._result is not None
        result = self._result
        run = self._init(
            f"{self._key}-population", "population", printable(result.name), self._settings()
        )
        try:
            row: dict[str, Any] = {
                "report": wandb.Html(render_html(build_model(result)), inject=False)
            }
            try:
                best = result.best
            except NoBestMember:
                best = None
            if best is not None:
                schedule = result.schedule()
                names = sorted({k for entry in schedule for k in entry.hparams})
                table = wandb.Table(columns=["step", "member", "member_step", "score", *names])
                for entry in schedule:
                    table.add_data(
                        entry.step,
                        entry.member,
                        entry.member_step,
                        entry.score,
                        *(entry.hparams.get(k) for k in names),
                    )
                row["schedule"] = table
                run.summary.update(
                    {
                        "best/member": best.member,
                        "best/step": best.step,
                        "best/score": best.score,
                        **{f"best/metrics/{k}": v for k, v in best.metrics.items()},
                        **{f"best/hparams/{k}": v for k, v in best.hparams.items()},
                    }
                )
            step = sum(self._position.intervals.values())
            run.log(row, step=step)
            run.summary.update({"status": result.record.status.value})
        finally:
            failed = result.record.status is PopulationStatus.ERROR
            run.finish(exit_code=1 if failed else 0)
        self._reported = self._position
        self._save()


#: Seconds to wait for an MLflow server's port before saying it is unreachable. MLflow's own
#: client retries a refused connection 7 times with backoff (about 4 minutes) before it fails.
REACHABLE_SECONDS = 5.0


def _check_reachable(tracking_uri: str) -> None:
    """Fail in seconds, with the fix, when an http(s) tracking server does not answer.

    Only the server's port is tried (nothing is sent, no credentials); any other URI (a file,
    a database, ``databricks``) and a server reached through a proxy are left to MLflow.
    """
    parsed = urllib.parse.urlsplit(tracking_uri)
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        return
    try:
        host, port = parsed.hostname, parsed.port or (443 if scheme == "https" else 80)
    except ValueError as error:  # a port that is not a number
        raise TrackerError(
            f"The MLflow tracking URI {redact_url(tracking_uri)!r} is not a valid URL ({error}). "
            "Pass one such as 'http://host:5000'."
        ) from None
    if not host or (urllib.request.getproxies() and not urllib.request.proxy_bypass(host)):
        return
    reason = unreachable(host, port, REACHABLE_SECONDS)
    if reason is not None:
        raise TrackerError(
            f"The MLflow tracking server {redact_url(tracking_uri)!r} is not reachable at "
            f"{host}:{port} ({reason}). Start it, or check the URI and the network."
        )


def _population_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The parent run's params: the population's algorithm, one param per setting."""
    keys = ("metric", "mode", "population", "intervals", "exploit", "explore", "ready", "seed")
    params = {}
    for key in keys:
        if key in config:
            value = config[key]
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            params[key] = text[:6000]
    return params


# --- the exporter ----------------------------------------------------------------------------


@dataclass
class _Open:
    tracker: Tracker
    position: Position


class TrackerExporter:
    """Reads what is new in a population's storage and hands it to each tracker.

    ``strict`` (the CLI) raises a tracker's errors; otherwise (``pt.run``) a failing tracker is
    logged as a warning and left out for the rest of the run: training never stops for it, and
    ``poptune export`` catches up later.

    Example:
        >>> with TrackerExporter(pt.load(url, "digits"), [pt.TensorBoard("tb")]) as exporter:
        ...     exporter.export()
        >>> sorted(path.name for path in Path("tb/digits").iterdir())
        ['member-0', 'member-1', 'member-2', 'member-3', 'poptune-export.json']
    """

    def __init__(self, result: Result, trackers: Sequence[Tracker], strict: bool = True) -> None:
        self.result = result
        self.trackers = check_trackers(list(trackers))
        self.strict = strict
        self._open: list[_Open] = []
        self.written: dict[int, tuple[int, int]] = {}  # id(tracker) -> (intervals, exploits)

    def __enter__(self) -> TrackerExporter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Open every tracker and learn its position."""
        for tracker in self.trackers:
            try:
                self._open.append(_Open(tracker, tracker.open(self.result)))
                self.written[id(tracker)] = (0, 0)
            except Exception as error:
                self._failed(tracker, "open", error)

    def export(self) -> None:
        """Hand every tracker what the storage holds beyond its position."""
        if not self._open:
            return
        # Exploits first: a member's exploit at step s is committed after its interval s, so
        # every exploit read here comes with its interval, even while workers record more.
        exploits = self.result.exploits()
        intervals = self.result.intervals()
        for entry in list(self._open):
            new_intervals = entry.position.new_intervals(intervals)
            new_exploits = entry.position.new_exploits(exploits)
            if not new_intervals and not new_exploits:
                continue
            try:
                entry.tracker.export(new_intervals, new_exploits)
            except Exception as error:
                self._open.remove(entry)
                self._failed(entry.tracker, "export", error)
                continue
            entry.position = entry.position.advance(new_intervals, new_exploits)
            done, copied = self.written[id(entry.tracker)]
            self.written[id(entry.tracker)] = (
                done + len(new_intervals),
                copied + len(new_exploits),
            )

    def follow(self, every: float = 2.0, stop: threading.Event | None = None) -> None:
        """Export every ``every`` seconds until the population stops running (or ``stop`` is
        set), then once more for the rest."""
        stop = stop if stop is not None else threading.Event()
        while True:
            self.export()
            if self.result.record.status is not PopulationStatus.RUNNING:
                break
            if stop.wait(every):
                break
        self.export()

    def close(self) -> None:
        """Close every open tracker."""
        entries, self._open = self._open, []
        for entry in entries:
            try:
                entry.tracker.close()
            except Exception as error:
                self._failed(entry.tracker, "close", error)

    def _failed(self, tracker: Tracker, stage: str, error: Exception) -> None:
        cause = tracker.redact(f"{type(error).__name__}: {error}")
        if isinstance(error, TrackerError):  # already says what failed and what to do
            cause = tracker.redact(str(error))
        name = printable(self.result.name)
        if self.strict:
            raise TrackerError(
                f"{tracker!r} failed to {stage} population '{name}': {cause}"
            ) from None
        log.warning(
            "Tracker %r failed to %s population '%s' and is left out of this run (%s). "
            "Training goes on; export later with `%s`.",
            tracker,
            stage,
            name,
            cause,
            command_hint("export", self.result.name, self.result.storage.url, "..."),
        )


def _beside_score(metrics: Mapping[str, Any], prefix: str, optimised: str) -> dict[str, Any]:
    """An interval's metrics to log beside poptune's ``score`` (the value of the ``optimised``
    metric): a metric of the user's own named ``score`` (a BLEU "score") that is not the
    optimised one goes under ``prefix + "score"``, where it overwrote poptune's."""
    if optimised == "score" or "score" not in metrics:
        return dict(metrics)
    return {f"{prefix}score" if key == "score" else key: value for key, value in metrics.items()}


class BackgroundExport:
    """Runs a :class:`TrackerExporter` on a thread beside the workers (``pt.run(trackers=)``):
    it follows the population while they train, and exports the rest when :meth:`stop` is
    called after they stopped. Its errors are warnings, never a stopped run."""

    def __init__(self, result: Result, trackers: Sequence[Tracker], every: float = 2.0) -> None:
        self._exporter = TrackerExporter(result, trackers, strict=False)
        self._every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start following the population."""
        self._thread = threading.Thread(target=self._run, name="poptune-trackers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._exporter.open()
            self._exporter.follow(self._every, self._stop)
        except Exception as error:  # the storage itself failed: still never stop training
            log.warning(
                "Exporting to trackers stopped: %s",
                redact_text(f"{type(error).__name__}: {error}"),
            )
        finally:
            self._exporter.close()

    def stop(self) -> None:
        """Export what is left and close the trackers (call after the workers stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
