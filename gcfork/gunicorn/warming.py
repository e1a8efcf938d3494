"""The warm-up in gunicorn's master (the ``warmup`` setting), for every worker kind.

Runs in the master, in ``on_starting``, with ``preload_app``: the app is
loaded and no worker is forked yet. The requests themselves are the engine's
(:mod:`gcfork.warmup`); what the adapter adds is which protocol the app
speaks, from the worker kind (:mod:`gcfork.gunicorn.kinds`): WSGI for
gunicorn's sync, gthread and gevent kinds, ASGI for its ``asgi`` kind and
uvicorn's worker, the app's own shape for a kind gcfork does not know.
"""

from __future__ import annotations

import time
from typing import Any

from gcfork import actions, finish, immortal, warmup
from gcfork.exceptions import ImmortalizeUnsupported, StartupError, WarmupError
from gcfork.gunicorn.kinds import WorkerKind
from gcfork.policy import Policy

__all__ = ["immortalize_master", "warm_up_master"]


def warm_up_master(server: Any, policy: Policy, kind: WorkerKind | None) -> None:
    """Master, before any fork: warm the app up, free the cycles it made, and
    log what it did.

    The master's collector is off, so the cyclic garbage of the warm-up
    requests would otherwise be frozen into every worker's heap (and made
    immortal). The imported app is frozen first, so that the collection after
    the warm-up visits only what the requests made: it leaves no holes in
    the pages of the imported app for workers to fill.

    Raises:
        StartupError: a warm-up path failed, or the app cannot be warmed up;
            gunicorn prints the one line and exits before any fork.
    """
    host = policy.warmup_host
    paths_or_fn = policy.warmup
    assert paths_or_fn is not None  # policy.warms_up
    interface = "auto" if kind is None or not kind.known else "asgi" if kind.asgi else "wsgi"
    actions.freeze(collect_first=policy.collect_before_freeze)
    started = time.perf_counter()
    before = warmup.running_threads()
    try:
        results = warmup.warm_up(server.app.wsgi(), paths_or_fn, host=host,
                                 interface=interface)
    except WarmupError as exc:
        # The traceback of an app that raised is for debugging, not for
        # the one line gunicorn prints.
        server.log.debug("gcfork: warm-up failed", exc_info=exc.__cause__)
        hint = ""
        if exc.status == 400:
            hint = (f"; if the app checks the Host header (Django's ALLOWED_HOSTS), set "
                    f"gcfork's warmup_host (now {host!r})")
        if kind is not None and exc.path == warmup.APP:
            hint = f" (worker_class {kind.name})"
        raise StartupError(f"gcfork: {exc}{hint}") from None
    seconds = time.perf_counter() - started
    closed = warmup.close_connections()
    freed = actions.collect_since_last_freeze()
    if results:
        slowest = max(results, key=lambda r: r.seconds)
        done = (f"{len(results)} requests in {seconds:.3f}s (slowest: GET {slowest.path} "
                f"{slowest.status} in {slowest.seconds:.3f}s)")
    else:
        name = getattr(paths_or_fn, "__qualname__", "the callable")
        done = f"{name}(app) ran in {seconds:.3f}s"
    server.log.info("gcfork: warm-up in the master: %s; closed: %s; freed %s objects of "
                    "its cyclic garbage", done, ", ".join(closed) or "nothing", f"{freed:,}")
    left = warmup.threads_started_since(before)
    if left:
        # A thread does not cross a fork: a worker would hold its locks, not it.
        server.log.warning("gcfork: the warm-up left threads running in the master, which "
                           "the workers will not have: %s", ", ".join(left))


def immortalize_master(server: Any) -> None:
    """Master, inside the first ``os.fork()``, right after the first freeze
    (the ``immortalize`` setting): make the frozen heap immortal, hash its
    strings and tag its types in the same walk, and log it."""
    # The same walk hashes strings and tags types (gcfork.finish): the caches
    # a worker would otherwise write into objects made immortal.
    finisher = finish.Finisher()
    try:
        result = immortal.immortalize_heap(finish=finisher)
    except ImmortalizeUnsupported as exc:
        server.log.error("gcfork: %s; workers share the frozen heap without it", exc)
        return
    done = finisher.result()
    server.log.info(
        "gcfork: made %d objects of the master immortal (%d left mortal: finalizers, "
        "frames) in %.3fs; hashed %d str and bytes objects, %d types have a version tag; "
        "master RSS %+.1f MiB",
        result.objects, result.skipped, result.seconds, done.hashed, done.tagged,
        (result.rss_after - result.rss_before) / 2**20,
    )
    for line in finish.warnings(done):
        server.log.warning("%s", line)
