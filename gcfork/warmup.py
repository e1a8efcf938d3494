"""Warm the app up in the master, before the freeze (the ``warmup`` setting).

A worker's first requests fill caches (URL resolvers, template loaders,
translations, lazily imported modules) and, on 3.11+, specialise bytecode in
the code objects they run. Done in each worker, that state is built N times
and copies the pages it lands on. Done once in the master before the first
fork, it is shared.

:func:`warm_up` runs GET requests through the WSGI app in-process (no socket)
and fails loudly on the first path that does not answer 2xx or 3xx.
:func:`close_connections` then closes what the requests opened that must not
cross a fork (Django's database connections).

Where it runs: in the master, after the app is loaded (``preload_app``) and
before the first freeze, i.e. early in the first ``pre_fork``.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

from gcfork.exceptions import WarmupError
from gcfork.typing import WarmupSetting, WSGIApp

__all__ = [
    "WarmupError",
    "WarmupResult",
    "close_connections",
    "request",
    "warm_up",
    "wsgi_environ",
]



class WarmupResult(NamedTuple):
    """One warm-up request, as :func:`warm_up` returns it.

    Attributes:
        path: the request path (with its query string, if any).
        status: the HTTP status code.
        seconds: time to answer and consume the body.
        body_bytes: length of the body.
    """

    path: str
    status: int
    seconds: float
    body_bytes: int


def wsgi_environ(
    path: str, host: str = "127.0.0.1", port: int = 80, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A WSGI environ for ``GET path`` from and to the loopback address.

    Args:
        path: ``/path?query``; must start with ``/``.
        host: the ``Host`` header and ``SERVER_NAME`` (Django checks it
            against ``ALLOWED_HOSTS``).
        port: ``SERVER_PORT``.
        headers: extra request headers, e.g. ``{"Accept-Language": "fr"}``.

    Raises:
        ValueError: ``path`` does not start with ``/``.
    """
    if not path.startswith("/"):
        raise ValueError(f"warm-up path {path!r} must start with '/'")
    route, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "RAW_URI": path,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "HTTP_HOST": host if port == 80 else f"{host}:{port}",
        "HTTP_USER_AGENT": "gcfork-warmup",
        "CONTENT_LENGTH": "0",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = value
    return environ


def request(app: WSGIApp, path: str, **environ_args: Any) -> WarmupResult:
    """Master: run ``GET path`` through ``app`` in-process; consume and close the body.

    Args:
        app: the WSGI application.
        path: ``/path?query``.
        **environ_args: passed to :func:`wsgi_environ` (host, port, headers).

    Raises:
        WarmupError: the app raised, or answered other than 2xx/3xx.
    """
    started = time.perf_counter()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        statuses.append(status)
        return lambda data: None

    length = 0
    try:
        result = app(wsgi_environ(path, **environ_args), start_response)
        try:
            for chunk in result:
                length += len(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        raise WarmupError(path, None, repr(exc)) from exc
    if not statuses:
        raise WarmupError(path, None, "the app never called start_response")
    line = statuses[-1]
    try:
        status = int(line.split(None, 1)[0])
    except (ValueError, IndexError):
        raise WarmupError(path, None, f"unreadable status line {line!r}") from None
    if not 200 <= status < 400:
        raise WarmupError(path, status, line)
    return WarmupResult(path, status, time.perf_counter() - started, length)


def warm_up(app: WSGIApp, warmup: WarmupSetting, **environ_args: Any) -> list[WarmupResult]:
    """Master, after the app is loaded and before the first freeze: warm it up.

    Args:
        app: the WSGI application (gunicorn: ``worker.app.wsgi()`` or
            ``server.app.wsgi()`` with ``preload_app``).
        warmup: request paths, run in order; or a callable, called once with
            the app (it may use :func:`request` itself).
        **environ_args: passed to :func:`wsgi_environ` for every path.

    Returns:
        One result per path (empty for a callable).

    Raises:
        WarmupError: on the first path that fails; the callable's own
            exception is wrapped the same way, with path ``<callable>``.

    Django: follow with :func:`close_connections`, so that no database
    connection opened by the warm-up is shared by the workers.

    .. versionadded:: 0.2
    """
    if callable(warmup):
        try:
            warmup(app)
        except WarmupError:
            raise
        except Exception as exc:
            raise WarmupError("<callable>", None, repr(exc)) from exc
        return []
    if isinstance(warmup, (str, bytes)):
        raise TypeError("warmup must be a list of paths, not a single string")
    return [request(app, path, **environ_args) for path in warmup]


def close_connections() -> list[str]:
    """Master, after the warm-up: close connections that must not cross a fork.

    Closes every Django database connection if Django's ORM was imported (it is
    never imported from here). A connection shared by two processes mixes their
    conversations on one socket.

    Returns:
        What was closed, in words, for the log.
    """
    closed = []
    db = sys.modules.get("django.db")
    connections = getattr(db, "connections", None)
    if connections is not None:
        connections.close_all()
        closed.append("django.db.connections")
    return closed
