"""gunicorn's worker kinds (``worker_class``), as far as gcfork's accounting
needs to tell them apart.

Every kind is forked by the master through ``pre_fork`` and ``post_fork``, so
the freeze and the worker's GC settings are the same for all; what differs is
what a kind tells gcfork about itself:

- whether gunicorn's request count (``worker.nr``) is kept: gunicorn's own
  kinds (``sync``, ``gthread``, ``gevent``, ``tornado``, and gunicorn 27's
  ``asgi``) count every request there; uvicorn's worker never touches it, so
  gcfork counts that kind's HTTP requests itself with :class:`CountingASGI`;
  a kind gcfork does not know shows no count (``-``), never a false 0;
- whether the app it loads is an ASGI app (warm-up drives it over ASGI);
- how it ends on ``SIGTERM``: uvicorn's worker shuts down gracefully and then
  raises the signal again with its default action, so the process dies by the
  signal and gunicorn's ``worker_exit`` hook never runs in it. The adapter
  sees that from the worker (``SIGTERM`` left at its default when the worker
  is about to run) and publishes the final record from a handler of its own
  (:meth:`gcfork.gunicorn.adapter.Adapter.post_worker_init`).

A kind is recognised by the names of its classes (subclasses included),
never by importing anything: code that runs in a server imports only what
it uses.

.. versionadded:: 0.4
"""

from __future__ import annotations

from collections.abc import Awaitable, MutableMapping
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["KINDS", "CountingASGI", "WorkerKind", "count_requests", "kind_of", "kinds_line"]


@dataclass(frozen=True)
class WorkerKind:
    """What gcfork knows of one gunicorn worker kind.

    Attributes:
        name: the name a config gives ``worker_class`` for it.
        asgi: the app it loads speaks ASGI (else WSGI).
        counts_requests: gunicorn's ``worker.nr`` counts its requests.
        patches_threading: it monkey-patches ``threading`` after ``post_fork``
            (gevent), so gcfork's publishing thread must be one ``threading``
            does not track.
        request_hooks: it calls gunicorn's ``pre_request`` and ``post_request``
            hooks (per-path attribution, :mod:`gcfork.gunicorn.attribution`);
            uvicorn's worker does not.
        known: one of the kinds below; False for any other class.
    """

    name: str
    asgi: bool
    counts_requests: bool
    patches_threading: bool = False
    known: bool = True
    request_hooks: bool = True


# Keyed by the defining class's module and name, as its MRO shows them.
KINDS: dict[str, WorkerKind] = {
    "gunicorn.workers.sync.SyncWorker": WorkerKind("sync", asgi=False, counts_requests=True),
    "gunicorn.workers.gthread.ThreadWorker": WorkerKind("gthread", False, True),
    "gunicorn.workers.ggevent.GeventWorker": WorkerKind("gevent", False, True,
                                                        patches_threading=True),
    "gunicorn.workers.gtornado.TornadoWorker": WorkerKind("tornado", False, True),
    "gunicorn.workers.gasgi.ASGIWorker": WorkerKind("asgi", True, True),
    # uvicorn-worker's package, and uvicorn's own module before it moved there.
    "uvicorn_worker._workers.UvicornWorker": WorkerKind("uvicorn_worker.UvicornWorker", True,
                                                        False, request_hooks=False),
    "uvicorn.workers.UvicornWorker": WorkerKind("uvicorn.workers.UvicornWorker", True, False,
                                                request_hooks=False),
}


def kind_of(worker_class: type) -> WorkerKind:
    """The kind of ``worker_class``: the first class of its MRO that gcfork
    knows; an unknown one keeps its dotted name, WSGI, uncounted."""
    for cls in worker_class.__mro__:
        found = KINDS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    name = f"{worker_class.__module__}.{worker_class.__qualname__}"
    return WorkerKind(name, asgi=False, counts_requests=False, known=False)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CountingASGI:
    """An ASGI 3 app that counts the HTTP requests it passes to ``app``.

    Worker: wraps the app of a kind that keeps no request count (uvicorn's),
    so that the report's REQS column and the exit line have one. The count
    is an integer bumped on the event loop's thread and read by gcfork's
    publishing thread; it costs one extra coroutine frame per request.
    """

    __slots__ = ("app", "count")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.count += 1
        await self.app(scope, receive, send)


def kinds_line(kind: WorkerKind, exits_fast: bool) -> str | None:
    """Master, at start: the one line that says what gcfork does differently
    for this kind, or None for a kind that needs none (gunicorn's own)."""
    if not kind.known:
        return (f"gcfork: worker_class {kind.name} is not a kind gcfork knows: the freeze and "
                "the workers' GC settings apply, but their requests are not counted (REQS "
                "shows -); see docs/worker-kinds.md")
    if kind.counts_requests:
        return None
    fast = ("; fast_exit applies to its other exits (max_requests)" if exits_fast else "")
    return (f"gcfork: worker_class {kind.name}: gcfork counts its HTTP requests (the worker "
            "keeps no count gunicorn sees) and publishes each worker's final record when "
            "SIGTERM ends it, by the signal, without finalization, so without worker_exit"
            f"{fast}")


def count_requests(worker: Any) -> CountingASGI | None:
    """Worker, after it loaded the app and before it serves: wrap the app of
    a kind that keeps no request count (uvicorn's) in :class:`CountingASGI`;
    returns the wrapper, or None where gunicorn counts or nothing can."""
    kind = kind_of(type(worker))
    if not kind.asgi or kind.counts_requests:
        return None
    # uvicorn's worker reads worker.wsgi when it starts serving, after post_worker_init.
    interface = getattr(getattr(worker, "config", None), "interface", "auto")
    app = getattr(worker, "wsgi", None)
    # An ASGI 2 app (a class) is called otherwise: left alone, uncounted.
    if app is None or isinstance(app, type) or interface not in ("auto", "asgi3"):
        return None
    counter = CountingASGI(app)
    worker.wsgi = counter
    return counter
