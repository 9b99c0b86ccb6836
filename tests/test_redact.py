"""One redaction for every URL: no password or token reaches a message, repr, log or output."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import poptune as pt
from poptune._redact import redact_text, redact_url
from poptune.cli import main
from poptune.storage import redact_url as storage_redact_url

PASSWORD = "S3cretPW-planted"
TOKEN = "tok-planted-4711"
SECRETS = (PASSWORD, TOKEN)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg://bob:{PASSWORD}@db-host:5432/poptune",
            "postgresql+psycopg://bob:***@db-host:5432/poptune",
        ),
        # not a URL at all (the scheme is missing): what looks like user:password is hidden
        (f"bob:{PASSWORD}@db-host/poptune", "bob:***@db-host/poptune"),
        (f"postgresql//bob:{PASSWORD}@db-host/db", "postgresql//bob:***@db-host/db"),
        # a password holding @ / ? : (SQLAlchemy allows them unquoted)
        ("postgresql://bob:p@s/s?:w@db-host/db?x=1", "postgresql://bob:***@db-host/db?x=1"),
        (f"https://bob:{PASSWORD}@mlflow.example/", "https://bob:***@mlflow.example/"),
        (f"https://{TOKEN}@mlflow.example/", "https://***@mlflow.example/"),
        (
            f"http://mlflow:5000/?experiment=7&token={TOKEN}&api_key=k1&x=1",
            "http://mlflow:5000/?experiment=7&token=***&api_key=***&x=1",
        ),
        (f"s3://AKIAKEY:{PASSWORD}@bucket/prefix", "s3://AKIAKEY:***@bucket/prefix"),
        (
            f"postgresql://bob@h/db?sslpassword={PASSWORD}&application_name=a",
            "postgresql://bob@h/db?sslpassword=***&application_name=a",
        ),
        # nothing secret: unchanged, including an @ in a path and a user name alone
        ("sqlite:////data/runs@2026/poptune.db", "sqlite:////data/runs@2026/poptune.db"),
        ("postgresql+psycopg://bob@db-host/poptune", "postgresql+psycopg://bob@db-host/poptune"),
        ("runs/checkpoints", "runs/checkpoints"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_hides_every_kind_of_secret(url, shown):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # redacting twice changes nothing


def test_redact_url_is_the_storage_one_too():
    assert storage_redact_url is redact_url
    assert redact_url(Path("runs/x")) == "runs/x"


def test_redact_text_hides_the_secrets_of_the_given_urls_and_any_url_in_it():
    url = f"postgresql://bob:{PASSWORD}@db-host/db?token={TOKEN}"
    text = f"login failed for {PASSWORD}; token {TOKEN}; see http://u:{PASSWORD}@x/y"
    assert redact_text(text, url) == "login failed for ***; token ***; see http://u:***@x/y"
    quoted = "postgresql://bob:p%40ss-word@db-host/db"
    assert redact_text("password 'p@ss-word' refused", quoted) == "password '***' refused"
    assert redact_text("short pw a in a sentence", "postgresql://bob:a@h/db") == (
        "short pw a in a sentence"  # a one-letter "secret" would garble the text
    )


# --- the planted password: everything a user sees is searched for it ---------------------------


class Collected:
    """Everything a run of commands showed: output, errors with their chain, log records."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def exception(self, error: BaseException) -> None:
        self.texts.append("".join(traceback.format_exception(error)))

    def call(self, function: Callable[[], Any]) -> Any:
        try:
            value = function()
        except Exception as error:
            self.exception(error)
            return None
        self.texts.append(repr(value))
        return value

    def cli(self, *args: str) -> None:
        result = CliRunner().invoke(main, list(args))
        self.texts += [result.stdout, result.stderr]
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            self.exception(result.exception)

    def leaks(self, caplog: pytest.LogCaptureFixture) -> list[str]:
        # Every log line of poptune's, at any level, and every warning of any library's.
        # (Libraries' DEBUG lines are theirs: s3fs and botocore log the bucket string as given.)
        logged = [
            f"{record.name}: {record.getMessage()}"
            for record in caplog.records
            if record.name.startswith("poptune") or record.levelno >= logging.WARNING
        ]
        everything = [*self.texts, *logged]
        return [text for text in everything if any(secret in text for secret in SECRETS)]


@pytest.fixture
def stored(quick_run) -> str:
    quick_run(name="toy", population=2)
    return quick_run.storage


def run_with_checkpoints(quick_run, location: str, folder: Path) -> pt.Result:
    storage = f"sqlite:///{folder / 'other.db'}"
    return quick_run(storage=storage, checkpoints=location, population=2, intervals=1)


def test_s3_credentials_in_a_checkpoint_url_stay_out_of_python_errors(tmp_path, quick_run):
    seen = Collected()
    location = f"s3://AKIAKEY:{PASSWORD}@bucket/prefix"
    seen.call(lambda: run_with_checkpoints(quick_run, location, tmp_path))
    assert not any(PASSWORD in text for text in seen.texts)
    assert any("carries credentials in its URL" in text for text in seen.texts)


def test_a_planted_password_and_token_never_appear(stored, tmp_path, caplog, quick_run):
    caplog.set_level(logging.DEBUG)
    storages = [
        f"bob:{PASSWORD}@db-host/poptune",  # does not parse
        f"postgresql+psycopg://bob:{PASSWORD}@127.0.0.1:1/poptune?token={TOKEN}",  # refused
        f"{stored}?token={TOKEN}",  # opens, with a token the driver ignores
    ]
    checkpoints = [
        f"nosuchfs://bob:{PASSWORD}@bucket/prefix?token={TOKEN}",
        f"s3://AKIAKEY:{PASSWORD}@bucket/prefix",
    ]
    mlflow = f"http://bob:{PASSWORD}@127.0.0.1:9/?token={TOKEN}"  # nobody listens on port 9
    seen = Collected()
    for storage in storages:
        seen.cli("list", "--storage", storage)
        seen.cli("status", "toy", "--storage", storage)
        seen.cli("report", "toy", "--storage", storage, "-o", str(tmp_path / "r.html"))
        seen.cli("export", "toy", "--storage", storage, "--mlflow", mlflow)
        seen.call(lambda s=storage: pt.load(s, "toy"))
    for location in checkpoints:
        seen.cli("status", "toy", "--storage", stored, "--checkpoints", location)
        seen.cli("worker", "toy", "--storage", stored, "--checkpoints", location)
        seen.cli("resume", "toy", "--storage", stored, "--checkpoints", location, "--no-progress")
        seen.call(lambda c=location: pt.load(stored, "toy", c))
    seen.call(lambda: run_with_checkpoints(quick_run, checkpoints[0], tmp_path))
    seen.call(lambda: quick_run(storage=storages[0]))
    tracker = pt.MLflow(mlflow)
    seen.texts += [repr(tracker), str(tracker)]
    seen.call(  # a failing tracker is a warning in the log, never a stopped run
        lambda: quick_run(
            storage=stored, name="tracked", population=2, intervals=1, trackers=[tracker]
        )
    )
    assert "not reachable" in caplog.text  # the tracker did fail, and said so
    assert "bob:***@" in "".join(seen.texts)  # the URLs were shown, redacted
    assert seen.leaks(caplog) == []
