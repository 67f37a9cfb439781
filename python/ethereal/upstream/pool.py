"""The upstream credential pool: health, cooldown, choice.

Choice, per attempt (``Pool.acquire``):

1. usable = enabled, not cooling down, serving the model, under its spend cap, not tried yet;
2. with a cache-affinity key: rendezvous (highest-random-weight) order, so a prefix keeps
   landing on the same credential and its prompt cache stays warm; the next credential in
   that order is just as stable, so a failover warms a predictable second cache. A preferred
   credential that is far busier than the pool average is passed over ("consistent hashing
   with bounded loads"), so one hot prefix cannot pile everything onto one account;
3. without one: least ``(in_flight + 1) / weight``, ties broken at random (so an idle pool
   still spreads, and weights still count when nothing is in flight);
4. the first candidate with room in its RPM window (sliding 60 s) wins.

Health lives in a ``Health`` backend: in-process by default, in Redis when
``ETHEREAL_REDIS_URL`` is set (``RedisHealth``) so every replica sees a cooldown or a
disabled credential at once. 429 cools down for the upstream's ``retry-after`` (or a short
default); 529/5xx/timeouts/connection errors cool down with an exponential backoff (base
0.5 s, cap 30 s, reset on success; failures during a cooldown do not escalate it, so a
burst of in-flight requests failing together counts once); 401/403 disable until an admin
enables the credential again.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any



class FailureKind(StrEnum):
    """Why an upstream attempt failed; decides what happens to the credential's health."""

    RATE_LIMITED = "rate_limited"  # 429: cool down for the upstream's retry-after
    AUTH = "auth"  # 401/403
    OVERLOADED = "overloaded"  # 529 or an overloaded_error event
    SERVER_ERROR = "server_error"  # 5xx or an api_error event
    CONNECT = "connect"  # no connection, reset before the first byte
    TIMEOUT = "timeout"  # no first byte in time, 408
    STREAM = "stream"  # cut after the first byte


RATE_LIMITED = FailureKind.RATE_LIMITED
AUTH = FailureKind.AUTH
BACKOFF_KINDS = frozenset({FailureKind.OVERLOADED, FailureKind.SERVER_ERROR, FailureKind.CONNECT,
                           FailureKind.TIMEOUT, FailureKind.STREAM})

RECENT_WINDOW = 60.0  # seconds of outcomes kept for the error rates shown to admins
RPM_WINDOW = 60.0


