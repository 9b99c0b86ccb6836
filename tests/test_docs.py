"""The documentation site builds with no warning: a broken link, page or API reference fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_strictly(tmp_path: Path):
    pytest.importorskip("mkdocs", reason="the site needs pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the site needs pip install -e '.[docs]'")
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("poptune.run", "poptune.results.Result.best_member", "poptune.space.LogUniform"):
        assert f'id="{name}"' in api  # the reference is generated from the docstrings


def test_a_broken_link_fails_the_build(tmp_path: Path):
    """The site's own configuration, on its own pages with one link broken."""
    pytest.importorskip("mkdocs", reason="the site needs pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="the site needs pip install -e '.[docs]'")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "src").symlink_to(ROOT / "src")
    page = tmp_path / "docs" / "concepts.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    built = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0 and "missing.md" in built.stdout + built.stderr
