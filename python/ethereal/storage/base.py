"""The storage interface every backend implements.

PostgreSQL is the source of truth in production; the SQLite file is the
embedded default. Both run the same contract tests.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from ethereal.keys import KeyRecord
from ethereal.storage.records import SUMS, BatchRecord, StoredCredential, UsageRecord

T = TypeVar("T")


async def bounded(call: Awaitable[T], seconds: float) -> T:
    """``call``'s result within ``seconds``, else TimeoutError at once.

    Not ``asyncio.wait_for``: on a timeout it waits for the cancelled call to end, and a driver
    cancelling a query on a server that hangs (its connection reset, a cancel request) can wait
    as long as the hang. Here the call is cancelled and left to end in the background."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_consume)
        raise TimeoutError(f"no answer within {seconds} s")
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of an abandoned call is not an error to report


# the largest value each store keeps in an integer column: PostgreSQL's INTEGER (a key's and a
# credential's rpm, a key's max_concurrency) and BIGINT, held to 2**62 so sums of a few stay in
# SQLite's and PostgreSQL's 64 bits (budgets, tpm, a credential's spend cap); what the admin API
# accepts for those fields, so a value it takes is one both stores can write
MAX_INT4 = 2**31 - 1
MAX_INT8 = 2**62

# a key's columns, in the order both stores read and write them; the ones a PATCH may change
KEY_COLUMNS = ("id", "key_hash", "display", "name", "owner", "teams", "plan", "budget_tokens", "budget_micro_usd",
               "rpm", "tpm", "max_concurrency", "allowed_models", "expires_at", "revoked", "metadata",
               "created_at", "updated_at")  # fmt: skip
KEY_MUTABLE_FIELDS = frozenset(KEY_COLUMNS[3:-2])
# what usage sums group by
USAGE_GROUPS = frozenset({"key_id", "model", "credential", "route", "error_type"})


def page_sql(
    table: str,
    column: str,
    value: Any,
    limit: int,
    after_id: str | None,
    before_id: str | None,
    mark: Callable[[Any], str],
) -> tuple[str, bool]:
    """The SELECT of one page of ``table`` by id, newest first, of the rows whose ``column`` is
    ``value`` (all rows when it is None): ``after_id`` pages to older rows, ``before_id`` to newer.
    Paging to newer rows reads them ascending, so that the nearest come first; returns the SELECT
    and whether it reads ascending, for ``page_of``. One row past ``limit`` tells if there are more."""
    clauses: list[str] = []
    if value is not None:
        clauses.append(f"{column} = {mark(value)}")
    ascending = False
    if after_id is not None:
        clauses.append(f"id < {mark(after_id)}")
    elif before_id is not None:
        clauses.append(f"id > {mark(before_id)}")
        ascending = True
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    order = "ASC" if ascending else "DESC"
    return f"SELECT * FROM {table} {where} ORDER BY id {order} LIMIT {mark(limit + 1)}", ascending


# how each dialect says "the key lists this team" and "revoked"
_KEY_DIALECT = {
    "postgres": ("teams ? {}", "revoked", "NOT revoked"),  # ? on jsonb: the GIN index of 0009
    "sqlite": (
        "EXISTS (SELECT 1 FROM json_each(api_keys.teams) WHERE value = {})",
        "revoked = 1",
        "revoked = 0",
    ),
}


