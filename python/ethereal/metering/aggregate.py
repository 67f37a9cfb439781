"""Spend and tokens per key, model, credential, route or error type over a time range.

Each store sums for itself (``Store.usage_totals``): PostgreSQL reads whole hours
from the ``usage_hourly`` rollup and only the partial edge hours from the raw
table (``storage.records.hour_ranges``); SQLite groups the time-indexed raw table. This module
validates the request and gives every row the same shape.
"""

from __future__ import annotations

from typing import Any

from ethereal.storage.base import Store
from ethereal.storage.records import SUMS

GROUPS = ("key_id", "model", "credential", "route", "error_type")


async def usage_totals(
    store: Store, *, group_by: str, since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    if since is not None and until is not None and until <= since:
        return []
    rows = await store.usage_totals(group_by=group_by, since=since, until=until)
    out: list[dict[str, Any]] = []
    for row in rows:
        item: dict[str, Any] = {group_by: row.get(group_by)}
        for name in SUMS:
            item[name] = int(row.get(name) or 0)
        item["cost_usd"] = f"{item['cost_micro'] / 1_000_000:.6f}"
        out.append(item)
    out.sort(key=lambda r: (-r["cost_micro"], -r["requests"], str(r[group_by])))
    return out
