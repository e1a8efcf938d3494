"""Per-path attribution in gunicorn's workers: which requests copy.

gunicorn calls ``pre_request`` right before a worker handles a request and
``post_request`` after its response is written, in the thread or greenlet
serving it, for each of its own worker kinds (sync, gthread, gevent,
tornado, gunicorn 27's asgi); uvicorn's worker calls neither. These two hooks
hand the request to the engine's :class:`gcfork.attribution.Attribution`,
which samples about one request in ``attribute_every``; the worker's record
carries the figures (:meth:`RequestHooks.by_path`).

The hooks are chained into the config (:mod:`gcfork.gunicorn.hooks`) only
when ``install()`` finds attribution on, so that with ``attribute_every = 0``
no request runs gcfork code, and gunicorn 27's asgi worker keeps its fast path
(it skips the default ``post_request``).

.. versionadded:: 0.4
"""

from __future__ import annotations

from typing import Any

from gcfork.attribution import Attribution
from gcfork.gunicorn.kinds import WorkerKind
from gcfork.policy import Policy
from gcfork.records import ByPath

__all__ = ["REQUESTS", "RequestHooks", "warn_unapplied"]


class RequestHooks:
    """The worker's attribution, and the two request hooks that feed it."""

    __slots__ = ("attribution",)

    def __init__(self) -> None:
        # Made in each worker by start(); None in the master and when off.
        self.attribution: Attribution | None = None

    def start(self, worker: Any, every: int, kind: WorkerKind | None) -> None:
        """Worker, in ``post_fork``: sample one request in ``every`` (0: none),
        if ``install()`` chained the request hooks (else the master warned)
        and the worker's ``kind`` calls them (uvicorn's does not: no figures
        rather than figures of no sample)."""
        from gcfork.gunicorn.hooks import chained  # it imports the adapter, which imports this

        calls_hooks = kind is None or kind.request_hooks
        on = every > 0 and calls_hooks and chained("pre_request")
        self.attribution = None if not on else Attribution(
            every, on_error=lambda why: worker.log.warning("gcfork: %s", why))

    def pre_request(self, worker: Any, req: Any) -> None:
        attribution = self.attribution
        if attribution is not None:
            # The request object lives until post_request: its id names the sample.
            attribution.begin(id(req), getattr(req, "path", None) or "/")

    def post_request(self, worker: Any, req: Any, environ: Any, resp: Any) -> None:
        attribution = self.attribution
        if attribution is not None:
            attribution.end(id(req))

    def by_path(self) -> ByPath | None:
        """The worker's figures for its record (the publishing thread)."""
        attribution = self.attribution
        return None if attribution is None else attribution.snapshot()


# One per process, as the adapter: set in each worker, never in the master.
REQUESTS = RequestHooks()


def warn_unapplied(server: Any, policy: Policy) -> None:
    """Master, once the policy is settled (gunicorn's ``raw_env`` applied, at
    start and after a HUP): warn if it asks for attribution that the hooks
    chained by ``install()`` cannot give."""
    from gcfork.gunicorn.hooks import chained  # it imports the adapter, which imports this

    if policy.attribute_every > 0 and not chained("pre_request"):
        source = policy.sources.get("attribute_every")
        server.log.warning("gcfork: attribute_every=%s [%s] is not applied: install() found "
                           "it 0, so no request hook was chained; set it in install() or the "
                           "process environment", policy.attribute_every, source)