def key_list_sql(
    dialect: str,
    mark: Callable[[Any], str],
    *,
    owner: str | None,
    team: str | None,
    plan: str | None,
    state: str | None,
    limit: int,
    after_id: str | None,
) -> str:
    """The SELECT of ``Store.list_keys``: keys in id order after ``after_id``, filtered."""
    has_team, revoked, live = _KEY_DIALECT[dialect]
    clauses: list[str] = []
    if owner is not None:
        clauses.append(f"owner = {mark(owner)}")
    if team is not None:
        clauses.append(has_team.format(mark(team)))
    if plan is not None:
        clauses.append(f"plan = {mark(plan)}")
    if state == "revoked":
        clauses.append(revoked)
    elif state == "expired":
        clauses.append(f"{live} AND expires_at IS NOT NULL AND expires_at <= {mark(time.time())}")
    elif state == "active":
        clauses.append(f"{live} AND (expires_at IS NULL OR expires_at > {mark(time.time())})")
    if after_id is not None:
        clauses.append(f"id > {mark(after_id)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT * FROM api_keys {where} ORDER BY id LIMIT {mark(limit)}"


def page_of(rows: list[T], limit: int, ascending: bool) -> tuple[list[T], bool]:
    """A page read by ``page_sql`` newest first, and whether more rows lie beyond it."""
    more = len(rows) > limit
    rows = rows[:limit]
    if ascending:
        rows.reverse()
    return rows, more


def migration_files(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) for every numbered migration of a dialect, in order."""
    folder = resources.files("ethereal.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class Store(abc.ABC):
    """Async storage of keys, usage records and upstream credentials."""

    dialect: str

    @abc.abstractmethod
    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise when the database cannot be reached."""

    # keys
    @abc.abstractmethod
    async def insert_keys(self, records: list[KeyRecord]) -> None:
        """Insert all records in one transaction (all or nothing)."""

    @abc.abstractmethod
    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def list_keys(
        self,
        *,
        owner: str | None = None,
        team: str | None = None,
        plan: str | None = None,
        state: str | None = None,  # "active" | "revoked" | "expired"
        limit: int = 100,
        after_id: str | None = None,
    ) -> list[KeyRecord]: ...

    @abc.abstractmethod
    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def delete_key(self, key_id: str) -> bool: ...

    # usage
    @abc.abstractmethod
    async def insert_usage(self, records: list[UsageRecord]) -> int:
        """Insert records, ignoring request_ids already stored; returns rows inserted."""

    @abc.abstractmethod
    async def get_usage(self, request_id: str) -> UsageRecord | None: ...

    @abc.abstractmethod
    async def usage_totals(
        self, *, group_by: str, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost summed per ``group_by`` (key_id, model or credential)."""

    @abc.abstractmethod
    async def spend_by_key(self, key_ids: list[str]) -> dict[str, dict[str, int]]:
        """Tokens and micro-USD spent so far per key."""

    # the console (dashboard/): recent records, time series, last use. Not abstract: both stores
    # implement them, and a store made for a test of something else need not.
    async def list_usage(
        self, filters: UsageFilter, *, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[UsageRecord]:
        """Newest first; ``before`` = (started_at, request_id) of the last row of the previous page."""
        raise NotImplementedError(f"{type(self).__name__} does not list usage records")

    async def usage_series(self, *, since: float, until: float, step: int) -> list[dict[str, Any]]:
        """``SERIES_SUMS`` per ``step``-second bucket of ``started_at`` in ``[since, until)`` (``bucket`` =
        its start, unix seconds); buckets without traffic are absent. Hour steps read the rollup where
        the store keeps one."""
        raise NotImplementedError(f"{type(self).__name__} does not sum usage series")

    async def last_used(self, key_ids: list[str]) -> dict[str, float]:
        """The start time of each key's latest request (keys never used are absent)."""
        raise NotImplementedError(f"{type(self).__name__} does not track last use")

    # re-pricing (metering/reprice.py): records are read with list_usage, written back here
    async def reprice_usage(self, changes: list[RepriceChange]) -> list[RepriceChange]:
        """Apply new prices in one transaction, each only if the record still holds the cost and
        card it was read with (two runs at once never apply one change twice); the sums a store
        keeps (PostgreSQL's ``usage_hourly``) move with them. Returns the changes applied."""
        raise NotImplementedError(f"{type(self).__name__} does not re-price usage")

    async def insert_price_correction(self, correction: dict[str, Any]) -> None:
        """Keep one reprice run (``PRICE_CORRECTION_COLUMNS``, ``detail`` a JSON object)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep price corrections")

    async def last_price_correction(self) -> dict[str, Any] | None:
        """The latest reprice run, or None."""
        return None

    # spend limits (spend/), their audit, webhooks and their delivery log (alerts/). Not abstract:
    # a store made for a test of something else need not keep them. Rows are plain dicts of the
    # tables' columns (migration 0009); an ``audit`` dict carries id, at, actor, object_type and
    # is written with its before/after in the same transaction as the change.
    async def list_spend_limits(self) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} does not keep spend limits")

    async def put_spend_limit(
        self, row: dict[str, Any], audit: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Upsert on (scope_type, scope_id, period, shared): an existing limit keeps its id and
        created_at. Returns (before, after)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep spend limits")

    async def delete_spend_limit(self, limit_id: str, audit: dict[str, Any]) -> dict[str, Any] | None:
        """Delete and audit; the limit as it was, None when unknown (nothing audited)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep spend limits")

    async def list_audit(
        self,
        *,
        limit: int,
        after_id: str | None = None,
        before_id: str | None = None,
        object_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; ``after_id`` pages to older entries, ``before_id`` to newer."""
        raise NotImplementedError(f"{type(self).__name__} does not keep an audit")

    async def put_webhook(self, row: dict[str, Any], audit: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not keep webhooks")

    async def list_webhooks(self) -> list[dict[str, Any]]:
        return []

    async def delete_webhook(self, webhook_id: str, audit: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError(f"{type(self).__name__} does not keep webhooks")

    async def save_delivery(self, row: dict[str, Any]) -> None:
        """Insert or update one delivery (by id)."""
        return

    async def list_deliveries(
        self, *, webhook_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        return []

    async def spend_totals(
        self, *, dim: str, since: float, until: float | None = None, values: list[str] | None = None
    ) -> dict[str, int]:
        """micro-USD spent per ``dim`` (owner, teams or key_id; teams as records keep them, joined
        by ",") in ``[since, until)``; ``values`` restricts to those (None: every one)."""
        raise NotImplementedError(f"{type(self).__name__} does not sum spend")

    async def report_sums(
        self, *, since: float, until: float, step: int, dims: list[str], filters: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        """The usage and cost reports' sums (storage/report.py) per ``step``-second bucket of
        ``[since, until)`` and per ``dims``; teams are not split (admin/reports.py does)."""
        raise NotImplementedError(f"{type(self).__name__} does not sum reports")

    # upstream credentials (the API key arrives and leaves encrypted)
    @abc.abstractmethod
    async def upsert_credential(self, credential: StoredCredential) -> None: ...

    @abc.abstractmethod
    async def get_credential(self, name: str) -> StoredCredential | None: ...

    @abc.abstractmethod
    async def list_credentials(self) -> list[StoredCredential]: ...

    @abc.abstractmethod
    async def delete_credential(self, name: str) -> bool: ...

    # message batches (batches/): the gateway's record of each batch, shared by replicas.
    # Not abstract so test doubles of the other parts need not implement them.
    async def insert_batch(self, batch: BatchRecord) -> None:
        raise NotImplementedError

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        raise NotImplementedError

    async def update_batch(self, batch_id: str, changes: dict[str, Any]) -> BatchRecord | None:
        """Apply ``changes`` (columns of ``BATCH_MUTABLE``); the updated record, None when unknown."""
        raise NotImplementedError

    async def list_batches(
        self, *, key_id: str | None, limit: int, after_id: str | None = None, before_id: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        """Newest first (ids sort by creation time), one key's or every key's (``key_id`` None);
        ``after_id`` pages to older batches, ``before_id`` to newer. Returns (page, has_more)."""
        raise NotImplementedError

    async def delete_batch(self, batch_id: str) -> bool:
        raise NotImplementedError

    async def unsettled_batches(self, limit: int = 1000) -> list[BatchRecord]:
        """Batches whose items are not metered yet (every status), oldest poll first."""
        raise NotImplementedError

    async def claim_batch(self, batch_id: str, owner: str, until: float, now: float) -> bool:
        """Take the batch's lease for ``owner`` until ``until`` when it is free (expired) or already
        ``owner``'s: the one replica that polls and settles it meanwhile."""
        raise NotImplementedError

    async def settle_batch(self, batch_id: str, *, tokens: int, micro: int, items: int) -> bool:
        """Mark the batch settled with its real totals; True only for the call that flipped it."""
        raise NotImplementedError

    async def batch_holds(self, key_id: str) -> tuple[int, int]:
        """(tokens, micro-USD) held against the key's budget by its unsettled batches."""
        return 0, 0  # a store that keeps no batches holds nothing

    async def seed_period_spend(
        self, dim: str, value: str, start: float, since: float
    ) -> tuple[int, list[tuple[str, int]]]:
        """What a limiter seeds a spend-limit counter with (spend/enforce.py): micro-USD of the rows
        that started at or after ``start`` (the period's) and ended before ``since`` (the watermark),
        plus what the spender's unsettled Message Batches hold (``owner``/``key_id`` only), and
        (request_id, micro-USD) of each row of the period that ended at or after ``since``. ``dim``:
        ``owner``, ``key_id``, ``team`` (a record of several teams counts for each) or ``all``."""
        if dim == "all":
            total = sum((await self.spend_totals(dim="key_id", since=start)).values())
            return total, []
        if dim == "team":
            return (await self.spend_totals(dim="teams", since=start)).get(value, 0), []
        return (await self.spend_totals(dim=dim, since=start, values=[value])).get(value, 0), []

    async def seed_spend(
        self, key_id: str, since: float | None
    ) -> tuple[int, int, list[tuple[str, int, int]]]:
        """What a limiter seeds a key's budget with: (tokens, micro-USD) of the key's usage rows that
        ended before ``since`` (all of them for None) plus what its unsettled batches hold, and
        (request_id, tokens, micro-USD) of each row that ended at or after ``since``."""
        spend = (await self.spend_by_key([key_id])).get(key_id) or {}
        held_tokens, held_micro = await self.batch_holds(key_id)
        return int(spend.get("tokens") or 0) + held_tokens, int(spend.get("cost_micro") or 0) + held_micro, []


@dataclass(frozen=True, slots=True)
class RepriceChange:
    """One record re-priced: its cost and card as read (the update applies only if they are still
    there) and as re-priced."""

    request_id: str
    key_id: str | None
    old_cost: int
    new_cost: int
    old_card: str | None
    new_card: str | None
    provisional: bool


PRICE_CORRECTION_COLUMNS = (
    "id",
    "at",
    "since",
    "until",
    "registry_version",
    "records",
    "keys",
    "before_micro",
    "after_micro",
    "detail",
)


class UsageFilter:
    """What the console's usage page filters records by (every field optional)."""

    __slots__ = ("key_id", "model", "route", "since", "status_hi", "status_lo", "until")

    def __init__(
        self,
        *,
        key_id: str | None = None,
        model: str | None = None,
        route: str | None = None,
        status_lo: int | None = None,
        status_hi: int | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> None:
        self.key_id = key_id
        self.model = model
        self.route = route
        self.status_lo = status_lo  # inclusive; a status class 4xx is [400, 500)
        self.status_hi = status_hi  # exclusive
        self.since = since
        self.until = until

    def clauses(self, mark: Callable[[Any], str]) -> list[str]:
        """SQL conditions, each value passed through ``mark`` (which returns its placeholder)."""
        out = []
        for column, value in (("key_id", self.key_id), ("model", self.model), ("route", self.route)):
            if value is not None:
                out.append(f"{column} = {mark(value)}")
        if self.status_lo is not None:
            out.append(f"status >= {mark(self.status_lo)}")
        if self.status_hi is not None:
            out.append(f"status < {mark(self.status_hi)}")
        if self.since is not None:
            out.append(f"started_at >= {mark(float(self.since))}")
        if self.until is not None:
            out.append(f"started_at < {mark(float(self.until))}")
        return out


SERIES_SUMS = tuple(c for c in SUMS if c != "web_search_requests")  # what usage_series sums per bucket
