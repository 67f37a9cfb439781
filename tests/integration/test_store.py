"""The Store contract, held on both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from typing import Any

import asyncpg
import pytest
from ethereal.keys import mint
from ethereal.storage import open_store
from ethereal.storage.records import StoredCredential, UsageRecord


def usage(key_id: str | None = "key_a", **kw: Any) -> UsageRecord:
    now = time.time()
    base = {
        "request_id": "req_" + uuid.uuid4().hex,
        "key_id": key_id,
        "credential": "default",
        "route": "messages",
        "model": "claude-sonnet-4-6",
        "status": 200,
        "stream": False,
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_micro": 330,
        "ttfb_ms": 12.5,
        "duration_ms": 40.0,
        "started_at": now,
        "ended_at": now + 0.04,
    }
    base.update(kw)
    return UsageRecord(**base)  # type: ignore[arg-type]


async def test_keys_roundtrip(store: Any) -> None:
    _plaintext, rec = mint(
        "sk-ant-api03-",
        name="n",
        owner="team-a",
        plan="pro",
        budget_tokens=10**12,
        budget_micro_usd=5_000_000,
        rpm=60,
        tpm=100_000,
        max_concurrency=4,
        allowed_models=["sonnet-4"],
        expires_at=time.time() + 3600,
        metadata={"cost_center": 42, "tags": ["x"]},
    )
    await store.insert_keys([rec])
    got = await store.get_key_by_hash(rec.key_hash)
    assert got is not None
    assert got.public() == rec.public()
    assert (await store.get_key(rec.id)).key_hash == rec.key_hash  # type: ignore[union-attr]
    assert await store.get_key("key_missing") is None
    assert await store.get_key_by_hash("0" * 64) is None


async def test_insert_keys_is_all_or_nothing(store: Any) -> None:
    _, a = mint("sk-")
    _, b = mint("sk-")
    _, dup = mint("sk-")
    dup.key_hash = a.key_hash  # unique violation on the last row
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own driver's integrity error
        await store.insert_keys([a, b, dup])
    assert await store.list_keys() == []
    await store.insert_keys([a, b])
    assert len(await store.list_keys()) == 2


async def test_list_keys_filters_and_cursor(store: Any) -> None:
    records = []
    for i in range(7):
        _, rec = mint("sk-", owner="alice" if i % 2 else "bob", plan="pro" if i < 3 else None)
        records.append(rec)
    records[0].revoked = True
    records[1].expires_at = time.time() - 10
    await store.insert_keys(records)
    ids = sorted(r.id for r in records)
    page1 = await store.list_keys(limit=3)
    assert [r.id for r in page1] == ids[:3]
    page2 = await store.list_keys(limit=3, after_id=page1[-1].id)
    assert [r.id for r in page2] == ids[3:6]
    assert {r.id for r in await store.list_keys(owner="alice")} == {
        r.id for r in records if r.owner == "alice"
    }
    assert {r.id for r in await store.list_keys(plan="pro")} == {r.id for r in records[:3]}
    assert [r.id for r in await store.list_keys(state="revoked")] == [records[0].id]
    assert [r.id for r in await store.list_keys(state="expired")] == [records[1].id]
    assert {r.id for r in await store.list_keys(state="active")} == {r.id for r in records[2:]}


async def test_update_and_delete_key(store: Any) -> None:
    _, rec = mint("sk-")
    await store.insert_keys([rec])
    updated = await store.update_key(
        rec.id,
        {
            "rpm": 5,
            "allowed_models": ["haiku-4"],
            "metadata": {"a": 1},
            "revoked": True,
            "expires_at": None,
            "plan": "max20",
        },
    )
    assert updated is not None
    assert (updated.rpm, updated.allowed_models, updated.metadata, updated.revoked, updated.plan) == (
        5,
        ["haiku-4"],
        {"a": 1},
        True,
        "max20",
    )
    assert updated.updated_at >= rec.updated_at
    cleared = await store.update_key(rec.id, {"allowed_models": None, "rpm": None})
    assert cleared is not None and cleared.allowed_models is None and cleared.rpm is None
    assert await store.update_key("key_missing", {"rpm": 1}) is None
    with pytest.raises(ValueError):
        await store.update_key(rec.id, {"key_hash": "x"})
    assert await store.delete_key(rec.id) is True
    assert await store.delete_key(rec.id) is False
    assert await store.get_key(rec.id) is None


async def test_usage_insert_is_idempotent(store: Any) -> None:
    rows = [usage() for _ in range(50)]
    assert await store.insert_usage(rows) == 50
    # a replayed batch (partly new) inserts only the new rows; duplicates inside a batch too
    extra = usage()
    assert await store.insert_usage([*rows[:10], extra, extra]) == 1
    assert await store.insert_usage([]) == 0
    got = await store.get_usage(rows[3].request_id)
    assert got is not None and got.to_dict() == rows[3].to_dict()
    assert await store.get_usage("req_missing") is None


@pytest.mark.parametrize("count", [1, 7, 255, 256, 257, 1000])
async def test_a_flush_of_any_size_stores_each_row_once(store: Any, count: int) -> None:
    """Sizes around the embedded store's statement sizes (several rows per INSERT, powers of two up
    to 256): every row lands once, with its values, and a request id repeated in another statement
    of the same flush, or in the same one, is kept from its first row."""
    rows = [usage(cost_micro=i) for i in range(count)]
    again = [rows[0], rows[-1]]
    twice = usage(cost_micro=-1)
    assert await store.insert_usage([*rows, *again, twice, usage(request_id=twice.request_id)]) == count + 1
    for rec in (rows[0], rows[count // 2], rows[-1], twice):
        got = await store.get_usage(rec.request_id)
        assert got is not None and got.to_dict() == rec.to_dict()
    assert await store.insert_usage(rows) == 0


async def test_a_flush_that_fails_stores_nothing(store: Any) -> None:
    """One transaction: a row the database refuses (a value it cannot store), past the first
    statement's rows, leaves none of the flush behind (the meter then bisects the batch:
    metering/meter.py)."""
    rows = [usage(cost_micro=i) for i in range(300)]
    rows[290] = usage(model={"not": "a model name"})
    with pytest.raises((sqlite3.Error, asyncpg.DataError, TypeError)):  # as each driver refuses it
        await store.insert_usage(rows)
    assert await store.get_usage(rows[0].request_id) is None
    assert await store.insert_usage(rows[:290]) == 290


async def test_usage_flags_and_absent_values_round_trip(store: Any) -> None:
    """Booleans come back as booleans and absent values as None (SQLite binds them through the
    adapters storage/sqlite.py registers: stored as 0/1 and NULL, as without them)."""
    on = usage(stream=True, exact=False, batch=True, priced_provisional=True, ttfb_ms=None, owner=None)
    off = usage(stream=False, exact=True, cache_ttl_assumed=False, error_message=None, teams=None)
    assert await store.insert_usage([on, off]) == 2
    for rec in (on, off):
        got = await store.get_usage(rec.request_id)
        assert got is not None and got.to_dict() == rec.to_dict()
    if hasattr(store, "conn"):  # the embedded store: what SQLite itself holds
        cells = store.conn.execute(
            "SELECT typeof(stream), stream, typeof(ttfb_ms), typeof(owner) FROM usage_records"
            " WHERE request_id = ?",
            (on.request_id,),
        ).fetchone()
        assert tuple(cells) == ("integer", 1, "null", "null")


async def test_usage_totals_and_spend(store: Any) -> None:
    t0 = time.time()
    await store.insert_usage(
        [
            usage("key_a", cost_micro=100, input_tokens=1, output_tokens=2, cache_read=3, started_at=t0),
            usage(
                "key_a",
                cost_micro=200,
                input_tokens=4,
                output_tokens=5,
                cache_creation_5m=6,
                started_at=t0 + 1,
            ),
            usage("key_b", cost_micro=50, status=500, model="claude-haiku-4-5-20251001", started_at=t0 + 2),
        ]
    )
    spend = await store.spend_by_key(["key_a", "key_b", "key_none"])
    assert spend["key_a"] == {"tokens": 1 + 2 + 3 + 4 + 5 + 6, "cost_micro": 300, "requests": 2}
    assert spend["key_b"]["cost_micro"] == 50
    assert "key_none" not in spend
    assert await store.spend_by_key([]) == {}
    by_key = {row["key_id"]: row for row in await store.usage_totals(group_by="key_id")}
    assert by_key["key_a"]["requests"] == 2 and by_key["key_a"]["cost_micro"] == 300
    assert by_key["key_b"]["errors"] == 1
    assert isinstance(by_key["key_a"]["input_tokens"], int)
    recent = await store.usage_totals(group_by="model", since=t0 + 1.5)
    assert [r["model"] for r in recent] == ["claude-haiku-4-5-20251001"]
    with pytest.raises(ValueError):
        await store.usage_totals(group_by="bogus; DROP TABLE x")


async def test_credentials(store: Any) -> None:
    cred = StoredCredential(
        name="c1",
        base_url="https://api.example",
        api_key_enc="gAAAA-enc",
        weight=2.0,
        models=["claude-sonnet-4-6"],
        rpm=100,
        spend_cap_micro=10**9,
    )
    await store.upsert_credential(cred)
    got = await store.get_credential("c1")
    assert got is not None and got.models == ["claude-sonnet-4-6"] and got.weight == 2.0 and got.enabled
    cred.enabled = False
    cred.disabled_reason = "401 from upstream"
    await store.upsert_credential(cred)
    assert [c.disabled_reason for c in await store.list_credentials()] == ["401 from upstream"]
    assert await store.delete_credential("c1") is True
    assert await store.get_credential("c1") is None


async def test_the_largest_limits_the_admin_api_accepts_are_stored(store: Any) -> None:
    """The bounds the admin API checks (storage/base.py) are what each store's columns keep: a key
    and a credential at those bounds are written and read back unchanged on both backends."""
    from ethereal.admin.keyspec import parse_key_fields
    from ethereal.limits.plans import Plans
    from ethereal.models import Registry
    from ethereal.storage.base import MAX_INT4, MAX_INT8
    from ethereal.upstream.service import validate_spec

    fields = parse_key_fields(
        {
            "rpm": MAX_INT4,
            "max_concurrency": MAX_INT4,
            "tpm": MAX_INT8,
            "budget_tokens": MAX_INT8,
            "budget_micro_usd": MAX_INT8,
        },
        registry=Registry(),
        plans=Plans({}),
    )
    _, record = mint("sk-ant-api03-", name="largest", **fields)
    await store.insert_keys([record])
    got = await store.get_key_by_hash(record.key_hash)
    assert got is not None
    assert (got.rpm, got.max_concurrency, got.tpm, got.budget_tokens, got.budget_micro_usd) == (
        MAX_INT4,
        MAX_INT4,
        MAX_INT8,
        MAX_INT8,
        MAX_INT8,
    )
    spec = validate_spec(
        {"name": "c", "base_url": "https://x", "api_key": "k", "rpm": MAX_INT4, "spend_cap_micro": MAX_INT8},
        Registry(),
        partial=False,
    )
    await store.upsert_credential(
        StoredCredential(
            name="c",
            base_url="https://x",
            api_key_enc="enc",
            rpm=spec["rpm"],
            spend_cap_micro=spec["spend_cap_micro"],
        )
    )
    cred = await store.get_credential("c")
    assert cred is not None and (cred.rpm, cred.spend_cap_micro) == (MAX_INT4, MAX_INT8)


async def test_migrations_are_idempotent(store: Any) -> None:
    assert await store.migrate() == []
    await store.ping()


async def test_concurrent_migrators(pg_url: str) -> None:
    """Two stores migrating one fresh database at once: each migration applied exactly once."""
    a, b = await asyncio.gather(open_store(pg_url, migrate=False), open_store(pg_url, migrate=False))
    try:
        applied_a, applied_b = await asyncio.gather(a.migrate(), b.migrate())
        assert sorted(applied_a + applied_b) == sorted(set(applied_a + applied_b))
        assert len(applied_a + applied_b) >= 2
        rows = await a.pool.fetch("SELECT version FROM schema_migrations ORDER BY version")  # type: ignore[attr-defined]
        assert len(rows) == len(applied_a + applied_b)
    finally:
        await a.close()
        await b.close()


def test_migrate_cli_twice_concurrently(pg_url: str, tmp_path: Any) -> None:
    """`ethereal migrate` from two processes at once, then again: all agree the schema is current."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ETHEREAL_")}
    env.update({"ETHEREAL_DATABASE_URL": pg_url, "ETHEREAL_DATA_DIR": str(tmp_path)})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ethereal", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("applied" in out for out, _ in outs) == 1, outs
    again = subprocess.run(
        [sys.executable, "-m", "ethereal", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert again.returncode == 0 and "up to date" in again.stdout
