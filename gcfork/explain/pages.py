"""What the kernel says about a worker's pages: ``/proc/PID/smaps`` and ``pagemap``.

The worker reads both (:func:`read_smaps`, :func:`read_pagemap`) before it
forks the throw-away child of :mod:`gcfork.explain.capture`: a child maps the
same pages and clears their exclusive bit. The child parses what was read
(:func:`exclusive_pages`, :func:`group_mappings`), so that the parsing
allocates nothing in the worker.

A page is *exclusively mapped* (``pagemap`` bit 56, readable without
privileges) when no other process maps it now: the pages this worker copied
or allocated, and also inherited pages that every other sharer (the master,
the other workers) has since copied away from.

.. versionadded:: 0.2
"""

from __future__ import annotations

import os

from gcfork.explain.model import MappingRow

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "exclusive_pages",
    "group_mappings",
    "read_pagemap",
    "read_smaps",
    "scannable",
]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56
# A mapping larger than this is a reservation (sanitizers, some allocators):
# reading its pagemap would cost 2 MB per GiB for pages that are not there.
_MAX_SCANNED_MAPPING = 64 << 30
_SMAPS_FIELDS = {
    b"Size:": "size",
    b"Rss:": "rss",
    b"Pss:": "pss",
    b"Shared_Clean:": "shared_clean",
    b"Shared_Dirty:": "shared_dirty",
    b"Private_Clean:": "private_clean",
    b"Private_Dirty:": "private_dirty",
    b"Swap:": "swap",
}


def read_smaps(pid: int) -> bytes:
    """Worker: the whole of ``/proc/PID/smaps``, in one buffer.

    Raises:
        OSError: it could not be read.
    """
    with open(f"/proc/{pid}/smaps", "rb") as f:
        return f.read()


def scannable(smaps: bytes) -> list[tuple[int, int]]:
    """Address ranges whose pagemap to read: private, writable, resident."""
    ranges = []
    start = end = 0
    wanted = False
    for line in smaps.split(b"\n"):
        head = line.split(None, 1)[0] if line else b""
        if b"-" in head and not head.endswith(b":"):
            first, last = head.split(b"-")
            start, end = int(first, 16), int(last, 16)
            perms = line.split()[1]
            wanted = perms[1:2] == b"w" and perms[3:4] == b"p"
        elif (
            head == b"Rss:"
            and wanted
            and int(line.split()[1]) > 0
            and end - start <= _MAX_SCANNED_MAPPING
        ):
            ranges.append((start, end))
    return ranges


def read_pagemap(pid: int, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Worker: the raw ``pagemap`` entries (8 bytes per page) of each range.

    Raises:
        OSError: ``pagemap`` could not be opened.
    """
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        out = []
        for start, end in ranges:
            want = ((end - start) >> PAGE_SHIFT) * 8
            offset = (start >> PAGE_SHIFT) * 8
            chunks = []
            while want > 0:
                chunk = os.pread(fd, min(want, 1 << 22), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
                offset += len(chunk)
            out.append(b"".join(chunks))
        return out
    finally:
        os.close(fd)


def exclusive_pages(
    ranges: list[tuple[int, int]], pagemaps: list[bytes]
) -> tuple[set[int], int]:  # pragma: no cover - runs in the throw-away child
    """The numbers of the present, exclusively mapped pages among ``ranges``,
    and how many pages were scanned."""
    import array  # imported here: the worker never loads it

    exclusive: set[int] = set()
    scanned = 0
    mask = _PRESENT | _EXCLUSIVE
    for (start, _end), raw in zip(ranges, pagemaps):
        entries = array.array("Q")
        entries.frombytes(raw[: len(raw) - len(raw) % 8])
        first = start >> PAGE_SHIFT
        scanned += len(entries)
        for index, entry in enumerate(entries):
            if entry & mask == mask:
                exclusive.add(first + index)
    return exclusive, scanned


def group_mappings(smaps: bytes, exclusive: list[int]) -> list[MappingRow]:
    """Sum smaps fields per path; ``exclusive`` is the sorted exclusive page numbers."""
    from bisect import bisect_left  # in the throw-away child, as array above

    groups: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in smaps.split(b"\n"):
        parts = line.split()
        if not parts:
            continue
        head = parts[0]
        if b"-" in head and not head.endswith(b":"):
            first, last = (int(x, 16) for x in head.split(b"-"))
            path = b" ".join(parts[5:]).decode(errors="replace") if len(parts) > 5 else ""
            name = path or "[anon]"
            current = groups.setdefault(name, dict.fromkeys(MappingRow._fields[1:], 0))
            current["mappings"] += 1
            count = bisect_left(exclusive, last >> PAGE_SHIFT) - bisect_left(
                exclusive, first >> PAGE_SHIFT
            )
            current["exclusive"] += PAGE_SIZE * count
        elif current is not None and head in _SMAPS_FIELDS:
            current[_SMAPS_FIELDS[head]] += int(parts[1]) * 1024
    rows = [MappingRow(group=name, **values) for name, values in groups.items()]
    rows.sort(key=lambda r: (r.private_dirty + r.private_clean, r.rss), reverse=True)
    return rows
