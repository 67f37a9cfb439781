"""PostgreSQL side of metering: no duplicates on replay, the hourly rollup stays exact, aggregates."""

from __future__ import annotations

import random
from typing import Any

import pytest
from ethereal.metering.aggregate import usage_totals
from ethereal.storage.records import UsageRecord, hour_ranges

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def make(i: int, rnd: random.Random) -> UsageRecord:
    started = T0 + rnd.uniform(0, 30 * 3600)
    return UsageRecord(
        request_id=f"req_pg{i:020d}",
        key_id=rnd.choice(["key_a", "key_b", None]),
        credential=rnd.choice(["c1", "c2"]),
        route=rnd.choice(["messages", "count_tokens"]),
        model=rnd.choice(["claude-sonnet-4-5-20250929", "claude-opus-4-6", None]),
        status=rnd.choice([200, 200, 200, 429, 499]),
        stream=rnd.random() < 0.5,
        input_tokens=rnd.randint(0, 5000),
        output_tokens=rnd.randint(0, 900),
        cache_creation_5m=rnd.randint(0, 50),
        cache_creation_1h=rnd.randint(0, 50),
        cache_read=rnd.randint(0, 99),
        exact=rnd.random() < 0.9,
        cost_micro=rnd.randint(0, 100_000),
        ttfb_ms=1.5,
        duration_ms=20.0,
        started_at=started,
        ended_at=started + 1,
        web_search_requests=rnd.randint(0, 2),
    )


def expected(
    records: list[UsageRecord], group_by: str, since: float | None, until: float | None
) -> dict[Any, Any]:
    out: dict[Any, dict[str, int]] = {}
    for r in records:
        if (since is not None and r.started_at < since) or (until is not None and r.started_at >= until):
            continue
        acc = out.setdefault(
            getattr(r, group_by),
            {"requests": 0, "errors": 0, "cost_micro": 0, "input_tokens": 0, "web_search_requests": 0},
        )
        acc["requests"] += 1
        acc["errors"] += r.status >= 400
        acc["cost_micro"] += r.cost_micro
        acc["input_tokens"] += r.input_tokens
        acc["web_search_requests"] += r.web_search_requests
    return out


def test_hour_ranges() -> None:
    h = 3600.0
    assert hour_ranges(None, None) == ((None, None), [])
    assert hour_ranges(10 * h, 12 * h) == ((10 * h, 12 * h), [])
    assert hour_ranges(10 * h + 5, 12 * h + 7) == (
        (11 * h, 12 * h),
        [(10 * h + 5, 11 * h), (12 * h, 12 * h + 7)],
    )
    assert hour_ranges(10 * h + 5, 10 * h + 9) == (None, [(10 * h + 5, 10 * h + 9)])
    assert hour_ranges(None, 10 * h + 9) == ((None, 10 * h), [(10 * h, 10 * h + 9)])


async def test_rollup_exact_under_replays_and_aggregates_match(pg_url: str) -> None:
    from ethereal.storage.postgres import PostgresStore

    store = await PostgresStore.open(pg_url)
    try:
        await store.migrate()
        rnd = random.Random(4)
        records = [make(i, rnd) for i in range(3000)]
        assert await store.insert_usage(records[:2000]) == 2000
        # a replay overlapping what is stored: only the new rows count, in the table and the rollup
        assert await store.insert_usage(records[1500:]) == 1000
        assert await store.insert_usage(records[:10]) == 0
        count = await store.pool.fetchval("SELECT count(*) FROM usage_records")
        rolled = await store.pool.fetchval("SELECT sum(requests) FROM usage_hourly")
        assert count == rolled == 3000
        got = await store.get_usage(records[7].request_id)
        assert got == records[7]
        for group_by in ("key_id", "model", "credential", "route"):
            for since, until in [
                (None, None),
                (T0 + 3 * 3600, T0 + 20 * 3600),
                (T0 + 1234.5, T0 + 77777.7),
                (T0 + 100, T0 + 200),
                (None, T0 + 5000.25),
                (T0 + 9999, None),
            ]:
                rows = await usage_totals(store, group_by=group_by, since=since, until=until)
                want = expected(records, group_by, since, until)
                got_map = {r[group_by]: r for r in rows}
                assert set(got_map) == set(want), (group_by, since, until)
                for k, w in want.items():
                    for name, value in w.items():
                        assert got_map[k][name] == value, (group_by, since, until, k, name)
    finally:
        await store.close()


async def test_migration_backfills_existing_rows(postgres: Any) -> None:
    """Upgrading a database that already holds usage rows: the rollup starts complete."""
    import uuid

    from ethereal.storage.base import migration_files
    from ethereal.storage.postgres import PostgresStore

    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    store = await PostgresStore.open(url)
    try:
        async with store.pool.acquire() as conn:
            for version, _name, sql in migration_files("postgres"):
                if version < 3:
                    await conn.execute(sql)
            await conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at DOUBLE PRECISION NOT NULL)"
            )
            await conn.execute("INSERT INTO schema_migrations VALUES (1, 'a', 0), (2, 'b', 0)")
            await conn.execute(
                "INSERT INTO usage_records (request_id, route, status, stream, started_at, ended_at, cost_micro)"
                " SELECT 'req_old' || g, 'messages', 200, false, $1 + g, $1 + g, 5 FROM generate_series(1, 500) g",
                T0,
            )
        applied = await store.migrate()
        assert any(name.startswith("0003") for name in applied)
        assert await store.pool.fetchval("SELECT sum(requests) FROM usage_hourly") == 500
        assert await store.pool.fetchval("SELECT sum(cost_micro) FROM usage_hourly") == 2500
    finally:
        await store.close()


@pytest.mark.parametrize("n", [20_000])
async def test_meter_flush_into_postgres(pg_url: str, n: int, tmp_path: Any) -> None:
    import time

    from ethereal.metering.config import MeterConfig
    from ethereal.metering.meter import Meter
    from ethereal.storage.postgres import PostgresStore

    store = await PostgresStore.open(pg_url)
    try:
        await store.migrate()
        meter = Meter(store, MeterConfig(spool_dir=tmp_path / "spool", queue_max=10**6))
        rnd = random.Random(9)
        records = [make(i, rnd) for i in range(n)]
        for r in records:
            meter.record(r)
        t0 = time.perf_counter()
        await meter.flush()
        rate = n / (time.perf_counter() - t0)
        assert await store.pool.fetchval("SELECT count(*) FROM usage_records") == n
        assert rate > 5000, f"flush rate {rate:.0f} rows/s"
        await meter.close()
    finally:
        await store.close()
