"""The copy-on-write profile as data: :class:`CowProfile`, its rows, its JSON file.

Built in the throw-away child that :func:`gcfork.explain.capture.profile_self`
forks, sent to the worker as JSON, written by the worker next to the request
(:func:`write_profile`) and read back by ``gcfork explain``
(:func:`read_profile`, :func:`read_json`). The JSON is the dataclass's fields
plus ``"schema": 1``; a reader refuses any other schema.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from gcfork import files
from gcfork.exceptions import CowProfileError

__all__ = [
    "SCHEMA",
    "CowProfile",
    "MappingRow",
    "ObjectRow",
    "read_json",
    "read_profile",
    "write_profile",
]

SCHEMA = 1
# A profile is a few hundred kilobytes; anything much larger is not one.
_MAX_PROFILE_BYTES = 64 << 20


class MappingRow(NamedTuple):
    """One group of mappings of :attr:`CowProfile.mappings`; sizes in bytes.

    Attributes:
        group: ``[heap]``, ``[anon]``, ``[stack]``, or a file's path.
        mappings: how many mappings the group adds up.
        exclusive: bytes of pages pagemap marks exclusively mapped (scanned
            mappings only: writable and private; 0 for the others).
    """

    group: str
    mappings: int
    size: int
    rss: int
    pss: int
    shared_clean: int
    shared_dirty: int
    private_clean: int
    private_dirty: int
    swap: int
    exclusive: int


class ObjectRow(NamedTuple):
    """Objects of one type or module found on exclusively mapped pages.

    Attributes:
        key: the type (``module.QualName``; builtins bare) or the module.
        origin: ``inherited`` (frozen when the worker was forked) or
            ``worker`` (made by the worker since).
        objects: how many objects start on such a page.
        bytes: their ``sys.getsizeof`` total.
        pages: distinct exclusive pages holding at least one of them (a page
            shared by several keys counts for each).
    """

    key: str
    origin: str
    objects: int
    bytes: int
    pages: int


@dataclass
class CowProfile:
    """The result of :func:`~gcfork.explain.profile_self`; sizes in bytes.

    Attributes:
        pid: the profiled worker; with ``started``, its identity.
        started: the worker's start time, in clock ticks since boot (as in
            ``/proc/PID/stat``).
        ppid: its parent (the gunicorn master).
        taken: when the profile was taken (Unix time).
        seconds: how long it took.
        python: the worker's Python version.
        page_size: bytes per page.
        frozen: objects in the permanent generation when it was taken.
        scanned: bytes of the mappings whose pagemap was read.
        exclusive: bytes of exclusively mapped pages among those.
        with_objects: bytes of exclusive pages holding at least one object
            the walk found (inherited or worker-made).
        mappings: one row per group, most private first.
        by_type: rows per type and origin, most pages first.
        by_module: rows per module and origin, most pages first.
        notes: what the reader should know about this profile.
    """

    pid: int
    started: int
    ppid: int
    taken: float
    seconds: float
    python: str
    page_size: int
    frozen: int
    scanned: int
    exclusive: int
    with_objects: int
    mappings: list[MappingRow] = field(default_factory=list)
    by_type: list[ObjectRow] = field(default_factory=list)
    by_module: list[ObjectRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = SCHEMA
        data["mappings"] = [row._asdict() for row in self.mappings]
        data["by_type"] = [row._asdict() for row in self.by_type]
        data["by_module"] = [row._asdict() for row in self.by_module]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CowProfile:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"profile schema {data.get('schema')!r}, expected {SCHEMA}")
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["mappings"] = [MappingRow(**row) for row in data["mappings"]]
        fields["by_type"] = [ObjectRow(**row) for row in data["by_type"]]
        fields["by_module"] = [ObjectRow(**row) for row in data["by_module"]]
        return cls(**fields)


def write_profile(profile: CowProfile, path: str, *, dir_fd: int | None = None) -> None:
    """Write ``profile`` as JSON to ``path``, mode ``0600``, atomically.

    Args:
        dir_fd: an open directory; ``path`` is then a name in it.

    .. versionchanged:: 0.3
       Written to a random temporary name (``O_EXCL``), then renamed; ``dir_fd``.
    """
    data = json.dumps(profile.to_json(), allow_nan=False).encode()
    if dir_fd is not None:
        files.write_private(dir_fd, path, data)
        return
    parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        files.write_private(parent, os.path.basename(path), data)
    finally:
        os.close(parent)


def read_json(path: str, dir_fd: int | None, owners: Collection[int] | None) -> dict[str, Any]:
    """The JSON object in ``path`` (a profile, or the worker's error), read
    strictly and under a size bound.

    Raises:
        FileNotFoundError: there is no such file (yet).
        ValueError: why it is not read, in words.
    """
    data = files.loads_strict(files.read_private(dir_fd, path, _MAX_PROFILE_BYTES, owners))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def read_profile(path: str, *, dir_fd: int | None = None,
                 owners: Collection[int] | None = None) -> CowProfile:
    """Read a profile written by :func:`write_profile` (a symlink is refused).

    Args:
        dir_fd: an open directory; ``path`` is then a name in it.
        owners: the uids the file may belong to; None for any.

    Raises:
        CowProfileError: unreadable, not JSON, or another schema.
    """
    try:
        return CowProfile.from_json(read_json(path, dir_fd, owners))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CowProfileError(0, f"cannot read {path}: {exc}") from exc
