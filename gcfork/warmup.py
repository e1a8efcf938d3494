"""Warm the app up in the master, before the freeze (the ``warmup`` setting).

A worker's first requests fill caches (URL resolvers, template loaders,
translations, lazily imported modules, validators built on first use) and,
on 3.11+, specialise bytecode in the code objects they run. Done in each
worker, that state is built N times and copies the pages it lands on. Done
once in the master before the first fork, it is shared.

:func:`warm_up` runs GET requests through the app in-process (no socket)
and fails loudly on the first path that does not answer 2xx or 3xx:

- a WSGI app is called as a WSGI server calls it;
- an ASGI 3 app (FastAPI, Starlette, Django's ASGI handler) is driven over
  ASGI in an event loop of its own: lifespan startup, the requests, lifespan
  shutdown, then the loop is closed, all before the fork, so no worker
  inherits a loop, a task or a connection bound to it. Threads the app
  started meanwhile (a thread pool for sync endpoints) are given a few
  seconds to end; :func:`threads_started_since` names those that did not.

:func:`close_connections` then closes what the requests opened that must not
cross a fork (Django's database connections).

Where it runs: in the master, after the app is loaded (``preload_app``) and
before the first fork.
"""

from __future__ import annotations

import inspect
import io
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

from gcfork.exceptions import WarmupError
from gcfork.typing import WarmupSetting, WSGIApp

__all__ = [
    "APP",
    "WarmupError",
    "WarmupResult",
    "close_connections",
    "is_asgi",
    "request",
    "running_threads",
    "threads_started_since",
    "warm_up",
    "wsgi_environ",
]

# The "path" of a WarmupError about the app itself rather than a request.
APP = "<app>"



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


def is_asgi(app: object) -> bool:
    """Whether ``app`` looks like an ASGI 3 app: a coroutine function, or an
    instance whose ``__call__`` is one (FastAPI, Starlette)."""
    if isinstance(app, type):
        return False
    # The class's __call__, as the call app(scope, receive, send) looks it up.
    call = inspect.getattr_static(type(app), "__call__", None)
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


def warm_up(app: Any, warmup: WarmupSetting, interface: str = "auto",
            **environ_args: Any) -> list[WarmupResult]:
    """Master, after the app is loaded and before the first freeze: warm it up.

    Args:
        app: the application (gunicorn: ``server.app.wsgi()`` with
            ``preload_app``, whatever the worker kind).
        warmup: request paths, run in order; or a callable, called once with
            the app (it may use :func:`request` itself; for an ASGI app an
            ``async def`` callable is run to completion in its own loop).
        interface: ``"wsgi"``, ``"asgi"`` (the server's word for what it
            serves), or ``"auto"``: ASGI if :func:`is_asgi`, else WSGI.
        **environ_args: ``host``, ``port`` and ``headers`` for every path.

    Returns:
        One result per path (empty for a callable).

    Raises:
        WarmupError: on the first path that fails; the callable's own
            exception is wrapped the same way, with path ``<callable>``; with
            path :data:`APP` if the app cannot be warmed up at all (an ASGI app
            where WSGI is served, an app that is not ASGI 3 where ASGI is,
            a failed lifespan startup).

    Django: follow with :func:`close_connections`, so that no database
    connection opened by the warm-up is shared by the workers.

    .. versionadded:: 0.2
    .. versionchanged:: 0.4
       ASGI apps, ``interface``.
    """
    if interface not in ("auto", "wsgi", "asgi"):
        raise ValueError(f"interface must be 'auto', 'wsgi' or 'asgi', not {interface!r}")
    asgi = is_asgi(app)
    if interface == "wsgi" and asgi:
        raise WarmupError(APP, None, f"{_name(app)} is an ASGI app (its __call__ is a coroutine "
                          "function) and the server serves WSGI: it cannot be warmed up, nor "
                          "served; choose an ASGI worker_class (uvicorn_worker.UvicornWorker, "
                          "asgi)")
    if interface == "asgi" and not asgi:
        raise WarmupError(APP, None, f"{_name(app)} is not an ASGI 3 app (async def "
                          "app(scope, receive, send)), so gcfork cannot warm it up: drop "
                          "warmup, or give it a callable that warms the app up itself")
    if callable(warmup):
        try:
            done = warmup(app)
            if inspect.iscoroutine(done):
                _asyncio().run(done)
        except WarmupError:
            raise
        except Exception as exc:
            raise WarmupError("<callable>", None, repr(exc)) from exc
        return []
    if isinstance(warmup, (str, bytes)):
        raise TypeError("warmup must be a list of paths, not a single string")
    if asgi:
        from gcfork.asgi_warmup import run_paths  # only an ASGI app's master needs it

        return run_paths(app, list(warmup), **environ_args)
    return [request(app, path, **environ_args) for path in warmup]


def _asyncio() -> Any:
    import asyncio  # an ASGI app's master has it loaded already; a WSGI one need not

    return asyncio


def _name(app: object) -> str:
    cls = type(app)
    return f"the app ({cls.__module__}.{cls.__qualname__})"


def running_threads() -> set[int]:
    """The idents of this process's threads (the master's, before a warm-up)."""
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def threads_started_since(before: set[int], timeout: float = 5.0) -> list[str]:
    """Master, after a warm-up: wait up to ``timeout`` seconds for the
    threads it started (a thread pool of the app's) to end; names those that
    did not. A thread does not cross a fork, but a lock it holds does."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.ident not in before:
            thread.join(max(deadline - time.monotonic(), 0.0))
    return [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]


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
