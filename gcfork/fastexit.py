"""End a worker without interpreter finalization (opt-in: ``fast_exit``).

When a worker leaves normally, CPython finalizes: it runs ``atexit``
handlers, clears every module's dict entry by entry, collects cycles and
deallocates what it can. Each of those steps writes to objects inherited from
the master, so a worker that shares most of its memory copies a large part of
it in its last second of life, all workers at once on a restart. With objects
made immortal (:mod:`gcfork.immortal`) finalization also does nothing useful
for them: they are never freed.

:func:`fast_exit` flushes what gunicorn users expect to see (standard streams
and ``logging`` handlers) and calls ``os._exit``.

What it skips, which the caller must be able to live without:

- ``atexit`` handlers, among them ``concurrent.futures``' joining of executor
  threads, ``multiprocessing``'s cleanup, ``weakref.finalize`` objects with
  ``atexit=True`` (e.g. ``tempfile.TemporaryDirectory`` removal), and tools
  that save data at exit (coverage, profilers);
- joining non-daemon threads (``threading._shutdown``): they are killed
  mid-work;
- ``__del__`` methods and C finalizers of the objects still alive, so
  buffered files that were not flushed or closed explicitly lose their
  buffer, and database connections are dropped without a goodbye (the server
  sees a reset);
- ``sys.stdout``/``sys.stderr`` and ``logging`` are flushed first, so logs are
  not lost.

Where it runs: in the worker, as the very last thing of gunicorn's
``worker_exit`` hook (after the user's hook and gcfork's own exit report).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

__all__ = ["exit_status_in_flight", "fast_exit", "flush_all"]


def flush_all() -> None:
    """Flush ``logging``'s handlers (if logging was imported) and the standard streams.

    Never raises: a broken stream must not keep the worker alive.
    """
    logging = sys.modules.get("logging")
    if logging is not None:
        # What logging's own atexit handler does: flush and close every handler.
        # The process is ending; a failing handler is not news.
        with contextlib.suppress(Exception):
            logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # closed or broken stream
            pass


def exit_status_in_flight(default: int = 0) -> int:
    """The status the process is exiting with, if a ``SystemExit`` is propagating.

    gunicorn calls ``worker_exit`` from a ``finally`` block around
    ``sys.exit(status)``; the status tells the master whether the worker failed
    to boot (3) or to load the app (4), so it must survive a fast exit.

    Args:
        default: status when no exception is in flight.
    """
    exc = sys.exc_info()[1]
    if exc is None:
        return default
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        return 1  # sys.exit("message") prints the message and exits 1
    return 1


def fast_exit(status: int | None = None) -> NoReturn:
    """Worker, last thing in ``worker_exit``: flush logs and streams, then
    ``os._exit`` without finalization (see the module doc for what is skipped).

    Args:
        status: the exit status; None takes the one of the ``SystemExit``
            in flight (:func:`exit_status_in_flight`), 0 if there is none.

    .. versionadded:: 0.2
    """
    code = exit_status_in_flight() if status is None else status
    flush_all()
    os._exit(code)
