"""Private files and directories, always reached through a directory descriptor.

Used by :mod:`gcfork.stats` (records, advertisements), :mod:`gcfork.trigger`
and :mod:`gcfork.explain` (explain requests and profiles), in the master, in
workers and in the ``gcfork`` command. A path is looked up once, when its
directory is opened (:func:`open_dir`, never following a symlink at its last
component); every later operation is relative to that descriptor. Replacing
the directory by a symlink afterwards, in a parent writable by someone else,
then changes nothing: the descriptor still names the directory that was
checked.

Files are written whole to a fresh random name (``O_EXCL|O_NOFOLLOW``, mode
0600) and renamed into place (:func:`write_private`): a reader never sees half
a file, and nothing planted under either name is followed. They are read with
``O_NOFOLLOW|O_NONBLOCK``, under a size bound, from an expected owner only
(:func:`read_private`). JSON is parsed strictly (:func:`loads_strict`).

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
from collections.abc import Collection

__all__ = [
    "empty_dir",
    "loads_strict",
    "make_dir",
    "open_dir",
    "read_private",
    "write_all",
    "write_private",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
# How deep empty_dir() goes: gcfork makes one level (.explain); anything deeper
# was planted, and a bound keeps a planted tree from exhausting descriptors.
_MAX_DEPTH = 4


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """Open the directory ``name`` (relative to ``dir_fd`` if given) without
    following a symlink at its last component; close-on-exec, inherited by
    forked children.

    Raises:
        OSError: ``ELOOP`` for a symlink, ``ENOTDIR`` for another file, ...
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:
        # Linux says ENOTDIR for a symlink when O_DIRECTORY is given: tell them apart.
        try:
            link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
        except OSError:
            link = False
        if link:
            raise OSError(errno.ELOOP, "it is a symlink", name) from None
        raise


def make_dir(dir_fd: int, name: str, owner: tuple[int, int] | None = None) -> int:
    """Create the directory ``name`` (mode 0700) in ``dir_fd`` and open it.

    Args:
        owner: ``(uid, gid)`` to give it (a root master's workers run as
            another user); None keeps the caller's.

    Raises:
        FileExistsError: ``name`` exists; it is left alone.
        OSError: it could not be created, opened or given away.
    """
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = open_dir(name, dir_fd)
    try:
        if owner is not None:
            info = os.fstat(fd)
            if (info.st_uid, info.st_gid) != owner:
                os.fchown(fd, *owner)
        return fd
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):  # made empty a moment ago
            os.rmdir(name, dir_fd=dir_fd)
        raise


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the descriptor ``fd`` whole (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_private(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` as ``name`` in ``dir_fd``, mode ``mode`` (0600), atomically.

    Raises:
        OSError: the directory is gone, full or not writable.
    """
    # A fresh random name with O_EXCL: nothing planted there can be followed,
    # and rename() replaces a symlink at the final name instead of following it.
    tmp = f".{name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)  # exactly this mode, whatever the umask
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def read_private(dir_fd: int | None, name: str, max_bytes: int,
                 owners: Collection[int] | None = None) -> bytes:
    """The bytes of the regular file ``name`` in ``dir_fd``, under ``max_bytes``.

    Args:
        owners: the uids a file may belong to; None accepts any.

    Raises:
        ValueError: why the file is ignored, in words.
        FileNotFoundError: it does not exist (or disappeared).
    """
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("a symlink, not followed") from None
        if exc.errno == errno.ENOENT:
            raise
        raise ValueError(exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if owners is not None and info.st_uid not in owners:
            allowed = " or ".join(str(uid) for uid in sorted(set(owners)))
            raise ValueError(f"owned by uid {info.st_uid}, not by uid {allowed}")
        if info.st_size > max_bytes:
            raise ValueError(f"{info.st_size} bytes, over the {max_bytes}-byte bound")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise ValueError(f"over the {max_bytes}-byte bound")
        return b"".join(chunks)
    finally:
        os.close(fd)


def empty_dir(dir_fd: int, depth: int = 0) -> None:
    """Remove everything in ``dir_fd``, subdirectories included, through
    descriptors only; what cannot be removed stays. Never raises OSError."""
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(name, dir_fd=dir_fd)
            continue
        except IsADirectoryError:
            pass
        except OSError as exc:
            if exc.errno != errno.EPERM:  # some systems say EPERM for a directory
                continue
        if depth >= _MAX_DEPTH:
            continue
        try:
            sub = open_dir(name, dir_fd)
        except OSError:
            continue
        try:
            empty_dir(sub, depth + 1)
        finally:
            os.close(sub)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=dir_fd)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number in JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of a float's range")
    return value


def loads_strict(data: bytes | str) -> object:
    """Parse JSON as RFC 8259 has it: no ``NaN``/``Infinity``, no float that
    overflows to infinity, and no nesting deep enough to exhaust the stack.

    Raises:
        ValueError: not such JSON, in words (a :class:`json.JSONDecodeError`
            for a syntax error).
    """
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None
