"""URLs as they may be shown: every secret in them hidden, whatever kind of URL it is.

poptune meets URLs of several kinds: storage URLs (SQLAlchemy), checkpoint locations (fsspec:
``s3://key:secret@bucket/prefix``), MLflow tracking URIs and W&B hosts (``https://...``). Any of
them may carry a password (``user:password@host``), a token as the user name
(``https://token@host``) or a token in the query string (``?token=...``, ``&password=...``).
Every message, repr, log line and CLI output that shows a URL shows :func:`redact_url` of it,
and text from a library that may quote one (an exception's message) goes through
:func:`redact_text`. Both read the text alone, so a URL that does not parse is hidden too:
anything before an ``@`` that looks like ``user:password`` is.

This module imports nothing of poptune's, so every layer may use it.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

__all__ = ["HIDDEN", "redact_text", "redact_url"]

#: What a secret is replaced with.
HIDDEN = "***"

#: Query keys whose value is a secret: password, passwd, pwd, token, secret, key (api_key,
#: sslkey...), sig and signature, credential, auth. Hiding a harmless value by mistake costs
#: nothing; showing a secret cannot be undone.
_SECRET_KEY = re.compile(r"pass|pwd|token|secret|key|sig|credential|auth", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(?P<lead>[?&;#])(?P<key>[^=&;#?\s]*)=(?P<value>[^&;#\s]*)")
#: A URL inside a longer text (an exception's message).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
#: Schemes where a user name without a password is usually a token (``https://ghp_x@host``).
_TOKEN_USER_SCHEMES = ("http", "https", "ws", "wss")
#: Secrets shorter than this are not replaced inside free text, where they would garble every
#: word that contains them; inside a URL they are always hidden.
_MIN_SECRET = 4


def redact_url(url: str | os.PathLike[str]) -> str:
    """``url`` with its password, user-name token and secret query values replaced by ``***``.

    Works on any text, parseable or not, so it is safe to call on whatever the user passed.

    Example:
        >>> redact_url("postgresql+psycopg://bob:S3cret@db-host/poptune")
        'postgresql+psycopg://bob:***@db-host/poptune'
        >>> redact_url("bob:S3cret@db-host/poptune")  # not a URL at all: still hidden
        'bob:***@db-host/poptune'
        >>> redact_url("https://mlflow.example.com/?token=abc123&experiment=7")
        'https://mlflow.example.com/?token=***&experiment=7'
    """
    text = url if isinstance(url, str) else os.fspath(url)
    span = _userinfo(text)
    if span is not None:
        start, end, shown = span
        text = f"{text[:start]}{shown}{text[end:]}"
    return _QUERY_PAIR.sub(_hide_pair, text)


def redact_text(text: str, *urls: str | os.PathLike[str] | None) -> str:
    """``text`` (an error message, a log line) with every URL in it redacted, and every secret
    of ``urls`` (the URLs the text may quote, even in pieces) replaced by ``***``.

    Example:
        >>> redact_text("connection to bob@db-host failed (password S3cretPW)",
        ...             "postgresql://bob:S3cretPW@db-host/x")
        'connection to bob@db-host failed (password ***)'
    """
    secrets: set[str] = set()
    for url in urls:
        if url is not None:
            secrets |= _secrets(url if isinstance(url, str) else os.fspath(url))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, HIDDEN)
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _userinfo(text: str) -> tuple[int, int, str] | None:
    """Where the ``user:password`` part of ``text`` is, and what to show instead (``None``: it
    has none).

    The part runs from after ``scheme://`` (or the start, for text without a scheme) to the
    last ``@``: a password may itself hold ``@``, ``/``, ``:`` or ``?``, as SQLAlchemy allows,
    so an ``@`` later in a path or query hides more than needed rather than less.
    """
    scheme_end = text.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    if scheme_end < 0 and text.startswith("//"):  # a URL whose scheme was left out
        start = 2
    rest = text[start:]
    if rest.startswith("/"):  # no host part: sqlite:////abs/path, file:///x
        return None
    last = rest.rfind("@")
    if last < 0:
        return None
    userinfo = rest[:last]
    user, colon, _ = userinfo.partition(":")
    scheme = text[:scheme_end].lower() if scheme_end >= 0 else ""
    if colon:
        shown = f"{user}:{HIDDEN}"
    elif scheme in _TOKEN_USER_SCHEMES and userinfo and not set("/?#") & set(userinfo):
        shown = HIDDEN
    else:
        return None
    return start, start + last, shown


def _hide_pair(match: re.Match[str]) -> str:
    if not match.group("value") or not _SECRET_KEY.search(match.group("key")):
        return match.group(0)
    return f"{match.group('lead')}{match.group('key')}={HIDDEN}"


def _secrets(url: str) -> set[str]:
    """The secret pieces of ``url``, as written and percent-decoded (a driver may quote either)."""
    found: list[str] = []
    span = _userinfo(url)
    if span is not None:
        start, end, _ = span
        userinfo = url[start:end]
        found.append(userinfo.partition(":")[2] if ":" in userinfo else userinfo)
    for match in _QUERY_PAIR.finditer(url):
        if match.group("value") and _SECRET_KEY.search(match.group("key")):
            found.append(match.group("value"))
    return {piece for secret in found for piece in (secret, unquote(secret)) if piece}
