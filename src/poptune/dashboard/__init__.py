"""A live dashboard of the populations in a storage: ``poptune dashboard --storage URL``.

A list of populations (status, progress, best score, age) and, per population, the report's
figures and the member table, updated in the browser as intervals land (the page polls; an idle
poll costs one summary query). It reads the storage only, so it shows a population trained by
``workers=1``, local processes, Ray or ``poptune worker`` processes alike. Needs the
``dashboard`` extra (Starlette and uvicorn), imported only when an app is made.

Example:
    >>> from poptune.dashboard import serve
    >>> serve("sqlite:///runs/poptune.db", port=8080)   # doctest: +SKIP

(Skipped: it serves until Ctrl-C.)
"""

from __future__ import annotations

from ._app import create_app, serve
from ._pages import Dashboard

__all__ = ["Dashboard", "create_app", "serve"]
