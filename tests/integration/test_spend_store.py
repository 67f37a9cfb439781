"""Migration 0009 and the report sums on both stores: an upgrade keeps the rollup's totals, the
migration applied twice changes nothing, and the day and hour rollups follow inserts and
re-pricing exactly."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import pytest
from ethereal.storage import open_store
from ethereal.storage.base import RepriceChange, migration_files
from ethereal.storage.records import UsageRecord

DAY = 86400.0


def rec(t: float, **kw: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "request_id": "req_" + uuid.uuid4().hex,
        "key_id": "key_a",
        "credential": "c",
        "route": "messages",
        "model": "claude-sonnet-4-6",
        "status": 200,
        "stream": False,
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_micro": 330,
        "started_at": t,
        "ended_at": t + 1,
        "owner": "ann",
        "teams": "eng",
    }
    base.update(kw)
    return UsageRecord(**base)


async def totals(
    store: Any, since: float, until: float, step: int, dims: list[str]
) -> dict[Any, tuple[int, int]]:
    out = {}
    for r in await store.report_sums(since=since, until=until, step=step, dims=dims, filters={}):
        out[(float(r["bucket"]), *(r[d] for d in dims))] = (int(r["output_tokens"]), int(r["cost_micro"]))
    return out


async def test_rollups_follow_inserts_and_repricing(store: Any) -> None:
    day = (time.time() // DAY - 3) * DAY
    rows = [
        rec(day + 10),
        rec(day + 3700, key_id="key_b", owner="bob", teams="eng,ml"),
        rec(day + DAY + 50, batch=True, cost_micro=165),
        rec(day + DAY + 60, input_tokens=250_000, cost_micro=9000),
        rec(day + 2 * DAY + 7200, key_id=None, owner=None, teams=None, model=None, status=500, cost_micro=0),
    ]
    assert await store.insert_usage(rows) == 5
    assert await store.insert_usage(rows[:2]) == 0  # a replay adds nothing
    by_day = await totals(store, day, day + 3 * DAY, 86400, ["key_id", "service_tier", "context_window"])
    assert by_day == {
        (day, "key_a", "standard", "0-200k"): (20, 330),
        (day, "key_b", "standard", "0-200k"): (20, 330),
        (day + DAY, "key_a", "batch", "0-200k"): (20, 165),
        (day + DAY, "key_a", "standard", "200k-1M"): (20, 9000),
        (day + 2 * DAY, "", "standard", "0-200k"): (20, 0),
    }
    # the same sums through hours, and through a range that is not whole days
    by_hour = await totals(store, day, day + 3 * DAY, 3600, ["owner"])
    assert sum(v[1] for v in by_hour.values()) == 330 + 330 + 165 + 9000
    assert by_hour[(day + 3600, "bob")] == (20, 330)
    edges = await totals(store, day + 5, day + DAY + 55, 86400, ["teams"])
    assert edges == {(day, "eng"): (20, 330), (day, "eng,ml"): (20, 330), (day + DAY, "eng"): (20, 165)}
    assert await store.spend_totals(dim="owner", since=day, until=day + 3 * DAY) == {
        "ann": 9495,
        "bob": 330,
        "": 0,
    }
    assert await store.spend_totals(dim="owner", since=day + DAY, values=["ann"]) == {"ann": 9165}
    # a re-price moves both rollups in the same transaction
    done = await store.reprice_usage(
        [RepriceChange(rows[0].request_id, "key_a", 330, 500, None, "card@x", False)]
    )
    assert len(done) == 1
    by_day = await totals(store, day, day + DAY, 86400, ["key_id"])
    assert by_day[(day, "key_a")] == (20, 500)
    assert (await totals(store, day, day + 3600, 3600, ["key_id"]))[(day, "key_a")] == (20, 500)


async def test_upgrade_to_0009_keeps_the_rollup_and_is_idempotent(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:  # a database at 0007 with traffic, the usage_hourly of that time
        await conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at DOUBLE PRECISION NOT NULL)"
        )
        for version, name, sql in migration_files("postgres"):
            if version > 7:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, 0)", version, name)
        t = (time.time() // DAY - 1) * DAY
        await conn.execute(
            "INSERT INTO usage_records (request_id, key_id, credential, route, model, status, stream, input_tokens,"
            " output_tokens, cost_micro, started_at, ended_at, batch) SELECT 'r' || g, 'key_' || (g % 3), 'c',"
            " 'messages', 'claude-sonnet-4-6', 200, false, 10, g, g * 100, $1 + g * 60, $1 + g * 60 + 1, g % 5 = 0"
            " FROM generate_series(1, 200) AS g",
            t,
        )
        # records deleted by retention: the old rollup keeps their totals
        await conn.execute("DELETE FROM usage_records WHERE request_id IN ('r1', 'r2')")
        before = await conn.fetchrow(
            "SELECT sum(requests) AS n, sum(output_tokens) AS o, sum(cost_micro) AS c FROM usage_hourly"
        )
    finally:
        await conn.close()
    store = await open_store(pg_url)  # applies 0009
    try:
        conn = await asyncpg.connect(pg_url)
        try:
            for table in ("usage_hourly", "usage_daily"):
                after = await conn.fetchrow(
                    f"SELECT sum(requests) AS n, sum(output_tokens) AS o, sum(cost_micro) AS c FROM {table}"
                )
                assert tuple(after) == tuple(before), table
            batch = await conn.fetchval("SELECT sum(requests) FROM usage_hourly WHERE service_tier = 'batch'")
            assert batch == 40
            sql = next(s for v, _, s in migration_files("postgres") if v == 9)
            await conn.execute(sql)  # applied again: nothing changes
            again = await conn.fetchrow("SELECT sum(requests) AS n, sum(cost_micro) AS c FROM usage_daily")
            assert (again["n"], again["c"]) == (before["n"], before["c"])
        finally:
            await conn.close()
        day = (time.time() // DAY - 1) * DAY
        got = await totals(store, day - DAY, day + 2 * DAY, 86400, [])
        assert sum(v[1] for v in got.values()) == before["c"]
    finally:
        await store.close()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_sqlite_migration_applied_twice(tmp_path: Any, dialect: str) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 's.sqlite3'}")
    try:
        conn = store.conn  # type: ignore[attr-defined]
        conn.execute("DELETE FROM schema_migrations WHERE version = 9")
        assert await store.migrate() == ["0009_spend_limits.sql"]  # duplicate columns are skipped
    finally:
        await store.close()
