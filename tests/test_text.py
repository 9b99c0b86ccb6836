"""Names and stored text made safe for a terminal: one line, no escape codes, short."""

from __future__ import annotations

import shlex

import pytest

from poptune._text import printable, shell_word, unsafe_character
from poptune._validation import InvalidParameterError, check_name


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("digits", "digits"),
        ("naïve-ünïcode ✓ 🙂", "naïve-ünïcode ✓ 🙂"),  # printable non-ASCII stays
        ("evil\x1b[2Jname", "evil\\x1b[2Jname"),  # would clear the screen
        ("two\nlines\r\x00", "two\\nlines\\r\\x00"),
        ("lone\udc80surrogate", "lone\\udc80surrogate"),  # cannot be written as UTF-8
        ("abc\u202edcba", "abc\\u202edcba"),  # would display reversed
        ("x\u2028y", "x\\u2028y"),  # a line separator
    ],
)
def test_printable_escapes_what_a_terminal_would_obey(text, shown):
    assert printable(text) == shown
    assert printable(text).encode("utf-8")  # always writable


def test_printable_cuts_long_text_with_an_ellipsis():
    assert printable("x" * 10_000) == "x" * 79 + "…"
    assert printable("\x1b" * 10_000, limit=10) == "\\x1b\\x1b\\…"
    assert printable("x" * 10_000, limit=None) == "x" * 10_000


def test_check_name_refuses_exactly_the_unsafe_characters():
    assert check_name("name", "digits ✓") == "digits ✓"
    for bad in ("a\x1bb", "a\udc80b", "a\u202eb", "a\nb"):
        assert any(unsafe_character(c) for c in bad)
        with pytest.raises(InvalidParameterError, match="'name' parameter must be a name"):
            check_name("name", bad)
    with pytest.raises(InvalidParameterError) as error:
        check_name("name", "\x00" * 10_000)
    assert len(str(error.value)) < 400  # the value is shown, not repeated in full


@pytest.mark.parametrize("name", ["digits", "my run", "it's", "$(touch x) `y` ; z", "x" * 200])
def test_shell_word_is_read_back_by_a_shell_as_the_name(name):
    assert shlex.split(f"poptune resume {shell_word(name)}") == ["poptune", "resume", name]


def test_shell_word_escapes_what_a_terminal_would_obey():
    word = shell_word("evil\x1b[2J name")
    assert "\x1b" not in word and shlex.split(word) == ["evil\\x1b[2J name"]
