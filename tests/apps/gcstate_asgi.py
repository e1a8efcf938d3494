"""The ASGI twin of :mod:`tests.apps.gcstate`, for gunicorn's ASGI worker kinds
(``asgi``, ``uvicorn_worker.UvicornWorker``): the same endpoints, the same
shared table and fork markers (it imports them), spoken over ASGI 3.

``/gc?sleep=S`` sleeps with ``time.sleep``: it blocks this worker's event loop
on purpose, so that concurrent requests spread over the workers as they do
over sync workers. ``/async?sleep=S`` sleeps with ``asyncio.sleep`` instead.
The lifespan protocol is answered, and counted in ``LIFESPAN`` (``/lifespan``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable
from typing import Any, Callable
from urllib.parse import parse_qs

from tests.apps.gcstate import REFERENCE, _fork_report, _state

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# What the lifespan protocol did in this process (the master, with warm-up;
# each worker, after its fork).
LIFESPAN: list[str] = []


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        LIFESPAN.append(message["type"])
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    path = scope["path"]
    status = 200
    body: Any
    if path == "/gc":
        time.sleep(float(query.get("sleep", ["0"])[0]))
        body = _state()
    elif path == "/async":
        await asyncio.sleep(float(query.get("sleep", ["0"])[0]))
        body = _state()
    elif path == "/fork":
        body = _fork_report()
    elif path == "/reference":
        total = sum(len(k) + r["id"] + len(r["tags"][0]) for k, r in REFERENCE.items())
        body = {"pid": os.getpid(), "records": len(REFERENCE), "total": total}
    elif path == "/modules":
        body = {"pid": os.getpid(), "modules": sorted(sys.modules)}
    elif path == "/lifespan":
        body = {"pid": os.getpid(), "lifespan": LIFESPAN}
    else:
        status, body = 404, {"detail": "not found"}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
