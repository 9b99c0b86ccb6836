"""Names and stored text as they may be shown on a terminal.

Population, hyperparameter and metric names, and error text stored by a worker, are untrusted:
a name may hold terminal escape codes (``\\x1b[2J`` clears the screen), a right-to-left
override that makes the text read backwards, a lone surrogate that cannot be written as UTF-8,
or ten thousand characters. :func:`printable` makes any of them one safe, short line;
:func:`unsafe_character` is the rule it uses, which :func:`poptune._validation.check_name` also
uses to refuse such names where they enter.

This module imports nothing of poptune's, so every layer may use it.
"""

from __future__ import annotations

import shlex
import unicodedata

__all__ = ["BIDI", "NAME_LIMIT", "printable", "shell_word", "unsafe_character"]

#: How many characters of a name a message shows before it cuts it with an ellipsis.
NAME_LIMIT = 80

#: Format characters that change how the text around them is displayed (bidirectional
#: overrides and isolates, the Arabic letter mark): the "Trojan source" characters.
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe_character(character: str) -> bool:
    """Whether ``character`` must not reach a terminal as it is: a control character (escape,
    newline, delete...), a lone surrogate, a line or paragraph separator, or a bidirectional
    override."""
    return character in BIDI or unicodedata.category(character) in ("Cc", "Cs", "Zl", "Zp")


def printable(text: object, limit: int | None = NAME_LIMIT) -> str:
    """``text`` as one safe line: every :func:`unsafe_character` written as its Python escape
    (``\\x1b``, ``\\n``, ``\\udc80``), and cut to ``limit`` characters with ``…`` when longer
    (``None``: never cut).

    Example:
        >>> printable("evil\\x1b[2Jname")
        'evil\\\\x1b[2Jname'
        >>> printable("x" * 100, limit=10)
        'xxxxxxxxx…'
    """
    shown = "".join(
        character.encode("unicode_escape").decode("ascii")
        if unsafe_character(character)
        else character
        for character in str(text)
    )
    if limit is not None and len(shown) > limit:
        return f"{shown[: max(limit - 1, 0)]}…"
    return shown


def shell_word(text: object) -> str:
    """``text`` as one word of a command to copy into a POSIX shell: :func:`printable`, never
    cut, and quoted when it holds anything but letters, digits and ``@%+=:,./-_`` (a space, a
    quote, ``$``...), so the shell reads back the name that was shown.

    Example:
        >>> shell_word("digits-pbt")
        'digits-pbt'
        >>> print(shell_word("my run's name"))
        'my run'"'"'s name'
    """
    return shlex.quote(printable(text, limit=None))
