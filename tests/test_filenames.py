"""Stored names as file names: one safe component each, ordinary names unchanged, no clashes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poptune._filenames import MAX_LENGTH, safe_filename, safe_path

HOSTILE = [
    "../../x",
    "..",
    ".",
    "",
    "/abs/path",
    "a/b",
    "a\\b",
    "C:\\x",
    "a\0b",
    "line\nbreak",
    ".hidden",
    "trailing.",
    "CON",
    "nul.txt",
    "com1",
    "x" * 300,
    "学习率",
    "ｘ／ｙ",  # full-width solidus: no separator, but not ASCII
    "\udcff",  # a lone surrogate, as os.fsdecode makes of undecodable bytes
    "-x",  # read as an option by `rm *`, `grep pattern *`
    "--help",
]


def is_single_safe_component(name: str) -> bool:
    return (
        0 < len(name) <= MAX_LENGTH
        and re.fullmatch(r"[A-Za-z0-9._-]+", name) is not None
        and not name.startswith((".", "-"))
        and not name.endswith(".")
        and name.split(".", 1)[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
        and re.fullmatch(r"(COM|LPT)[0-9]", name.split(".", 1)[0].upper()) is None
    )


@pytest.mark.parametrize("name", ["digits", "toy", "run-3", "PBT_v2.1", "a" * MAX_LENGTH])
def test_an_ordinary_name_is_kept(name: str) -> None:
    assert safe_filename(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_becomes_one_safe_component_with_a_hash(name: str) -> None:
    safe = safe_filename(name)
    assert is_single_safe_component(safe), safe
    assert re.search(r"-[0-9a-f]{8}\Z", safe), safe
    assert Path(safe).name == safe and os.path.basename(safe) == safe


def test_a_changed_name_stays_readable() -> None:
    assert safe_filename("my run").startswith("my_run-")
    assert safe_filename("a/b").startswith("a_b-")


def test_an_ordinary_name_that_looks_hashed_is_changed_so_it_cannot_clash() -> None:
    changed = safe_filename("a/b")  # "a_b-<hash>", itself an ordinary-looking name
    assert safe_filename(changed) != changed


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_any_name_is_one_safe_component(name: str) -> None:
    safe = safe_filename(name)
    assert is_single_safe_component(safe)
    assert safe == name or re.search(r"-[0-9a-f]{8}\Z", safe)
    assert safe_filename(name) == safe  # the same name always finds its own file again


@given(st.sets(st.text(max_size=40), min_size=2, max_size=60))
@settings(max_examples=100)
def test_different_names_get_different_file_names(names: set[str]) -> None:
    assert len({safe_filename(name) for name in names}) == len(names)


@given(st.sets(st.text(alphabet="./\\_-aA0 \0", max_size=8), min_size=2, max_size=60))
@settings(max_examples=100)
def test_names_that_differ_only_in_unsafe_characters_still_differ(names: set[str]) -> None:
    # The alphabet collapses to few readable forms ("/" and "\\" both become "_"): only the hash
    # tells these apart.
    assert len({safe_filename(name) for name in names}) == len(names)


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_path_stays_in_its_folder(tmp_path: Path, name: str) -> None:
    path = safe_path(tmp_path, name, "-report.html")
    assert path.parent == tmp_path
    assert path.resolve().parent == tmp_path.resolve()
    assert path.name.endswith("-report.html")
