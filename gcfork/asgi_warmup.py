"""Warm-up of an ASGI 3 app over its own protocol (see :mod:`gcfork.warmup`).

Master, before the first fork: one event loop, made and closed here
(``asyncio.run``), drives the app as an ASGI server would:

1. the lifespan protocol's startup, so that what the app builds at startup
   (its routes' validators, caches, clients) exists when the requests run;
   an app that does not speak lifespan (it raises or returns on the lifespan
   scope) is warmed up without it, as uvicorn's ``lifespan="auto"`` does;
2. each warm-up path as a GET request, its body read to the end;
3. the lifespan shutdown, so that what the startup opened on this loop
   (connection pools, clients) is closed before the loop is, not carried
   into every worker bound to a dead loop. Each worker runs its own startup.

Loaded only by the master of an ASGI app that has warm-up paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from gcfork.exceptions import WarmupError
from gcfork.warmup import APP, WarmupResult

__all__ = ["run_paths"]

# How long the app may take to answer a lifespan message.
LIFESPAN_TIMEOUT = 60.0

_ASGI = {"version": "3.0", "spec_version": "2.3"}


def run_paths(app: Any, paths: Sequence[str], host: str = "127.0.0.1", port: int = 80,
              headers: Mapping[str, str] | None = None) -> list[WarmupResult]:
    """Master: lifespan startup, ``GET`` each path, lifespan shutdown, in a
    loop closed before this returns.

    Raises:
        WarmupError: a path failed or raised; the app's lifespan startup
            failed (path :data:`~gcfork.warmup.APP`).
    """
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"warm-up path {path!r} must start with '/'")
    return asyncio.run(_drive(app, paths, host, port, dict(headers or {})))


async def _drive(app: Any, paths: Sequence[str], host: str, port: int,
                 headers: dict[str, str]) -> list[WarmupResult]:
    state: dict[str, Any] = {}
    lifespan = _Lifespan(app, state)
    await lifespan.startup()
    try:
        return [await _request(app, path, host, port, headers, state) for path in paths]
    finally:
        await lifespan.shutdown()


class _Lifespan:
    """The lifespan scope of one app, run as a task beside the requests."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self._app = app
        self._state = state
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self._state}
        with contextlib.suppress(Exception):  # no lifespan support: it raised or returned
            await self._app(scope, self._to_app.get, self._from_app.put)

    async def _answer(self, message: str) -> dict[str, Any] | None:
        """Send ``message``; the app's answer, or None if its lifespan ended
        without one (it does not speak lifespan)."""
        assert self._task is not None
        await self._to_app.put({"type": message})
        answer = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({answer, self._task}, timeout=LIFESPAN_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if answer in done:
            return answer.result()
        answer.cancel()
        if not done:
            raise WarmupError(APP, None, f"the app did not answer {message} within "
                              f"{LIFESPAN_TIMEOUT:g}s")
        return None

    async def startup(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        answer = await self._answer("lifespan.startup")
        if answer is None:
            self._task = None
        elif answer["type"] == "lifespan.startup.failed":
            raise WarmupError(APP, None, "the app's lifespan startup failed: "
                              f"{answer.get('message') or 'no message'}")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        with contextlib.suppress(WarmupError):
            await self._answer("lifespan.shutdown")
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _request(app: Any, path: str, host: str, port: int, headers: Mapping[str, str],
                   state: Mapping[str, Any]) -> WarmupResult:
    started = time.perf_counter()
    route, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": _ASGI, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": unquote(route), "raw_path": route.encode("latin-1"),
        "query_string": query.encode("latin-1"), "root_path": "",
        "headers": [(b"host", (host if port == 80 else f"{host}:{port}").encode("latin-1")),
                    (b"user-agent", b"gcfork-warmup"),
                    *((k.lower().encode("latin-1"), v.encode("latin-1"))
                      for k, v in headers.items())],
        "client": ("127.0.0.1", 0), "server": (host, port),
        # Each request gets a shallow copy of what the lifespan startup stored.
        "state": dict(state),
    }
    status: list[int] = []
    length = 0
    finished = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        nonlocal length
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))
        elif message["type"] == "http.response.body":
            length += len(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:
        raise WarmupError(path, None, repr(exc)) from exc
    finally:
        finished.set()
    if not status:
        raise WarmupError(path, None, "the app never sent http.response.start")
    if not 200 <= status[0] < 400:
        raise WarmupError(path, status[0], f"HTTP {status[0]}")
    return WarmupResult(path, status[0], time.perf_counter() - started, length)
