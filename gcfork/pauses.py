"""The distribution of a process's GC pauses: a histogram over fixed buckets.

Each process counts its collections by pause (:class:`gcfork.records.GCCollector`);
the buckets are the same in every process and every version of gcfork that
writes them, so the histograms of a cluster's workers add up, and a quantile
is read from the sum (``gcfork bench``) as well as from one process
(``gcfork report``).

.. versionadded:: 0.5
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["PAUSE_BUCKETS", "bucket_of", "pause_counts", "pause_quantile"]

PAUSE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Upper bounds, in seconds, of the histogram's buckets; a last bucket counts
the longer pauses."""


def bucket_of(pause: float) -> int:
    """The index of the bucket a pause of ``pause`` seconds is counted in."""
    return bisect.bisect_left(PAUSE_BUCKETS, pause)


def pause_quantile(counts: Sequence[int], q: float, longest: float) -> float | None:
    """The pause at quantile ``q`` (0 to 1) of a histogram over :data:`PAUSE_BUCKETS`,
    as the upper bound of its bucket (``longest`` past the last bound, and never
    more than it); None for no collections."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for bound, count in zip((*PAUSE_BUCKETS, math.inf), counts):
        seen += count
        if seen >= rank and count:
            return min(bound, longest)
    return longest


def pause_counts(value: object) -> tuple[int, ...]:
    """A histogram as a record holds it (JSON), checked: one count >= 0 per
    bucket and one for longer, or none at all (a writer that kept none).

    Raises:
        ValueError: in words.
    """
    if not isinstance(value, list) or len(value) not in (0, len(PAUSE_BUCKETS) + 1):
        raise ValueError(f"pauses is not a list of {len(PAUSE_BUCKETS) + 1} counts")
    if not all(type(n) is int and 0 <= n < 2**63 for n in value):
        raise ValueError("pauses holds a count that is not an integer >= 0")
    return tuple(value)
