"""A small HTTP load generator for ``gcfork bench``.

The benchmark needs to stop the load at exact request counts (to measure
memory after 100, 1,000, 5,000 ... requests) and to replay the same request
mix against every configuration. Duration-driven tools such as wrk or hey do
not stop at a count, and are not installable from PyPI; this one is a page of
asyncio. It opens a new connection per request, as gunicorn's sync workers
close every connection anyway, and reads each response to the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    """What one stretch of load did.

    Attributes:
        latencies: seconds per completed request, in completion order.
        statuses: count of responses per HTTP status (0: connection failed).
        elapsed: wall-clock seconds of the stretch.
        failures: a few examples of failed requests, for the error message.
    """

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status == 0 or status >= 500)

    def extend(self, other: LoadResult) -> None:
        self.latencies += other.latencies
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.elapsed += other.elapsed
        self.failures = (self.failures + other.failures)[:5]

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _one(host: str, port: int, path: str, timeout: float) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), timeout)
        # The server closes the connection after the response: read to EOF.
        await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    parts = head.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def _drive(
    host: str,
    port: int,
    paths: Sequence[str],
    start: int,
    count: int,
    concurrency: int,
    timeout: float,
    progress: Callable[[int], None] | None,
) -> LoadResult:
    result = LoadResult()
    next_index = start
    end = start + count

    async def client() -> None:
        nonlocal next_index
        while next_index < end:
            path = paths[next_index % len(paths)]
            next_index += 1
            began = time.perf_counter()
            try:
                status = await _one(host, port, path, timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                status = 0
                result.failures.append(f"{path}: {exc!r}")
                del result.failures[5:]
            else:
                result.latencies.append(time.perf_counter() - began)
                if status >= 500 and len(result.failures) < 5:
                    result.failures.append(f"{path}: HTTP {status}")
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if progress is not None:
                progress(1)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(max(1, min(concurrency, count)))))
    result.elapsed = time.perf_counter() - began
    return result


def run_load(
    host: str,
    port: int,
    paths: Sequence[str],
    count: int,
    start: int = 0,
    concurrency: int = 8,
    timeout: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """Send ``count`` GET requests, ``concurrency`` at a time.

    Args:
        host: server address (loopback in the benchmark).
        port: server port.
        paths: the request mix, replayed in order and wrapped around.
        count: how many requests to send.
        start: position in ``paths`` to start from, so that consecutive
            stretches continue the same sequence.
        concurrency: requests in flight at once.
        timeout: seconds before a request counts as failed.
        progress: called with 1 after each request.
    """
    if not paths:
        raise ValueError("the request mix is empty")
    return asyncio.run(
        _drive(host, port, paths, start, count, concurrency, timeout, progress)
    )
