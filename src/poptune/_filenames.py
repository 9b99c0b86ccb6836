"""Stored names (populations, members, metrics...) as file names: one safe path component each.

A name comes from whoever wrote the storage, so it is untrusted: ``../../x``, ``/etc``, ``a/b``,
``..``, ``CON`` or a 300-character name must never leave the folder it is written into, nor
clash with another name. :func:`safe_filename` keeps an ordinary name as it is and turns any
other into a readable file name plus a short hash of the original.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["MAX_LENGTH", "safe_filename", "safe_path"]

#: The longest file name :func:`safe_filename` returns: room under the usual 255-byte limit for
#: what callers add (``-report.html``, ``member-0001``, a temporary-file suffix).
MAX_LENGTH = 100

# Portable on every file system: ASCII letters, digits and "._-" (POSIX's portable file name
# characters). Spaces and non-ASCII letters are valid on most, but quoting, Unicode
# normalisation (macOS stores NFD) and shells make them surprises; they are replaced.
_ORDINARY = re.compile(r"[A-Za-z0-9._-]+")
_OTHER = re.compile(r"[^A-Za-z0-9._-]")
_HASH_LENGTH = 8
# What a changed name ends with: an ordinary name that already looks like that is changed too,
# so that an unchanged name never equals another name's changed one.
_HASHED = re.compile(rf"-[0-9a-f]{{{_HASH_LENGTH}}}\Z")
# Names Windows reserves for devices, whatever the extension ("con.txt" is the console too).
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{device}{n}" for device in ("COM", "LPT") for n in range(10)]
)


def _is_ordinary(name: str) -> bool:
    return (
        0 < len(name) <= MAX_LENGTH
        and _ORDINARY.fullmatch(name) is not None
        and not name.startswith(".")  # ".", "..", hidden files
        and not name.startswith("-")  # read as an option: `rm *`, `grep x *`
        and not name.endswith(".")  # Windows drops a trailing dot
        and name.split(".", 1)[0].upper() not in _RESERVED
        and _HASHED.search(name) is None
    )


def safe_filename(name: str) -> str:
    """``name`` as one safe file name: unchanged if it is ordinary, else made safe and tagged.

    Ordinary means 1 to :data:`MAX_LENGTH` characters among ASCII letters, digits and ``._-``,
    not starting with a dot or a dash (which commands read as an option: ``rm *``) nor ending
    with a dot, not a Windows device name (``CON``, ``NUL``, ``COM1``...).
    Any other name has every other character replaced by ``_`` (a leading dot or dash too), is
    cut to fit, and gets ``-`` and 8 hex digits of the SHA-256 of the original appended, so two
    different names do not map to the same file name (short of a hash collision). The result is
    never empty, ``.`` or ``..`` and never holds a separator: joined to a folder, it stays in it.

    Example:
        >>> safe_filename("digits")
        'digits'
        >>> safe_filename("../../x")
        '_._.._x-9cdf6a50'
    """
    if _is_ordinary(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]
    readable = _OTHER.sub("_", name)
    if readable.startswith((".", "-")):
        readable = "_" + readable[1:]
    if readable.split(".", 1)[0].upper() in _RESERVED:
        readable = "_" + readable
    readable = readable[: MAX_LENGTH - _HASH_LENGTH - 1] or "_"
    return f"{readable}-{digest}"


def safe_path(folder: str | os.PathLike[str], name: str, suffix: str = "") -> Path:
    """``folder / (safe_filename(name) + suffix)``, checked to be a file right inside ``folder``.

    ``suffix`` is the caller's own text (``"-report.html"``), never a stored string.

    Example:
        >>> safe_path("runs/tb", "../../x").as_posix()
        'runs/tb/_._.._x-9cdf6a50'
    """
    base = Path(folder)
    path = base / f"{safe_filename(name)}{suffix}"
    # A second line of defence: whatever safe_filename returns, nothing leaves the folder.
    if path.parent != base or path.name in ("", ".", "..") or os.sep in path.name:
        raise ValueError(
            f"The name {name!r} would leave the folder {str(base)!r} (as {str(path)!r}); "
            "this is a bug in poptune's safe_filename: please report it."
        )
    return path
