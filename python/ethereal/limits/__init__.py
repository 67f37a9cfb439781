"""Admission control: budgets, rate windows, concurrency and plans.

``admit`` runs before a request goes upstream: it refuses (raising ``GatewayError``:
402 budget spent, 429 rate or concurrency limit or budget held by requests in flight,
503 when the limiter cannot decide) or reserves the request's estimated cost and
returns an ``Admission`` carrying the ``anthropic-ratelimit-*`` headers. ``settle``
replaces the reservation by the real cost once the request is over (on every path,
streams cut short included); ``refresh`` keeps a long stream's reservation alive.
``admit_count`` admits a ``count_tokens`` call: RPM and concurrency only.

Backends: ``RedisLimiter`` (one FCALL per admit, shared by every replica, single Redis
or Redis Cluster) and ``LocalLimiter`` (in-process, the embedded default); both keep the
same semantics and run the same contract tests. ``build_limiter`` picks one.

Hard budgets (both backends, token and micro-USD budgets and every token window):
a request is admitted when spend so far + every reservation in flight (estimated input +
output allowance) + its own input and allowance fits. When it does not:

* spend + its own input is over the budget: 402 ``billing_error`` (the budget is spent);
* else, other requests are in flight: 429 ``rate_limit_error`` with a retry-after of
  when the oldest of them is expected to end (the budget is held, not spent);
* else it is admitted alone.

So spend ≤ budget + the output of the one request admitted alone (whose allowance did
not fit) + ε × budget, however many requests arrive at once, and a request whose real
cost fits is never refused for ever. ε is what the reservation under-counts: the caller
reserves the dearest the request can cost (metering/reserve.py: cache-write rates, tiers,
fast mode, geo, server-tool fees at their max_uses, documents by their pages; the output
at its whole ``max_tokens``), so it is 0 as measured (docs/limits.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord
from ethereal.limits.plans import Plans, Window
from ethereal.spend.enforce import SpendGate
from ethereal.storage.base import bounded

if TYPE_CHECKING:
    from ethereal.settings import Settings
    from ethereal.storage.base import Store

log = logging.getLogger("ethereal.limits")

# result codes shared by admit.lua and the local limiter
(
    OK,
    NEED_SEED,
    BUDGET_TOKENS,
    BUDGET_MICRO,
    CONCURRENCY,
    WINDOW_REQUESTS,
    WINDOW_TOKENS,
    HELD,
    CAP_SEED,
    CAP_SPENT,
) = range(10)
CAP_HELD = -3  # HELD's detail when a spend limit is held by the spender's requests in flight


@dataclass(slots=True)
class Admission:
    """What admit reserved, and the numbers the ``anthropic-ratelimit-*`` headers need."""

    key_id: str
    reserved_tokens: int = 0
    reserved_micro: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    token: str = ""  # reservation handle for settle
    limited: bool = False  # False: nothing was reserved, settle has nothing to do
    input_tokens: int = 0  # counted in the windows at admit
    admitted_ms: int = 0  # limiter clock at admit (Redis server time for RedisLimiter)
    spec: Any = None  # the backend's view of the key's limits at admit
    settled: bool = False
    output_micro: int = 0  # the output part of reserved_micro (allowance and server-tool fees)
    # spend limits (spend/enforce.py): the caps held on the key's tag and their counter fields, and
    # each pool's (CapSet, fields) held by a second call
    caps: Any = None
    cap_fields: tuple[str, ...] = ()
    pools: list[tuple[Any, tuple[str, ...]]] | None = None


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's effective limits: its own caps plus its plan's windows."""

    budget_tokens: int | None
    budget_micro: int | None
    max_concurrency: int | None
    windows: tuple[Window, ...]

    @property
    def reserving(self) -> bool:
        """Whether admit reserves (a budget, a concurrency cap or a token window to hold the allowance against)."""
        return (
            self.budget_tokens is not None
            or self.budget_micro is not None
            or self.max_concurrency is not None
            or any(w.tokens is not None for w in self.windows)
        )

    @property
    def empty(self) -> bool:
        return not self.reserving and not self.windows


