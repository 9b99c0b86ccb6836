"""Whether a server's port answers, asked before handing its address to a client library that
would retry a dead one for minutes (Ray's ``ray.init``, MLflow's client).

This module imports nothing of poptune's, so every layer may use it.
"""

from __future__ import annotations

import socket

__all__ = ["unreachable"]


def unreachable(host: str, port: int, seconds: float) -> str | None:
    """Why nothing accepted a TCP connection to ``host:port`` within ``seconds`` (the system's
    reason: "Connection refused", "Name or service not known", "timed out"), or ``None`` when
    something did. It only connects: nothing is sent, no credentials.

    Example:
        >>> unreachable("127.0.0.1", 9, 1.0)  # doctest: +SKIP
        'Connection refused'
    """
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    return None
