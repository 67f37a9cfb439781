"""The stored spend limits kept in memory, spend to date, and what the admin API validates.

``SpendService.book`` is the snapshot admission reads (``LimitBook``: ``resolve``, ``pools``,
``key_limit``, ``checks``) without touching the store: every worker reloads it every
``RELOAD_INTERVAL`` seconds and at once after a change it made itself, so a change made on any
replica applies everywhere within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from ethereal.errors import GatewayError, invalid_request
from ethereal.spend.limits import (
    SCOPE_ID,
    SCOPES,
    LimitBook,
    SpendLimit,
    new_limit_id,
)
from ethereal.spend.periods import PERIODS, period_end, period_start
from ethereal.storage.base import Store

log = logging.getLogger("ethereal.spend")

RELOAD_INTERVAL = 1.0
MAX_AMOUNT_CENTS = 10**13  # a hundred billion dollars
_ID_MAX = 200


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def audit_id() -> str:
    return f"spla_{int(time.time() * 1000):012x}{uuid.uuid4().hex[:12]}"


def cents_text(micro: int) -> str:
    """micro-USD as a decimal string of cents, exact ("123.4567" is $1.234567)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 10_000)
    return f"{sign}{whole}.{frac:04d}".rstrip("0").rstrip(".") if frac else f"{sign}{whole}"


def limit_json(lim: SpendLimit) -> dict[str, Any]:
    """A spend limit in the Admin API's shape."""
    out: dict[str, Any] = {
        "type": "spend_limit",
        "id": lim.id,
        "amount": None if lim.amount_cents is None else str(lim.amount_cents),
        "currency": lim.currency,
        "period": lim.period,
        "scope": lim.scope(),
        "is_enabled": True,
        "created_at": rfc3339(lim.created_at),
        "updated_at": rfc3339(lim.updated_at),
    }
    if lim.shared or lim.scope_type in ("rbac_group", "organization"):
        out["shared"] = lim.shared
    return out


def audit_json(row: dict[str, Any]) -> dict[str, Any]:
    def shown(data: Any) -> Any:
        if isinstance(data, dict) and data.get("scope_type") is not None:
            return limit_json(SpendLimit.from_row(data))
        return data

    return {
        "type": "spend_limit_audit_entry",
        "id": row["id"],
        "created_at": rfc3339(row["at"]),
        "actor": row["actor"],
        "action": row["action"],
        "object_type": row["object_type"],
        "object_id": row["object_id"],
        "before": shown(row["before"]),
        "after": shown(row["after"]),
    }


def parse_limit(body: Any) -> SpendLimit:
    """A ``POST /v1/organizations/spend_limits`` body, validated (400 naming the field)."""
    if not isinstance(body, dict):
        raise invalid_request("body: must be a JSON object")
    unknown = sorted(set(body) - {"amount", "currency", "period", "scope", "shared"})
    if unknown:
        raise invalid_request(f"{unknown[0]}: unknown field", param=unknown[0])
    if "amount" not in body:
        raise invalid_request(
            "amount: required (a whole number of USD cents as a string, or null)", param="amount"
        )
    amount = body["amount"]
    cents: int | None
    if amount is None:
        cents = None
    else:
        if isinstance(amount, int) and not isinstance(amount, bool):
            amount = str(amount)
        if not isinstance(amount, str) or not amount.isdigit() or len(amount) > 15 or not amount.isascii():
            raise invalid_request(
                'amount: must be a whole number of USD cents as a string ("500" is $5.00),'
                " or null for unlimited",
                param="amount",
            )
        cents = int(amount)
        if cents > MAX_AMOUNT_CENTS:
            raise invalid_request(f"amount: at most {MAX_AMOUNT_CENTS}", param="amount")
    currency = body.get("currency", "USD")
    if currency is None:
        currency = "USD"
    if not isinstance(currency, str) or currency.upper() != "USD":
        raise invalid_request("currency: only USD is supported", param="currency")
    period = body.get("period")
    if period not in PERIODS:
        raise invalid_request(f"period: must be one of {', '.join(PERIODS)}", param="period")
    scope = body.get("scope")
    if not isinstance(scope, dict):
        raise invalid_request("scope: must be an object with a type", param="scope")
    kind = scope.get("type")
    if kind not in SCOPES:
        raise invalid_request(f"scope.type: must be one of {', '.join(SCOPES)}", param="scope.type")
    allowed = {"type", SCOPE_ID[kind]} if kind in SCOPE_ID else {"type"}
    extra = sorted(set(scope) - allowed)
    if extra:
        raise invalid_request(f"scope.{extra[0]}: not allowed for a {kind} scope", param=f"scope.{extra[0]}")
    scope_id = ""
    if kind in SCOPE_ID:
        name = SCOPE_ID[kind]
        value = scope.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > _ID_MAX or not value.isprintable():
            raise invalid_request(
                f"scope.{name}: must be a non-empty string of at most {_ID_MAX} characters",
                param=f"scope.{name}",
            )
        scope_id = value.strip()
        if kind == "rbac_group" and "," in scope_id:
            raise invalid_request(
                "scope.rbac_group_id: a team name holds no comma", param="scope.rbac_group_id"
            )
    shared = body.get("shared", False)
    if not isinstance(shared, bool):
        raise invalid_request("shared: must be true or false", param="shared")
    if shared and kind not in ("rbac_group", "organization"):
        raise invalid_request(
            "shared: only a group or organization limit can be one pooled cap", param="shared"
        )
    now = time.time()
    return SpendLimit(
        id=new_limit_id(),
        scope_type=kind,
        scope_id=scope_id,
        period=period,
        amount_cents=cents,
        currency="USD",
        shared=shared,
        created_at=now,
        updated_at=now,
    )


