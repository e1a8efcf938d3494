"""The worker's side of ``gcfork explain``: a request file, looked for now and then.

``gcfork explain --pid PID`` writes ``explain-PID.request`` into the trigger
directory (``.explain`` in the server's stats directory); the worker, when it
next polls, removes the request, profiles itself and writes
``explain-PID.json`` next to it. :meth:`ExplainTrigger.poll` is that check:
one ``stat`` that fails almost always. The gunicorn adapter calls it from the
thread that publishes the worker's statistics, so a worker runs one gcfork
thread, not two; other servers may call :func:`start_trigger`, a thread of
its own.

The profiler (:mod:`gcfork.explain`, a tool of ~900 lines) is imported only
when a request comes: a worker that is never explained never pays for it.

.. versionadded:: 0.3
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

from gcfork import files
from gcfork.exceptions import CowProfileError, StatsDirError
from gcfork.stats import TRIGGER_NAME, StatsDir

__all__ = ["ExplainTrigger", "request_names", "start_trigger"]


def request_names(pid: int) -> tuple[str, str]:
    """The names, in the trigger directory, of worker ``pid``'s request file
    and of its answer."""
    base = f"explain-{pid}"
    return base + ".request", base + ".json"


class ExplainTrigger:
    """Answers ``gcfork explain`` requests for the calling process.

    Args:
        dir_fd: the open trigger directory (already checked to be private);
            the trigger owns it from now on.
    """

    __slots__ = ("_dir_fd", "_names", "_pid")

    def __init__(self, dir_fd: int) -> None:
        self._dir_fd = dir_fd
        self._pid = os.getpid()
        self._names = request_names(self._pid)

    def poll(self) -> bool:
        """Answer a pending request, if any; never raises.

        A request file owned by another user than this process's, the
        directory's or root is removed and ignored.

        Returns:
            Whether a request was answered.
        """
        if os.getpid() != self._pid:  # a child of the worker: not asked
            return False
        request, answer = self._names
        try:
            info = os.stat(request, dir_fd=self._dir_fd, follow_symlinks=False)
            os.unlink(request, dir_fd=self._dir_fd)
            # Root may ask too: `gcfork explain` run by root for a dropped worker.
            if info.st_uid not in (os.getuid(), os.fstat(self._dir_fd).st_uid, 0):
                return False
        except OSError:
            return False
        try:
            from gcfork import explain  # only when asked: see the module's docstring

            explain.write_profile(explain.profile_self(), answer, dir_fd=self._dir_fd)
        except Exception as exc:
            with contextlib.suppress(OSError):
                files.write_private(self._dir_fd, answer, json.dumps(
                    {"error": str(exc), "pid": self._pid}).encode())
        return True


def start_trigger(directory: str | StatsDir, interval: float = 1.0) -> threading.Thread:
    """Worker, in ``post_fork``: start the daemon thread that profiles this
    worker when ``gcfork explain --pid PID`` asks.

    The thread checks for ``explain-<pid>.request`` in the trigger directory
    every ``interval`` seconds, through a descriptor opened here. A request
    file owned by another user than the worker's, the directory's or root is
    ignored.

    Args:
        directory: the server's stats directory (its ``.explain``
            subdirectory is used), or the trigger directory's path
            (:func:`gcfork.tools.explain.trigger_dir`), made ``0700`` if missing.
        interval: seconds between two checks.

    Returns:
        The started thread.

    Raises:
        CowProfileError: the directory is not a private one of ours; naming it.

    .. versionadded:: 0.2
    .. versionchanged:: 0.3
       Accepts a :class:`~gcfork.stats.StatsDir`; works through a descriptor;
       moved here from ``gcfork.cowprof``, so that the profiler is loaded only
       when a request comes.
    """
    trigger = ExplainTrigger(_open_private(directory))
    thread = threading.Thread(
        target=_serve, args=(trigger, interval), name="gcfork-explain", daemon=True
    )
    thread.start()
    return thread


def _open_private(directory: str | StatsDir) -> int:
    """Worker, in ``post_fork``: open the trigger directory, made 0700 if
    missing; refused, naming it, unless it is a private directory of ours (or
    of its parent's owner, who controls the path anyway: a root master's
    workers run as another user). A path is handled as a subdirectory of its
    parent, by the same checks as the stats directory's."""
    if isinstance(directory, StatsDir):
        parent, name = directory, TRIGGER_NAME
    else:
        # Neither is followed: the parent is normally the stats directory.
        head, name = os.path.split(os.path.normpath(directory))
        parent = StatsDir(head or ".")
    try:
        return parent.subdir(name)
    except StatsDirError as exc:
        raise CowProfileError(os.getpid(), str(exc)) from None
    finally:
        if parent is not directory:
            parent.close()


def _serve(trigger: ExplainTrigger, interval: float) -> None:
    # A daemon thread of the worker; under gunicorn's ``user`` it runs as that
    # user from the setuid on (glibc applies it to every thread).
    pid = os.getpid()
    while os.getpid() == pid:  # a fork of the worker inherits no thread, but be sure
        time.sleep(interval)
        trigger.poll()
