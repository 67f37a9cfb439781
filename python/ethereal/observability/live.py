"""The console's live view: a fixed-size ring of per-second counters per worker process.

Each worker adds every usage record to one slot per second (requests by status class,
tokens, spend, latency and time-to-first-byte histograms) and keeps its in-flight count
in the header. The ring is a flat array of int64 of fixed size (``SLOTS`` seconds), so
memory never grows with traffic or with time. With several workers the rings are
memory-mapped files in the metrics directory (``PROMETHEUS_MULTIPROC_DIR``) and the
worker answering the console sums every ring; with one process it is plain memory.

A record costs ~20 integer additions; reading the last minute across four workers
sums ~14,000 integers (well under a millisecond).
"""

from __future__ import annotations

import bisect
import mmap
import os
import time
from array import array
from pathlib import Path
from typing import Any

from ethereal.storage.records import UsageRecord

SLOTS = 900  # 15 minutes of seconds
# histogram upper edges (ms); the last bucket is everything above
EDGES_MS = (
    5,
    10,
    20,
    35,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    7500,
    10000,
    15000,
    30000,
    60000,
    120000,
)
NB = len(EDGES_MS) + 1
# slot layout
F_SECOND, F_REQ, F_2XX, F_4XX, F_5XX, F_OTHER, F_IN, F_OUT, F_CR, F_CW5, F_CW1, F_COST, F_TTFB_N = range(13)
F_LAT = 13
F_TTFB = F_LAT + NB
WIDTH = F_TTFB + NB
HEADER = 8  # magic, pid, in_flight, last second written, spare
H_MAGIC, H_PID, H_IN_FLIGHT, H_LAST = range(4)
MAGIC = 0x45544852_494E4731  # "ETHRING1"
SIZE = (HEADER + SLOTS * WIDTH) * 8
_ZERO = array("q", bytes(WIDTH * 8))


class Ring:
    """This worker's ring; ``directory`` makes it a shared file the other workers can read."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.path: Path | None = None
        self._mm: mmap.mmap | None = None
        if directory is not None:
            self.path = Path(directory) / f"ring-{os.getpid()}.bin"
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, SIZE)
                self._mm = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)
            self.v = memoryview(self._mm).cast("q")
        else:
            self._buf = bytearray(SIZE)
            self.v = memoryview(self._buf).cast("q")
        self.v[H_MAGIC] = MAGIC
        self.v[H_PID] = os.getpid()

    def close(self) -> None:
        self.v.release()
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    # ------------------------------------------------------------------ writing (request path)
    def enter(self) -> None:
        self.v[H_IN_FLIGHT] += 1

    def leave(self) -> None:
        self.v[H_IN_FLIGHT] -= 1

    def add(self, rec: UsageRecord) -> None:
        second = int(rec.ended_at or time.time())
        v = self.v
        base = HEADER + (second % SLOTS) * WIDTH
        if v[base] != second:
            v[base : base + WIDTH] = _ZERO
            v[base] = second
        v[H_LAST] = second
        v[base + F_REQ] += 1
        status = rec.status
        if 200 <= status < 400:
            v[base + F_2XX] += 1
        elif 400 <= status < 500:
            v[base + F_4XX] += 1
        elif status >= 500:
            v[base + F_5XX] += 1
        else:
            v[base + F_OTHER] += 1
        v[base + F_IN] += rec.input_tokens
        v[base + F_OUT] += rec.output_tokens
        v[base + F_COST] += rec.cost_micro
        # cache traffic is 0 for most requests: a test is cheaper than adding 0 three times
        if rec.cache_read or rec.cache_creation_5m or rec.cache_creation_1h:
            v[base + F_CR] += rec.cache_read
            v[base + F_CW5] += rec.cache_creation_5m
            v[base + F_CW1] += rec.cache_creation_1h
        v[base + F_LAT + bisect.bisect_left(EDGES_MS, rec.duration_ms)] += 1
        if rec.ttfb_ms is not None:
            v[base + F_TTFB_N] += 1
            v[base + F_TTFB + bisect.bisect_left(EDGES_MS, rec.ttfb_ms)] += 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def in_flight(directory: str | os.PathLike[str] | None, own: Ring | None = None) -> int:
    """Requests in flight now: the header of every live worker's ring (only the header is read)."""
    if directory is None or (own is not None and own.path is None):
        return max(0, own.v[H_IN_FLIGHT]) if own is not None else 0
    total = 0
    for path in Path(directory).glob("ring-*.bin"):
        if own is not None and path == own.path:
            total += max(0, own.v[H_IN_FLIGHT])
            continue
        try:
            with path.open("rb") as f:
                head = f.read(HEADER * 8)
        except OSError:
            continue
        if len(head) == HEADER * 8:
            view = memoryview(head).cast("q")
            if view[H_MAGIC] == MAGIC and _alive(view[H_PID]):
                total += max(0, view[H_IN_FLIGHT])
    return total


