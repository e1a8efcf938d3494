"""A gunicorn dirty app (gunicorn 25+) that reports the GC state of the dirty
worker serving it, and a WSGI app that asks it.

    /dirty   the dirty worker's pid, ppid and GC state, as JSON
    /gc      this HTTP worker's (see tests.apps.gcstate)
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.dirty import DirtyApp, get_dirty_client

from tests.apps import gcstate

APP_PATH = "tests.apps.dirty:GCProbe"


class GCProbe(DirtyApp):  # type: ignore[misc]
    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "ppid": os.getppid(), "enabled": gc.isenabled(),
            "thresholds": list(gc.get_threshold()), "freeze_count": gc.get_freeze_count(),
            # The arbiter makes this worker's DirtyWorker object right before the
            # fork: it is young here unless the arbiter froze right before it.
            # (gc.get_objects() lists the young generations only.)
            "own_worker_object_young": sum(
                type(o).__name__ == "DirtyWorker" for o in gc.get_objects()),
        }


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != "/dirty":
        return gcstate.app(environ, start_response)
    body = json.dumps(get_dirty_client().execute(APP_PATH, "state")).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
