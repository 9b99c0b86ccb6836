"""The ``poptune`` command: list, inspect and resume populations stored in a database."""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ._filenames import safe_path
from ._redact import redact_text
from ._text import printable
from .checkpoints import population_folder
from .config import PopulationConfig
from .deletion import check_deletable
from .devices import CUDA_VISIBLE_DEVICES, apply_environment, device_environment, parse_device
from .locations import checkpoints_location
from .population import Population, load, replay
from .population import delete as delete_population
from .records import MemberRecord, MemberStatus, PopulationStatus
from .results import Result
from .storage import (
    SCHEMA_VERSION,
    PopulationNotFound,
    SQLStorage,
    StorageError,
    Summary,
    command_hint,
    default_storage_url,
    open_storage,
    redact_url,
)
from .trackers import MLflow, TensorBoard, Tracker, TrackerError, TrackerExporter, WandB
from .worker import PopulationError

__all__ = ["main"]

_storage_option = click.option(
    "--storage",
    "storage",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL of the storage (default: $POPTUNE_STORAGE or sqlite:///runs/poptune.db).",
)

_checkpoints_option = click.option(
    "--checkpoints",
    "checkpoints",
    default=None,
    metavar="PATH_OR_URL",
    help="Where this machine finds the population's checkpoints, if not where they were "
    "recorded (the default folder next to a SQLite file moves with it).",
)


class CheckpointEvery(click.ParamType):
    """``--checkpoint-every``: a number of intervals (``5``) or a duration of a member's
    training (``600s``, ``10m``, ``1.5h``), read strictly."""

    name = "K|DURATION"
    _UNITS: Mapping[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0}
    _FORMS = (
        "a number of intervals (a whole number >= 1, e.g. 5) nor a duration of training (a "
        "number and s, m or h, e.g. 600s, 10m, 1.5h)"
    )

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | datetime.timedelta:
        """``value`` as ``pt.run``'s ``checkpoint_every``: an int or a ``timedelta``."""
        if isinstance(value, int | datetime.timedelta):
            return value
        text = str(value)
        if re.fullmatch(r"[0-9]+", text):
            if int(text) >= 1:
                return int(text)
            self.fail(
                f"{text!r} intervals: give at least 1, e.g. 5 (1: after every interval), or a "
                "duration such as 10m.",
                param,
                ctx,
            )
        found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smh])", text)
        if found is None:
            self.fail(f"{text!r} is neither {self._FORMS}.", param, ctx)
        seconds = float(found[1]) * self._UNITS[found[2]]
        try:
            duration = datetime.timedelta(seconds=seconds)
        except OverflowError:
            duration = datetime.timedelta(0)
        if duration <= datetime.timedelta(0) or duration >= datetime.timedelta(days=10**6):
            self.fail(
                f"{text!r}: give a duration above 0 and below a million days, e.g. 10m.", param, ctx
            )
        return duration


#: The options whose values are URLs that may carry a password or token.
_URL_OPTIONS = ("storage", "checkpoints", "tracking_uri")
#: How much of one line of a stored error (a traceback's line) `status` shows.
_ERROR_LIMIT = 500


def _errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's errors into one-line messages and exit codes, without the secrets of
    the URLs given on the command line or any terminal control codes."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        urls = [kwargs.get(option) for option in _URL_OPTIONS]
        try:
            return function(*args, **kwargs)
        except (PopulationNotFound, StorageError, PopulationError, ValueError, ImportError) as e:
            raise click.ClickException(_safe(str(e), *urls)) from None
        except LookupError as error:
            message = str(error.args[0] if error.args else error)
            raise click.ClickException(_safe(message, *urls)) from None
        except click.ClickException:
            raise  # ours, already one safe line
        except Exception as error:
            # Anything else is a traceback for a bug report, unless it would show a secret
            # (a library's error quoting the URL): then it is one line, redacted.
            text = "\n".join(traceback.format_exception_only(error))
            seen: list[BaseException] = [error]
            cause = error.__cause__ or error.__context__
            while cause is not None and cause not in seen:
                seen.append(cause)
                text += "\n".join(traceback.format_exception_only(cause))
                cause = cause.__cause__ or cause.__context__
            if redact_text(text, *urls) == text:
                raise
            message = f"{type(error).__name__}: {error}"
            raise click.ClickException(_safe(message, *urls)) from None

    return wrapper