_RFC3339: dict[int, bytes] = {}


def rfc3339(ms: float) -> bytes:
    """Unix milliseconds as an RFC 3339 UTC instant, rounded up to the second (cached: resets repeat)."""
    second = math.ceil(ms / 1000.0)
    found = _RFC3339.get(second)
    if found is None:
        found = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        if len(_RFC3339) >= 4096:
            _RFC3339.clear()
        _RFC3339[second] = found
    return found


_REQ_NAMES = (
    b"anthropic-ratelimit-requests-limit",
    b"anthropic-ratelimit-requests-remaining",
    b"anthropic-ratelimit-requests-reset",
)
_TOK_NAMES = tuple(
    (
        b"anthropic-ratelimit-" + family + b"-limit",
        b"anthropic-ratelimit-" + family + b"-remaining",
        b"anthropic-ratelimit-" + family + b"-reset",
    )
    for family in (b"tokens", b"input-tokens", b"output-tokens")
)


def ratelimit_headers(
    req: tuple[int, int, int] | None, tok: tuple[int, int, int] | None
) -> list[tuple[bytes, bytes]]:
    """``anthropic-ratelimit-*`` headers from (limit, remaining, reset_ms) per dimension.

    The key has one token ceiling per window (input + output), so the input-tokens and
    output-tokens families report the same numbers as tokens.
    """
    headers: list[tuple[bytes, bytes]] = []
    if req is not None:
        limit, remaining, reset = req
        n_limit, n_remaining, n_reset = _REQ_NAMES
        headers += (
            (n_limit, b"%d" % limit),
            (n_remaining, b"%d" % max(0, remaining)),
            (n_reset, rfc3339(reset)),
        )
    if tok is not None:
        limit, remaining, reset = tok
        v_limit, v_remaining, v_reset = b"%d" % limit, b"%d" % max(0, remaining), rfc3339(reset)
        for n_limit, n_remaining, n_reset in _TOK_NAMES:
            headers += ((n_limit, v_limit), (n_remaining, v_remaining), (n_reset, v_reset))
    return headers


def refusal(code: int, retry_ms: float, limits: KeyLimits, detail: int, now_ms: float) -> GatewayError:
    """The client-facing error for a refused admission."""
    if code == BUDGET_TOKENS:
        return GatewayError(402, "this API key's token budget is spent", type="billing_error")
    if code == BUDGET_MICRO:
        return GatewayError(402, "this API key's spending budget is spent", type="billing_error")
    retry = max(retry_ms, 1.0) / 1000.0
    if code == HELD:
        if detail == -1:
            what = "token budget"
        elif detail == -2:
            what = "spending budget"
        else:
            held_window = limits.windows[detail - 1] if 0 < detail <= len(limits.windows) else None
            what = f"{held_window.name} token window" if held_window is not None else "token window"
        return GatewayError(
            429,
            f"this API key's {what} is held by its requests in flight; retry when they end",
            type="rate_limit_error",
            retry_after=retry,
        )
    if code == CONCURRENCY:
        return GatewayError(
            429,
            f"this API key allows {limits.max_concurrency} concurrent request(s)",
            type="rate_limit_error",
            retry_after=retry,
        )
    window = limits.windows[detail - 1] if 0 < detail <= len(limits.windows) else None
    reset = now_ms + retry_ms
    if window is not None:
        if code == WINDOW_REQUESTS:
            unit, cap = "requests", window.requests
            headers = ratelimit_headers((cap or 0, 0, int(reset)), None)
        else:
            unit, cap = "tokens", window.tokens
            headers = ratelimit_headers(None, (cap or 0, 0, int(reset)))
        what = f"{unit} per minute" if window.name == "minute" else f"{unit} per {window.name} window"
        return GatewayError(
            429,
            f"rate limit exceeded: {cap} {what} for this API key",
            type="rate_limit_error",
            retry_after=retry,
            headers=headers,
        )
    return GatewayError(429, "rate limit exceeded", type="rate_limit_error", retry_after=retry)


