"""Storage URLs as they may be shown: with the password hidden.

The one redaction function for every kind of URL lives in :mod:`poptune._redact`; it is
re-exported here (and by :mod:`poptune.storage`) where the storage code has always found it.
"""

from __future__ import annotations

from .._redact import redact_text, redact_url

__all__ = ["redact_text", "redact_url"]