def _safe(message: str, *urls: str | None) -> str:
    """``message`` without the secrets of ``urls`` (or of any URL in it), each line printable."""
    lines = redact_text(message, *urls).replace("\t", " ").split("\n")
    return "\n".join(printable(line, limit=None) for line in lines)


def _console() -> Console:
    """A console that prints stored names as they are: ``[red]`` is not markup, ``:x:`` is not
    an emoji (and ``[/]`` in a population's name cannot stop the command)."""
    return Console(markup=False, emoji=False)


def _write_error(path: str | Path, error: OSError) -> click.ClickException:
    return click.ClickException(
        f"Cannot write {printable(str(path), limit=None)}: {error.strerror or error}. Pass -o a "
        "file in a folder you can write, e.g. -o report.html."
    )


def _format_score(score: float | None) -> str:
    if score is None:
        return "—"
    if math.isnan(score):
        return "nan"
    return f"{score:.6g}"


def _format_hparams(hparams: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{printable(k)}={v:.4g}" if isinstance(v, float) else f"{printable(k)}={printable(v)}"
        for k, v in hparams.items()
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _member_json(member: MemberRecord) -> dict[str, Any]:
    return {
        "id": member.id,
        "status": member.status.value,
        "step": member.step,
        "score": _jsonable(member.score),
        "hparams": _jsonable(dict(member.hparams)),
        "parent": member.parent,
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="poptune", prog_name="poptune")
def main() -> None:
    """Population Based Training: inspect and continue populations in a storage."""
    logging.basicConfig(level=logging.INFO, format="poptune: %(message)s", stream=sys.stderr)


@main.command("list")
@_storage_option
@_errors
def list_command(storage: str | None) -> None:
    """List the populations in the storage."""
    store = open_storage(storage, mode="read")
    records = store.populations()
    if not records:
        click.echo(f"No populations in {redact_url(store.url)}.")
        return
    table = Table(title=f"populations in {redact_url(store.url)}")
    for column in ("name", "status", "members", "intervals", "best", "metric", "created"):
        # a name is what the user types next: folded onto more lines, never cut short
        table.add_column(column, no_wrap=column != "name", overflow="fold")
    for record in records:
        config = PopulationConfig.of(record)
        mode = config.mode
        summary = store.summary(record.id, config.intervals, mode)
        created = datetime.datetime.fromtimestamp(record.created_at).strftime("%m-%d %H:%M")
        table.add_row(
            printable(record.name, limit=None),
            _shown_status(summary),
            str(summary.members),
            f"{summary.steps_done}/{summary.steps_total}",
            _format_score(summary.best_score),
            f"{printable(config.metric)}{'↑' if mode.value == 'max' else '↓'}",
            created,
        )
    _console().print(table)


@main.command()
@click.argument("name")
@_storage_option
@_checkpoints_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_errors
def delete(name: str, storage: str | None, checkpoints: str | None, yes: bool) -> None:
    """Delete population NAME: its records and its checkpoint files (no undo)."""
    store = open_storage(storage, mode="write")
    record = store.population(name)  # fails clearly, listing the names, before asking
    config = PopulationConfig.of(record)
    summary = store.summary(record.id, config.intervals, config.mode)
    check_deletable(store, record)  # a population in training is refused before asking
    if not yes:
        folder = checkpoints or checkpoints_location(store, record)
        database = store.database_id(create=False)
        if database is not None:  # its own folder in there, not the folder others share
            folder = f"{folder.rstrip('/')}/{population_folder(database, record.id)}"
        click.confirm(
            f"Delete population '{printable(name)}' ({record.status.value}, "
            f"{summary.steps_done} intervals recorded) and its checkpoints in "
            f"{printable(redact_url(folder), limit=None)}?",
            abort=True,
        )
    delete_population(store, name, checkpoints)
    click.echo(f"Deleted population '{printable(name)}' from {redact_url(store.url)}.")


@main.command()
@_storage_option
@_errors
def upgrade(storage: str | None) -> None:
    """Upgrade the storage to this poptune's schema, in place (one-way: back it up first).

    Reading commands (list, status, report...) never change the storage, so a database written
    by an older poptune is upgraded once, by this command or by any that writes (resume,
    worker, pt.run). See docs/upgrades.md.
    """
    store = open_storage(storage, mode="write")
    where = redact_url(store.url)
    upgraded_from = store.upgraded_from if isinstance(store, SQLStorage) else None
    if upgraded_from is None:
        click.echo(f"{where} is at poptune schema version {SCHEMA_VERSION}: nothing to upgrade.")
    else:
        click.echo(
            f"Upgraded {where} from poptune schema version {upgraded_from} to {SCHEMA_VERSION}."
        )


@main.command()
@click.argument("name")
@_storage_option
@_checkpoints_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", is_flag=True, help="Refresh until the population stops (Ctrl-C quits).")
@click.option(
    "--every",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@_errors
def status(
    name: str,
    storage: str | None,
    checkpoints: str | None,
    as_json: bool,
    watch: bool,
    every: float,
) -> None:
    """Show every member of population NAME: step, score, hparams, parent."""
    result = load(storage, name, checkpoints)
    if watch:
        if _watch(result, every):
            _status_notes(result, result.summary())
        return
    members = result.members
    summary = result.summary()
    if as_json:
        payload = {
            "name": result.name,
            "status": summary.status.value,
            "shown_status": _shown_status(summary),
            "metric": result.metric,
            "mode": result.mode.value,
            "steps_done": summary.steps_done,
            "steps_total": summary.steps_total,
            "exploits": summary.exploits,
            "recoveries": summary.recoveries,
            "failures": summary.failures,
            "best_member": summary.best_member,
            "best_score": _jsonable(summary.best_score),
            "members": [_member_json(m) for m in members],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    _console().print(_status_table(result, members, summary))
    _status_notes(result, summary)


def _status_notes(result: Result, summary: Summary) -> None:
    """What the status table does not say: how to continue an interrupted population, why it
    stopped."""
    record = result.record
    error = _error_lines(record.error)
    if _shown_status(summary) == "interrupted":
        click.echo(
            "Interrupted: no worker holds a member. Continue it with "
            f"`{command_hint('resume', result.name, result.storage.url)}`.",
            err=True,
        )
    if record.status.value == "stopped":
        click.echo(f"Stopped before its budget: {error}", err=True)
    elif record.error:
        click.echo(f"Stopped on an error: {error}", err=True)


def _error_lines(error: str | None, lines: int = 20) -> str:
    """A stored error (often a traceback) as lines a terminal shows: each made safe and cut to
    :data:`_ERROR_LIMIT` characters, the middle of a long one left out (its start says what
    stopped, its end what failed)."""
    shown = [printable(line, limit=_ERROR_LIMIT) for line in str(error or "").splitlines()]
    if len(shown) > lines:
        left_out = len(shown) - lines
        shown = [*shown[:3], f"  … ({left_out} lines left out)", *shown[-(lines - 3) :]]
    return "\n".join(shown)


def _shown_status(summary: Summary) -> str:
    """The population's status as a person reads it: a population marked running that no
    worker holds a member of was stopped (Ctrl-C, a crash) and waits for ``poptune resume``."""
    if summary.status is PopulationStatus.RUNNING and summary.running == 0:
        return "interrupted"
    return summary.status.value


def _status_table(result: Result, members: list[MemberRecord], summary: Any) -> Table:
    best = "—" if summary.best_score is None else _format_score(summary.best_score)
    table = Table(
        title=(
            f"{printable(result.name)} · {_shown_status(summary)} · {summary.steps_done}/"
            f"{summary.steps_total} intervals · best {printable(result.metric)} {best}"
        ),
        caption=(
            f"{summary.exploits} exploits · {summary.failures} failures"
            + (f" · {summary.recoveries} recovered" if summary.recoveries else "")
            + " · ★ best"
        ),
    )
    for column in ("member", "status", "step", printable(result.metric), "hparams", "parent"):
        table.add_column(column, overflow="fold")
    # no live lease at all: a member still marked running was held by a worker that died
    stale = _shown_status(summary) == "interrupted"
    for member in members:
        running = member.status is MemberStatus.RUNNING
        table.add_row(
            f"{member.id}{' ★' if member.id == summary.best_member else ''}",
            "interrupted" if stale and running else member.status.value,
            str(member.step),
            _format_score(member.score),
            _format_hparams(member.hparams),
            "—" if member.parent is None else str(member.parent),
        )
    return table


#: How long ``status --watch`` sees a running population with no member held before it takes
#: it as interrupted and stops (a worker lets go of a member between two claims).
_INTERRUPTED_AFTER = 5.0


def _watch(result: Result, every: float) -> bool:
    """Redraw the member table until the population stops running, or no worker has held a
    member of it for a while (a crash, Ctrl-C: it waits for ``poptune resume``); whether it
    ended so (``False``: the user pressed Ctrl-C)."""
    from rich.live import Live

    def table(summary: Summary) -> Table:
        return _status_table(result, result.members, summary)

    summary = result.summary()
    idle_since: float | None = None
    try:
        with Live(table(summary), refresh_per_second=4, console=_console()) as live:
            while summary.status is PopulationStatus.RUNNING:
                if _shown_status(summary) != "interrupted":
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= max(_INTERRUPTED_AFTER, 2 * every):
                    break
                time.sleep(every)
                summary = result.summary()
                live.update(table(summary))
    except KeyboardInterrupt:
        return False
    return True


@main.command()
@click.argument("name")
@_storage_option
@_checkpoints_option
@click.option(
    "-o",
    "--output",
    "output",
    default=None,
    metavar="FILE",
    help="Where to write the HTML (default: NAME-report.html in this folder, NAME made a safe "
    "file name).",
)
@_errors
def report(name: str, storage: str | None, checkpoints: str | None, output: str | None) -> None:
    """Write a self-contained HTML report of population NAME."""
    result = load(storage, name, checkpoints)
    # The name is the storage's: never a path of its own ('../../x', '/etc/x').
    target = output or safe_path(".", result.name, "-report.html")
    try:
        path = result.report(target)
    except OSError as error:
        raise _write_error(target, error) from None
    click.echo(f"Wrote {printable(path, limit=None)}")


@main.command()
@click.argument("name")
@_storage_option
@_checkpoints_option
@click.option(
    "--kind",
    type=click.Choice(["scores", "hparams", "lineage"]),
    default="scores",
    show_default=True,
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    metavar="FILE",
    help="Image file: .png, .svg or .pdf.",
)
@_errors
def plot(name: str, storage: str | None, checkpoints: str | None, kind: str, output: str) -> None:
    """Save a static figure of population NAME (needs matplotlib)."""
    try:
        path = load(storage, name, checkpoints).plot(kind, output)
    except OSError as error:
        raise _write_error(output, error) from None
    click.echo(f"Wrote {printable(path, limit=None)}")


@main.command()
@click.argument("name")
@_storage_option
@_checkpoints_option
@click.option(
    "--scope",
    type=click.Choice(["all", "last"]),
    default="all",
    show_default=True,
    help="all: the best recorded interval whose checkpoint is kept (the weights before a "
    "divergence too); last: the best weights a healthy member holds now.",
)
@_errors
def best(name: str, storage: str | None, checkpoints: str | None, scope: str) -> None:
    """Print the best weights of population NAME as JSON: who trained them to which step, with
    which hparams, their score and checkpoint (see --scope)."""
    result = load(storage, name, checkpoints)
    chosen = result.best_member(scope)
    payload = {
        "population": result.name,
        "scope": scope,
        "member": chosen.member,
        "step": chosen.step,
        "metric": result.metric,
        "score": _jsonable(chosen.score),
        "hparams": _jsonable(dict(chosen.hparams)),
        "metrics": _jsonable(dict(chosen.metrics)),
        "checkpoint": None if chosen.checkpoint is None else chosen.checkpoint.path,
    }
    click.echo(json.dumps(payload, indent=2))


@main.command()
@click.argument("name")
@_storage_option
@_checkpoints_option
@click.option("--member", type=int, default=None, help="Follow this member instead of the best.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_errors
def schedule(
    name: str, storage: str | None, checkpoints: str | None, member: int | None, as_json: bool
) -> None:
    """Print the hyperparameter schedule of the best member's lineage in population NAME."""
    result = load(storage, name, checkpoints)
    entries = result.schedule(member)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "step": e.step,
                        "member": e.member,
                        "member_step": e.member_step,
                        "score": _jsonable(e.score),
                        "hparams": _jsonable(dict(e.hparams)),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    if not entries:  # only with --member: the best has a lineage, or result.best raised
        click.echo(
            f"Member {member} of {printable(result.name)} holds no trained weights yet (its "
            "first interval is not recorded, or it failed): no schedule to show.",
            err=True,
        )
        return
    table = Table(
        title=f"schedule of {printable(result.name)} (lineage of member {entries[-1].member})"
    )
    names = list(entries[0].hparams) if entries else []
    for column in ("step", "member", *names, result.metric):
        table.add_column(printable(column))
    for entry in entries:
        values = [entry.hparams.get(n) for n in names]
        table.add_row(
            str(entry.step),
            str(entry.member),
            *(f"{v:.4g}" if isinstance(v, float) else printable(v) for v in values),
            _format_score(entry.score),
        )
    _console().print(table)


@main.command()
@click.argument("name")
@_storage_option
@click.option(
    "--checkpoints",
    default=None,
    metavar="PATH",
    help="Where this machine reaches the checkpoints (default: the recorded one).",
)
@click.option(
    "--device",
    default=None,
    metavar="DEVICE",
    help="The one device this worker sees: cuda:N (N >= 0) or cpu; it becomes cuda:0 inside "
    "the worker and is in $POPTUNE_DEVICE.",
)
@click.option(
    "--resident",
    type=click.IntRange(min=1),
    default=None,
    help="How many members this worker keeps in memory between intervals (default: all it "
    "trains). Lower it when memory is short.",
)
@click.option(
    "--block",
    type=click.IntRange(min=1),
    default=None,
    help="How many members this worker trains per call of the training function (default: "
    "the population's recorded block; see docs/blocks.md).",
)
@_errors
def worker(
    name: str,
    storage: str | None,
    checkpoints: str | None,
    device: str | None,
    resident: int | None,
    block: int | None,
) -> None:
    """Join population NAME as one more worker, until its budget is spent.

    Start any number of these, on any machine that reaches the storage and the checkpoints
    (a SLURM array job, a Kubernetes Job...): the trainable is imported by its recorded
    module:qualname, and workers may join or leave at any time.
    """
    from .population import join

    if device is not None:
        # Before the trainable is imported (load imports it): CUDA reads CUDA_VISIBLE_DEVICES
        # once, when it initialises.
        visible = os.environ.get(CUDA_VISIBLE_DEVICES)
        apply_environment(device_environment([parse_device(device)], 0, visible))
    try:
        population = load(open_storage(storage, mode="write"), name, checkpoints)
        trained = join(population, checkpoints=checkpoints, resident=resident, block=block)
    except KeyboardInterrupt:
        click.echo("Interrupted; the member in progress was given back.", err=True)
        sys.exit(130)
    click.echo(
        f"{printable(name)}: this worker trained {trained} intervals; the population is done."
    )


@main.command("replay")
@click.argument("name")
@_storage_option
@click.option("--member", type=int, default=None, help="Whose lineage (default: the best).")
@click.option("--as", "replay_name", default=None, help="Its name (default: NAME-replay).")
@click.option("--progress/--no-progress", default=True, help="Show a progress display.")
@_errors
def replay_command(
    name: str, storage: str | None, member: int | None, replay_name: str | None, progress: bool
) -> None:
    """Train one fresh model on the winning schedule of NAME (no weight copying)."""
    source = load(open_storage(storage, mode="write"), name)
    replayed = replay(source.storage, name, member, replay_name, progress=progress)
    click.echo(
        f"{printable(replayed.name)}: {printable(source.metric)} "
        f"{_format_score(replayed.best.score)} after {replayed.best.step} intervals on the "
        f"schedule of {printable(name)} (whose best is {_format_score(source.best.score)})"
    )


@main.command()
@click.argument("name")
@_storage_option
@_checkpoints_option
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--progress/--no-progress", default=True, help="Show a progress display.")
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="DEVICE",
    help="A device for the workers (repeat it: --device cuda:0 --device cuda:1); worker i "
    "gets the i-th, round-robin. Each is cuda:N (N >= 0) or cpu.",
)
@click.option(
    "--intervals",
    type=click.IntRange(min=1),
    default=None,
    help="A larger budget: members train on to this many intervals (default: the stored one).",
)
@click.option(
    "--checkpoint-every",
    type=CheckpointEvery(),
    default=None,
    help="Checkpoint a member every K intervals (1: after every one), or once a duration of "
    "its training has passed (600s, 10m, 1.5h) and where it exploits; recorded with the "
    "population (default: the recorded one). See docs/overhead.md.",
)
@_errors
def resume(
    name: str,
    storage: str | None,
    checkpoints: str | None,
    workers: int,
    progress: bool,
    devices: tuple[str, ...],
    intervals: int | None,
    checkpoint_every: int | datetime.timedelta | None,
) -> None:
    """Continue population NAME to its full budget (after Ctrl-C, a crash or a failure), or
    to a larger one with --intervals."""
    devices = tuple(parse_device(device) for device in devices)
    result: Population = load(open_storage(storage, mode="write"), name, checkpoints)
    # given only when given: resume keeps the recorded policy by default
    options = {} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}
    try:
        result = result.resume(
            workers=workers,
            progress=progress,
            devices=devices or None,
            intervals=intervals,
            **options,
        )
    except KeyboardInterrupt:
        url = storage or default_storage_url()
        click.echo(
            f"Interrupted; continue with: {command_hint('resume', name, url)}",
            err=True,
        )
        sys.exit(130)
    chosen = result.best
    click.echo(
        f"{printable(result.name)}: {result.status}; best {printable(result.metric)} "
        f"{_format_score(chosen.score)} (member {chosen.member}, step {chosen.step}) with "
        f"{_format_hparams(chosen.hparams)}"
    )


@main.command()
@_storage_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback lets anyone who reaches it read it.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--every",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between the browser's checks for new intervals.",
)
@_errors
def dashboard(storage: str | None, host: str, port: int, every: float) -> None:
    """Serve a live, read-only dashboard of the populations in the storage (needs
    'poptune[dashboard]')."""
    from .dashboard import serve

    try:
        serve(storage, host=host, port=port, poll_seconds=every)
    except OSError as error:  # the address: taken, or not this machine's
        raise click.ClickException(printable(error.strerror or error, limit=None)) from None


@main.command("export")
@click.argument("name")
@_storage_option
@click.option(
    "--tensorboard", "logdir", default=None, metavar="DIR", help="Write TensorBoard runs here."
)
@click.option(
    "--mlflow",
    "tracking_uri",
    default=None,
    metavar="URI",
    help="Write MLflow runs to this tracking URI (e.g. sqlite:///mlflow.db).",
)
@click.option("--experiment", default="poptune", show_default=True, help="The MLflow experiment.")
@click.option(
    "--wandb",
    "project",
    default=None,
    metavar="PROJECT",
    help="Write Weights & Biases runs to this project (WANDB_MODE=offline: for wandb sync).",
)
@click.option("--entity", default=None, help="The W&B entity (team or user) of --wandb.")
@click.option("--follow", is_flag=True, help="Keep exporting until the population stops.")
@click.option(
    "--every",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between looks at the storage with --follow.",
)
@_errors
def export(
    name: str,
    storage: str | None,
    logdir: str | None,
    tracking_uri: str | None,
    experiment: str,
    project: str | None,
    entity: str | None,
    follow: bool,
    every: float,
) -> None:
    """Export population NAME to TensorBoard, MLflow and/or Weights & Biases; only what is not
    there yet."""
    trackers: list[Tracker] = []
    if logdir is not None:
        trackers.append(TensorBoard(logdir))
    if tracking_uri is not None:
        trackers.append(MLflow(tracking_uri, experiment=experiment))
    if project is not None:
        trackers.append(WandB(project, entity=entity))
    elif entity is not None:
        raise click.UsageError("--entity names the W&B entity of --wandb PROJECT: add --wandb.")
    if not trackers:
        raise click.UsageError(
            "Say where to export: --tensorboard DIR, --mlflow URI and/or --wandb PROJECT."
        )
    store = open_storage(storage, mode="read")
    result = Result(store, store.population(name), None)  # reading needs no user code
    try:
        with TrackerExporter(result, trackers) as exporter:
            try:
                if follow:
                    exporter.follow(every)
                else:
                    exporter.export()
            except KeyboardInterrupt:
                click.echo("Interrupted; what was exported is kept.", err=True)
    except TrackerError as error:
        raise click.ClickException(_safe(str(error), storage, tracking_uri)) from None
    for tracker in trackers:
        intervals, exploits = exporter.written[id(tracker)]
        click.echo(
            f"{printable(name)}: {intervals} new intervals, {exploits} new exploits -> {tracker!r}"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