@dataclass(slots=True, eq=False)
class Credential:
    name: str
    base_url: str
    api_key: str = field(repr=False)
    weight: float = 1.0
    models: list[str] | None = None  # canonical ids served ("prefix*" patterns allowed); None = all
    rpm: int | None = None
    spend_cap_micro: int | None = None  # micro-USD per calendar month (UTC)
    enabled: bool = True
    disabled_reason: str | None = None
    source: str = "env"  # "env" (ETHEREAL_UPSTREAM_URL/KEY) or "store"
    # live state (this replica's view; cooldown and disabled flags are shared through Redis)
    in_flight: int = 0
    cooldown_until: float = 0.0  # time.monotonic() of this process
    failures: int = 0  # consecutive backoff failures
    last_error: str | None = None
    last_error_at: float | None = None  # unix seconds
    spent_micro: int = 0  # this month, from the store (refreshed) + this replica since the refresh
    outcomes: deque[tuple[float, str | None]] = field(default_factory=lambda: deque(maxlen=4096), repr=False)
    rpm_hits: deque[float] = field(default_factory=deque, repr=False)
    rpm_full_until: float = 0.0  # monotonic: when the (shared) window has room again
    changed_at: float = 0.0  # monotonic: last local enable/disable, guards against stale reloads
    store_updated_at: float = 0.0  # unix seconds: the stored row's updated_at when last loaded
    off_flag_at: float = 0.0  # unix seconds: a shared "disabled" flag seen in Redis (0: none)
    secret_ref: str | None = field(default=None, repr=False)  # the encrypted form it was loaded from

    def serves(self, model: str | None) -> bool:
        if self.models is None or model is None:
            return True
        for entry in self.models:
            if entry == model or (entry.endswith("*") and model.startswith(entry[:-1])):
                return True
        return False

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until

    def over_spend(self) -> bool:
        return self.spend_cap_micro is not None and self.spent_micro >= self.spend_cap_micro

    def healthy(self, now: float) -> bool:
        return self.enabled and not self.cooling(now) and not self.over_spend()

    def state(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if not self.enabled:
            return "disabled"
        if self.cooling(now):
            return "cooling_down"
        if self.over_spend():
            return "spend_capped"
        if self.rpm is not None and now < self.rpm_full_until:
            return "rpm_capped"
        return "healthy"


def rendezvous_score(key: bytes, credential: Credential) -> float:
    """Weighted rendezvous hashing: ``-weight / ln(u)``, u uniform in (0, 1) from the hash."""
    digest = hashlib.blake2b(credential.name.encode() + b"\x00" + key, digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2.0**64
    return -(credential.weight or 1e-9) / math.log(u)


class Health:
    """In-process health: the state lives on the Credential objects of this process."""

    shared = False

    async def failure(self, cred: Credential, kind: str, delay: float, base: float, cap: float) -> None:
        now = time.monotonic()
        if kind in BACKOFF_KINDS:
            if cred.cooling(now):
                return  # already backing off: a burst of failures counts once
            cred.failures += 1
            delay = min(base * 2 ** (cred.failures - 1), cap)
        cred.cooldown_until = max(cred.cooldown_until, now + delay)

    async def success(self, cred: Credential) -> None:
        cred.failures = 0

    async def disable(self, cred: Credential, reason: str) -> None:
        cred.enabled = False
        cred.disabled_reason = reason

    async def enable(self, cred: Credential) -> None:
        cred.enabled = True
        cred.disabled_reason = None
        cred.cooldown_until = 0.0
        cred.failures = 0

    async def forget(self, name: str) -> None:
        return None

    async def take_rpm(self, cred: Credential, now: float) -> tuple[bool, float]:
        """(admitted, seconds until the window has room) for one more request."""
        assert cred.rpm is not None
        hits = cred.rpm_hits
        while hits and hits[0] <= now - RPM_WINDOW:
            hits.popleft()
        if len(hits) >= cred.rpm:
            return False, hits[0] + RPM_WINDOW - now
        hits.append(now)
        return True, 0.0

    async def sync(self, credentials: Iterable[Credential]) -> bool:
        """Pull the shared state into the credentials; True when the credential set changed."""
        return False

    async def bump_version(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Pool:
    def __init__(
        self,
        credentials: list[Credential] | None = None,
        *,
        default_retry_after: float = 5.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        health: Health | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.credentials: list[Credential] = list(credentials or [])
        self.default_retry_after = default_retry_after
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.health = health or Health()
        self._rng = rng or random.Random()
        self.on_disable: Any = None  # async callback(cred, reason): persist an auth disable

    # ------------------------------------------------------------------ membership
    def get(self, name: str) -> Credential | None:
        for c in self.credentials:
            if c.name == name:
                return c
        return None

    def add(self, credential: Credential) -> None:
        self.credentials = [c for c in self.credentials if c.name != credential.name] + [credential]

    def remove(self, name: str) -> Credential | None:
        found = self.get(name)
        if found is not None:
            self.credentials = [c for c in self.credentials if c.name != name]
        return found

    # ------------------------------------------------------------------ choice
    def candidates(self, model: str | None, affinity: bytes | None = None,
                   exclude: Iterable[str] = ()) -> list[Credential]:
        """Healthy credentials serving ``model``, best first (RPM windows not consulted)."""
        now = time.monotonic()
        skip = set(exclude)
        usable = [c for c in self.credentials if c.name not in skip and c.healthy(now) and c.serves(model)]
        if len(usable) <= 1:
            return usable
        if affinity is not None:
            usable.sort(key=lambda c: rendezvous_score(affinity, c), reverse=True)
            # bounded load: pass over credentials far busier than the pool average
            total_w = sum(c.weight for c in usable) or 1.0
            mean = sum(c.in_flight for c in usable) / total_w
            bound = 2.0 * mean + 2.0
            light = [c for c in usable if c.in_flight / (c.weight or 1e-9) <= bound]
            heavy = [c for c in usable if c.in_flight / (c.weight or 1e-9) > bound]
            return light + heavy
        rng = self._rng
        usable.sort(key=lambda c: ((c.in_flight + 1) / (c.weight or 1e-9), rng.random()))
        return usable

    async def acquire(self, model: str | None, affinity: bytes | None = None,
                      exclude: Iterable[str] = (), *, count_rpm: bool = True) -> Credential | None:
        """The best usable credential, with its in-flight count taken; None when there is none."""
        for cred in self.candidates(model, affinity, exclude):
            if cred.rpm is not None and count_rpm:
                now = time.monotonic()
                if now < cred.rpm_full_until:
                    continue
                ok, wait = await self.health.take_rpm(cred, now)
                if not ok:
                    cred.rpm_full_until = now + max(wait, 0.05)
                    continue
            cred.in_flight += 1
            return cred
        return None

    def release(self, cred: Credential, cost_micro: int = 0) -> None:
        cred.in_flight = max(0, cred.in_flight - 1)
        if cost_micro:
            cred.spent_micro += cost_micro

    def serving(self, model: str | None) -> list[Credential]:
        return [c for c in self.credentials if c.enabled and c.serves(model)]

    def earliest_recovery(self, model: str | None) -> float:
        """Seconds until some credential serving ``model`` can take a request again."""
        now = time.monotonic()
        waits = []
        for c in self.serving(model):
            if c.over_spend():
                waits.append(_seconds_to_next_month())
                continue
            wait = max(0.0, c.cooldown_until - now)
            if c.rpm is not None:
                wait = max(wait, c.rpm_full_until - now)
            waits.append(wait)
        return min(waits) if waits else 30.0

    # ------------------------------------------------------------------ outcomes
    async def report_success(self, cred: Credential) -> None:
        cred.outcomes.append((time.monotonic(), None))
        if cred.failures:
            await self.health.success(cred)
            cred.failures = 0

    async def report_failure(self, cred: Credential, kind: str, retry_after: float | None = None,
                             detail: str | None = None) -> None:
        """``kind``: rate_limited, overloaded, server_error, connect, timeout, stream, auth."""
        now = time.monotonic()
        cred.outcomes.append((now, str(kind)))  # plain str: the admin view serialises it
        cred.last_error = str(kind) if detail is None else f"{kind}: {detail}"
        cred.last_error_at = time.time()
        if kind == AUTH:
            reason = f"upstream rejected the credential ({detail or 'HTTP 401/403'}); enable it again once fixed"
            cred.changed_at = now
            await self.health.disable(cred, reason)
            cred.enabled, cred.disabled_reason = False, reason
            if self.on_disable is not None:
                await self.on_disable(cred, reason)
            return
        if kind == RATE_LIMITED:
            delay = retry_after if retry_after is not None and retry_after > 0 else self.default_retry_after
        else:
            delay = self.backoff_base
        await self.health.failure(cred, kind, delay, self.backoff_base, self.backoff_cap)

    async def enable(self, cred: Credential) -> None:
        cred.changed_at = time.monotonic()
        await self.health.enable(cred)
        cred.enabled, cred.disabled_reason = True, None
        cred.cooldown_until, cred.failures, cred.rpm_full_until = 0.0, 0, 0.0

    async def disable(self, cred: Credential, reason: str) -> None:
        cred.changed_at = time.monotonic()
        await self.health.disable(cred, reason)
        cred.enabled, cred.disabled_reason = False, reason

    # ------------------------------------------------------------------ reporting
    def describe(self, cred: Credential) -> dict[str, Any]:
        """Live health for the admin API (no secrets)."""
        now = time.monotonic()
        wall = time.time()
        recent = [(t, k) for t, k in cred.outcomes if t >= now - RECENT_WINDOW]
        errors: dict[str, int] = {}
        for _, kind in recent:
            if kind is not None:
                errors[kind] = errors.get(kind, 0) + 1
        n_err = sum(errors.values())
        cooling = cred.cooling(now)
        rpm_used = None
        if cred.rpm is not None:
            rpm_used = sum(1 for t in cred.rpm_hits if t > now - RPM_WINDOW)
        return {
            "state": cred.state(now),
            "cooldown_until": wall + (cred.cooldown_until - now) if cooling else None,
            "cooldown_remaining_s": round(cred.cooldown_until - now, 3) if cooling else 0.0,
            "in_flight": cred.in_flight,
            "consecutive_failures": cred.failures,
            "recent": {
                "window_s": RECENT_WINDOW,
                "requests": len(recent),
                "errors": n_err,
                "error_rate": round(n_err / len(recent), 4) if recent else 0.0,
                "errors_by_kind": errors,
            },
            "last_error": cred.last_error,
            "last_error_at": cred.last_error_at,
            "rpm_used": rpm_used,
            "spent_micro_this_month": cred.spent_micro,
            "shared_health": self.health.shared,
        }


def month_start(now: float | None = None) -> float:
    t = time.gmtime(time.time() if now is None else now)
    import calendar

    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def _seconds_to_next_month() -> float:
    import calendar

    t = time.gmtime()
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return max(1.0, calendar.timegm((year, month, 1, 0, 0, 0)) - time.time())