def _rings(own: Ring) -> list[memoryview]:
    """Every worker's ring: the files beside ours (other workers', dead ones' history too), or ours."""
    if own.path is None:
        return [own.v]
    views = []
    for path in own.path.parent.glob("ring-*.bin"):
        if path == own.path:
            views.append(own.v)
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if len(data) == SIZE:
            view = memoryview(data).cast("q")
            if view[H_MAGIC] == MAGIC:
                views.append(view)
    return views


def percentile(hist: list[int], q: float) -> float | None:
    """The ``q`` quantile (ms) of a bucketed histogram, interpolated inside its bucket."""
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            lo = 0.0 if i == 0 else float(EDGES_MS[i - 1])
            hi = float(EDGES_MS[i]) if i < len(EDGES_MS) else lo * 2
            return lo + (hi - lo) * ((rank - seen) / count)
        seen += count
    return float(EDGES_MS[-1])


def snapshot(
    own: Ring, *, window: int = 60, series_seconds: int = 600, series_step: int = 10, now: float | None = None
) -> dict[str, Any]:
    """Totals over the last ``window`` seconds and a ``series_step`` series over ``series_seconds``."""
    second = int(now if now is not None else time.time())
    n_steps = series_seconds // series_step
    first = second - n_steps * series_step + 1
    totals = [0] * WIDTH
    series = [[0, 0, 0, 0] for _ in range(n_steps)]  # requests, errors, tokens, cost
    in_flight = 0
    workers = 0
    for v in _rings(own):
        workers += 1
        if v is own.v or _alive(v[H_PID]):
            in_flight += max(0, v[H_IN_FLIGHT])
        for s in range(first, second + 1):
            base = HEADER + (s % SLOTS) * WIDTH
            if v[base] != s:
                continue
            if s > second - window:
                slot = v[base : base + WIDTH]
                for i in range(1, WIDTH):
                    totals[i] += slot[i]
            step = series[(s - first) // series_step]
            step[0] += v[base + F_REQ]
            step[1] += v[base + F_4XX] + v[base + F_5XX]
            step[2] += v[base + F_IN] + v[base + F_OUT] + v[base + F_CR] + v[base + F_CW5] + v[base + F_CW1]
            step[3] += v[base + F_COST]
    lat = totals[F_LAT : F_LAT + NB]
    ttfb = totals[F_TTFB : F_TTFB + NB]
    requests = totals[F_REQ]
    return {
        "at": second,
        "window_seconds": window,
        "workers": workers,
        "in_flight": in_flight,
        "requests": requests,
        "status": {
            "2xx": totals[F_2XX],
            "4xx": totals[F_4XX],
            "5xx": totals[F_5XX],
            "other": totals[F_OTHER],
        },
        "error_rate": (totals[F_4XX] + totals[F_5XX]) / requests if requests else 0.0,
        "latency_ms": {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99)},
        "ttfb_ms": {"p50": percentile(ttfb, 0.5), "p99": percentile(ttfb, 0.99)},
        "tokens": {
            "input": totals[F_IN],
            "output": totals[F_OUT],
            "cache_read": totals[F_CR],
            "cache_write_5m": totals[F_CW5],
            "cache_write_1h": totals[F_CW1],
        },
        "cost_micro": totals[F_COST],
        "series": {
            "step": series_step,
            "start": first,
            "requests": [s[0] for s in series],
            "errors": [s[1] for s in series],
            "tokens": [s[2] for s in series],
            "cost_micro": [s[3] for s in series],
        },
    }
