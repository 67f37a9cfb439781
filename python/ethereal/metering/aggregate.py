"""Spend and tokens per key, model, credential or route over a time range.

PostgreSQL: whole hours come from ``usage_hourly`` (the rollup a trigger keeps
exact, migration 0003); only the partial hours at the edges of ``[since,
until)`` read ``usage_records`` (through the ``started_at`` BRIN index and the
``(key_id, started_at)`` index). A year of traffic is at most ~8,800 buckets per
group, whatever the number of requests. SQLite (embedded, small deployments):
the store's own GROUP BY over the time-indexed raw table.
"""

from __future__ import annotations

import math
from typing import Any

from ethereal.storage.base import Store

GROUPS = ("key_id", "model", "credential", "route")
SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cache_creation_5m", "cache_creation_1h",
        "cache_read", "web_search_requests", "cost_micro")
HOUR = 3600.0

_RAW_SUMS = (
    "COUNT(*)::bigint AS requests, COUNT(*) FILTER (WHERE status >= 400)::bigint AS errors,"
    " SUM(input_tokens)::bigint AS input_tokens, SUM(output_tokens)::bigint AS output_tokens,"
    " SUM(cache_creation_5m)::bigint AS cache_creation_5m, SUM(cache_creation_1h)::bigint AS cache_creation_1h,"
    " SUM(cache_read)::bigint AS cache_read, SUM(web_search_requests)::bigint AS web_search_requests,"
    " SUM(cost_micro)::bigint AS cost_micro"
)
_ROLLUP_SUMS = ", ".join(f"SUM({c})::bigint AS {c}" for c in SUMS)


async def usage_totals(store: Store, *, group_by: str, since: float | None = None,
                       until: float | None = None) -> list[dict[str, Any]]:
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    if since is not None and until is not None and until <= since:
        return []
    if store.dialect == "postgres" and hasattr(store, "pool"):
        rows = await _postgres_totals(store.pool, group_by, since, until)  # type: ignore[attr-defined]
    else:
        rows = await store.usage_totals(group_by=group_by, since=since, until=until)
    out = []
    for row in rows:
        item = {group_by: row.get(group_by)}
        for name in SUMS:
            item[name] = int(row.get(name) or 0)
        item["cost_usd"] = f"{item['cost_micro'] / 1_000_000:.6f}"
        out.append(item)
    out.sort(key=lambda r: (-r["cost_micro"], -r["requests"], str(r[group_by])))
    return out


def hour_ranges(since: float | None, until: float | None) -> tuple[
        tuple[float | None, float | None] | None, list[tuple[float | None, float | None]]]:
    """Split ``[since, until)`` into whole hours (rollup) and the partial edges (raw rows).

    Returns ``(rollup_range, raw_ranges)``; a bound of None is open.
    """
    lo = None if since is None else math.ceil(since / HOUR) * HOUR
    hi = None if until is None else math.floor(until / HOUR) * HOUR
    raw: list[tuple[float | None, float | None]] = []
    if lo is not None and hi is not None and lo >= hi:
        # the whole range sits inside one or two partial hours
        return None, [(since, until)]
    if since is not None and lo is not None and since < lo:
        raw.append((since, lo))
    if until is not None and hi is not None and hi < until:
        raw.append((hi, until))
    return (lo, hi), raw


async def _postgres_totals(pool: Any, group_by: str, since: float | None, until: float | None) -> list[dict]:
    rollup, raw = hour_ranges(since, until)
    totals: dict[Any, dict[str, int]] = {}

    def add(rows: list[Any], null_as_empty: bool) -> None:
        for row in rows:
            group = row["grp"]
            if null_as_empty and group == "":
                group = None
            acc = totals.setdefault(group, dict.fromkeys(SUMS, 0))
            for name in SUMS:
                acc[name] += int(row[name] or 0)

    async with pool.acquire() as conn:
        if rollup is not None:
            clauses, params = [], []
            if rollup[0] is not None:
                params.append(rollup[0])
                clauses.append(f"bucket >= ${len(params)}")
            if rollup[1] is not None:
                params.append(rollup[1])
                clauses.append(f"bucket < ${len(params)}")
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            add(await conn.fetch(
                f"SELECT {group_by} AS grp, {_ROLLUP_SUMS} FROM usage_hourly {where} GROUP BY {group_by}", *params),
                null_as_empty=group_by != "route")
        for lo, hi in raw:
            clauses, params = [], []
            if lo is not None:
                params.append(lo)
                clauses.append(f"started_at >= ${len(params)}")
            if hi is not None:
                params.append(hi)
                clauses.append(f"started_at < ${len(params)}")
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            add(await conn.fetch(
                f"SELECT {group_by} AS grp, {_RAW_SUMS} FROM usage_records {where} GROUP BY {group_by}", *params),
                null_as_empty=False)
    return [{group_by: group, **sums} for group, sums in totals.items()]
