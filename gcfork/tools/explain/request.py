"""Asking a running worker for its copy-on-write profile, from the ``gcfork`` command.

gunicorn reserves its signals in workers (``USR1`` reopens logs; ``USR2`` is
reset to its default action, which kills the worker), so ``gcfork explain``
asks through files instead. The trigger directory (``0700``, owned by the
workers' user) is hidden inside the server's private stats directory, so
:func:`trigger_dir_of` finds it from the worker's pid the way ``gcfork
report`` finds the stats, and it goes away with the stats directory.
:func:`request_profile` creates ``explain-<pid>.request`` there and waits for
``explain-<pid>.json`` (written ``0600``); the worker's side, which looks for
the request now and then, is :mod:`gcfork.trigger`.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time

from gcfork import files, procfs
from gcfork.exceptions import CowProfileError
from gcfork.explain.model import CowProfile, read_json
from gcfork.memory import process_start
from gcfork.stats import TRIGGER_NAME, advertised
from gcfork.trigger import request_names

__all__ = ["request_profile", "trigger_dir", "trigger_dir_of"]


def trigger_dir(stats_dir: str) -> str:
    """The trigger directory of a server whose stats directory is ``stats_dir``.

    A hidden entry, so the stats readers skip it; made by the master for the
    workers' user and removed with the stats directory (see
    :meth:`gcfork.stats.StatsDir.create`).
    """
    return os.path.join(stats_dir, TRIGGER_NAME)


def trigger_dir_of(pid: int) -> str:
    """The trigger directory of worker ``pid``: in the stats directory its
    master (its parent) advertised, as ``gcfork report`` finds it.

    Raises:
        CowProfileError: no such process, or its parent advertises nothing.
    """
    try:
        master = procfs.stat(pid).ppid
    except (OSError, ValueError, IndexError):  # gone, or a stat line we cannot parse
        master = 0
    if not master:
        raise CowProfileError(pid, "no such process")
    start = process_start(master)
    stats_dir = advertised(master, start) if start is not None else None
    if stats_dir is None:
        raise CowProfileError(
            pid, f"its parent {master} advertises no gcfork stats directory: is {pid} a worker "
            "of a gunicorn master running gcfork? Otherwise pass --dir"
        )
    return trigger_dir(stats_dir)


def request_profile(pid: int, directory: str | None = None, timeout: float = 60.0) -> CowProfile:
    """Ask the worker ``pid`` (running :func:`gcfork.trigger.start_trigger`, or
    polled by the gunicorn adapter) for a profile and wait.

    Args:
        pid: the worker.
        directory: its trigger directory; None finds it with :func:`trigger_dir_of`.
        timeout: seconds to wait for the profile.

    Raises:
        CowProfileError: no answer in time, or the worker reported an error.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise CowProfileError(pid, "no such process") from None
    except PermissionError:
        pass
    where = os.path.normpath(directory or trigger_dir_of(pid))
    try:
        # Neither the stats directory nor the trigger directory is followed.
        parent = files.open_dir(os.path.dirname(where) or ".")
        try:
            fd = files.open_dir(os.path.basename(where), parent)
        finally:
            os.close(parent)
    except FileNotFoundError:
        raise CowProfileError(
            pid, f"{where} does not exist: no worker started the explain trigger with it"
        ) from None
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise CowProfileError(pid, f"refusing directory {where}: {why}") from None
    try:
        return _ask(pid, where, fd, timeout)
    finally:
        os.close(fd)


def _ask(pid: int, where: str, dir_fd: int, timeout: float) -> CowProfile:
    info = os.fstat(dir_fd)
    if (info.st_uid != os.geteuid() and os.geteuid() != 0) or info.st_mode & 0o022:
        raise CowProfileError(pid, f"refusing directory {where}: uid {info.st_uid}, mode "
                              f"{stat.S_IMODE(info.st_mode):04o}; others could plant answers")
    owners = {os.geteuid(), info.st_uid}
    request, result = request_names(pid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(result, dir_fd=dir_fd)
    files.write_private(dir_fd, request, b"")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = read_json(result, dir_fd, owners)
        except FileNotFoundError:
            time.sleep(0.2)
            continue
        except ValueError as exc:
            raise CowProfileError(pid, f"cannot read {where}/{result}: {exc}") from None
        if "error" in data:
            raise CowProfileError(pid, f"the worker reported: {str(data['error'])[:500]}")
        try:
            return CowProfile.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CowProfileError(pid, f"cannot read {where}/{result}: {exc!r}") from None
    raise CowProfileError(
        pid,
        f"no profile in {where} after {timeout:.0f}s: is it a gcfork worker started with the "
        "explain trigger, using this directory?",
    )
