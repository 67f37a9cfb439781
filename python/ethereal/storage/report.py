"""The SQL of the usage and cost reports (admin/reports.py), shared by both stores.

A report sums usage per time bucket and per a few dimensions. Each dimension has the same
meaning in the raw records and in PostgreSQL's ``usage_hourly`` rollup (migration 0009 fills the
rollup's columns with these very expressions), so a report may read whole hours from the rollup
and the partial edges (or minute buckets) from the records, and the sums agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ethereal.storage.records import SUMS, add_sums

# dimension -> its value in usage_records (a NULL reads as the rollup's default)
RAW_DIMENSIONS: dict[str, str] = {
    "key_id": "COALESCE(key_id, '')",
    "model": "COALESCE(model, '')",
    "owner": "COALESCE(owner, '')",
    "teams": "COALESCE(teams, '')",
    "service_tier": "COALESCE(service_tier, CASE WHEN batch THEN 'batch' ELSE 'standard' END)",
    "inference_geo": "COALESCE(inference_geo, 'not_available')",
    "speed": "COALESCE(speed, 'standard')",
    "context_window": (
        "CASE WHEN input_tokens + cache_creation_5m + cache_creation_1h + cache_read > 200000"
        " THEN '200k-1M' ELSE '0-200k' END"
    ),
}
DIMENSIONS = tuple(RAW_DIMENSIONS)
REPORT_SUMS = tuple(c for c in SUMS if c != "errors")  # a report counts every request, failed or not
_RAW_SUM_SQL = ", ".join(["COUNT(*) AS requests"] + [f"SUM({c}){{cast}} AS {c}" for c in REPORT_SUMS[1:]])
_ROLLUP_SUM_SQL = ", ".join(f"SUM({c}){{cast}} AS {c}" for c in REPORT_SUMS)


def report_sql(
    *,
    source: str,
    dialect: str,
    since: float,
    until: float,
    step: int,
    dims: Sequence[str],
    filters: Mapping[str, Sequence[str]],
    mark: Callable[[Any], str],
) -> str:
    """``SELECT bucket, <dims>, <sums>`` over ``[since, until)`` in ``step``-second buckets, from
    ``source``: ``usage_records``, or a rollup (``usage_hourly``, ``usage_daily``) whose buckets
    the range holds whole."""
    rollup = source != "usage_records"
    for dim in (*dims, *filters):
        if dim not in RAW_DIMENSIONS:
            raise ValueError(f"unknown report dimension {dim!r}")
    time_col = "bucket" if rollup else "started_at"
    if dialect == "postgres":
        bucket = f"floor({time_col} / {int(step)}) * {int(step)}"
    else:
        bucket = f"CAST({time_col} / {int(step)} AS INTEGER) * {int(step)}"

    def expr(dim: str) -> str:
        return dim if rollup else RAW_DIMENSIONS[dim]

    where = [f"{time_col} >= {mark(float(since))}", f"{time_col} < {mark(float(until))}"]
    for dim, values in filters.items():
        if dim == "teams":  # a record of several teams matches any: filtered after the split
            continue
        values = list(values)
        if dialect == "postgres":
            where.append(f"{expr(dim)} = ANY({mark(values)}::text[])")
        else:
            where.append(f"{expr(dim)} IN ({', '.join(mark(v) for v in values)})")
    cols = ", ".join(f"{expr(d)} AS {d}" for d in dims)
    group = ", ".join(str(i + 1) for i in range(len(dims) + 1))
    return (
        f"SELECT {bucket} AS bucket{', ' + cols if cols else ''}, "
        f"{(_ROLLUP_SUM_SQL if rollup else _RAW_SUM_SQL).format(cast='::bigint' if dialect == 'postgres' else '')}"
        f" FROM {source} WHERE {' AND '.join(where)} GROUP BY {group}"
    )


DAY = 86400.0


def split_range(since: float, until: float, step: int) -> list[tuple[str, float, float]]:
    """``[since, until)`` as (source, lo, hi) pieces: whole days from ``usage_daily`` (day and
    multi-day buckets), whole hours from ``usage_hourly`` (hour multiples), the rest from the records."""
    pieces: list[tuple[str, float, float]] = []

    def hours(lo: float, hi: float) -> None:
        if step % 3600:
            pieces.append(("usage_records", lo, hi))
            return
        h_lo, h_hi = math.ceil(lo / 3600) * 3600.0, math.floor(hi / 3600) * 3600.0
        if h_lo >= h_hi:
            pieces.append(("usage_records", lo, hi))
            return
        if lo < h_lo:
            pieces.append(("usage_records", lo, h_lo))
        pieces.append(("usage_hourly", h_lo, h_hi))
        if h_hi < hi:
            pieces.append(("usage_records", h_hi, hi))

    if step % 86400 == 0:
        d_lo, d_hi = math.ceil(since / DAY) * DAY, math.floor(until / DAY) * DAY
        if d_lo < d_hi:
            if since < d_lo:
                hours(since, d_lo)
            pieces.append(("usage_daily", d_lo, d_hi))
            if d_hi < until:
                hours(d_hi, until)
            return pieces
    hours(since, until)
    return pieces


def merge_rows(
    rows: Sequence[Mapping[str, Any]], dims: Sequence[str], out: dict[tuple[Any, ...], dict[str, int]]
) -> None:
    """Add report rows into ``out``, keyed by (bucket, *dims)."""
    for row in rows:
        add_sums(out, (float(row["bucket"]), *(row[d] or "" for d in dims)), row, REPORT_SUMS)
