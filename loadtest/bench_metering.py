"""Metering benchmark: CPU added to the request path, and flush throughput into PostgreSQL.

    python loadtest/bench_metering.py                 # throwaway PostgreSQL cluster (tests/services.py)
    python loadtest/bench_metering.py --pg-url postgresql://...   # an existing, empty database
    python loadtest/bench_metering.py --records 200000 --batch 1000 --json

Request path (per request, what finish() adds besides limiter.settle): pricing
(``cost_micro``), building the ``UsageRecord`` and ``Meter.record`` (queue
append + recent map), plus, for a stream, the native tap's ``Usage`` value.

Flusher: N records queued, then ``Meter.flush()`` timed until every row is
committed (binary COPY into a staging table, INSERT … ON CONFLICT DO NOTHING,
the usage_hourly trigger). Also the spool path: the same records written to the
spool while the database is "down", then replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT)]

from ethereal import _native
from ethereal.metering.config import MeterConfig
from ethereal.metering.meter import Meter
from ethereal.metering.pricing import price
from ethereal.models import Registry
from ethereal.storage.records import UsageRecord
from ethereal.usage import Usage


def make_records(n: int, seed: int = 1) -> list[UsageRecord]:
    rnd = random.Random(seed)
    now = time.time()
    return [
        UsageRecord(
            request_id=f"req_bench{seed:04d}{i:016d}",
            key_id=f"key_{rnd.randint(0, 499):024x}",
            credential="default",
            route="messages",
            model=rnd.choice(["claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5"]),
            status=200,
            stream=True,
            input_tokens=rnd.randint(1, 9000),
            output_tokens=rnd.randint(1, 2000),
            cache_creation_5m=rnd.randint(0, 900),
            cache_read=rnd.randint(0, 20000),
            cost_micro=rnd.randint(1, 90000),
            ttfb_ms=rnd.uniform(100, 900),
            duration_ms=rnd.uniform(500, 9000),
            started_at=now - 5,
            ended_at=now,
            upstream_request_id="req_011CUpstream" + "x" * 12,
        )
        for i in range(n)
    ]


class NullStore:
    dialect = "null"

    async def insert_usage(self, records: list[UsageRecord]) -> int:
        return len(records)


def bench_request_path(n: int) -> dict[str, float]:
    """µs per request of the metering work finish() does on the request path."""
    catalog = Registry()
    model = catalog.resolve("claude-sonnet-4-6")
    meter = Meter(NullStore(), MeterConfig(spool_dir=None, queue_max=n + 1, batch_size=n + 1))  # type: ignore[arg-type]
    ids = [f"req_path{i:020d}" for i in range(n)]
    now = time.time()
    gc.collect()
    # 1. record() alone
    recs = make_records(n, seed=2)
    t0 = time.perf_counter()
    for r in recs:
        meter.record(r)
    record_only = (time.perf_counter() - t0) / n * 1e6
    meter._queue.clear()
    meter._recent.clear()
    # 2. what finish() adds: price + build the record + record()
    t0 = time.perf_counter()
    for i in range(n):
        cost = price(
            catalog, model, Usage(input_tokens=1200, output_tokens=350, cache_read=4000), at=now
        ).cost_micro
        rec = UsageRecord(
            request_id=ids[i],
            key_id="key_a",
            credential="default",
            route="messages",
            model=model.id,  # type: ignore[union-attr]
            status=200,
            stream=True,
            input_tokens=1200,
            output_tokens=350,
            cache_creation_5m=0,
            cache_creation_1h=0,
            cache_read=4000,
            exact=True,
            cache_ttl_assumed=False,
            cost_micro=cost,
            ttfb_ms=300.0,
            duration_ms=(time.perf_counter() - t0) * 1000.0,
            started_at=now,
            ended_at=time.time(),
            upstream_request_id="req_011C",
            error_type=None,
            web_search_requests=0,
        )
        meter.record(rec)
    full = (time.perf_counter() - t0) / n * 1e6
    # 3. per stream: the native tap's Usage value at the end of a stream (built once per stream)
    tap = _native.StreamTap()
    tap.feed(
        b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":'
        b'{"input_tokens":1200,"output_tokens":350,"cache_read_input_tokens":4000}}\n\n'
    )
    streams = max(1, n // 20)
    t0 = time.perf_counter()
    for _ in range(streams):
        tap.usage()
    usage_us = (time.perf_counter() - t0) / streams * 1e6
    return {
        "record_us": record_only,
        "finish_metering_us": full,
        "stream_usage_us": usage_us,
        "total_stream_request_us": full + usage_us,
    }


async def bench_flush(pg_url: str, n: int, batch: int, spool_dir: Path) -> dict[str, float]:
    from ethereal.storage.postgres import PostgresStore

    store = await PostgresStore.open(pg_url)
    try:
        await store.migrate()
        await store.pool.execute("TRUNCATE usage_records, usage_hourly")
        out: dict[str, float] = {}
        # direct flush
        meter = Meter(store, MeterConfig(spool_dir=spool_dir, batch_size=batch, queue_max=n * 2))
        for r in make_records(n, seed=3):
            meter.record(r)
        t0 = time.perf_counter()
        await meter.flush()
        dt = time.perf_counter() - t0
        out["flush_rows_per_s"] = n / dt
        out["flush_batch_ms_last"] = meter.last_flush_ms or 0.0
        assert await store.pool.fetchval("SELECT count(*) FROM usage_records") == n
        # with the background flusher while records arrive at a steady pace
        meter.start()
        recs = make_records(n, seed=4)
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            for r in recs[i : i + 500]:
                meter.record(r)
            await asyncio.sleep(0)
        while meter.stats()["queue_depth"] or meter.flushed_rows < 2 * n:
            await asyncio.sleep(0.005)
        out["background_rows_per_s"] = n / (time.perf_counter() - t0)
        await meter.close()
        # spool while "down", then replay
        meter = Meter(store, MeterConfig(spool_dir=spool_dir, batch_size=batch, queue_max=n * 2))
        real_insert = store.insert_usage

        async def down(records: list[UsageRecord]) -> int:
            raise ConnectionRefusedError("bench: database down")

        async def ping_down() -> None:
            raise ConnectionRefusedError("bench: database down")

        real_ping = store.ping
        store.insert_usage = down  # type: ignore[method-assign]
        store.ping = ping_down  # type: ignore[method-assign]
        for r in make_records(n, seed=5):
            meter.record(r)
        t0 = time.perf_counter()
        await meter.flush()
        out["spool_write_rows_per_s"] = n / (time.perf_counter() - t0)
        store.insert_usage = real_insert  # type: ignore[method-assign]
        store.ping = real_ping  # type: ignore[method-assign]
        t0 = time.perf_counter()
        await meter.flush()
        out["spool_replay_rows_per_s"] = n / (time.perf_counter() - t0)
        assert await store.pool.fetchval("SELECT count(*) FROM usage_records") == 3 * n
        assert await store.pool.fetchval("SELECT sum(requests) FROM usage_hourly") == 3 * n
        await meter.close()
        return out
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="request-path rounds (median reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rounds = [bench_request_path(args.records) for _ in range(args.rounds)]
    path = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}

    async def flush_part(url: str) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            return await bench_flush(url, args.records, args.batch, Path(tmp) / "spool")

    if args.pg_url:
        flush = asyncio.run(flush_part(args.pg_url))
    else:
        from tests.services import postgres_server

        with postgres_server() as (server, _data_dir):
            flush = asyncio.run(flush_part(server.create_database("bench_metering")))
    result: dict[str, Any] = {"records": args.records, "batch": args.batch, **path, **flush}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"request path  record():                         {path['record_us']:.2f} µs")
        print(f"              finish() metering (price+record): {path['finish_metering_us']:.2f} µs")
        print(f"              the tap's Usage value per stream:  {path['stream_usage_us']:.2f} µs")
        print(
            f"              total per streamed request:        {path['total_stream_request_us']:.2f} µs"
            "   (goal < 50 µs)"
        )
        print(f"flusher       direct flush:     {flush['flush_rows_per_s']:>10,.0f} rows/s   (goal >= 5,000)")
        print(f"              background flush: {flush['background_rows_per_s']:>10,.0f} rows/s")
        print(f"              spool write:      {flush['spool_write_rows_per_s']:>10,.0f} rows/s")
        print(f"              spool replay:     {flush['spool_replay_rows_per_s']:>10,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
