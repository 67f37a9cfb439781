"""Spend limits enforced at admission (#22): which caps a key's request is held against, where
their counters live, the refusal a spent cap answers, the utilisation headers and the alerts.

A key's limiter state is tagged by its person (``{u:<owner>}``; a key nobody owns is its own
person, ``{k:<key_id>}``): the key's budgets and windows, its person's caps (the person's own,
the per-member team and organization defaults resolved to the person) and the key's own caps
(``api_key`` scope) are checked and reserved in one atomic call. A ``shared`` team or
organization limit is one pooled cap: its counter lives on the pool's own tag (``{g:<team>}``,
``{o:}``) and takes a second reserve call, undone when either refuses.

A counter is micro-USD spent in one calendar period (``<period>:<start>``), seeded from the
usage records the first time it is used (``seed_dim``), then moved by each request's settle (the
same priced cost as its usage record), so spend limits and reports agree.

The rule (admit.lua, LocalLimiter): a cap refuses (429 ``billing_error``, ``x-should-retry:
false``) only when the period's spend + the request's own input at its dearest rate exceeds it;
a request that does not fit only because of its output allowance or the spender's requests in
flight is admitted alone when none of them is in flight, else gets a 429 ``rate_limit_error``
with a short ``retry-after``. So spend <= cap + the output of the one request admitted alone.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ethereal.errors import GatewayError
from ethereal.spend.limits import Check, LimitBook, checks, person_of
from ethereal.spend.periods import period_end, period_start, reset_text

if TYPE_CHECKING:
    from ethereal.keys import KeyRecord

log = logging.getLogger("ethereal.spend")

THRESHOLDS = (50, 80, 100)
WARNING_AT = 0.8  # ethereal-spend-limit-status: allowed_warning from here


def key_tag(owner: str | None, key_id: str) -> str:
    """The hash tag (without braces) of a key's limiter state: its person's."""
    return f"u:{owner}" if owner else f"k:{key_id}"


@dataclass(frozen=True, slots=True)
class Cap:
    """One cap of a spender: the check, its counter's field prefix and what seeds the counter."""

    check: Check
    prefix: str  # the counter field is f"{prefix}:{period start}"
    seed_dim: str  # owner | key_id | team | all (storage seed_period_spend)
    seed_value: str


class CapSet:
    """The caps held in one call on one tag: a person's (with the key's own), or a pool's."""

    __slots__ = ("_fields", "_until", "caps", "person", "tag")

    def __init__(self, tag: str, person: str, caps: tuple[Cap, ...]) -> None:
        self.tag = tag
        self.person = person
        self.caps = caps
        self._until = 0.0
        self._fields: tuple[str, ...] = ()

    def fields(self, now: float) -> tuple[str, ...]:
        """Each cap's counter field for the periods in force at ``now`` (cached until one resets)."""
        if now < self._until and now >= self._until - 86400 * 32:
            return self._fields
        fields = []
        until = math.inf
        for cap in self.caps:
            period = cap.check.period
            fields.append(f"{cap.prefix}:{int(period_start(period, now))}")
            until = min(until, period_end(period, now))
        self._fields = tuple(fields)
        self._until = until
        return self._fields


@dataclass(frozen=True, slots=True)
class SpendPlan:
    """Every cap a key's request is held against: on the key's tag (``own``) and per pool."""

    own: CapSet | None
    pools: tuple[CapSet, ...]


def plan_for(book: LimitBook, owner: str | None, teams: list[str] | None, key_id: str) -> SpendPlan | None:
    found = checks(book, owner, teams, key_id)
    if not found:
        return None
    person = person_of(owner, key_id)
    own: list[Cap] = []
    pools: dict[str, list[Cap]] = {}
    for check in found:
        if check.kind == "person":
            dim, value = ("owner", owner) if owner else ("key_id", key_id)
            own.append(Cap(check, check.period, dim, value or ""))
        elif check.kind == "key":
            own.append(Cap(check, f"k:{key_id}:{check.period}", "key_id", key_id))
        else:
            lim = check.limit
            assert lim is not None
            if lim.scope_type == "rbac_group":
                tag, dim, value = f"g:{lim.scope_id}", "team", lim.scope_id
            else:
                tag, dim, value = "o:", "all", ""
            pools.setdefault(tag, []).append(Cap(check, check.period, dim, value))
    tag = key_tag(owner, key_id)
    return SpendPlan(
        own=CapSet(tag, person, tuple(own)) if own else None,
        pools=tuple(CapSet(t, t, tuple(c)) for t, c in pools.items()),
    )


class SpendGate:
    """The limiter's view of the spend limits: the plan of a key, cached per key for the book in
    force (a key without caps costs a dict lookup and no allocation)."""

    __slots__ = ("_cache", "alerts", "service", "watch")

    def __init__(self) -> None:
        self.service: Any = None  # SpendService: its ``book`` is reloaded every second
        self.alerts: Any = None  # Alerts: spend_limit.threshold / spend_limit.exceeded
        self._cache: dict[str, tuple[Any, str, list[str], SpendPlan | None]] = {}
        self.watch = SpendWatch(self)

    def plan(self, key: KeyRecord) -> SpendPlan | None:
        service = self.service
        if service is None:
            return None
        book = service.book
        if not book.limits:
            return None
        hit = self._cache.get(key.id)
        if hit is not None and hit[0] is book and hit[1] == key.owner and hit[2] == key.teams:
            return hit[3]
        plan = plan_for(book, key.owner, key.teams, key.id)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key.id] = (book, key.owner, key.teams, plan)
        return plan


