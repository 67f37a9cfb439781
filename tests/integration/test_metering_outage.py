"""PostgreSQL stopped in the middle of a load: requests keep flowing, and once it is back
the table holds exactly one row per request that got a response."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import gateway_process

ADMIN = "outage-admin-key-0123456789"
TOTAL = 3000
STOP_AT = 600  # responses before PostgreSQL is stopped
START_AT = 2000  # responses before it is started again
CONCURRENCY = 24


async def _prepare(url: str) -> str:
    from ethereal.keys import mint
    from ethereal.storage.postgres import PostgresStore

    store = await PostgresStore.open(url)
    try:
        await store.migrate()
        plaintext, record = mint("sk-ant-api03-", name="outage")
        await store.insert_keys([record])
        return plaintext
    finally:
        await store.close()


async def _rows(url: str) -> tuple[list[str], int]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        ids = [r[0] for r in await conn.fetch("SELECT request_id FROM usage_records")]
        rolled = await conn.fetchval("SELECT COALESCE(sum(requests), 0) FROM usage_hourly")
        return ids, int(rolled)
    finally:
        await conn.close()


async def _load(
    base: str, key: str, total: int, control: Any, errors: list[str]
) -> tuple[list[str], dict[int, int], list[Any]]:
    ids: list[str] = []
    statuses: dict[int, int] = {}
    stats: list[dict[str, Any]] = []
    counter = iter(range(total))
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(
        base_url=base, timeout=60, limits=httpx.Limits(max_connections=CONCURRENCY)
    ) as client:

        async def one(i: int) -> None:
            body = {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "stream": i % 2 == 0,
                "messages": [{"role": "user", "content": f"request {i} sim:tokens=6"}],
            }
            resp = await client.post("/v1/messages", json=body, headers=headers)
            await resp.aread()
            if resp.status_code != 200 and len(errors) < 20:
                errors.append(f"{resp.status_code} {resp.headers.get('request-id')} {resp.text[:300]}")
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            ids.append(resp.headers["request-id"])
            await control(len(ids))

        async def worker() -> None:
            for i in counter:
                await one(i)
                if i % 200 == 0:
                    meter = await client.get("/admin/api/meter", headers={"x-api-key": ADMIN})
                    stats.append(meter.json())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ids, statuses, stats


async def _warm_each_worker(base: str, key: str, workers: int) -> list[str]:
    """Request ids of key requests made until each of ``workers`` processes has served one."""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "warm sim:tokens=2"}],
    }
    served: set[int] = set()
    ids: list[str] = []
    deadline = time.monotonic() + 60
    while len(served) < workers:
        assert time.monotonic() < deadline, f"only workers {served} answered in 60 s"
        async with httpx.AsyncClient(
            base_url=base, timeout=30, limits=httpx.Limits(max_connections=1)
        ) as client:
            resp = await client.post("/v1/messages", json=body, headers=headers)
            assert resp.status_code == 200, resp.text
            ids.append(resp.headers["request-id"])
            meter = await client.get("/admin/api/meter", headers={"x-api-key": ADMIN})  # same connection
            served.add(meter.json()["worker_pid"])
    return ids


@pytest.mark.slow
def test_postgres_outage_loses_and_duplicates_nothing(sim_url: str, tmp_path: Path) -> None:
    from tests.services import postgres_server, start_postgres

    with postgres_server() as (server, pg_data):
        url = server.create_database("outage")
        key = asyncio.run(_prepare(url))
        env = {
            "ETHEREAL_DATABASE_URL": url,
            "ETHEREAL_ADMIN_KEY": ADMIN,
            # keys stay cached through the outage (a cache miss needs the database)
            "ETHEREAL_KEY_CACHE_TTL": "3600",
            "ETHEREAL_METER_RETRY_MAX": "0.5",
        }
        with gateway_process(tmp_path, sim_url, env=env, workers=2) as base:
            events: dict[str, float] = {}

            async def control(done: int) -> None:
                if done >= STOP_AT and "stop" not in events:
                    events["stop"] = time.monotonic()
                    await asyncio.to_thread(server.stop, pg_data)
                    events["stopped"] = time.monotonic()
                elif done >= START_AT and "stopped" in events and "start" not in events:
                    events["start"] = time.monotonic()
                    await asyncio.to_thread(start_postgres, server, pg_data)
                    events["started"] = time.monotonic()

            errors: list[str] = []

            async def warm_then_load() -> tuple[list[str], dict[int, int], list[dict[str, Any]]]:
                # Warm every worker's key cache: a worker that has never read the key cannot serve it
                # while the database is down (auth.py). The workers share one listening socket and
                # a busy one may accept every connection of a burst, so one fresh connection at a
                # time asks for the key and then for the meter, which names the worker (pid).
                warm_ids = await _warm_each_worker(base, key, workers=2)
                ids, statuses, stats = await _load(base, key, TOTAL, control, errors)
                statuses[200] = statuses.get(200, 0) + len(warm_ids)
                return warm_ids + ids, statuses, stats

            ids, statuses, stats = asyncio.run(warm_then_load())
            assert "started" in events, events
            log = next(tmp_path.glob("gateway-*.log")).read_text()
            # requests kept flowing
            assert statuses == {200: len(ids)}, (statuses, errors, log[-6000:])
            assert len(set(ids)) == len(ids)
            # the spool was really used, by at least one worker, and drained again
            assert max(s["spooled_records"] for s in stats) > 0, stats[-3:]
            assert "unhandled error" not in log and "meter flush cycle failed" not in log, log[-4000:]
            print(
                f"\noutage {events['started'] - events['stop']:.1f}s; statuses {statuses};"
                f" max spooled by one worker {max(s['spooled_records'] for s in stats)};"
                f" workers seen {sorted({s['worker_pid'] for s in stats})}"
            )
            deadline = time.monotonic() + 60
            while True:
                rows, rolled = asyncio.run(_rows(url))
                if len(rows) >= len(ids) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        # after a graceful stop nothing more arrives, nothing is duplicated
        rows, rolled = asyncio.run(_rows(url))
        assert len(rows) == len(set(rows)) == len(ids)
        assert set(rows) == set(ids)
        assert rolled == len(ids)  # the hourly rollup counted each row once, replays included
        leftovers = list((tmp_path / "spool").glob("*/*.seg"))
        assert not leftovers