class SpendService:
    """Stored limits in memory (``book``), changes with their audit, spend to date."""

    def __init__(self, store: Store, reload_interval: float = RELOAD_INTERVAL) -> None:
        self.store = store
        self.book = LimitBook.of([])
        self.reload_interval = reload_interval
        self._task: asyncio.Task[None] | None = None
        self.available = True  # False: this store keeps no limits (a test double)

    async def start(self) -> None:
        try:
            await self.reload()
        except NotImplementedError:
            self.available = False
            return
        except Exception as exc:  # the store is down at start: limits load once it is back  # noqa: BLE001 - logged, never raised into a request
            log.warning("spend limits could not be loaded yet: %s", exc)
        self._task = asyncio.create_task(self._loop(), name="ethereal-spend-limits")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the last snapshot while the store is unreachable  # noqa: BLE001 - logged, never raised into a request
                log.warning("spend limits reload failed (keeping the last ones): %s", exc)

    async def reload(self) -> LimitBook:
        rows = await self.store.list_spend_limits()
        self.book = LimitBook.of([SpendLimit.from_row(r) for r in rows], version=time.time())
        return self.book

    async def put(self, lim: SpendLimit, actor: str) -> tuple[SpendLimit | None, SpendLimit]:
        audit = {"id": audit_id(), "at": time.time(), "actor": actor, "object_type": "spend_limit"}
        before, after = await self.store.put_spend_limit(lim.row(), audit)
        await self.reload()
        return (SpendLimit.from_row(before) if before else None), SpendLimit.from_row(after)

    async def delete(self, limit_id: str, actor: str) -> SpendLimit | None:
        audit = {"id": audit_id(), "at": time.time(), "actor": actor, "object_type": "spend_limit"}
        before = await self.store.delete_spend_limit(limit_id, audit)
        await self.reload()
        return SpendLimit.from_row(before) if before else None

    async def spent(
        self, dim: str, values: list[str], period: str, now: float | None = None
    ) -> dict[str, int]:
        """micro-USD spent per owner (``dim="owner"``) or key in the current ``period``."""
        now = time.time() if now is None else now
        if not values:
            return {}
        return await self.store.spend_totals(dim=dim, since=period_start(period, now), values=values)

    async def team_spent(self, teams: list[str], period: str, now: float | None = None) -> dict[str, int]:
        """micro-USD spent per team in the current ``period`` (a record of several teams counts for each)."""
        now = time.time() if now is None else now
        out = dict.fromkeys(teams, 0)
        if not teams:
            return out
        for label, micro in (
            await self.store.spend_totals(dim="teams", since=period_start(period, now))
        ).items():
            for team in label.split(",") if label else ():
                if team in out:
                    out[team] += micro
        return out

    async def effective(
        self, people: dict[str, list[str]], now: float | None = None, periods: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """``/effective``: one row per (person, period) a limit resolves for (every period asked
        for with ``periods``), in the Admin API's ``BetaSpendSummary`` shape: the cap
        (``amount``), where it comes from (``source``, ``spend_limit_id``) and
        ``period_to_date_spend``; extensions: the person's teams, what is left, whether they are
        blocked, the period's start and reset, the pooled caps they also spend against."""
        now = time.time() if now is None else now
        owners = sorted(people)
        wanted = periods or list(PERIODS)
        spent = {p: await self.spent("owner", owners, p, now) for p in wanted}
        book = self.book
        out = []
        for owner in owners:
            teams = people[owner]
            for period in wanted:
                res = book.resolve(owner, teams, period)
                if res.limit is None and periods is None:
                    continue  # no limit resolves for this period
                used = spent[period].get(owner, 0)
                cap = res.amount_micro
                source = res.limit.scope() if res.limit is not None else {"type": "organization"}
                out.append(
                    {
                        "actor": {
                            "type": "user_actor",
                            "user_id": owner,
                            "name": None,
                            "email_address": None,
                            "deleted": False,
                        },
                        "scope": {"type": "user", "user_id": owner},
                        "period": period,
                        "amount": None if cap is None else str(cap // 10_000),
                        "currency": "USD",
                        "period_to_date_spend": cents_text(used),
                        "source": source,
                        "spend_limit_id": res.limit.id if res.limit else None,
                        # extensions
                        "rbac_group_ids": teams,
                        "remaining": None if cap is None else cents_text(max(0, cap - used)),
                        "utilization": None if not cap else round(used / cap, 4),
                        "blocked": cap is not None and used >= cap,
                        "period_start": rfc3339(period_start(period, now)),
                        "resets_at": rfc3339(period_end(period, now)),
                        "pools": [limit_json(p) for p in book.pools(teams, period)],
                    }
                )
        return out


async def people_of(
    store: Store, user_id: str | None = None, max_keys: int = 100_000
) -> dict[str, list[str]]:
    """The people keys belong to (their ``owner``), each with the union of their keys' teams."""
    people: dict[str, set[str]] = {}
    after: str | None = None
    seen = 0
    while seen < max_keys:
        page = await store.list_keys(owner=user_id, limit=1000, after_id=after)
        for key in page:
            if key.owner and not key.revoked:
                people.setdefault(key.owner, set()).update(key.teams or ())
        seen += len(page)
        if len(page) < 1000:
            break
        after = page[-1].id
    if user_id is not None and user_id not in people:
        people[user_id] = set()
    return {owner: sorted(teams) for owner, teams in people.items()}


def not_found(limit_id: str) -> GatewayError:
    return GatewayError(404, f"no spend limit with id {limit_id[:64]!r}")
