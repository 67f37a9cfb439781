"""Spend and tokens per key, model, credential or route over a time range.

Each store sums for itself (``Store.usage_totals``): PostgreSQL reads whole hours
from the ``usage_hourly`` rollup and only the partial edge hours from the raw
table (``hour_ranges``); SQLite groups the time-indexed raw table. This module
validates the request and gives every row the same shape.
"""

from __future__ import annotations

import math
from typing import Any

from ethereal.storage.base import Store

GROUPS = ("key_id", "model", "credential", "route")
SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cache_creation_5m", "cache_creation_1h",
        "cache_read", "web_search_requests", "cost_micro")
HOUR = 3600.0

async def usage_totals(store: Store, *, group_by: str, since: float | None = None,
                       until: float | None = None) -> list[dict[str, Any]]:
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    if since is not None and until is not None and until <= since:
        return []
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
