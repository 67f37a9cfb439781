"""A small closed-loop HTTP/1.1 load generator on uvloop + httptools.

Keep-alive connections, one request in flight per connection; records per
request the total latency and the time to the first body byte. Its own cost
is the same whether it talks to the sim or to the gateway, so differences
measured side by side are the gateway's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds
    ttfb: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    switches: int = 0  # the gateway's context switches over the run (bench.py fills it in)

    @property
    def count(self) -> int:
        return len(self.latencies)

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.count,
            "errors": self.errors,
            "rps": self.count / self.elapsed if self.elapsed else 0.0,
            "p50_ms": self.pct(self.latencies, 0.50) * 1000,
            "p99_ms": self.pct(self.latencies, 0.99) * 1000,
            "ttfb_p50_ms": self.pct(self.ttfb, 0.50) * 1000,
            "ttfb_p99_ms": self.pct(self.ttfb, 0.99) * 1000,
            "mean_ms": (statistics.fmean(self.latencies) * 1000) if self.latencies else float("nan"),
        }


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[int] | None = None
        self.first_body: float = 0.0
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.done and not self.done.done():
                self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))

    # parser callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first_body:
            self.first_body = time.perf_counter()

    def on_message_complete(self) -> None:
        if self.done and not self.done.done():
            self.done.set_result(self.status)


async def run_load(
    url: str, body: bytes, headers: dict[str, str], *, concurrency: int, duration: float, warmup: float = 0.5
) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    result = Result()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker() -> None:
        conn: _Conn | None = None
        while time.perf_counter() < stop_at:
            if conn is None or conn.transport is None or conn.transport.is_closing():
                _, conn = await loop.create_connection(_Conn, host, port)
            conn.done = loop.create_future()
            conn.first_body = 0.0
            t0 = time.perf_counter()
            conn.transport.write(request)  # type: ignore[union-attr]
            try:
                status = await conn.done
            except Exception:  # noqa: BLE001 - count and reconnect
                result.errors += 1
                conn = None
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                result.latencies.append(t1 - t0)
                result.ttfb.append((conn.first_body or t1) - t0)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status >= 400:
                    result.errors += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = duration
    return result
