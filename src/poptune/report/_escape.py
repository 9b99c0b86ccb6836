"""How the report and the dashboard put stored strings into HTML, and the policy that backs it.

Every stored string (population, hyperparameter and metric names, values, strategy
descriptions, error texts) is untrusted. The pages place such strings in two contexts only:

- text, and attribute values that are always quoted: :func:`text` escapes ``& < > " '``, which
  keeps a string inert in both, in HTML and in the inline SVG figures alike;
- never in an element id, a tag or attribute name, an unquoted attribute, a URL scheme, a
  ``<script>`` or a ``<style>``: ids are made of our own tokens and indices (:func:`element_id`),
  links of our own paths with the string URL-encoded in the query, and the scripts read
  numbers from ``data-`` attributes or JSON fetched from the server.

The Content-Security-Policy (:func:`policy`) is the second line: it runs only the page's own
inline script and style (named by their SHA-256 or a nonce), so a string that escaping missed
can add markup but runs nothing, and the page loads nothing from anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re

from .._text import BIDI

__all__ = ["element_id", "policy", "source_hash", "text"]

_TOKEN = re.compile(r"[a-z][a-z0-9-]*")


#: Characters a page shows as their Python escape (``\\x1b``, ``\\u202e``), as a terminal does:
#: control characters but tab and line ends (a saved page is text someone may ``cat``), and
#: bidirectional overrides, which would make a value read backwards.
_SHOWN_ESCAPED = {
    code: chr(code).encode("unicode_escape").decode("ascii")
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), *map(ord, BIDI)]
    if chr(code) not in "\t\n\r"
}


def text(value: object) -> str:
    """``value`` as HTML text or a quoted attribute value: ``& < > " '`` escaped, control
    characters (but tab and line ends) and bidirectional overrides shown as escapes.

    Example:
        >>> text('k"><svg/onload=alert(1)>')
        'k&quot;&gt;&lt;svg/onload=alert(1)&gt;'
        >>> print(text(chr(0x202E) + "evil" + chr(0x1B) + "[2J"))
        \\u202eevil\\x1b[2J
    """
    return html.escape(str(value).translate(_SHOWN_ESCAPED), quote=True)


def element_id(kind: str, index: int | None = None) -> str:
    """An element id built from our own ``kind`` (lower-case letters, digits, dashes) and an
    index, never from a stored name: ``element_id("hparam", 2) == "hparam-2"``.

    Raises:
        ValueError: if ``kind`` is not such a token (a caller passed a stored string).
    """
    if not _TOKEN.fullmatch(kind):
        raise ValueError(
            f"An element id is made of lower-case letters, digits and dashes, not {kind!r}: "
            "number the element (element_id(kind, index)) instead of naming it by a stored string."
        )
    return kind if index is None else f"{kind}-{int(index)}"


def source_hash(code: str) -> str:
    """The Content-Security-Policy source that allows an inline ``<script>`` or ``<style>``
    whose whole content is ``code``: ``'sha256-<base64 digest of its UTF-8>'``."""
    digest = hashlib.sha256(code.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def policy(script: str, style: str, images: bool = False, connect: bool = False) -> str:
    """A Content-Security-Policy that allows nothing but the page's own inline ``script`` and
    ``style`` sources (hashes or nonces, as :func:`source_hash` gives), ``data:`` images if
    ``images``, and requests to the page's own server if ``connect``. Fit for a ``<meta>``
    element (it has no ``frame-ancestors``, which only a header can carry)."""
    parts = [
        "default-src 'none'",
        f"script-src {script}",
        f"style-src {style}",
        *(["img-src data:"] if images else []),
        *(["connect-src 'self'"] if connect else []),
        "base-uri 'none'",
        "form-action 'none'",
    ]
    return "; ".join(parts)
