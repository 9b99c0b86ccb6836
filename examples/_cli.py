"""What the examples share: their command line and how they print a finished population."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import poptune as pt
from poptune.storage import (
    PopulationExists,
    PopulationNotFound,
    command_hint,
    default_storage_url,
    storage_option,
)

#: The explore strategies an example can be run with (``--explore``).
EXPLORES = {
    "perturb": lambda: pt.Perturb((0.8, 1.2), resample_probability=0.25),
    "pb2": pt.PB2,
}


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, but not "(default: None)": an option without
    one says in its help what happens without it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parser(
    description: str, *, name: str | None, population: int, intervals: int
) -> argparse.ArgumentParser:
    """The options every example takes (defaults: the example's own size, 2 workers)."""
    options = argparse.ArgumentParser(description=description, formatter_class=_Defaults)
    options.add_argument("--population", type=int, default=population, help="members")
    options.add_argument("--intervals", type=int, default=intervals, help="the budget per member")
    options.add_argument("--workers", type=int, default=2, help="worker processes")
    options.add_argument("--name", default=name, help="the population's name in the storage")
    options.add_argument(
        "--storage",
        default=None,
        help=f"a SQLAlchemy URL (default: {default_storage_url()}, or $POPTUNE_STORAGE)",
    )
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--sync", action="store_true", help="generations: reproducible runs")
    options.add_argument(
        "--explore",
        choices=sorted(EXPLORES),
        default="perturb",
        help="perturb: the paper's perturb-or-resample; pb2: a GP bandit (pt.PB2)",
    )
    options.add_argument("--no-progress", action="store_true")
    return options


def at_least_one(options: argparse.ArgumentParser, **values: int) -> None:
    """Refuse (exit 2, one line) an example's own count option below 1 (``steps=0``:
    ``--steps 0``), before anything is stored."""
    for name, value in values.items():
        if value < 1:
            options.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``pt.run`` arguments the command line gives, with the examples' strategies (the
    paper's truncation, and perturb-or-resample unless ``--explore pb2``)."""
    return {
        "population": args.population,
        "intervals": args.intervals,
        "workers": args.workers,
        "exploit": pt.Truncation(0.25),
        "explore": EXPLORES[args.explore](),
        "name": args.name,
        "storage": args.storage,
        "seed": args.seed,
        "sync": args.sync,
        "progress": not args.no_progress,
    }


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(result: pt.Result, label: str, hidden: Iterable[str] = ()) -> None:
    """Print the best member, its hyperparameters and the schedule its weights trained with
    (``label``: how to call the score, e.g. ``accuracy``); the fixed values named in
    ``hidden`` (settings, not tuned) are left out of the schedule."""
    best = result.best
    print(f"\nbest member {best.member}: {label} {best.score:.4f} after {best.step} intervals")
    left_out = set(hidden)
    tuned = {k: v for k, v in best.hparams.items() if k not in left_out}
    print("hparams: " + ", ".join(f"{k}={_value(v)}" for k, v in tuned.items()))
    schedule = result.schedule()
    names = [n for n in schedule[0].hparams if n not in left_out] if schedule else []
    print(f"\nschedule of the winning lineage (step: member, {', '.join(names)}, {label})")
    for entry in schedule:
        values = "  ".join(f"{k}={_value(entry.hparams[k])}" for k in names)
        print(f"  {entry.step:3d}: member {entry.member}  {values}  {label}={entry.score:.4f}")
    where(result)


def where(result: pt.Result) -> None:
    """Print the exploit count, where the population is stored and how to look at it."""
    option = storage_option(result.storage.url)
    print(f"\nexploits: {len(result.exploits())}")
    print(f"stored as {result.name!r} in {pt.storage.redact_url(result.storage.url)}; look at it:")
    url = result.storage.url  # commands to copy: the name quoted for the shell
    print(f"  {command_hint('status', result.name, url)}")
    print(f"  {command_hint('report', result.name, url)}     (an HTML report)")
    print(f"  poptune dashboard{option}     (live, in a browser; pip install 'poptune[dashboard]')")


def guard(main: Callable[[], Any]) -> NoReturn:
    """Run an example's ``main`` as a command: bad input is one clear line (exit 1; 2 for what
    the command line's parser refuses), Ctrl-C
    exits quietly (poptune has already said how to resume), never a traceback for either."""
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except PopulationExists as error:
        sys.exit(f"error: {error} Or pass --name to start another population.")
    except (
        ValueError,  # a bad option value, e.g. --population 1 (pt.InvalidParameterError)
        pt.InvalidParameterError,
        PopulationNotFound,
        pt.PopulationError,
        pt.StorageError,
    ) as error:
        sys.exit(f"error: {error}")
    sys.exit(0)