class SpendLimitError(GatewayError):
    """A spent cap: 429 ``billing_error``, ``x-should-retry: false``, ``retry-after`` = seconds to
    the reset. On the OpenAI routes the body Codex reads as a usage limit (``openai_body``)."""

    __slots__ = ("check", "resets_at")

    def __init__(self, check: Check, now: float) -> None:
        reset = period_end(check.period, now)
        super().__init__(
            429,
            f"spend limit reached ({check.period}; resets {reset_text(check.period, now)})",
            type="billing_error",
            retry_after=max(1.0, reset - now),
        )
        self.check = check
        self.resets_at = int(reset)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        wait = max(1, math.ceil(self.retry_after or 1.0))
        return [
            *self.headers,
            (b"retry-after", str(wait).encode()),
            (b"retry-after-ms", str(wait * 1000).encode()),
            (b"x-should-retry", b"false"),
        ]

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "type": "usage_limit_reached",
                "code": "spend_limit_reached",
                "message": self.message,
                "param": None,
                "resets_at": self.resets_at,
            }
        }


def refusal(caps: CapSet, over: list[int], now: float) -> SpendLimitError:
    """The refusal for the caps spent (1-based numbers in ``caps``): the one that resets last."""
    chosen = max(
        (caps.caps[i - 1].check for i in over if 0 < i <= len(caps.caps)),
        key=lambda c: period_end(c.period, now),
    )
    return SpendLimitError(chosen, now)


def held(retry_ms: float) -> GatewayError:
    return GatewayError(
        429,
        "this person's spend limit is held by their requests in flight; retry when they end",
        type="rate_limit_error",
        retry_after=max(retry_ms, 1.0) / 1000.0,
    )


def headers(caps: CapSet, spent: list[int], now: float) -> list[tuple[bytes, bytes]]:
    """``ethereal-spend-limit-*``: the fullest cap's utilisation (spend before this request / cap)."""
    best = -1.0
    at = 0
    for i, cap in enumerate(caps.caps):
        amount = cap.check.amount_micro
        used = spent[i] if i < len(spent) else 0
        util = used / amount if amount > 0 else (1.0 if used >= 0 else 0.0)
        if util > best:
            best, at = util, i
    check = caps.caps[at].check
    status = b"allowed_warning" if best >= WARNING_AT else b"allowed"
    return [
        (b"ethereal-spend-limit-status", status),
        (b"ethereal-spend-limit-utilization", b"%.4f" % min(best, 9999.0)),
        (b"ethereal-spend-limit-period", check.period.encode()),
        (b"ethereal-spend-limit-reset", b"%d" % int(period_end(check.period, now))),
        (b"ethereal-spend-limit-source", check.source.encode()),
    ]


def parse_list(value: Any) -> list[int]:
    if isinstance(value, bytes):
        value = value.decode()
    if not value:
        return []
    return [int(x) for x in str(value).split(",") if x]


class SpendWatch:
    """``spend_limit.threshold`` (50/80/100 %) and ``spend_limit.exceeded``: each once per counter
    and process, from the spend each admission reads (and each refusal)."""

    __slots__ = ("_seen", "gate")

    def __init__(self, gate: SpendGate) -> None:
        self.gate = gate
        self._seen: dict[tuple[str, str], int] = {}

    def _data(self, caps: CapSet, cap: Cap, spent: int, now: float) -> dict[str, Any]:
        check = cap.check
        lim = check.limit
        return {
            "user_id": caps.person if caps.tag.startswith(("u:", "k:")) else None,
            "scope": lim.scope() if lim is not None else None,
            "shared": bool(lim and lim.shared),
            "spend_limit_id": lim.id if lim is not None else None,
            "period": check.period,
            "amount": str(check.amount_micro // 10_000),
            "period_to_date_spend_micro": spent,
            "utilization": round(spent / check.amount_micro, 4) if check.amount_micro else None,
            "resets_at": int(period_end(check.period, now)),
        }

    def observe(self, caps: CapSet, spent: list[int], now: float) -> None:
        alerts = self.gate.alerts
        if alerts is None or (not alerts.hooks and not alerts.listeners):
            return
        fields = caps.fields(now)
        for i, cap in enumerate(caps.caps):
            amount = cap.check.amount_micro
            used = spent[i] if i < len(spent) else 0
            pct = 100 if amount <= 0 else used * 100 / amount
            level = max((t for t in THRESHOLDS if pct >= t), default=0)
            if not level:
                continue
            mark = (caps.tag, fields[i])
            if self._seen.get(mark, 0) >= level:
                continue
            self._seen[mark] = level
            if len(self._seen) > 100_000:
                self._seen.clear()
            data = self._data(caps, cap, used, now)
            data["threshold"] = level
            alerts.emit("spend_limit.threshold", data)

    def exceeded(self, caps: CapSet, over: list[int], now: float) -> None:
        alerts = self.gate.alerts
        if alerts is None or (not alerts.hooks and not alerts.listeners):
            return
        fields = caps.fields(now)
        for i in over:
            if not 0 < i <= len(caps.caps):
                continue
            mark = (caps.tag, fields[i - 1] + "|x")
            if mark in self._seen:
                continue
            self._seen[mark] = 1
            cap = caps.caps[i - 1]
            data = self._data(caps, cap, -1, now)
            data["period_to_date_spend_micro"] = None
            data["utilization"] = None
            alerts.emit("spend_limit.exceeded", data)
            level_mark = (caps.tag, fields[i - 1])
            if self._seen.get(level_mark, 0) < 100:
                self._seen[level_mark] = 100
                alerts.emit("spend_limit.threshold", {**data, "threshold": 100})


def now_s() -> float:
    return time.time()
