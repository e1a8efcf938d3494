"""The worker's side of ``gcfork explain``: a request file, looked for now and then.

``gcfork explain --pid PID`` writes ``explain-PID.request`` into the trigger
directory (``.explain`` in the server's stats directory); the worker, when it
next polls, removes the request, profiles itself and writes
``explain-PID.json`` next to it. :meth:`ExplainTrigger.poll` is that check:
one ``stat`` that fails almost always. The gunicorn adapter calls it from the
thread that publishes the worker's statistics, so a worker runs one gcfork
thread, not two.

The profiler (:mod:`gcfork.cowprof`, a tool of ~900 lines) is imported only
when a request comes: a worker that is never explained never pays for it.

.. versionadded:: 0.3
"""

from __future__ import annotations

import contextlib
import json
import os

from gcfork import files

__all__ = ["ExplainTrigger", "request_names"]


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
            from gcfork import cowprof  # only when asked: see the module's docstring

            cowprof.write_profile(cowprof.profile_self(), answer, dir_fd=self._dir_fd)
        except Exception as exc:
            with contextlib.suppress(OSError):
                files.write_private(self._dir_fd, answer, json.dumps(
                    {"error": str(exc), "pid": self._pid}).encode())
        return True
