"""The code base stays ruff-clean and ruff-formatted and type-checks with mypy (part of the
test command, so CI checks all three)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``ruff`` run on every folder of Python code, or a skip when it is not installed."""
    if (
        shutil.which("ruff") is None
        and subprocess.run(
            [sys.executable, "-m", "ruff", "--version"], capture_output=True
        ).returncode
    ):
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, "src", "tests", "examples", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_ruff_check_is_clean():
    out = _ruff("check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    """Every file is as ``ruff format`` writes it, so a reformat never hides a change."""
    out = _ruff("format", "--check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean():
    """The package ships py.typed, so its annotations are a promise: mypy checks them."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_poptune_imports_no_framework():
    """But it does import ``numpy.random``, so that forked workers inherit it instead of each
    importing it at their first draw."""
    code = (
        "import sys, poptune; "
        "print(sorted(m for m in ('torch', 'ray', 'psycopg', 'matplotlib', 'pandas', "
        "'tensorboard', 'mlflow') if m in sys.modules)); print('numpy.random' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "True"]
