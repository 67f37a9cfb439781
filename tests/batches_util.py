"""Shared by the Message Batches tests: a mixed batch, keys minted into any store, expected usage."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Self

import anthropic
import orjson
from ethereal.batches.ids import item_request_id
from ethereal.keys import KeyRecord, mint
from ethereal.metering.pricing import price
from ethereal.models import load_registry
from ethereal.storage import open_store
from ethereal.storage.records import UsageRecord
from ethereal.usage import Usage

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
POLICY = "You answer questions about the travel policy. " * 120


def mixed_requests(n: int = 200, *, tag: str = "") -> list[dict[str, Any]]:
    """Plain, tools, thinking and cache_control requests (5m and 1h), canonical ids and aliases.

    The cached system prompt is new on each call, so the first items write the cache and the
    later ones read it whatever earlier tests sent the (shared) sim."""
    policy = f"[{uuid.uuid4().hex}] {POLICY}"
    out = []
    for i in range(n):
        kind = i % 5
        model = ("claude-sonnet-4-6", "sonnet-4", "claude-haiku-4-5", "opus-4", "claude-sonnet-4-6")[i % 5]
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": f"{tag}question number {i}"}],
        }
        if kind == 1:
            params["tools"] = [WEATHER]
            params["messages"][0]["content"] = f"{tag}what is the weather in city {i}?"
        elif kind == 2:
            params["max_tokens"] = 2048
            params["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        elif kind in (3, 4):
            ttl = {"type": "ephemeral", "ttl": "1h"} if kind == 4 else {"type": "ephemeral"}
            params["system"] = [{"type": "text", "text": policy, "cache_control": ttl}]
        out.append({"custom_id": f"{tag}item-{i:03d}", "params": params})
    return out


def mint_into_url(url: str, **attrs: Any) -> tuple[str, KeyRecord]:
    plaintext, record = mint("sk-ant-api03-", **attrs)

    async def go() -> None:
        store = await open_store(url)
        try:
            await store.insert_keys([record])
        finally:
            await store.close()

    asyncio.run(go())
    return plaintext, record


def usage_rows(
    url: str, batch_id: str, custom_ids: list[str], timeout: float = 20.0
) -> dict[str, UsageRecord]:
    """The usage row of every item, waiting until the batch is settled."""

    async def go() -> dict[str, UsageRecord]:
        store = await open_store(url, migrate=False)
        try:
            deadline = time.monotonic() + timeout
            while True:
                rec = await store.get_batch(batch_id)
                if rec is None or rec.settled or time.monotonic() > deadline:
                    break  # a deleted batch was settled before it went
                await asyncio.sleep(0.1)
            assert rec is None or rec.settled, f"batch {batch_id} was not settled in {timeout}s"
            rows = {}
            for cid in custom_ids:
                row = await store.get_usage(item_request_id(batch_id, cid))
                assert row is not None, f"no usage row for {cid}"
                rows[cid] = row
            return rows
        finally:
            await store.close()

    return asyncio.run(go())


def batch_record(url: str, batch_id: str) -> Any:
    async def go() -> Any:
        store = await open_store(url, migrate=False)
        try:
            return await store.get_batch(batch_id)
        finally:
            await store.close()

    return asyncio.run(go())


def count_item_rows(url: str, batch_id: str) -> int:
    async def go() -> int:
        store = await open_store(url, migrate=False)
        try:
            prefix = item_request_id(batch_id, "")
            if store.dialect == "sqlite":
                return await store._run(
                    lambda: store.conn.execute(  # type: ignore[attr-defined]
                        "SELECT COUNT(*) FROM usage_records WHERE request_id LIKE ?", (prefix + "%",)
                    ).fetchone()[0]
                )
            return int(
                await store.pool.fetchval(  # type: ignore[attr-defined]
                    "SELECT COUNT(*) FROM usage_records WHERE request_id LIKE $1", prefix + "%"
                )
            )
        finally:
            await store.close()

    return asyncio.run(go())


def check_usage(results: dict[str, dict[str, Any]], rows: dict[str, UsageRecord]) -> tuple[int, int]:
    """Every row holds its item's exact usage at the batch price; returns (tokens, micro) summed."""
    registry = load_registry(None)
    tokens = micro = 0
    for cid, result in results.items():
        row = rows[cid]
        assert row.batch is True and row.route == "messages.batches" and row.stream is False
        if result["type"] != "succeeded":
            assert (row.input_tokens, row.output_tokens, row.cost_micro) == (0, 0, 0)
            assert row.error_type == (
                result["error"]["error"]["type"] if result["type"] == "errored" else result["type"]
            )
            continue
        usage = result["message"]["usage"]
        split = usage["cache_creation"]
        got = (
            row.input_tokens,
            row.output_tokens,
            row.cache_creation_5m,
            row.cache_creation_1h,
            row.cache_read,
        )
        want = (
            usage["input_tokens"],
            usage["output_tokens"],
            split["ephemeral_5m_input_tokens"],
            split["ephemeral_1h_input_tokens"],
            usage["cache_read_input_tokens"],
        )
        assert got == want, cid
        model = registry.resolve(result["message"]["model"])
        used = Usage(
            input_tokens=want[0],
            output_tokens=want[1],
            cache_5m=want[2],
            cache_1h=want[3],
            cache_read=want[4],
        )
        expected = price(registry, model, used, at=row.started_at, batch=True).cost_micro
        full = price(registry, model, used, at=row.started_at).cost_micro
        assert row.cost_micro == expected and abs(2 * expected - full) <= 1, cid  # half the standard price
        tokens += sum(want)
        micro += row.cost_micro
    return tokens, micro


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} did not end in {timeout}s"
        time.sleep(0.1)


