"""The embedded store: one SQLite file, used when no PostgreSQL is configured.

sqlite3 is blocking, so every call runs on one dedicated thread; that also
serialises writers, which is what SQLite wants. WAL mode lets readers in other
processes (a second gateway, the CLI) read while the gateway writes.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

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
    USAGE_COLUMNS,
    BatchRecord,
    StoredCredential,
    UsageRecord,
    usage_row,
)

T = TypeVar("T")

# sqlite3 binds None and bool through its adapter protocol unless they have an adapter of their
# own: a lookup in the adapter table, then a failed ``__adapt__`` lookup that builds and drops an
# AttributeError, per value. A usage row (every request writes one) holds a dozen such values:
# with these two adapters it binds in about half the time. What is stored is the same: NULL, 0/1.
sqlite3.register_adapter(type(None), lambda _value: None)
sqlite3.register_adapter(bool, int)


@functools.cache
def _usage_insert(rows: int) -> str:
    """``INSERT`` of ``rows`` usage records (each keeps the first row with its request id)."""
    one = f"({','.join('?' * len(USAGE_COLUMNS))})"
    return (
        f"INSERT INTO usage_records ({','.join(USAGE_COLUMNS)}) VALUES {','.join([one] * rows)}"
        " ON CONFLICT (request_id) DO NOTHING"
    )


def _usage_chunk_max(conn: sqlite3.Connection) -> int:
    """The most rows one ``INSERT`` may bind (a power of two): SQLite's bound on a statement's
    parameters (32,766 since 3.32, 999 before), at most 256 rows."""
    rows = min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(USAGE_COLUMNS), 256)
    return 1 << (rows.bit_length() - 1)


def _chunks(total: int, most: int) -> list[tuple[int, int]]:
    """``(start, size)`` covering ``total`` rows with sizes that are powers of two, ``most`` at
    most: at most log2(most) + total / most statements, each from a small fixed set of texts."""
    out: list[tuple[int, int]] = []
    start, size = 0, most
    while start < total:
        while size > total - start:
            size //= 2
        out.append((start, size))
        start += size
    return out


def _marker(params: list[Any]) -> Callable[[Any], str]:
    """A placeholder maker for ``params``: appends a value, returns ``?``."""

    def mark(value: Any) -> str:
        params.append(value)
        return "?"

    return mark


def _key_row(record: KeyRecord) -> tuple[Any, ...]:
    values = []
    for column in KEY_COLUMNS:
        value = getattr(record, column)
        if column in ("allowed_models", "metadata", "teams") and value is not None:
            value = orjson.dumps(value).decode()
        elif column == "revoked":
            value = int(value)
        values.append(value)
    return tuple(values)


def _key_from_row(row: sqlite3.Row) -> KeyRecord:
    data = dict(row)
    data["allowed_models"] = orjson.loads(data["allowed_models"]) if data["allowed_models"] else None
    data["metadata"] = orjson.loads(data["metadata"]) if data["metadata"] else {}
    data["teams"] = orjson.loads(data["teams"]) if data.get("teams") else []
    data["revoked"] = bool(data["revoked"])
    return KeyRecord(**data)


def _usage_from_row(row: sqlite3.Row) -> UsageRecord:
    data = dict(row)
    for flag in ("stream", "exact", "cache_ttl_assumed", "batch", "priced_provisional"):
        data[flag] = bool(data[flag])
    return UsageRecord(**data)


class SQLiteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ethereal-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._usage_chunk = 1  # rows per INSERT at most (_usage_chunk_max, once connected)

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        store = cls(path)
        await store._run(store._connect)
        return store

    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        self._usage_chunk = _usage_chunk_max(conn)
        self._conn = conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is closed")
        return self._conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` in one write transaction (taken at once: a writer waits for the lock, not for a
        failed upgrade of a read)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self.conn.close)
            self._conn = None
        self._executor.shutdown(wait=False)

    async def ping(self) -> None:
        await self._run(lambda: self.conn.execute("SELECT 1").fetchone())

    async def migrate(self) -> list[str]:
        return await self._run(self._migrate)

    def _migrate(self) -> list[str]:
        # BEGIN IMMEDIATE (_tx) takes the write lock: two processes starting together
        # apply each migration once (SQLite's equivalent of an advisory lock).
        return self._tx(self._apply_migrations)

    def _apply_migrations(self, conn: sqlite3.Connection) -> list[str]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in migration_files(self.dialect):
            if version in done:
                continue
            for statement in sql.split(";\n"):
                if statement.strip():
                    try:
                        conn.execute(statement)
                    except sqlite3.OperationalError as exc:
                        # SQLite has no ADD COLUMN IF NOT EXISTS: a column already there is
                        # what the statement wanted (a migration applied twice stays idempotent)
                        if "duplicate column name" not in str(exc):
                            raise
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            applied.append(name)
        return applied

    # keys
    async def insert_keys(self, records: list[KeyRecord]) -> None:
        rows = [_key_row(r) for r in records]

        def go() -> None:
            placeholders = ",".join("?" * len(KEY_COLUMNS))
            self.conn.execute("BEGIN")
            try:
                self.conn.executemany(
                    f"INSERT INTO api_keys ({','.join(KEY_COLUMNS)}) VALUES ({placeholders})", rows
                )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

        await self._run(go)

    async def _fetch_key(self, where: str, value: str) -> KeyRecord | None:
        def go() -> KeyRecord | None:
            row = self.conn.execute(f"SELECT * FROM api_keys WHERE {where} = ?", (value,)).fetchone()
            return _key_from_row(row) if row else None

        return await self._run(go)

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        return await self._fetch_key("key_hash", key_hash)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return await self._fetch_key("id", key_id)

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
            "sqlite",
            _marker(params),
            owner=owner,
            team=team,
            plan=plan,
            state=state,
            limit=limit,
            after_id=after_id,
        )

        def go() -> list[KeyRecord]:
            return [_key_from_row(r) for r in self.conn.execute(sql, params).fetchall()]

        return await self._run(go)

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        unknown = set(changes) - KEY_MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"cannot update key fields: {sorted(unknown)}")
        values = []
        for column, value in changes.items():
            if column in ("allowed_models", "metadata", "teams") and value is not None:
                value = orjson.dumps(value).decode()
            elif column == "revoked":
                value = int(bool(value))
            values.append(value)
        sets = ", ".join(f"{c} = ?" for c in changes)

        def go() -> KeyRecord | None:
            if changes:
                self.conn.execute(
                    f"UPDATE api_keys SET {sets}, updated_at = ? WHERE id = ?", (*values, time.time(), key_id)
                )
            row = self.conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            return _key_from_row(row) if row else None

        return await self._run(go)

    async def delete_key(self, key_id: str) -> bool:
        def go() -> bool:
            return self.conn.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount > 0

        return await self._run(go)

    # usage
    async def insert_usage(self, records: list[UsageRecord]) -> int:
        """One transaction; the rows go in as multi-row INSERTs of power-of-two sizes (each size's
        statement prepared once and cached), not one statement per row: sqlite3 gives up the GIL
        around every statement it steps, and a meter flush of a few hundred rows taking it back
        row by row made the event loop's thread wait for it as often (a futex handoff each time)."""
        rows = [usage_row(r) for r in records]

        def go() -> int:
            conn = self.conn
            before = conn.total_changes
            conn.execute("BEGIN")
            try:
                for start, size in _chunks(len(rows), self._usage_chunk):
                    conn.execute(_usage_insert(size), list(chain.from_iterable(rows[start : start + size])))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return conn.total_changes - before

        return await self._run(go)

    async def get_usage(self, request_id: str) -> UsageRecord | None:
        def go() -> UsageRecord | None:
            row = self.conn.execute(
                "SELECT * FROM usage_records WHERE request_id = ?", (request_id,)
            ).fetchone()
            return _usage_from_row(row) if row else None

        return await self._run(go)

    async def usage_totals(
        self, *, group_by: str, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        if group_by not in USAGE_GROUPS:
            raise ValueError(f"group_by must be one of {sorted(USAGE_GROUPS)}")
        params: list[Any] = []
        clauses = UsageFilter(since=since, until=until).clauses(_marker(params))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {group_by} AS grp, COUNT(*) AS requests, SUM(status >= 400) AS errors,"
            " SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,"
            " SUM(cache_creation_5m) AS cache_creation_5m, SUM(cache_creation_1h) AS cache_creation_1h,"
            " SUM(cache_read) AS cache_read, SUM(web_search_requests) AS web_search_requests,"
            " SUM(cost_micro) AS cost_micro"
            f" FROM usage_records {where} GROUP BY {group_by} ORDER BY cost_micro DESC"
        )

        def go() -> list[dict[str, Any]]:
            out = []
            for row in self.conn.execute(sql, params).fetchall():
                data = dict(row)
                data[group_by] = data.pop("grp")
                out.append(data)
            return out

        return await self._run(go)

    async def list_usage(
        self, filters: UsageFilter, *, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[UsageRecord]:
        params: list[Any] = []
        mark = _marker(params)

        clauses = filters.clauses(mark)
        if before is not None:
            clauses.append(
                f"(started_at < {mark(float(before[0]))} OR (started_at = {mark(float(before[0]))}"
                f" AND request_id < {mark(before[1])}))"
            )
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT * FROM usage_records {where} ORDER BY started_at DESC, request_id DESC"
            f" LIMIT {int(limit)}"
        )
        return await self._run(
            lambda: [_usage_from_row(r) for r in self.conn.execute(sql, params).fetchall()]
        )

    async def usage_series(self, *, since: float, until: float, step: int) -> list[dict[str, Any]]:
        step = max(1, int(step))
        sql = (
            f"SELECT CAST(started_at / {step} AS INTEGER) * {step} AS bucket, COUNT(*) AS requests,"
            " SUM(status >= 400) AS errors, SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,"
            " SUM(cache_creation_5m) AS cache_creation_5m, SUM(cache_creation_1h) AS cache_creation_1h,"
            " SUM(cache_read) AS cache_read, SUM(cost_micro) AS cost_micro"
            " FROM usage_records WHERE started_at >= ? AND started_at < ? GROUP BY 1 ORDER BY 1"
        )

        def go() -> list[dict[str, Any]]:
            rows = self.conn.execute(sql, (float(since), float(until))).fetchall()
            return [{"bucket": float(r["bucket"]), **{n: int(r[n] or 0) for n in SERIES_SUMS}} for r in rows]

        return await self._run(go)

    async def last_used(self, key_ids: list[str]) -> dict[str, float]:
        if not key_ids:
            return {}
        marks = ",".join("?" * len(key_ids))
        sql = f"SELECT key_id, MAX(started_at) FROM usage_records WHERE key_id IN ({marks}) GROUP BY key_id"
        return await self._run(
            lambda: {r[0]: float(r[1]) for r in self.conn.execute(sql, key_ids).fetchall()}
        )

    async def reprice_usage(self, changes: list[RepriceChange]) -> list[RepriceChange]:
        sql = (
            "UPDATE usage_records SET cost_micro = ?, rate_card = ?, priced_provisional = ?"
            " WHERE request_id = ? AND cost_micro = ? AND rate_card IS ?"
        )

        def go(conn: sqlite3.Connection) -> list[RepriceChange]:
            applied = []
            for c in changes:
                cur = conn.execute(
                    sql, (c.new_cost, c.new_card, int(c.provisional), c.request_id, c.old_cost, c.old_card)
                )
                if cur.rowcount > 0:
                    applied.append(c)
            return applied

        return await self._run(self._tx, go) if changes else []

    async def insert_price_correction(self, correction: dict[str, Any]) -> None:
        values = [
            orjson.dumps(correction.get("detail") or {}).decode() if c == "detail" else correction[c]
            for c in PRICE_CORRECTION_COLUMNS
        ]
        sql = (
            f"INSERT INTO price_corrections ({','.join(PRICE_CORRECTION_COLUMNS)})"
            f" VALUES ({','.join('?' * len(PRICE_CORRECTION_COLUMNS))})"
        )
        await self._run(lambda: self.conn.execute(sql, values))

    async def last_price_correction(self) -> dict[str, Any] | None:
        def go() -> dict[str, Any] | None:
            row = self.conn.execute("SELECT * FROM price_corrections ORDER BY at DESC LIMIT 1").fetchone()
            if row is None:
                return None
            data = dict(row)
            data["detail"] = orjson.loads(data["detail"] or "{}")
            return data

        return await self._run(go)

    async def spend_by_key(self, key_ids: list[str]) -> dict[str, dict[str, int]]:
        if not key_ids:
            return {}
        marks = ",".join("?" * len(key_ids))
        sql = (
            "SELECT key_id, SUM(input_tokens + output_tokens + cache_creation_5m + cache_creation_1h + cache_read),"
            f" SUM(cost_micro), COUNT(*) FROM usage_records WHERE key_id IN ({marks}) GROUP BY key_id"
        )

        def go() -> dict[str, dict[str, int]]:
            return {
                row[0]: {"tokens": row[1] or 0, "cost_micro": row[2] or 0, "requests": row[3]}
                for row in self.conn.execute(sql, key_ids).fetchall()
            }

        return await self._run(go)

    # upstream credentials
    async def upsert_credential(self, credential: StoredCredential) -> None:
        credential.updated_at = time.time()
        row = []
        for column in CREDENTIAL_COLUMNS:
            value = getattr(credential, column)
            if column == "models" and value is not None:
                value = orjson.dumps(value).decode()
            elif column == "enabled":
                value = int(value)
            row.append(value)
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in CREDENTIAL_COLUMNS if c not in ("name", "created_at")
        )
        sql = (
            f"INSERT INTO upstream_credentials ({','.join(CREDENTIAL_COLUMNS)})"
            f" VALUES ({','.join('?' * len(CREDENTIAL_COLUMNS))}) ON CONFLICT (name) DO UPDATE SET {updates}"
        )
        await self._run(lambda: self.conn.execute(sql, row))

    @staticmethod
    def _credential(row: sqlite3.Row) -> StoredCredential:
        data = dict(row)
        data["models"] = orjson.loads(data["models"]) if data["models"] else None
        data["enabled"] = bool(data["enabled"])
        return StoredCredential(**data)

    async def get_credential(self, name: str) -> StoredCredential | None:
        def go() -> StoredCredential | None:
            row = self.conn.execute("SELECT * FROM upstream_credentials WHERE name = ?", (name,)).fetchone()
            return self._credential(row) if row else None

        return await self._run(go)

    async def list_credentials(self) -> list[StoredCredential]:
        def go() -> list[StoredCredential]:
            rows = self.conn.execute("SELECT * FROM upstream_credentials ORDER BY name").fetchall()
            return [self._credential(r) for r in rows]

        return await self._run(go)

    async def delete_credential(self, name: str) -> bool:
        def go() -> bool:
            return self.conn.execute("DELETE FROM upstream_credentials WHERE name = ?", (name,)).rowcount > 0

        return await self._run(go)

    # message batches
    @staticmethod
    def _batch(row: sqlite3.Row) -> BatchRecord:
        data = dict(row)
        data["settled"] = bool(data["settled"])
        return BatchRecord(**data)

    async def insert_batch(self, batch: BatchRecord) -> None:
        values = [int(v) if isinstance(v, bool) else v for v in (getattr(batch, c) for c in BATCH_COLUMNS)]
        sql = f"INSERT INTO message_batches ({','.join(BATCH_COLUMNS)}) VALUES ({','.join('?' * len(BATCH_COLUMNS))})"
        await self._run(lambda: self.conn.execute(sql, values))

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        def go() -> BatchRecord | None:
            row = self.conn.execute("SELECT * FROM message_batches WHERE id = ?", (batch_id,)).fetchone()
            return self._batch(row) if row else None

        return await self._run(go)

    async def update_batch(self, batch_id: str, changes: dict[str, Any]) -> BatchRecord | None:
        unknown = set(changes) - BATCH_MUTABLE
        if unknown:
            raise ValueError(f"cannot update batch fields: {sorted(unknown)}")
        changes = {**changes, "updated_at": time.time()}
        sets = ", ".join(f"{c} = ?" for c in changes)
        values = [int(v) if isinstance(v, bool) else v for v in changes.values()]

        def go() -> BatchRecord | None:
            self.conn.execute(f"UPDATE message_batches SET {sets} WHERE id = ?", (*values, batch_id))
            row = self.conn.execute("SELECT * FROM message_batches WHERE id = ?", (batch_id,)).fetchone()
            return self._batch(row) if row else None

        return await self._run(go)

    async def list_batches(
        self, *, key_id: str | None, limit: int, after_id: str | None = None, before_id: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        params: list[Any] = []
        sql, ascending = page_sql(
            "message_batches", "key_id", key_id, limit, after_id, before_id, _marker(params)
        )

        def go() -> tuple[list[BatchRecord], bool]:
            return page_of(
                [self._batch(r) for r in self.conn.execute(sql, params).fetchall()], limit, ascending
            )

        return await self._run(go)

    async def delete_batch(self, batch_id: str) -> bool:
        def go() -> bool:
            return self.conn.execute("DELETE FROM message_batches WHERE id = ?", (batch_id,)).rowcount > 0

        return await self._run(go)

    async def unsettled_batches(self, limit: int = 1000) -> list[BatchRecord]:
        def go() -> list[BatchRecord]:
            rows = self.conn.execute(
                "SELECT * FROM message_batches WHERE settled = 0 ORDER BY polled_at LIMIT ?", (limit,)
            ).fetchall()
            return [self._batch(r) for r in rows]

        return await self._run(go)

    async def claim_batch(self, batch_id: str, owner: str, until: float, now: float) -> bool:
        def go() -> bool:
            cur = self.conn.execute(
                "UPDATE message_batches SET lease_owner = ?, lease_until = ? WHERE id = ?"
                " AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?)",
                (owner, until, batch_id, now, owner),
            )
            return cur.rowcount > 0

        return await self._run(go)

    async def settle_batch(self, batch_id: str, *, tokens: int, micro: int, items: int) -> bool:
        def go() -> bool:
            cur = self.conn.execute(
                "UPDATE message_batches SET settled = 1, settled_tokens = ?, settled_micro = ?, metered_items = ?,"
                " updated_at = ? WHERE id = ? AND settled = 0",
                (tokens, micro, items, time.time(), batch_id),
            )
            return cur.rowcount > 0

        return await self._run(go)

    async def seed_spend(
        self, key_id: str, since: float | None
    ) -> tuple[int, int, list[tuple[str, int, int]]]:
        tokens = "(input_tokens + output_tokens + cache_creation_5m + cache_creation_1h + cache_read)"
        cut = float("inf") if since is None else since

        def go() -> tuple[int, int, list[tuple[str, int, int]]]:
            old = self.conn.execute(
                f"SELECT COALESCE(SUM({tokens}), 0), COALESCE(SUM(cost_micro), 0)"
                " FROM usage_records WHERE key_id = ? AND ended_at < ?",
                (key_id, cut),
            ).fetchone()
            recent = (
                []
                if since is None
                else self.conn.execute(
                    f"SELECT request_id, {tokens}, COALESCE(cost_micro, 0) FROM usage_records"
                    " WHERE key_id = ? AND ended_at >= ?",
                    (key_id, since),
                ).fetchall()
            )
            held = self.conn.execute(
                "SELECT COALESCE(SUM(held_tokens), 0), COALESCE(SUM(held_micro), 0)"
                " FROM message_batches WHERE key_id = ? AND settled = 0",
                (key_id,),
            ).fetchone()
            return (
                int(old[0]) + int(held[0]),
                int(old[1]) + int(held[1]),
                [(str(r[0]), int(r[1]), int(r[2])) for r in recent],
            )

        return await self._run(go)

    async def seed_period_spend(
        self, dim: str, value: str, start: float, since: float
    ) -> tuple[int, list[tuple[str, int]]]:
        if dim == "all":
            where, args, held_sql = "", [], ""
        elif dim == "team":
            where, args, held_sql = (
                " AND (',' || COALESCE(teams, '') || ',') LIKE ?",
                ["%," + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ",%"],
                "",
            )
            where += " ESCAPE '\\'"
        elif dim == "owner":
            where, args = " AND owner = ?", [value]
            held_sql = (
                "SELECT COALESCE(SUM(b.estimated_micro), 0) FROM message_batches b JOIN api_keys k ON"
                " k.id = b.key_id WHERE b.settled = 0 AND b.created_at >= ? AND k.owner = ?"
            )
        elif dim == "key_id":
            where, args = " AND key_id = ?", [value]
            held_sql = (
                "SELECT COALESCE(SUM(estimated_micro), 0) FROM message_batches WHERE settled = 0"
                " AND created_at >= ? AND key_id = ?"
            )
        else:
            raise ValueError(f"cannot seed spend by {dim!r}")

        def go() -> tuple[int, list[tuple[str, int]]]:
            old = self.conn.execute(
                "SELECT COALESCE(SUM(cost_micro), 0) FROM usage_records WHERE started_at >= ?"
                f" AND ended_at < ?{where}",
                (start, since, *args),
            ).fetchone()
            recent = self.conn.execute(
                "SELECT request_id, COALESCE(cost_micro, 0) FROM usage_records WHERE"
                f" started_at >= ? AND ended_at >= ?{where}",
                (start, since, *args),
            ).fetchall()
            held = self.conn.execute(held_sql, (start, value)).fetchone()[0] if held_sql else 0
            return int(old[0]) + int(held or 0), [(str(r[0]), int(r[1])) for r in recent]

        return await self._run(go)

    async def batch_holds(self, key_id: str) -> tuple[int, int]:
        def go() -> tuple[int, int]:
            row = self.conn.execute(
                "SELECT COALESCE(SUM(held_tokens), 0), COALESCE(SUM(held_micro), 0)"
                " FROM message_batches WHERE key_id = ? AND settled = 0",
                (key_id,),
            ).fetchone()
            return int(row[0]), int(row[1])

        return await self._run(go)

    # spend limits, audit, webhooks
    @staticmethod
    def _limit_row(row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        data["shared"] = bool(data["shared"])
        return data

    @staticmethod
    def _audit(
        conn: sqlite3.Connection,
        audit: dict[str, Any],
        action: str,
        object_id: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        conn.execute(
            "INSERT INTO spend_limit_audit (id, at, actor, action, object_type, object_id, before, after)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                audit["id"],
                audit["at"],
                audit["actor"],
                action,
                audit["object_type"],
                object_id,
                None if before is None else orjson.dumps(before).decode(),
                None if after is None else orjson.dumps(after).decode(),
            ),
        )

    async def list_spend_limits(self) -> list[dict[str, Any]]:
        def go() -> list[dict[str, Any]]:
            return [self._limit_row(r) for r in self.conn.execute("SELECT * FROM spend_limits ORDER BY id")]

        return await self._run(go)

    async def put_spend_limit(
        self, row: dict[str, Any], audit: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        def go(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any]]:
            found = conn.execute(
                "SELECT * FROM spend_limits WHERE scope_type = ? AND scope_id = ? AND period = ? AND shared = ?",
                (row["scope_type"], row["scope_id"], row["period"], int(row["shared"])),
            ).fetchone()
            before = self._limit_row(found) if found is not None else None
            if before is None:
                conn.execute(
                    "INSERT INTO spend_limits (id, scope_type, scope_id, period, amount_cents, currency, shared,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row["id"],
                        row["scope_type"],
                        row["scope_id"],
                        row["period"],
                        row["amount_cents"],
                        row["currency"],
                        int(row["shared"]),
                        row["created_at"],
                        row["updated_at"],
                    ),
                )
                limit_id = row["id"]
            else:
                limit_id = before["id"]
                conn.execute(
                    "UPDATE spend_limits SET amount_cents = ?, currency = ?, updated_at = ? WHERE id = ?",
                    (row["amount_cents"], row["currency"], row["updated_at"], limit_id),
                )
            after = self._limit_row(
                conn.execute("SELECT * FROM spend_limits WHERE id = ?", (limit_id,)).fetchone()
            )
            self._audit(conn, audit, "created" if before is None else "updated", limit_id, before, after)
            return before, after

        return await self._run(self._tx, go)

    async def delete_spend_limit(self, limit_id: str, audit: dict[str, Any]) -> dict[str, Any] | None:
        def go(conn: sqlite3.Connection) -> dict[str, Any] | None:
            found = conn.execute("SELECT * FROM spend_limits WHERE id = ?", (limit_id,)).fetchone()
            if found is None:
                return None
            before = self._limit_row(found)
            conn.execute("DELETE FROM spend_limits WHERE id = ?", (limit_id,))
            self._audit(conn, audit, "deleted", limit_id, before, None)
            return before

        return await self._run(self._tx, go)

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

        def go() -> tuple[list[dict[str, Any]], bool]:
            rows = []
            for r in self.conn.execute(sql, params):
                data = dict(r)
                for name in ("before", "after"):
                    data[name] = orjson.loads(data[name]) if data[name] else None
                rows.append(data)
            return page_of(rows, limit, ascending)

        return await self._run(go)

    async def put_webhook(self, row: dict[str, Any], audit: dict[str, Any]) -> None:
        shown = {k: v for k, v in row.items() if k != "secret"}

        def go(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO webhooks (id, url, secret, events, description, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    row["id"],
                    row["url"],
                    row["secret"],
                    None if row["events"] is None else orjson.dumps(row["events"]).decode(),
                    row["description"],
                    row["created_at"],
                ),
            )
            self._audit(conn, audit, "created", row["id"], None, shown)

        await self._run(self._tx, go)

    @staticmethod
    def _webhook(row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        data["events"] = orjson.loads(data["events"]) if data["events"] else None
        return data

    async def list_webhooks(self) -> list[dict[str, Any]]:
        def go() -> list[dict[str, Any]]:
            return [self._webhook(r) for r in self.conn.execute("SELECT * FROM webhooks ORDER BY id")]

        return await self._run(go)

    async def delete_webhook(self, webhook_id: str, audit: dict[str, Any]) -> dict[str, Any] | None:
        def go(conn: sqlite3.Connection) -> dict[str, Any] | None:
            found = conn.execute("SELECT * FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
            if found is None:
                return None
            before = {k: v for k, v in self._webhook(found).items() if k != "secret"}
            conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,))
            self._audit(conn, audit, "deleted", webhook_id, before, None)
            return before

        return await self._run(self._tx, go)

    async def save_delivery(self, row: dict[str, Any]) -> None:
        def go() -> None:
            self.conn.execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, event, created_at, attempts, status, last_status,"
                " last_error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " attempts = excluded.attempts, status = excluded.status, last_status = excluded.last_status,"
                " last_error = excluded.last_error, updated_at = excluded.updated_at",
                (
                    row["id"],
                    row["webhook_id"],
                    row["event"],
                    row["created_at"],
                    row["attempts"],
                    row["status"],
                    row["last_status"],
                    row["last_error"],
                    row["updated_at"],
                ),
            )

        await self._run(go)

    async def list_deliveries(
        self, *, webhook_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        def go() -> list[dict[str, Any]]:
            if webhook_id is None:
                cur = self.conn.execute(
                    "SELECT * FROM webhook_deliveries ORDER BY created_at DESC LIMIT ?", (limit,)
                )
            else:
                cur = self.conn.execute(
                    "SELECT * FROM webhook_deliveries WHERE webhook_id = ? ORDER BY created_at DESC LIMIT ?",
                    (webhook_id, limit),
                )
            return [dict(r) for r in cur]

        return await self._run(go)

    async def spend_totals(
        self, *, dim: str, since: float, until: float | None = None, values: list[str] | None = None
    ) -> dict[str, int]:
        if dim not in ("owner", "teams", "key_id"):
            raise ValueError(f"cannot sum spend by {dim!r}")
        params: list[Any] = [float(since)]
        where = "started_at >= ?"
        if until is not None:
            where += " AND started_at < ?"
            params.append(float(until))
        if values is not None:
            where += f" AND COALESCE({dim}, '') IN ({', '.join('?' * len(values))})"
            params.extend(values)

        def go() -> dict[str, int]:
            return {
                r[0]: int(r[1] or 0)
                for r in self.conn.execute(
                    f"SELECT COALESCE({dim}, ''), SUM(cost_micro) FROM usage_records WHERE {where} GROUP BY 1",
                    params,
                )
            }

        return await self._run(go)

    async def report_sums(
        self, *, since: float, until: float, step: int, dims: list[str], filters: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        from ethereal.storage.report import merge_rows, report_sql

        params: list[Any] = []
        mark = _marker(params)

        sql = report_sql(
            source="usage_records",
            dialect="sqlite",
            since=since,
            until=until,
            step=step,
            dims=dims,
            filters=filters,
            mark=mark,
        )

        def go() -> list[dict[str, Any]]:
            acc: dict[tuple[Any, ...], dict[str, int]] = {}
            merge_rows([dict(r) for r in self.conn.execute(sql, params)], dims, acc)
            return [
                {"bucket": key[0], **dict(zip(dims, key[1:], strict=True)), **sums}
                for key, sums in acc.items()
            ]

        return await self._run(go)
