"""The production store: PostgreSQL through an asyncpg pool.

Migrations are numbered SQL files applied under a session advisory lock, so any
number of replicas (and ``ethereal migrate``) can start at once: the first one
applies what is pending, the others wait for the lock and find nothing to do.

Usage rows arrive in batches from the meter, possibly replayed after a failure:
they are COPYed into a temporary table and moved with ``INSERT … SELECT … ON
CONFLICT (request_id) DO NOTHING``, so a replay never duplicates a row and a
batch costs one round trip of binary COPY instead of one INSERT per row.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import orjson

from ethereal.keys import KeyRecord
from ethereal.storage.base import (
    KEY_COLUMNS,
    KEY_MUTABLE_FIELDS,
    PRICE_CORRECTION_COLUMNS,
    SERIES_SUMS,
    USAGE_GROUPS,
    RepriceChange,
    Store,
    UsageFilter,
    key_list_sql,
    migration_files,
    page_of,
    page_sql,
)
from ethereal.storage.records import (
    BATCH_COLUMNS,
    BATCH_MUTABLE,
    CREDENTIAL_COLUMNS,
    SUMS,
    USAGE_COLUMNS,
    BatchRecord,
    StoredCredential,
    UsageRecord,
    add_sums,
    hour_ranges,
    usage_row,
)

# pg_advisory_lock key for migrations: a fixed 64-bit number ("ethereal" in ASCII).
MIGRATION_LOCK_ID = 0x657468657265616C

_ROLLUP_GROUPS = {"key_id", "model", "credential", "route"}  # the columns usage_hourly keeps


def _key_from_row(row: asyncpg.Record) -> KeyRecord:
    data = dict(row)
    data["metadata"] = data["metadata"] or {}
    data["teams"] = data.get("teams") or []
    return KeyRecord(**{c: data[c] for c in KEY_COLUMNS})


def _usage_from_row(row: asyncpg.Record) -> UsageRecord:
    return UsageRecord.from_dict(dict(row))


def _credential_from_row(row: asyncpg.Record) -> StoredCredential:
    data = dict(row)
    return StoredCredential(**{c: data[c] for c in CREDENTIAL_COLUMNS})


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


_FLOAT_COLUMNS = tuple(
    i for i, c in enumerate(USAGE_COLUMNS) if c in ("ttfb_ms", "duration_ms", "started_at", "ended_at")
)


def _usage_row(rec: UsageRecord) -> tuple[Any, ...]:
    row = list(usage_row(rec))
    for i in _FLOAT_COLUMNS:
        if row[i] is not None:
            row[i] = float(row[i])
    return tuple(row)


_RAW_SUMS = (
    "COUNT(*)::bigint AS requests, COUNT(*) FILTER (WHERE status >= 400)::bigint AS errors,"
    " SUM(input_tokens)::bigint AS input_tokens, SUM(output_tokens)::bigint AS output_tokens,"
    " SUM(cache_creation_5m)::bigint AS cache_creation_5m, SUM(cache_creation_1h)::bigint AS cache_creation_1h,"
    " SUM(cache_read)::bigint AS cache_read, SUM(web_search_requests)::bigint AS web_search_requests,"
    " SUM(cost_micro)::bigint AS cost_micro"
)
_ROLLUP_SUMS = ", ".join(f"SUM({c})::bigint AS {c}" for c in SUMS)


def _range_where(column: str, lo: float | None, hi: float | None) -> tuple[str, list[float]]:
    """``WHERE column >= lo AND column < hi`` (either bound open when None) and its parameters."""
    clauses: list[str] = []
    params: list[float] = []
    if lo is not None:
        params.append(lo)
        clauses.append(f"{column} >= ${len(params)}")
    if hi is not None:
        params.append(hi)
        clauses.append(f"{column} < ${len(params)}")
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _marker(params: list[Any]) -> Any:
    """A placeholder maker for ``params``: appends a value, returns its ``$n``."""

    def mark(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    return mark


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 2.0) -> None:
        self.pool = pool
        self.timeout = timeout  # acquire (and the request path's queries): a hung server is a failure

    @classmethod
    async def open(
        cls, url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 2.0
    ) -> PostgresStore:
        # ``timeout``: a connection attempt (a server that accepts and never answers must not hold
        # the pool's connect for asyncpg's default minute); queries get command_timeout
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            command_timeout=30,
            timeout=max(timeout, 5.0),
        )
        assert pool is not None
        return cls(pool, timeout=timeout)

    async def _row(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One row for the request path: the acquire and the query each bounded by ``timeout``."""
        async with self.pool.acquire(timeout=self.timeout) as conn:
            return await conn.fetchrow(sql, *args, timeout=self.timeout)

    async def _rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire(timeout=self.timeout) as conn:
            return await conn.fetch(sql, *args, timeout=self.timeout)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self.pool.acquire() as conn:
            # A session lock (not a transaction lock): held across the per-migration transactions.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                    " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
                )
                done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, name, sql in migration_files(self.dialect):
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)  # simple query protocol: several statements at once
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                            version,
                            name,
                            time.time(),
                        )
                    applied.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        # a migration may have changed column types: drop cached statements of other connections
        await self.pool.expire_connections()
        return applied

    # keys
    async def insert_keys(self, records: list[KeyRecord]) -> None:
        if not records:
            return
        rows = [tuple(getattr(r, c) for c in KEY_COLUMNS) for r in records]
        marks = ", ".join(f"${i + 1}" for i in range(len(KEY_COLUMNS)))
        sql = f"INSERT INTO api_keys ({', '.join(KEY_COLUMNS)}) VALUES ({marks})"
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(sql, rows)

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self._row("SELECT * FROM api_keys WHERE key_hash = $1", key_hash)
        return _key_from_row(row) if row else None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
        return _key_from_row(row) if row else None

    async def list_keys(
        self,
        *,
        owner: str | None = None,
        team: str | None = None,
        plan: str | None = None,
        state: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
    ) -> list[KeyRecord]:
        params: list[Any] = []
        sql = key_list_sql(
            "postgres",
            _marker(params),
            owner=owner,
            team=team,
            plan=plan,
            state=state,
            limit=limit,
            after_id=after_id,
        )
        return [_key_from_row(r) for r in await self.pool.fetch(sql, *params)]

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        unknown = set(changes) - KEY_MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"cannot update key fields: {sorted(unknown)}")
        if not changes:
            return await self.get_key(key_id)
        columns = list(changes)
        sets = ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(columns))
        values = [changes[c] if c != "revoked" else bool(changes[c]) for c in columns]
        n = len(columns)
        row = await self.pool.fetchrow(
            f"UPDATE api_keys SET {sets}, updated_at = ${n + 1} WHERE id = ${n + 2} RETURNING *",
            *values,
            time.time(),
            key_id,
        )
        return _key_from_row(row) if row else None

    async def delete_key(self, key_id: str) -> bool:
        status = await self.pool.execute("DELETE FROM api_keys WHERE id = $1", key_id)
        return status.endswith(" 1")

    # usage
    async def insert_usage(self, records: list[UsageRecord]) -> int:
        if not records:
            return 0
        rows = [_usage_row(r) for r in records]
        cols = ", ".join(USAGE_COLUMNS)
        async with self.pool.acquire() as conn, conn.transaction():
            # ON COMMIT DROP: nothing outlives the transaction (safe behind a transaction-mode pooler)
            await conn.execute(
                "CREATE TEMP TABLE usage_stage (LIKE usage_records INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            await conn.copy_records_to_table("usage_stage", records=rows, columns=list(USAGE_COLUMNS))
            status = await conn.execute(
                f"INSERT INTO usage_records ({cols}) SELECT {cols} FROM usage_stage"
                " ON CONFLICT (request_id) DO NOTHING"
            )
        return int(status.rsplit(" ", 1)[-1])

    async def get_usage(self, request_id: str) -> UsageRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
        return _usage_from_row(row) if row else None

    async def usage_totals(
        self, *, group_by: str, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Whole hours from the ``usage_hourly`` rollup (kept exact by a trigger, migration 0003),
        only the partial hours at the edges of ``[since, until)`` from ``usage_records``: a year
        of traffic is at most ~8,800 buckets per group, whatever the number of requests."""
        if group_by not in USAGE_GROUPS:
            raise ValueError(f"group_by must be one of {sorted(USAGE_GROUPS)}")
        rollup, raw = hour_ranges(since, until)
        if group_by not in _ROLLUP_GROUPS:  # error_type: not in the rollup, the raw rows (time-indexed)
            rollup, raw = None, [(since, until)]
        totals: dict[Any, dict[str, int]] = {}

        def add(rows: list[Any], null_as_empty: bool) -> None:
            for row in rows:
                group = row["grp"]
                if null_as_empty and group == "":
                    group = None
                add_sums(totals, group, row, SUMS)

        async with self.pool.acquire() as conn:
            if rollup is not None:
                where, params = _range_where("bucket", *rollup)
                add(
                    await conn.fetch(
                        f"SELECT {group_by} AS grp, {_ROLLUP_SUMS} FROM usage_hourly {where}"
                        f" GROUP BY {group_by}",
                        *params,
                    ),
                    null_as_empty=group_by != "route",
                )
            for lo, hi in raw:
                where, params = _range_where("started_at", lo, hi)
                add(
                    await conn.fetch(
                        f"SELECT {group_by} AS grp, {_RAW_SUMS} FROM usage_records {where}"
                        f" GROUP BY {group_by}",
                        *params,
                    ),
                    null_as_empty=False,
                )
        return [{group_by: group, **sums} for group, sums in totals.items()]

    async def list_usage(
        self, filters: UsageFilter, *, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[UsageRecord]:
        params: list[Any] = []
        mark = _marker(params)
        clauses = filters.clauses(mark)
        if before is not None:
            clauses.append(f"(started_at, request_id) < ({mark(float(before[0]))}, {mark(before[1])})")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.pool.fetch(
            f"SELECT * FROM usage_records {where} ORDER BY started_at DESC, request_id DESC"
            f" LIMIT {int(limit)}",
            *params,
        )
        return [_usage_from_row(r) for r in rows]

    async def usage_series(self, *, since: float, until: float, step: int) -> list[dict[str, Any]]:
        """Hour-multiple steps read whole hours from ``usage_hourly`` (a day is 24 rollup buckets per
        group, whatever the traffic) and the partial edge hours from the raw rows; shorter steps
        read the raw rows of the range through the time index."""
        step = max(1, int(step))
        sums = ", ".join(f"SUM({c})::bigint AS {c}" for c in SERIES_SUMS if c not in ("requests", "errors"))
        raw_sql = (
            f"SELECT floor(started_at / {step}) * {step} AS bucket, COUNT(*)::bigint AS requests,"
            f" COUNT(*) FILTER (WHERE status >= 400)::bigint AS errors, {sums}"
            " FROM usage_records {where} GROUP BY 1"
        )
        out: dict[float, dict[str, int]] = {}

        def add(rows: list[Any]) -> None:
            for row in rows:
                add_sums(out, float(row["bucket"]), row, SERIES_SUMS)

        async with self.pool.acquire() as conn:
            if step % 3600 == 0:
                rollup, raw = hour_ranges(since, until)
                if rollup is not None:
                    where, params = _range_where("bucket", *rollup)
                    add(
                        await conn.fetch(
                            f"SELECT floor(bucket / {step}) * {step} AS bucket, {_ROLLUP_SUMS}"
                            f" FROM usage_hourly {where} GROUP BY 1",
                            *params,
                        )
                    )
            else:
                raw = [(since, until)]
            for lo, hi in raw:
                where, params = _range_where("started_at", lo, hi)
                add(await conn.fetch(raw_sql.format(where=where), *params))
        return [{"bucket": bucket, **sums_} for bucket, sums_ in sorted(out.items())]

    async def last_used(self, key_ids: list[str]) -> dict[str, float]:
        if not key_ids:
            return {}
        # one index probe per key on (key_id, started_at), newest first
        rows = await self.pool.fetch(
            "SELECT k AS key_id, (SELECT started_at FROM usage_records WHERE key_id = k"
            " ORDER BY started_at DESC LIMIT 1) AS t FROM unnest($1::text[]) AS k",
            list(key_ids),
        )
        return {r["key_id"]: float(r["t"]) for r in rows if r["t"] is not None}

    async def reprice_usage(self, changes: list[RepriceChange]) -> list[RepriceChange]:
        """One UPDATE for the whole list: the ``usage_hourly_move`` trigger (migration 0006) moves
        the rollup once, in the same transaction."""
        if not changes:
            return []
        rows = await self.pool.fetch(
            "UPDATE usage_records AS r SET cost_micro = v.new_cost, rate_card = v.new_card,"
            " priced_provisional = v.provisional"
            " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::boolean[])"
            " AS v(request_id, old_cost, new_cost, old_card, new_card, provisional)"
            " WHERE r.request_id = v.request_id AND r.cost_micro = v.old_cost"
            " AND r.rate_card IS NOT DISTINCT FROM v.old_card RETURNING r.request_id",
            [c.request_id for c in changes],
            [c.old_cost for c in changes],
            [c.new_cost for c in changes],
            [c.old_card for c in changes],
            [c.new_card for c in changes],
            [c.provisional for c in changes],
        )
        done = {r["request_id"] for r in rows}
        return [c for c in changes if c.request_id in done]

    async def insert_price_correction(self, correction: dict[str, Any]) -> None:
        marks = ", ".join(f"${i + 1}" for i in range(len(PRICE_CORRECTION_COLUMNS)))
        await self.pool.execute(
            f"INSERT INTO price_corrections ({', '.join(PRICE_CORRECTION_COLUMNS)}) VALUES ({marks})",
            *(
                (correction.get(c) or {}) if c == "detail" else correction[c]
                for c in PRICE_CORRECTION_COLUMNS
            ),
        )

    async def last_price_correction(self) -> dict[str, Any] | None:
        row = await self.pool.fetchrow("SELECT * FROM price_corrections ORDER BY at DESC LIMIT 1")
        return dict(row) if row is not None else None

    async def spend_by_key(self, key_ids: list[str]) -> dict[str, dict[str, int]]:
        if not key_ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT key_id,"
            " SUM(input_tokens + output_tokens + cache_creation_5m + cache_creation_1h + cache_read)::bigint AS t,"
            " SUM(cost_micro)::bigint AS c, COUNT(*)::bigint AS n"
            " FROM usage_records WHERE key_id = ANY($1::text[]) GROUP BY key_id",
            list(key_ids),
        )
        return {
            r["key_id"]: {"tokens": r["t"] or 0, "cost_micro": r["c"] or 0, "requests": r["n"]} for r in rows
        }

    # upstream credentials
    async def upsert_credential(self, credential: StoredCredential) -> None:
        credential.updated_at = time.time()
        values = [getattr(credential, c) for c in CREDENTIAL_COLUMNS]
        marks = ", ".join(f"${i + 1}" for i in range(len(CREDENTIAL_COLUMNS)))
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in CREDENTIAL_COLUMNS if c not in ("name", "created_at")
        )
        await self.pool.execute(
            f"INSERT INTO upstream_credentials ({', '.join(CREDENTIAL_COLUMNS)}) VALUES ({marks})"
            f" ON CONFLICT (name) DO UPDATE SET {updates}",
            *values,
        )

    async def get_credential(self, name: str) -> StoredCredential | None:
        row = await self.pool.fetchrow("SELECT * FROM upstream_credentials WHERE name = $1", name)
        return _credential_from_row(row) if row else None

    async def list_credentials(self) -> list[StoredCredential]:
        return [
            _credential_from_row(r)
            for r in await self.pool.fetch("SELECT * FROM upstream_credentials ORDER BY name")
        ]

    async def delete_credential(self, name: str) -> bool:
        status = await self.pool.execute("DELETE FROM upstream_credentials WHERE name = $1", name)
        return status.endswith(" 1")

    # message batches
    @staticmethod
    def _batch(row: asyncpg.Record) -> BatchRecord:
        return BatchRecord(**dict(row))

    async def insert_batch(self, batch: BatchRecord) -> None:
        marks = ", ".join(f"${i + 1}" for i in range(len(BATCH_COLUMNS)))
        await self.pool.execute(
            f"INSERT INTO message_batches ({', '.join(BATCH_COLUMNS)}) VALUES ({marks})",
            *(getattr(batch, c) for c in BATCH_COLUMNS),
        )

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM message_batches WHERE id = $1", batch_id)
        return self._batch(row) if row else None

    async def update_batch(self, batch_id: str, changes: dict[str, Any]) -> BatchRecord | None:
        unknown = set(changes) - BATCH_MUTABLE
        if unknown:
            raise ValueError(f"cannot update batch fields: {sorted(unknown)}")
        changes = {**changes, "updated_at": time.time()}
        columns = list(changes)
        sets = ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(columns))
        row = await self.pool.fetchrow(
            f"UPDATE message_batches SET {sets} WHERE id = ${len(columns) + 1} RETURNING *",
            *(changes[c] for c in columns),
            batch_id,
        )
        return self._batch(row) if row else None

    async def list_batches(
        self, *, key_id: str | None, limit: int, after_id: str | None = None, before_id: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        params: list[Any] = []
        sql, ascending = page_sql(
            "message_batches", "key_id", key_id, limit, after_id, before_id, _marker(params)
        )
        return page_of([self._batch(r) for r in await self.pool.fetch(sql, *params)], limit, ascending)

    async def delete_batch(self, batch_id: str) -> bool:
        status = await self.pool.execute("DELETE FROM message_batches WHERE id = $1", batch_id)
        return status.endswith(" 1")

    async def unsettled_batches(self, limit: int = 1000) -> list[BatchRecord]:
        rows = await self.pool.fetch(
            "SELECT * FROM message_batches WHERE NOT settled ORDER BY polled_at LIMIT $1", limit
        )
        return [self._batch(r) for r in rows]

    async def claim_batch(self, batch_id: str, owner: str, until: float, now: float) -> bool:
        status = await self.pool.execute(
            "UPDATE message_batches SET lease_owner = $1, lease_until = $2 WHERE id = $3"
            " AND (lease_owner IS NULL OR lease_until < $4 OR lease_owner = $1)",
            owner,
            until,
            batch_id,
            now,
        )
        return status.endswith(" 1")

    async def settle_batch(self, batch_id: str, *, tokens: int, micro: int, items: int) -> bool:
        status = await self.pool.execute(
            "UPDATE message_batches SET settled = TRUE, settled_tokens = $1, settled_micro = $2, metered_items = $3,"
            " updated_at = $4 WHERE id = $5 AND NOT settled",
            tokens,
            micro,
            items,
            time.time(),
            batch_id,
        )
        return status.endswith(" 1")

    async def seed_spend(
        self, key_id: str, since: float | None
    ) -> tuple[int, int, list[tuple[str, int, int]]]:
        # on the request path (a limiter's seed): one connection, every step bounded by ``timeout``
        tokens = "(input_tokens + output_tokens + cache_creation_5m + cache_creation_1h + cache_read)"
        cut = float("inf") if since is None else since
        async with self.pool.acquire(timeout=self.timeout) as conn:
            old = await conn.fetchrow(
                f"SELECT COALESCE(SUM({tokens}), 0)::bigint AS t, COALESCE(SUM(cost_micro), 0)::bigint AS c"
                " FROM usage_records WHERE key_id = $1 AND ended_at < $2",
                key_id,
                cut,
                timeout=self.timeout,
            )
            recent: list[asyncpg.Record] = (
                []
                if since is None
                else await conn.fetch(
                    f"SELECT request_id, {tokens}::bigint AS t, cost_micro::bigint AS c FROM usage_records"
                    " WHERE key_id = $1 AND ended_at >= $2",
                    key_id,
                    since,
                    timeout=self.timeout,
                )
            )
            held = await conn.fetchrow(
                "SELECT COALESCE(SUM(held_tokens), 0)::bigint AS t, COALESCE(SUM(held_micro), 0)::bigint AS m"
                " FROM message_batches WHERE key_id = $1 AND NOT settled",
                key_id,
                timeout=self.timeout,
            )
        assert old is not None and held is not None
        return (
            int(old["t"]) + int(held["t"]),
            int(old["c"]) + int(held["m"]),
            [(r["request_id"], int(r["t"]), int(r["c"] or 0)) for r in recent],
        )

    async def seed_period_spend(
        self, dim: str, value: str, start: float, since: float
    ) -> tuple[int, list[tuple[str, int]]]:
        where, args, held_sql = _period_filter(dim, value, "$3")
        async with self.pool.acquire(timeout=self.timeout) as conn:
            old = await conn.fetchval(
                "SELECT COALESCE(SUM(cost_micro), 0)::bigint FROM usage_records WHERE started_at >= $1"
                f" AND ended_at < $2{where}",
                start,
                since,
                *args,
                timeout=self.timeout,
            )
            recent = await conn.fetch(
                "SELECT request_id, COALESCE(cost_micro, 0)::bigint AS c FROM usage_records WHERE started_at >= $1"
                f" AND ended_at >= $2{where}",
                start,
                since,
                *args,
                timeout=self.timeout,
            )
            held = 0
            if held_sql:
                held = await conn.fetchval(
                    held_sql.replace("??", "$1").replace("?", "$2"), start, value, timeout=self.timeout
                )
        return int(old or 0) + int(held or 0), [(r["request_id"], int(r["c"])) for r in recent]

    async def batch_holds(self, key_id: str) -> tuple[int, int]:
        row = await self._row(
            "SELECT COALESCE(SUM(held_tokens), 0)::bigint AS t, COALESCE(SUM(held_micro), 0)::bigint AS m"
            " FROM message_batches WHERE key_id = $1 AND NOT settled",
            key_id,
        )
        assert row is not None
        return int(row["t"]), int(row["m"])

    # spend limits, audit, webhooks
    async def list_spend_limits(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch("SELECT * FROM spend_limits ORDER BY id")]

    @staticmethod
    async def _audit(
        conn: asyncpg.Connection,
        audit: dict[str, Any],
        action: str,
        object_id: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        await conn.execute(
            "INSERT INTO spend_limit_audit (id, at, actor, action, object_type, object_id, before, after)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            audit["id"],
            audit["at"],
            audit["actor"],
            action,
            audit["object_type"],
            object_id,
            before,
            after,
        )

    async def put_spend_limit(
        self, row: dict[str, Any], audit: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchrow(
                "SELECT * FROM spend_limits WHERE scope_type = $1 AND scope_id = $2 AND period = $3 AND shared = $4"
                " FOR UPDATE",
                row["scope_type"],
                row["scope_id"],
                row["period"],
                row["shared"],
            )
            before = dict(found) if found is not None else None
            if before is None:
                after = await conn.fetchrow(
                    "INSERT INTO spend_limits (id, scope_type, scope_id, period, amount_cents, currency, shared,"
                    " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    " ON CONFLICT (scope_type, scope_id, period, shared) DO UPDATE SET amount_cents ="
                    " excluded.amount_cents, currency = excluded.currency, updated_at = excluded.updated_at"
                    " RETURNING *",
                    row["id"],
                    row["scope_type"],
                    row["scope_id"],
                    row["period"],
                    row["amount_cents"],
                    row["currency"],
                    row["shared"],
                    row["created_at"],
                    row["updated_at"],
                )
            else:
                after = await conn.fetchrow(
                    "UPDATE spend_limits SET amount_cents = $1, currency = $2, updated_at = $3 WHERE id = $4"
                    " RETURNING *",
                    row["amount_cents"],
                    row["currency"],
                    row["updated_at"],
                    before["id"],
                )
            result = dict(after)
            await self._audit(
                conn, audit, "created" if before is None else "updated", result["id"], before, result
            )
        return before, result

    async def delete_spend_limit(self, limit_id: str, audit: dict[str, Any]) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("DELETE FROM spend_limits WHERE id = $1 RETURNING *", limit_id)
            if row is None:
                return None
            before = dict(row)
            await self._audit(conn, audit, "deleted", limit_id, before, None)
        return before

    async def list_audit(
        self,
        *,
        limit: int,
        after_id: str | None = None,
        before_id: str | None = None,
        object_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        params: list[Any] = []
        sql, ascending = page_sql(
            "spend_limit_audit", "object_id", object_id, limit, after_id, before_id, _marker(params)
        )
        return page_of([dict(r) for r in await self.pool.fetch(sql, *params)], limit, ascending)

    async def put_webhook(self, row: dict[str, Any], audit: dict[str, Any]) -> None:
        shown = {k: v for k, v in row.items() if k != "secret"}  # the audit never holds the secret
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhooks (id, url, secret, events, description, created_at) VALUES ($1, $2, $3, $4,"
                " $5, $6)",
                row["id"],
                row["url"],
                row["secret"],
                row["events"],
                row["description"],
                row["created_at"],
            )
            await self._audit(conn, audit, "created", row["id"], None, shown)

    async def list_webhooks(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch("SELECT * FROM webhooks ORDER BY id")]

    async def delete_webhook(self, webhook_id: str, audit: dict[str, Any]) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("DELETE FROM webhooks WHERE id = $1 RETURNING *", webhook_id)
            if row is None:
                return None
            before = {k: v for k, v in dict(row).items() if k != "secret"}
            await self._audit(conn, audit, "deleted", webhook_id, before, None)
        return before

    async def save_delivery(self, row: dict[str, Any]) -> None:
        await self.pool.execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event, created_at, attempts, status, last_status,"
            " last_error, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO UPDATE SET"
            " attempts = excluded.attempts, status = excluded.status, last_status = excluded.last_status,"
            " last_error = excluded.last_error, updated_at = excluded.updated_at",
            row["id"],
            row["webhook_id"],
            row["event"],
            row["created_at"],
            row["attempts"],
            row["status"],
            row["last_status"],
            row["last_error"],
            row["updated_at"],
        )

    async def list_deliveries(
        self, *, webhook_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        if webhook_id is None:
            rows = await self.pool.fetch(
                "SELECT * FROM webhook_deliveries ORDER BY created_at DESC LIMIT $1", limit
            )
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY created_at DESC LIMIT $2",
                webhook_id,
                limit,
            )
        return [dict(r) for r in rows]

    async def spend_totals(
        self, *, dim: str, since: float, until: float | None = None, values: list[str] | None = None
    ) -> dict[str, int]:
        """Whole days from ``usage_daily``, whole hours from ``usage_hourly``, the edges from the records."""
        if dim not in ("owner", "teams", "key_id"):
            raise ValueError(f"cannot sum spend by {dim!r}")
        until = float((int(time.time()) // 3600 + 1) * 3600) if until is None else until
        out: dict[str, int] = {}
        filters = {dim: list(values)} if values is not None and dim != "teams" else {}
        for row in await self.report_sums(since=since, until=until, step=86400, dims=[dim], filters=filters):
            value = row[dim] or ""
            out[value] = out.get(value, 0) + int(row["cost_micro"] or 0)
        return out

    async def report_sums(
        self, *, since: float, until: float, step: int, dims: list[str], filters: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        """Day buckets read whole days from the ``usage_daily`` rollup, hour buckets whole hours from
        ``usage_hourly``, minute buckets and partial edges the records through their time index."""
        from ethereal.storage.report import merge_rows, report_sql, split_range

        pieces = split_range(since, until, step)
        async with self.pool.acquire() as conn:
            fetched = []
            for source, lo, hi in pieces:
                params: list[Any] = []
                sql = report_sql(
                    source=source,
                    dialect="postgres",
                    since=lo,
                    until=hi,
                    step=step,
                    dims=dims,
                    filters=filters,
                    mark=_marker(params),
                )
                fetched.append(await conn.fetch(sql, *params))
        if len(fetched) == 1:  # one source: its groups are unique already (records read like dicts)
            return fetched[0]
        acc: dict[tuple[Any, ...], dict[str, int]] = {}
        for rows in fetched:
            merge_rows(rows, dims, acc)
        return [
            {"bucket": key[0], **dict(zip(dims, key[1:], strict=True)), **sums} for key, sums in acc.items()
        ]


def _period_filter(dim: str, value: str, mark: str) -> tuple[str, list[Any], str]:
    """The WHERE clause (after ``started_at``/``ended_at``) of a spend-limit seed, its arguments and
    the query of what the spender's unsettled batches created in the period hold (their estimate, held
    on the caps until they settle: ``??`` the period's start, ``?`` the value)."""
    if dim == "all":
        return "", [], ""
    if dim == "team":
        return (f" AND {mark} = ANY(string_to_array(COALESCE(teams, ''), ','))", [value], "")
    if dim == "owner":
        return (
            f" AND owner = {mark}",
            [value],
            (
                "SELECT COALESCE(SUM(b.estimated_micro), 0)::bigint FROM message_batches b JOIN api_keys k ON"
                " k.id = b.key_id WHERE NOT b.settled AND b.created_at >= ?? AND k.owner = ?"
            ),
        )
    if dim == "key_id":
        return (
            f" AND key_id = {mark}",
            [value],
            (
                "SELECT COALESCE(SUM(estimated_micro), 0)::bigint FROM message_batches WHERE NOT settled"
                " AND created_at >= ?? AND key_id = ?"
            ),
        )
    raise ValueError(f"cannot seed spend by {dim!r}")
