"""The Store's Message Batches contract, held on both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from ethereal.batches.ids import batch_id
from ethereal.storage.records import BatchRecord, UsageRecord


def batch(key_id: str | None = "key_a", **kw: Any) -> BatchRecord:
    base: dict[str, Any] = {
        "id": batch_id(),
        "key_id": key_id,
        "credential": "default",
        "status": "in_progress",
        "request_count": 3,
        "processing": 3,
        "expires_at": time.time() + 86400,
        "estimated_tokens": 900,
        "estimated_micro": 4500,
        "held_tokens": 900,
        "held_micro": 4500,
    }
    base.update(kw)
    return BatchRecord(**base)


async def test_batch_roundtrip_and_update(store: Any) -> None:
    rec = batch(upstream_id="msgbatch_up")
    await store.insert_batch(rec)
    got = await store.get_batch(rec.id)
    assert got is not None
    assert {k: v for k, v in vars_of(got).items() if k != "updated_at"} == {
        k: v for k, v in vars_of(rec).items() if k != "updated_at"
    }
    assert await store.get_batch("msgbatch_missing") is None
    now = time.time()
    updated = await store.update_batch(
        rec.id,
        {
            "status": "ended",
            "processing": 0,
            "succeeded": 2,
            "errored": 1,
            "ended_at": now,
            "last_error": None,
        },
    )
    assert (
        updated is not None
        and updated.status == "ended"
        and updated.succeeded == 2
        and updated.ended_at == now
    )
    assert updated.settled is False
    with pytest.raises(ValueError):
        await store.update_batch(rec.id, {"key_id": "key_b"})  # the owner never moves
    assert await store.update_batch("msgbatch_missing", {"status": "ended"}) is None
    assert await store.delete_batch(rec.id) is True
    assert await store.delete_batch(rec.id) is False
    assert await store.get_batch(rec.id) is None


def vars_of(rec: BatchRecord) -> dict[str, Any]:
    return {name: getattr(rec, name) for name in rec.__dataclass_fields__}  # type: ignore[attr-defined]


async def test_list_batches_newest_first_with_cursors(store: Any) -> None:
    mine = []
    for i in range(7):
        rec = batch("key_a" if i % 3 else "key_b")
        await store.insert_batch(rec)
        if i % 3:
            mine.append(rec.id)
        await asyncio.sleep(0.002)  # ids sort by creation time (milliseconds)
    newest_first = list(reversed(mine))
    page, more = await store.list_batches(key_id="key_a", limit=2)
    assert [b.id for b in page] == newest_first[:2] and more
    page2, more2 = await store.list_batches(key_id="key_a", limit=2, after_id=page[-1].id)
    assert [b.id for b in page2] == newest_first[2:4] and not more2
    back, more_back = await store.list_batches(key_id="key_a", limit=1, before_id=page2[0].id)
    assert [b.id for b in back] == [newest_first[1]] and more_back
    everyone, _ = await store.list_batches(key_id=None, limit=100)
    assert len(everyone) == 7
    assert [b.id for b in everyone] == sorted((b.id for b in everyone), reverse=True)


async def test_lease_is_exclusive_until_it_expires(store: Any) -> None:
    rec = batch()
    await store.insert_batch(rec)
    now = time.time()
    assert await store.claim_batch(rec.id, "replica-1", now + 30, now)
    assert not await store.claim_batch(rec.id, "replica-2", now + 30, now)
    assert await store.claim_batch(rec.id, "replica-1", now + 60, now)  # the holder renews
    assert await store.claim_batch(rec.id, "replica-2", now + 200, now + 61)  # expired: taken over
    assert not await store.claim_batch("msgbatch_missing", "replica-1", now + 30, now)


async def test_settle_flips_once_and_releases_the_hold(store: Any) -> None:
    a, b, other = batch(), batch(held_tokens=100, held_micro=50), batch("key_b")
    for rec in (a, b, other):
        await store.insert_batch(rec)
    assert await store.batch_holds("key_a") == (1000, 4550)
    assert {r.id for r in await store.unsettled_batches()} == {a.id, b.id, other.id}
    assert await store.settle_batch(a.id, tokens=700, micro=3000, items=3) is True
    assert await store.settle_batch(a.id, tokens=1, micro=1, items=3) is False  # a replay changes nothing
    got = await store.get_batch(a.id)
    assert got is not None and got.settled and got.settled_micro == 3000 and got.metered_items == 3
    assert await store.batch_holds("key_a") == (100, 50)
    assert await store.batch_holds("key_nobody") == (0, 0)
    assert {r.id for r in await store.unsettled_batches()} == {b.id, other.id}


async def test_batch_usage_rows_carry_the_flag(store: Any) -> None:
    now = time.time()
    rec = UsageRecord(
        request_id="req_" + uuid.uuid4().hex,
        key_id="key_a",
        credential="default",
        route="messages.batches",
        model="claude-sonnet-4-6",
        status=200,
        stream=False,
        input_tokens=10,
        output_tokens=5,
        cost_micro=52,
        started_at=now,
        ended_at=now,
        batch=True,
    )
    assert await store.insert_usage([rec, rec]) == 1
    got = await store.get_usage(rec.request_id)
    assert got is not None and got.batch is True and got.to_api()["batch"] is True