def unavailable() -> GatewayError:
    return GatewayError(
        503,
        "rate limiting is temporarily unavailable; retry shortly",
        type="overloaded_error",
        retry_after=2.0,
    )


class Limiter:
    """No limits: every key is admitted. The Redis and in-process limiters override."""

    enabled = False
    #: how often (seconds) a long request should call ``refresh``: a third of the reservation ttl
    refresh_interval = 300.0

    def __init__(self) -> None:
        # called with (seconds, refusal) after each ``admit`` decides: how long it took and the
        # GatewayError it refused with (None: admitted); observability/ subscribes. With none,
        # nothing is timed. An observer never raises into the request.
        self.observers: list[Callable[[float, GatewayError | None], None]] = []

    def observed(self, t0: float, refused: GatewayError | None) -> None:
        """Tell the observers of an ``admit`` that started at ``t0`` (``time.perf_counter``)."""
        seconds = time.perf_counter() - t0
        for observe in self.observers:
            try:
                observe(seconds, refused)
            except Exception:
                log.exception("limiter observer failed")

    async def admit(
        self,
        key: KeyRecord,
        *,
        model: str | None,
        input_tokens: int,
        max_tokens: int,
        price_in: float = 0.0,
        price_out: float = 0.0,
        input_micro: int | None = None,
        output_micro: int | None = None,
        request_id: str | None = None,
    ) -> Admission:
        """Reserve a Messages request: ``input_tokens`` (the estimate) plus ``max_tokens`` of output.

        ``max_tokens`` must be the request's own ceiling (thinking included), uncapped: the hard
        budget bound assumes no request outputs more than its allowance. The money reserved is
        ``input_micro`` and ``output_micro`` when given (metering/reserve.py: the dearest the
        request can cost, server-tool fees in the output part), else the tokens at ``price_in``
        and ``price_out`` (USD per million tokens). ``request_id`` names the reservation: its
        settle is applied once however often it is sent (Redis loss and restart, docs/limits.md).
        """
        if self.observers:
            self.observed(time.perf_counter(), None)  # admitted at once
        return Admission(key_id=key.id)

    async def admit_count(self, key: KeyRecord) -> Admission:
        """Admit a ``count_tokens`` call: it counts against the key's RPM (minute window) and its
        concurrency cap, never against budgets, TPM or plan envelopes (counting is free). Settle it
        like any admission (``tokens=0, cost_micro=0``) to give its concurrency slot back."""
        return Admission(key_id=key.id)

    async def settle(
        self, admission: Admission, *, tokens: int, cost_micro: int, ended_at: float | None = None
    ) -> None:
        """Replace the reservation by the real cost; ``ended_at`` (epoch s) as the usage row's."""
        return

    async def refresh(self, admission: Admission) -> None:
        """Keep a long request's reservation and concurrency slot alive past the reservation ttl.

        Contract for the stream relay: while a response is being relayed, call it about every
        ``refresh_interval`` seconds (checking the time on each chunk is enough; a stream with no
        chunk for that long may refresh late, which is safe while the gap stays under the ttl).
        It never raises, never waits for Redis (the command is sent without awaiting its reply)
        and is a no-op for an admission that reserved nothing or is settled already. A reservation
        that expired before its refresh is not re-created: its budget may already have been given
        to other requests; the request is still settled at its real cost.
        """
        return

    async def charge(self, key: KeyRecord, *, tokens: int, cost_micro: int, check: bool) -> None:
        """Move the key's spend by a signed amount outside any request (Message Batches: the
        estimate at create, ``check=True``, refusing with 402 when it does not fit the budget;
        the difference to the real cost when the batch is settled). No rate window, no
        concurrency slot. A key without a budget is not tracked."""
        return

    async def charge_caps(
        self, key: KeyRecord, *, cost_micro: int, check: bool, hold: str = "", release: bool = False
    ) -> None:
        """Move the counters of every spend limit ``key`` is held against by a signed amount outside
        any request, in the periods in force now (Message Batches). ``check``: refused with the
        spend-limit 429 when it does not fit. ``hold``: a name under which the amount is remembered
        with the counters it went to; ``release=True`` first gives the named hold back there (a
        batch's estimate at its settle, whatever period it was taken in)."""
        return

    async def reseed_caps(
        self, spenders: set[tuple[str | None, str]], teams: set[str], now: float | None = None
    ) -> int:
        """Drop the spend-limit counters of the current periods of these spenders ((owner, key_id):
        the person's and the key's own) and pools (``teams``, and the organization's), so each is
        seeded again from the records at its next use: a re-price moved their cost. Returns how
        many spenders' state was touched."""
        return 0

    async def close(self) -> None:
        return None

    def governs(self, key: KeyRecord | None) -> bool:
        """Whether ``key`` has any limit to admit against (else routes skip admit and the token estimate)."""
        return False

    def spend_limited(self, key: KeyRecord) -> bool:
        """Whether a spend limit applies to ``key``'s requests (admit then prices the reservation)."""
        return False

    def governs_count(self, key: KeyRecord | None) -> bool:
        """Whether ``admit_count`` has anything to check for ``key`` (an RPM or a concurrency cap)."""
        return False

    def budgeted(self, key: KeyRecord) -> bool:
        """Whether ``key``'s spend is tracked against a budget here (``charge`` does something)."""
        return False

    async def start(self) -> None:
        """Connect (load scripts); an unreachable backend is retried on use."""
        return


