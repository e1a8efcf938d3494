"""The setting of per-path attribution: which requests make workers copy memory.

Declared apart from :mod:`gcfork.config` (which lists it in ``SETTINGS`` and
resolves it with the others) so that neither file passes 500 lines; the
mechanism is :mod:`gcfork.attribution`.

.. versionadded:: 0.4
"""

from __future__ import annotations

from gcfork import validate
from gcfork.setting import Setting

__all__ = ["ATTRIBUTE_EVERY", "DEFAULT_EVERY"]

DEFAULT_EVERY = 1000
"""One request in 1000 on average: a sample reads ``smaps_rollup`` twice (1.7 to
1.9 ms each for the Django example's 77 MiB worker, ``docs/report.md``), so,
with the hooks' 2.5 us, about 6 us per request: 0.04 % of its 16 ms request."""

ATTRIBUTE_EVERY: Setting[int] = Setting(
    name="attribute_every",
    section="Which requests copy",
    default=DEFAULT_EVERY,
    validator=validate.one_in,
    from_env=validate.env_int,
    allowed=f"an int from 0 (off) to {validate.MAX_EVERY:,}: one request in that many is sampled",
    env_syntax=f"an integer from 0 (off) to {validate.MAX_EVERY}, e.g. 1000",
    doc="""\
Attribute the growth of each worker's private memory (USS) to request
paths: about one request in this many (chosen at random, so that a load
that cycles through its paths is not always sampled on the same one) is
measured before and after, and the difference is counted for its path.
``gcfork explain --by-path`` shows the figures of a running server and
``gcfork bench`` those of each variant (``docs/report.md``, "Which requests
copy"). ``0`` turns it off: gcfork then chains no ``pre_request`` or
``post_request`` hook, so a request runs no gcfork code at all.

A sample costs two reads of ``/proc/self/smaps_rollup`` in the worker, on
the request's path: 0.56 ms each for the test app's 40 MiB worker, 1.7 to
1.9 ms for the Django example's 77 MiB worker (a loaded 2-core VM); an
unsampled request costs 2 to 2.5 us of CPU in the hooks. The default, 1000,
comes to about 6 us per request of the Django example (16 ms): 0.04 %.
Lower it to see a path sooner (a test, ``gcfork bench``), raise it for a
worker of several GiB.

gunicorn's own worker kinds (``sync``, ``gthread``, ``gevent``,
``tornado``, gunicorn 27's ``asgi``) call the hooks; uvicorn's worker does
not, and shows no figures. gunicorn 27's ``asgi`` worker, with a
``post_request`` hook, waits for each app call to return before it reads
the next request of a keep-alive connection. A sample that overlapped
another request of the same worker (threads, greenlets) is dropped and
counted as such, since the growth could be either request's. The hooks are chained by
``install()``: a value that turns attribution on from gunicorn's
``raw_env`` (``-e``) alone is logged and not applied; set it in
``install()`` or the process environment.""",
)
