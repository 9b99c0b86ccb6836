"""The dashboard's web application (Starlette) and its server (uvicorn), both imported lazily."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from ..report._escape import policy
from ..storage import PopulationNotFound, StorageError
from ._pages import STYLE_SOURCE, Dashboard, error_page

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["create_app", "serve"]

# Errors that mean "the storage cannot be read right now", shown as a 503 page.
_UNAVAILABLE = (StorageError, SQLAlchemyError, OSError)


def _starlette() -> Any:
    try:
        import starlette  # noqa: F401
    except ImportError:
        raise ImportError(
            "The dashboard needs Starlette and uvicorn: pip install 'poptune[dashboard]'."
        ) from None


def _headers(nonce: str | None = None) -> dict[str, str]:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    return {
        # The page runs only its own inline script and style, polls only its own server, and
        # fetches nothing from elsewhere (its icon is a data: URL).
        "Content-Security-Policy": (
            policy(script, STYLE_SOURCE, images=True, connect=True) + "; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def create_app(
    storage_url: str | None = None,
    poll_seconds: float = 1.0,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard of the populations in ``storage_url`` as a Starlette application.

    Read-only (GET only). The storage is opened on the first request, and again on later
    requests until it opens, so a storage that is missing or down gives a 503 page that names it
    (password hidden), not a stack trace. ``allowed_hosts`` restricts the ``Host`` header
    (:func:`serve` sets it to the loopback names when it binds to loopback).

    Routes: ``/`` (the populations), ``/population?name=NAME`` (one population),
    ``/api/populations`` and ``/api/population?name=NAME&since=VERSION`` (JSON that the pages
    poll; 204 while the population is still at ``VERSION``).

    Example:
        >>> from starlette.testclient import TestClient
        >>> TestClient(create_app("sqlite:///runs/poptune.db")).get("/")
        <Response [200 OK]>
    """
    _starlette()
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    board = Dashboard(storage_url, poll_seconds)
    middleware = [Middleware(GZipMiddleware, minimum_size=1024, compresslevel=6)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        board.close()

    app = Starlette(routes=_Handlers(board).routes(), middleware=middleware, lifespan=lifespan)
    app.state.dashboard = board
    return app


def _name_of(request: Request) -> str:
    name = request.query_params.get("name")
    if name is None:
        raise PopulationNotFound("Which population? Add ?name=NAME to the address.")
    return name


class _Handlers:
    """The dashboard's routes over one :class:`Dashboard`: its two pages and the JSON they
    poll. A storage that cannot be read gives a 503 that names it, a missing population a 404."""

    def __init__(self, board: Dashboard) -> None:
        self.board = board

    def routes(self) -> list[Any]:
        """``/``, ``/population``, ``/api/populations`` and ``/api/population``."""
        from starlette.routing import Route

        return [
            Route("/", self.index),
            Route("/population", self.population),
            Route("/api/populations", self.api_populations),
            Route("/api/population", self.api_population),
        ]

    def page(self, render: Callable[[str], str]) -> Response:
        """The HTML ``render(nonce)`` gives, or the error page of why it could not."""
        from starlette.responses import HTMLResponse

        board = self.board
        nonce = secrets.token_urlsafe(16)
        try:
            text = render(nonce)
        except PopulationNotFound as error:
            return HTMLResponse(
                error_page("Population not found", str(error), board.redacted_url),
                status_code=404,
                headers=_headers(),
            )
        except _UNAVAILABLE as error:
            return HTMLResponse(
                error_page(
                    "The storage cannot be read", board.scrub(str(error)), board.redacted_url
                ),
                status_code=503,
                headers=_headers(),
            )
        return HTMLResponse(text, headers=_headers(nonce))

    def api_error(self, error: Exception) -> Response:
        """The JSON error of a poll: 404 for a missing population, else 503."""
        from starlette.responses import JSONResponse

        if isinstance(error, PopulationNotFound):
            return JSONResponse({"error": str(error)}, status_code=404, headers=_headers())
        board = self.board
        message = f"The storage {board.redacted_url} cannot be read: {board.scrub(str(error))}"
        return JSONResponse({"error": message}, status_code=503, headers=_headers())

    def index(self, request: Request) -> Response:
        """``/``: the populations."""
        return self.page(self.board.index_page)

    def population(self, request: Request) -> Response:
        """``/population?name=NAME``: one population."""
        return self.page(lambda nonce: self.board.population_page(_name_of(request), nonce))

    def api_populations(self, request: Request) -> Response:
        """``/api/populations``: the populations' table."""
        from starlette.responses import JSONResponse

        try:
            table = self.board.populations_table()
        except (PopulationNotFound, *_UNAVAILABLE) as error:
            return self.api_error(error)
        return JSONResponse({"version": "", "html": table}, headers=_headers())

    def api_population(self, request: Request) -> Response:
        """``/api/population?name=NAME&since=VERSION``: one population's update, 204 while it
        is still at ``VERSION``."""
        from starlette.responses import Response

        try:
            update = self.board.update(_name_of(request), request.query_params.get("since"))
        except (PopulationNotFound, *_UNAVAILABLE) as error:
            return self.api_error(error)
        if update is None:
            return Response(status_code=204, headers=_headers())
        # Encoded and compressed once per version, whoever polls (the gzip middleware lets
        # a response with a Content-Encoding through untouched).
        headers = {**_headers(), "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(update.gzipped, media_type="application/json", headers=headers)
        return Response(update.body, media_type="application/json", headers=headers)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    storage_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    poll_seconds: float = 1.0,
) -> None:
    """Serve the dashboard of ``storage_url`` at ``http://host:port/`` until Ctrl-C.

    It binds to loopback by default. On loopback only requests addressed to a loopback name are
    answered (a web page elsewhere cannot read the dashboard through DNS rebinding); on any
    other address everyone who reaches it may read it (there is no login).
    """
    _starlette()
    import uvicorn

    hosts = ["127.0.0.1", "localhost", "[::1]", "::1", host] if _loopback(host) else None
    app = create_app(storage_url, poll_seconds, allowed_hosts=hosts)
    board: Dashboard = app.state.dashboard
    listening = _listen(host, port)  # before saying where: the address may be taken
    port = listening.getsockname()[1]  # port 0: the one the system chose
    shown = f"[{host}]" if ":" in host else host
    print(
        f"poptune dashboard of {board.redacted_url} at http://{shown}:{port}/ (Ctrl-C stops)",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[listening])
    finally:
        listening.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, as uvicorn binds it.

    Raises:
        OSError: saying which address could not be used, why, and what to do.
    """
    bare = host.strip("[]")  # an IPv6 address as a URL writes it
    try:
        family = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)[0][0]
        listening = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise OSError(
            error.errno,
            f"Cannot serve the dashboard on host {host!r}: {error.strerror or error}. Give an "
            "address of this machine (--host, e.g. 127.0.0.1).",
        ) from None
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((bare, port))
        listening.listen(128)
    except OSError as error:
        listening.close()
        taken = error.errno == errno.EADDRINUSE
        raise OSError(
            error.errno,
            f"Cannot serve the dashboard at {host}:{port}: {error.strerror or error}. "
            + (
                "Another program (another dashboard?) listens there: pick another --port."
                if taken
                else "Give an address of this machine (--host) and a port you may use (--port)."
            ),
        ) from None
    return listening
