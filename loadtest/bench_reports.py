"""Report goal (#22): a 31-day ``1d`` usage report grouped by key and model over 10 million usage
records answers in < 500 ms p50.

    python loadtest/bench_reports.py                      # 10,000,000 records, throwaway PostgreSQL
    python loadtest/bench_reports.py --rows 1000000 --json

A throwaway PostgreSQL gets ``--rows`` usage records spread over 31 days for 200 keys (each key
with its owner and teams), 4 models, 2 % batch items, 1 % long-context requests, inserted in
chunks of ``INSERT … SELECT generate_series`` so the ``usage_hourly`` trigger builds the rollup
as in production. A gateway process (1 worker) then answers
``GET /v1/organizations/usage_report/messages?bucket_width=1d&limit=31&group_by[]=api_key_id&group_by[]=model``
and the same ``cost_report`` over loopback, ``--runs`` times each (after one warm-up): median
and p95 of the wall time, and the totals checked against ``SELECT sum(...) FROM usage_records``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT)]

import httpx

from tests.procs import gateway_process

ADMIN_KEY = "bench-admin-" + "k" * 24
DAYS = 31
CHUNK = 500_000

SEED_SQL = """
INSERT INTO usage_records (request_id, key_id, credential, route, model, status, stream, input_tokens,
    output_tokens, cache_creation_5m, cache_creation_1h, cache_read, exact, cache_ttl_assumed, cost_micro,
    ttfb_ms, duration_ms, started_at, ended_at, web_search_requests, batch, owner, teams)
SELECT 'req_seed' || lpad(g::text, 12, '0'), 'key_' || lpad(k::text, 24, '0'), 'default', 'messages',
       (ARRAY['claude-sonnet-4-6', 'claude-opus-4-6', 'claude-haiku-4-5-20251001', 'claude-opus-5-5'])[1 + (g / 7) % 4],
       CASE WHEN g % 50 = 0 THEN 429 ELSE 200 END, g % 2 = 0,
       CASE WHEN g % 100 = 0 THEN 250000 ELSE 100 + g % 5000 END, 10 + g % 900, g % 300, g % 7, g % 2000,
       TRUE, FALSE, 50 + g % 20000, 100 + g % 800, 400 + g % 9000, t, t + 1, (g % 1000 = 0)::int, g % 50 = 0,
       'user' || (k % 60), (ARRAY['eng', 'eng,ml', 'ops', 'ml'])[1 + k % 4]
FROM (
    SELECT g, (g::bigint * 7919) % 200 AS k, $1 + ((g - 1)::float8 / $3) * $4 AS t
    FROM generate_series($2::bigint, $2::bigint + $5 - 1) AS g
) AS s
ORDER BY t
"""


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def seed(url: str, rows: int, start: float) -> dict[str, Any]:
    import asyncpg
    from ethereal.storage import open_store

    store = await open_store(url)
    await store.close()
    conn = await asyncpg.connect(url)
    t0 = time.perf_counter()
    try:
        done = 0
        while done < rows:
            n = min(CHUNK, rows - done)
            await conn.execute(SEED_SQL, start, done + 1, float(rows), DAYS * 86400.0, n)
            done += n
            print(f"  seeded {done:,} rows ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        await conn.execute("ANALYZE usage_records")
        await conn.execute("ANALYZE usage_hourly")
        await conn.execute("ANALYZE usage_daily")
        rollup = await conn.fetchval("SELECT count(*) FROM usage_hourly")
        daily = await conn.fetchval("SELECT count(*) FROM usage_daily")
        total = await conn.fetchrow(
            "SELECT sum(output_tokens)::bigint AS o, sum(cost_micro)::bigint AS c,"
            " count(*) AS n FROM usage_records"
        )
    finally:
        await conn.close()
    return {
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "hourly_rollup_rows": rollup,
        "daily_rollup_rows": daily,
        "output_tokens": total["o"],
        "cost_micro": total["c"],
    }


async def explain(url: str, start: float) -> float:
    import asyncpg
    from ethereal.storage import open_store
    from ethereal.storage.report import report_sql

    params: list[Any] = []

    def mark(v: Any) -> str:
        params.append(v)
        return f"${len(params)}"

    sql = report_sql(
        source="usage_daily",
        dialect="postgres",
        since=start,
        until=start + DAYS * 86400,
        step=86400,
        dims=["key_id", "model"],
        filters={},
        mark=mark,
    )
    conn = await asyncpg.connect(url)
    try:
        for row in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params):
            print(row[0], file=sys.stderr)
    finally:
        await conn.close()
    store = await open_store(url)
    try:
        times = []
        for _ in range(6):
            t0 = time.perf_counter()
            await store.report_sums(
                since=start, until=start + DAYS * 86400, step=86400, dims=["key_id", "model"], filters={}
            )
            times.append(time.perf_counter() - t0)
    finally:
        await store.close()
    return round(statistics.median(times[1:]) * 1000, 1)


def measure(url: str, path: str, params: dict[str, Any], runs: int) -> tuple[list[float], dict[str, Any]]:
    times = []
    body: dict[str, Any] = {}
    with httpx.Client(timeout=120) as client:
        for i in range(runs + 1):
            t0 = time.perf_counter()
            resp = client.get(url + path, params=params, headers={"x-api-key": ADMIN_KEY})
            elapsed = time.perf_counter() - t0
            resp.raise_for_status()
            body = resp.json()
            if i:
                times.append(elapsed)
    return times, body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--explain", action="store_true", help="print the rollup query's plan; time the store call"
    )
    args = parser.parse_args()
    from tests.services import postgres_server

    start = float((int(time.time()) // 86400 - DAYS) * 86400)
    with postgres_server() as (server, _):
        url = server.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        seeded = asyncio.run(seed(url, args.rows, start))
        if args.explain:
            seeded["store_report_sums_ms"] = asyncio.run(explain(url, start))
        data_dir = Path(server.socket_dir) / "gw"
        env = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_DATABASE_URL": url}
        with gateway_process(data_dir, None, env=env) as gw:
            params = {
                "starting_at": iso(start),
                "ending_at": iso(start + DAYS * 86400),
                "bucket_width": "1d",
                "limit": DAYS,
                "group_by[]": ["api_key_id", "model"],
            }
            usage_t, usage = measure(gw, "/v1/organizations/usage_report/messages", params, args.runs)
            cost_t, cost = measure(gw, "/v1/organizations/cost_report", params, args.runs)
    out_tokens = sum(r["output_tokens"] for b in usage["data"] for r in b["results"])
    cents = sum(Decimal(r["amount"]) for b in cost["data"] for r in b["results"])
    result = {
        "seed": seeded,
        "usage_report_1d_by_key_model": {
            "p50_ms": round(statistics.median(usage_t) * 1000, 1),
            "p95_ms": round(sorted(usage_t)[int(0.95 * (len(usage_t) - 1))] * 1000, 1),
            "buckets": len(usage["data"]),
            "results": sum(len(b["results"]) for b in usage["data"]),
            "totals_match": out_tokens == seeded["output_tokens"],
        },
        "cost_report_1d_by_key_model": {
            "p50_ms": round(statistics.median(cost_t) * 1000, 1),
            "p95_ms": round(sorted(cost_t)[int(0.95 * (len(cost_t) - 1))] * 1000, 1),
            "totals_match": cents == Decimal(seeded["cost_micro"]) / 10_000,
        },
        "goal_ms": 500,
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