class BaseLimiter(Limiter):
    """What both real limiters share: turning a key into its limits, pricing a reservation."""

    enabled = True

    def __init__(
        self,
        *,
        plans: Plans | None = None,
        window_seconds: float = 60.0,
        reservation_ttl: float = 900.0,
        store: Store | None = None,
        store_timeout: float = 2.0,
    ) -> None:
        super().__init__()
        self.plans = plans or Plans()
        self.store_timeout = store_timeout
        self.window_seconds = window_seconds
        self.reservation_ttl_ms = int(reservation_ttl * 1000)
        self.refresh_interval = max(0.05, reservation_ttl / 3.0)
        self.store = store
        self._limits_cache: dict[tuple[Any, ...], KeyLimits] = {}
        self._count_cache: dict[tuple[Any, ...], KeyLimits] = {}
        self.gate = SpendGate()  # spend limits: the gateway binds its SpendService and Alerts

    def governs(self, key: KeyRecord | None) -> bool:
        return key is not None and (not self.limits_for(key).empty or self.gate.plan(key) is not None)

    def spend_limited(self, key: KeyRecord) -> bool:
        return self.gate.plan(key) is not None

    @staticmethod
    def cap_fields(
        spenders: set[tuple[str | None, str]], teams: set[str], now: float
    ) -> dict[str, list[str]]:
        """tag -> the counter fields of the current periods (reseed_caps)."""
        from ethereal.spend.enforce import key_tag
        from ethereal.spend.periods import PERIODS, period_start

        starts = {p: int(period_start(p, now)) for p in PERIODS}
        plain = [f"{p}:{s}" for p, s in starts.items()]
        out: dict[str, list[str]] = {}
        for owner, key_id in spenders:
            fields = out.setdefault(key_tag(owner, key_id), [])
            fields += [f for f in plain if f not in fields]
            fields += [f"k:{key_id}:{p}:{s}" for p, s in starts.items()]
        for team in teams:
            out[f"g:{team}"] = list(plain)
        out["o:"] = list(plain)
        return out

    def governs_count(self, key: KeyRecord | None) -> bool:
        return key is not None and not self.count_limits_for(key).empty

    def count_limits_for(self, key: KeyRecord) -> KeyLimits:
        """The limits a ``count_tokens`` call counts against: the minute window's request ceiling
        (the same counters as Messages requests) and the concurrency cap."""
        cache_key = (key.rpm, key.max_concurrency)
        found = self._count_cache.get(cache_key)
        if found is None:
            windows = (
                (Window("minute", self.window_seconds, key.rpm, None, buckets=60),)
                if key.rpm is not None
                else ()
            )
            found = KeyLimits(None, None, key.max_concurrency, windows)
            if len(self._count_cache) > 10_000:
                self._count_cache.clear()
            self._count_cache[cache_key] = found
        return found

    def budgeted(self, key: KeyRecord) -> bool:
        return key.budget_tokens is not None or key.budget_micro_usd is not None

    def limits_for(self, key: KeyRecord) -> KeyLimits:
        cache_key = (key.plan, key.rpm, key.tpm, key.budget_tokens, key.budget_micro_usd, key.max_concurrency)
        found = self._limits_cache.get(cache_key)
        if found is not None:
            return found
        windows: list[Window] = []
        if key.rpm is not None or key.tpm is not None:
            windows.append(Window("minute", self.window_seconds, key.rpm, key.tpm, buckets=60))
        plan = self.plans.get(key.plan)
        if plan is not None:
            windows.extend(w for w in plan.windows if w.requests is not None or w.tokens is not None)
        limits = KeyLimits(key.budget_tokens, key.budget_micro_usd, key.max_concurrency, tuple(windows))
        if len(self._limits_cache) > 10_000:
            self._limits_cache.clear()
        self._limits_cache[cache_key] = limits
        return limits

    @staticmethod
    def price(tokens: int, price_per_mtok: float) -> int:
        # USD per MTok == micro-USD per token; reservations round up
        return math.ceil(tokens * price_per_mtok) if tokens > 0 and price_per_mtok > 0 else 0

    async def seed(self, key_id: str) -> tuple[int, int]:
        """(tokens, micro-USD) the key has spent so far, from the database (the source of truth)."""
        tokens, micro, rows = await self.seed_rows(key_id, None)
        return tokens + sum(r[1] for r in rows), micro + sum(r[2] for r in rows)

    async def seed_cap(
        self, dim: str, value: str, start: float, since: float
    ) -> tuple[int, list[tuple[str, int]]]:
        """A spend-limit counter's seed from the database (storage ``seed_period_spend``), within
        ``store_timeout`` (else 503): micro-USD of the period's rows that ended before ``since`` (with
        unsettled batch holds) and (request id, micro-USD) of the newer ones."""
        if self.store is None:
            return 0, []
        try:
            return await bounded(self.store.seed_period_spend(dim, value, start, since), self.store_timeout)
        except Exception as exc:  # noqa: BLE001 - down or hung: the request can wait for nothing here
            log.error(
                "cannot seed spend-limit counter %s=%s from the database (%s): refused with 503",
                dim,
                value,
                type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}",
            )
            raise unavailable() from None

    async def seed_rows(
        self, key_id: str, since: float | None
    ) -> tuple[int, int, list[tuple[str, int, int]]]:
        """From the database (the source of truth), within ``store_timeout`` (else 503): the key's
        spend on rows that ended before ``since`` plus what its unsettled Message Batches hold
        (spent until they settle: batches/), and (request id, tokens, micro) of each row that ended
        since."""
        if self.store is None:
            return 0, 0, []
        try:
            return await bounded(self.store.seed_spend(key_id, since), self.store_timeout)
        except Exception as exc:  # noqa: BLE001 - down or hung: the request can wait for nothing here
            log.error(
                "cannot seed key %s's spend from the database (%s): refused with 503",
                key_id,
                type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}",
            )
            raise unavailable() from None


def build_limiter(settings: Settings, store: Store | None, plans: Plans | None = None) -> Limiter:
    """RedisLimiter when Redis is configured, else the in-process LocalLimiter."""
    plans = plans or Plans(settings.plans)
    common = {
        "plans": plans,
        "window_seconds": settings.limits_window_seconds,
        "reservation_ttl": settings.limits_reservation_ttl,
        "store": store,
        "store_timeout": settings.store_timeout,
    }
    if settings.redis_url:
        from ethereal.limits.redis import RedisLimiter

        return RedisLimiter(settings.redis_url, fail_open=settings.limits_fail_open, **common)  # type: ignore[arg-type]
    from ethereal.limits.local import LocalLimiter

    return LocalLimiter(**common)  # type: ignore[arg-type]


def now_ms() -> int:
    return int(time.time() * 1000)