class BatchSink:
    """A stand-in upstream for big creates: every ``POST /v1/messages/batches`` body is read and
    dropped (only its size is kept), the answer a ``message_batch`` in progress, as is any ``GET``
    of one. Runs its own event loop in a thread; ``url`` once started."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                left = int(headers.get("content-length", "0"))
                size = left
                while left:
                    chunk = await reader.read(min(left, 1 << 20))
                    if not chunk:
                        return
                    left -= len(chunk)
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if method == "POST":
                    self.sizes.append(size)
                    batch = f"msgbatch_sink{len(self.sizes):06d}"
                else:
                    batch = path.rstrip("/").rsplit("/", 1)[-1]
                body = orjson.dumps(
                    {
                        "id": batch,
                        "type": "message_batch",
                        "processing_status": "in_progress",
                        "request_counts": {
                            "processing": 1,
                            "succeeded": 0,
                            "errored": 0,
                            "canceled": 0,
                            "expired": 0,
                        },
                        "created_at": now,
                        "expires_at": now,
                        "ended_at": None,
                        "archived_at": None,
                        "cancel_initiated_at": None,
                        "results_url": None,
                    }
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"request-id: req_sink\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> Self:
        self._thread.start()

        async def start() -> str:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

        self.url = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def big_batch_body(target_bytes: int, item_bytes: int = 4096) -> bytes:
    """A ``{"requests": [...]}`` body of about ``target_bytes``: items of about ``item_bytes`` of
    English text each, one model, canonical ids (nothing to splice)."""
    filler = "The quick brown fox jumps over the lazy dog. "
    text = filler * max(1, (item_bytes - 160) // len(filler))
    template = orjson.dumps(
        {
            "custom_id": "item-000000",
            "params": {
                "model": "claude-sonnet-4-6",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": text}],
            },
        }
    )
    count = max(1, target_bytes // (len(template) + 1))
    parts = [template.replace(b"item-000000", b"item-%06d" % i) for i in range(count)]
    return b'{"requests":[' + b",".join(parts) + b"]}"


_PROBE = """
import sys, time, httpx
url, every = sys.argv[1], float(sys.argv[2])
with httpx.Client(timeout=10) as client:
    while True:
        t0 = time.perf_counter()
        try:
            ok = client.get(url + "/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        print(time.perf_counter() - t0 if ok else "inf", flush=True)
        time.sleep(every)
"""


@contextlib.contextmanager
def healthz_watch(url: str, every: float = 0.05) -> Iterator[list[float]]:
    """``/healthz`` latencies (seconds), probed every ``every`` s while the block runs, from a process
    of its own (what the caller's threads do cannot delay the probes); a failed probe is ``inf``.
    The list is filled when the block ends."""
    import subprocess
    import sys

    latencies: list[float] = []
    prober = subprocess.Popen(
        [sys.executable, "-c", _PROBE, url, str(every)], stdout=subprocess.PIPE, text=True
    )
    try:
        yield latencies
    finally:
        prober.terminate()
        out, _ = prober.communicate(timeout=15)
        latencies.extend(float(line) for line in out.split())
