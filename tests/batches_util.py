"""Shared by the Message Batches tests: a mixed batch, keys minted into any store, expected usage."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import anthropic
from ethereal.batches.ids import item_request_id
from ethereal.keys import KeyRecord, mint
from ethereal.metering.pricing import price
from ethereal.models import load_registry
from ethereal.storage import open_store
from ethereal.storage.records import UsageRecord
from ethereal.usage import Usage

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                             "days": {"type": "integer"}},
                            "required": ["city", "days"]}}
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
        params: dict[str, Any] = {"model": model, "max_tokens": 256,
                                  "messages": [{"role": "user", "content": f"{tag}question number {i}"}]}
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


def usage_rows(url: str, batch_id: str, custom_ids: list[str], timeout: float = 20.0) -> dict[str, UsageRecord]:
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
                return await store._run(lambda: store.conn.execute(  # type: ignore[attr-defined]
                    "SELECT COUNT(*) FROM usage_records WHERE request_id LIKE ?", (prefix + "%",)).fetchone()[0])
            return int(await store.pool.fetchval(  # type: ignore[attr-defined]
                "SELECT COUNT(*) FROM usage_records WHERE request_id LIKE $1", prefix + "%"))
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
            assert row.error_type == (result["error"]["error"]["type"] if result["type"] == "errored"
                                      else result["type"])
            continue
        usage = result["message"]["usage"]
        split = usage["cache_creation"]
        got = (row.input_tokens, row.output_tokens, row.cache_creation_5m, row.cache_creation_1h, row.cache_read)
        want = (usage["input_tokens"], usage["output_tokens"], split["ephemeral_5m_input_tokens"],
                split["ephemeral_1h_input_tokens"], usage["cache_read_input_tokens"])
        assert got == want, cid
        model = registry.resolve(result["message"]["model"])
        used = Usage(input_tokens=want[0], output_tokens=want[1], cache_5m=want[2], cache_1h=want[3],
                     cache_read=want[4])
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
