"""The upstream credential pool: health, cooldown, choice.

Choice, per attempt (``Pool.acquire``), among the enabled credentials serving the model that
this request has not tried yet and that are under their spend cap:

1. prefer the healthy ones (not cooling down, not inside an upstream 429's retry-after, room in
   their RPM window). With a cache-affinity key: rendezvous (highest-random-weight) order, so a
   prefix keeps landing on the same credential and its prompt cache stays warm; the next
   credential in that order is just as stable, so a failover warms a predictable second cache.
   A preferred credential far busier than the pool average is passed over ("consistent hashing
   with bounded loads"). Without a key: least ``(in_flight + 1) / weight``, ties at random;
2. a cooldown is a preference, not a wall: when none is healthy, the request goes to the
   credential that recovers first among those merely backing off. Refusing locally would make a
   client count the gateway's refusal like an upstream failure and give up sooner than it would
   calling the upstream directly (two concurrent requests meeting one 529 must both succeed);
3. only when every one of them is inside an upstream 429's ``retry-after`` (or its operator RPM
   cap) is the request refused: ``Refusal(RATE_LIMITED, wait)``, answered as a 429 whose
   ``retry-after``/``retry-after-ms`` are the real time left;
4. nothing enabled serves the model: ``Refusal(NO_CREDENTIAL, wait)`` (a 503); every credential
   already tried by this request: ``Refusal(EXHAUSTED)`` (the caller answers the last upstream
   error as the upstream sent it).

Health lives in a ``Health`` backend: in-process by default, in Redis when ``ETHEREAL_REDIS_URL``
is set (``RedisHealth``) so every replica sees a cooldown at once. A 429 is about one model's
rate-limit group (the registry's ``rate_limit_group``: Anthropic limits each model line apart; a
model the registry does not know is its own group), so it cools the credential down for that
group only: the other models keep being sent to it. It lasts the upstream's
``retry-after``/``retry-after-ms`` (a wall while it runs) or a short default (a preference only,
when the upstream named no time), at most ``rate_limit_cap`` seconds (``ETHEREAL_UPSTREAM_429_COOLDOWN_CAP``,
60 by default): a ``retry-after: 86400`` on one request must not take a credential out for a day.
The client that got the 429 still sees it as the upstream sent it, hints included. A 429 no model
is named for (a batch create) cools the whole credential, capped alike. 529/5xx/timeouts/connection errors cool down
with an exponential backoff per credential (base 0.5 s, cap 30 s), reset by its first success;
failures during a cooldown do not escalate it, so a burst of in-flight requests failing together
counts once. A client's own error (400, 404, 413, ...) is no failure at all. A 401/403 answers
that client and disables nothing by itself: it asks for a probe (``on_auth_failure``) that
disables the credential only when the upstream refuses the credential's own request too.

Time comes from ``clock`` (``time.monotonic`` by default) so tests step it instead of sleeping.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ethereal.upstream.binding import ThinkingAccounts

RECENT_WINDOW = 60.0  # seconds of outcomes kept for the error rates shown to admins
COOLING_ALERT = 60.0  # a cooldown longer than this is an alert (credential.cooling)
RATE_LIMIT_CAP = 60.0  # default longest cooldown an upstream 429 causes (seconds)
MAX_GROUPS = 64  # rate-limit groups cooling at once per credential (bounded: unknown models are groups)
RPM_WINDOW = 60.0
# Nothing enabled serves the model and nothing is scheduled to recover: an operator has to act.
# A minute is the honest order of magnitude, and keeps clients from hammering.
NO_CREDENTIAL_WAIT = 60.0

Clock = Callable[[], float]


class FailureKind(StrEnum):
    """Why an upstream attempt failed, as far as the credential's health is concerned."""

    RATE_LIMITED = "rate_limited"  # 429
    OVERLOADED = "overloaded"  # 529, 503, an overloaded_error event
    SERVER_ERROR = "server_error"  # other 5xx, an api_error event
    TIMEOUT = "timeout"  # 408, 504, no first byte in time
    CONNECT = "connect"  # refused, reset, TLS failure before the first byte
    STREAM = "stream"  # cut after the response started
    AUTH = "auth"  # 401/403: the client's answer; a probe decides about the credential

    @property
    def backs_off(self) -> bool:
        return self not in (FailureKind.RATE_LIMITED, FailureKind.AUTH)

    @classmethod
    def for_status(cls, status: int) -> FailureKind | None:
        """The failure an upstream status means for the credential; None for the client's own
        errors (400, 404, 413, 422, ...), which never cool a credential."""
        if status == 429:
            return cls.RATE_LIMITED
        if status in (401, 403):
            return cls.AUTH
        if status in (408, 504):
            return cls.TIMEOUT
        if status in (503, 529):
            return cls.OVERLOADED
        if status >= 500:
            return cls.SERVER_ERROR
        return None


class Refused(StrEnum):
    RATE_LIMITED = "rate_limited"  # inside an upstream 429's retry-after (or an operator RPM cap)
    NO_CREDENTIAL = "no_credential"  # nothing enabled (and under its spend cap) serves the model
    EXHAUSTED = "exhausted"  # this request already tried every credential serving the model


@dataclass(frozen=True, slots=True)
class Refusal:
    """``acquire`` found no credential to send to; ``wait`` is the real time until one can take it."""

    reason: Refused
    wait: float = 0.0

    @property
    def status(self) -> int:
        return 429 if self.reason is Refused.RATE_LIMITED else 503

    @property
    def error_type(self) -> str:
        return "rate_limit_error" if self.reason is Refused.RATE_LIMITED else "overloaded_error"

    @property
    def message(self) -> str:
        if self.reason is Refused.RATE_LIMITED:
            return "the upstream rate limit for this model is exhausted; retry after the time given"
        return "no enabled upstream credential serves this model"


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
    # live state (this replica's view; cooldowns and disabled flags are shared through Redis)
    in_flight: int = 0
    attempts: int = 0  # requests this worker sent to it (metrics read the totals, off the request path)
    failovers: int = 0  # of which retries after a failure elsewhere
    cooldown_until: float = 0.0  # pool clock: a preference, see the module docstring
    rate_limited_until: float = 0.0  # pool clock: an upstream 429's retry-after (no model named), a wall
    # per rate-limit group (pool clock): a 429 without retry-after (a preference) / with one (a wall)
    group_cool: dict[str, float] = field(default_factory=dict, repr=False)
    group_walls: dict[str, float] = field(default_factory=dict, repr=False)
    failures: int = 0  # consecutive backoff failures
    last_error: str | None = None
    last_error_at: float | None = None  # unix seconds
    last_probe: dict[str, Any] | None = None  # {"at", "status", "detail"} of the last credential probe
    spent_micro: int = 0  # this month, from the store (refreshed) + this replica since the refresh
    outcomes: deque[tuple[float, str | None]] = field(default_factory=lambda: deque(maxlen=4096), repr=False)
    rpm_hits: deque[float] = field(default_factory=deque, repr=False)
    rpm_full_until: float = 0.0  # pool clock: when the (shared) window has room again
    changed_at: float = 0.0  # time.monotonic(): last local enable/disable, guards against stale reloads
    store_updated_at: float = 0.0  # unix seconds: the stored row's updated_at when last loaded
    off_flag_at: float = 0.0  # unix seconds: a shared "disabled" flag seen in Redis (0: none)
    secret_ref: str | None = field(default=None, repr=False)  # the encrypted form it was loaded from
    # the upstream account (organisation) it belongs to: learnt from the anthropic-organization-id
    # header of its answers; a conversation whose thinking is bound to an account stays on it
    account: str | None = None

    def serves(self, model: str | None) -> bool:
        if self.models is None or model is None:
            return True
        for entry in self.models:  # noqa: SIM110 - no generator object per call on the request path
            if entry == model or (entry.endswith("*") and model.startswith(entry[:-1])):
                return True
        return False

    def cooling(self, now: float, group: str | None = None) -> bool:
        """Backing off, or inside a 429 about the whole credential or about ``group``."""
        if now < self.cooldown_until or now < self.rate_limited_until:
            return True
        if not group or not (self.group_cool or self.group_walls):
            return False
        return now < self.group_cool.get(group, 0.0) or now < self.group_walls.get(group, 0.0)

    def walled_until(self, now: float, group: str | None = None) -> float:
        """Until when a request (for a model of ``group``) must not be sent here (upstream 429
        retry-after, RPM cap); 0 when free."""
        until = self.rate_limited_until
        if group:
            until = max(until, self.group_walls.get(group, 0.0))
        if self.rpm is not None:
            until = max(until, self.rpm_full_until)
        return until if until > now else 0.0

    def ready_at(self, now: float, group: str | None = None) -> float:
        cool = self.cooldown_until
        if group:
            cool = max(cool, self.group_cool.get(group, 0.0))
        return max(cool, self.walled_until(now, group), now)

    def over_spend(self) -> bool:
        return self.spend_cap_micro is not None and self.spent_micro >= self.spend_cap_micro

    def healthy(self, now: float, group: str | None = None) -> bool:
        return self.enabled and not self.cooling(now, group) and not self.over_spend()

    def cool_group(self, group: str, now: float, delay: float, wall: float | None) -> None:
        """A 429 about ``group``: a preference for ``delay`` seconds, a wall for ``wall`` (bounded)."""
        for table, seconds in ((self.group_cool, delay), (self.group_walls, wall or 0.0)):
            if len(table) >= MAX_GROUPS:
                for g in [g for g, until in table.items() if until <= now]:
                    del table[g]
            if seconds > 0 and (group in table or len(table) < MAX_GROUPS):
                table[group] = max(table.get(group, 0.0), now + seconds)

    def groups_limited(self, now: float) -> dict[str, float]:
        """Seconds left of each rate-limit group's cooldown (wall or preference) on this credential."""
        out: dict[str, float] = {}
        for table in (self.group_cool, self.group_walls):
            for g, until in table.items():
                if until > now:
                    out[g] = max(out.get(g, 0.0), until - now)
        return out

    def state(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if not self.enabled:
            return "disabled"
        if now < self.rate_limited_until:
            return "rate_limited"
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

    def __init__(self) -> None:
        self.clock: Clock = time.monotonic  # the pool sets its own

    async def failure(
        self,
        cred: Credential,
        kind: FailureKind,
        delay: float,
        base: float,
        cap: float,
        wall: float | None = None,
    ) -> None:
        """Cool ``cred`` down: backoff kinds escalate (once per cooldown); ``wall`` is an upstream
        429's retry-after, during which nothing is sent to ``cred``."""
        now = self.clock()
        if kind.backs_off:
            if now < cred.cooldown_until:
                return  # already backing off: a burst of failures counts once
            cred.failures += 1
            delay = min(base * 2 ** (cred.failures - 1), cap)
        cred.cooldown_until = max(cred.cooldown_until, now + delay)
        if wall:
            cred.rate_limited_until = max(cred.rate_limited_until, now + wall)

    async def group_failure(self, cred: Credential, group: str, delay: float, wall: float | None) -> None:
        """An upstream 429 about the models of ``group`` only: ``delay`` a preference, ``wall`` a wall."""
        cred.cool_group(group, self.clock(), delay, wall)

    async def group_success(self, cred: Credential, group: str) -> None:
        """A request of ``group`` succeeded: its preference (a 429 that named no time) ends."""
        cred.group_cool.pop(group, None)

    async def success(self, cred: Credential) -> None:
        cred.failures = 0
        cred.cooldown_until = 0.0

    async def disable(self, cred: Credential, reason: str) -> None:
        cred.enabled = False
        cred.disabled_reason = reason

    async def enable(self, cred: Credential) -> None:
        cred.enabled = True
        cred.disabled_reason = None
        cred.cooldown_until = cred.rate_limited_until = 0.0
        cred.group_cool.clear()
        cred.group_walls.clear()
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


def _taken(cred: Credential, *, failover: bool) -> Credential:
    """The credential handed to a request: its in-flight count and attempt counters taken."""
    cred.in_flight += 1
    cred.attempts += 1
    if failover:
        cred.failovers += 1
    return cred


class Pool:
    def __init__(
        self,
        credentials: list[Credential] | None = None,
        *,
        default_retry_after: float = 5.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        rate_limit_cap: float = RATE_LIMIT_CAP,
        group_of: Callable[[str | None], str] | None = None,
        health: Health | None = None,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.credentials: list[Credential] = list(credentials or [])
        self.default_retry_after = default_retry_after
        self.rate_limit_cap = rate_limit_cap
        # a model's rate-limit group (the registry's rate_limit_group); default: each model its own
        self.group_of: Callable[[str | None], str] = group_of or (lambda model: model or "")
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.clock = clock
        self._health = health or Health()
        self._health.clock = clock
        self._rng = rng or random.Random()
        # callback(cred, detail): a request got 401/403 with this credential; probe it (set by the service)
        self.on_auth_failure: Callable[[Credential, str | None], None] | None = None
        self.thinking_accounts = ThinkingAccounts()  # which account a replayed thinking block belongs to
        # called with (event, data) as the pool decides: "credential.disabled", "credential.cooling"
        # (longer than a minute; alerts/ sends both as webhooks) and "credential.failure" (every
        # failure reported, with whether it began a cooldown; observability/ counts them). The
        # alerts and the metrics subscribe; an observer never raises into the pool.
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []

    def has_account(self, model: str | None, account: str) -> bool:
        """An enabled credential of ``account`` serves ``model`` (cooling or not: a preference)."""
        return any(c.account == account for c in self.serving(model))

    def _event(self, event: str, data: dict[str, Any]) -> None:
        for observe in self.observers:
            try:
                observe(event, data)
            except Exception:  # an alert never fails a request
                logging.getLogger("ethereal.upstream").exception("the %s alert failed", event)

    @property
    def health(self) -> Health:
        return self._health

    @health.setter
    def health(self, value: Health) -> None:
        value.clock = self.clock
        self._health = value

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
    def _order(self, usable: list[Credential], affinity: bytes | None) -> list[Credential]:
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

    def candidates(
        self, model: str | None, affinity: bytes | None = None, exclude: Iterable[str] = ()
    ) -> list[Credential]:
        """Healthy credentials serving ``model``, best first (RPM windows not consulted)."""
        now = self.clock()
        skip = set(exclude)
        group = self.group_of(model) if model else None
        usable = [
            c for c in self.credentials if c.name not in skip and c.healthy(now, group) and c.serves(model)
        ]
        return self._order(usable, affinity)

    def serving(self, model: str | None) -> list[Credential]:
        return [c for c in self.credentials if c.enabled and c.serves(model)]

    async def _take_rpm(self, cred: Credential, now: float) -> bool:
        """Room in the credential's RPM window (callers skip this for a credential without one)."""
        if now < cred.rpm_full_until:
            return False
        ok, wait = await self._health.take_rpm(cred, now)
        if not ok:
            cred.rpm_full_until = now + max(wait, 0.05)
        return ok

    async def acquire(
        self,
        model: str | None,
        affinity: bytes | None = None,
        exclude: Iterable[str] = (),
        *,
        count_rpm: bool = True,
        account: str | None = None,
    ) -> Credential | Refusal:
        """The credential to send to, with its in-flight count taken, or why there is none.

        Health is judged for ``model``'s rate-limit group: a 429 about another group is no
        concern of this request. ``account``: only credentials of that upstream account (a
        conversation whose replayed thinking is bound to it)."""
        now = self.clock()
        group: str | None = None  # the model's rate-limit group: looked up once a credential has walls
        skip = set(exclude) if exclude else None
        # one pass: serving the model (of ``account``), not tried yet, under its spend cap, healthy
        serving = fresh = False
        open_: list[Credential] = []
        healthy: list[Credential] = []
        for c in self.credentials:
            if not c.enabled or not c.serves(model) or (account is not None and c.account != account):
                continue
            serving = True
            if skip and c.name in skip:
                continue
            fresh = True
            if c.over_spend():
                continue
            open_.append(c)
            if group is None and model and (c.group_cool or c.group_walls):
                group = self.group_of(model)
            if not c.cooling(now, group) and not (c.rpm is not None and now < c.rpm_full_until):
                healthy.append(c)
        if not serving:
            return Refusal(Refused.NO_CREDENTIAL, NO_CREDENTIAL_WAIT)
        if not fresh:
            return Refusal(Refused.EXHAUSTED)
        if not open_:
            return Refusal(Refused.NO_CREDENTIAL, _seconds_to_next_month())
        for cred in self._order(healthy, affinity):
            if count_rpm and cred.rpm is not None and not await self._take_rpm(cred, now):
                continue
            return _taken(cred, failover=bool(skip))

        # nothing healthy: the one that recovers first among those not behind a wall
        if group is None and model:
            group = self.group_of(model)

        def wall(c: Credential) -> float:
            if count_rpm:
                return c.walled_until(now, group)
            until = max(c.rate_limited_until, c.group_walls.get(group, 0.0) if group else 0.0)
            return until if until > now else 0.0

        while True:
            free = [c for c in open_ if not wall(c)]
            if not free:
                return Refusal(Refused.RATE_LIMITED, min(wall(c) for c in open_) - now)
            cred = min(free, key=lambda c: (c.ready_at(now, group), c.in_flight / (c.weight or 1e-9)))
            if count_rpm and cred.rpm is not None and not await self._take_rpm(cred, now):
                continue  # its window just filled: now walled, look again
            return _taken(cred, failover=bool(skip))

    def release(self, cred: Credential, cost_micro: int = 0) -> None:
        cred.in_flight = max(0, cred.in_flight - 1)
        if cost_micro:
            cred.spent_micro += cost_micro

    def earliest_recovery(self, model: str | None) -> float:
        """Seconds until some credential serving ``model`` is healthy again (for the admin view)."""
        now = self.clock()
        group = self.group_of(model) if model else None
        waits = []
        for c in self.serving(model):
            if c.over_spend():
                waits.append(_seconds_to_next_month())
                continue
            waits.append(c.ready_at(now, group) - now)
        return min(waits) if waits else NO_CREDENTIAL_WAIT

    # ------------------------------------------------------------------ outcomes
    async def report_success(self, cred: Credential, model: str | None = None) -> None:
        now = self.clock()
        cred.outcomes.append((now, None))
        if cred.failures or now < cred.cooldown_until:
            # the first success ends the backoff: the next failure starts again from the base
            await self._health.success(cred)
            cred.failures, cred.cooldown_until = 0, 0.0
        if model and cred.group_cool:
            group = self.group_of(model)
            if now < cred.group_cool.get(group, 0.0):
                await self._health.group_success(cred, group)

    async def report_failure(
        self,
        cred: Credential,
        kind: FailureKind | str,
        retry_after: float | None = None,
        detail: str | None = None,
        model: str | None = None,
    ) -> None:
        """Count a failure against ``cred``. ``retry_after``: the upstream's own hint, in seconds;
        ``model``: what the request asked for (a 429 cools only that model's rate-limit group)."""
        kind = FailureKind(kind)
        now = self.clock()
        # observed: whether this failure began a cooldown (or disabled the credential) is told
        observed = bool(self.observers)
        if observed:
            cool_group = self.group_of(model) if model else None  # a 429 cools its rate-limit group only
            was_cooling, was_enabled = cred.cooling(now, cool_group), cred.enabled
        try:
            cred.outcomes.append((now, kind.value))
            cred.last_error = kind.value if detail is None else f"{kind.value}: {detail}"
            cred.last_error_at = time.time()
            if kind is FailureKind.AUTH:
                # the client's answer; the credential is judged by a request of its own
                if self.on_auth_failure is not None:
                    self.on_auth_failure(cred, detail)
                return
            wall = None
            if kind is FailureKind.RATE_LIMITED:
                cap = self.rate_limit_cap
                if retry_after is not None and retry_after > 0:
                    delay = wall = min(retry_after, cap)
                else:
                    delay = min(
                        self.default_retry_after, cap
                    )  # the upstream named no time: a preference only
                group = self.group_of(model) if model else ""
                if delay > COOLING_ALERT:
                    self._event(
                        "credential.cooling",
                        {
                            "credential": cred.name,
                            "seconds": round(delay, 3),
                            "cause": kind.value,
                            "rate_limit_group": group or None,
                        },
                    )
                if group:
                    await self._health.group_failure(cred, group, delay, wall)
                    return
            else:
                delay = self.backoff_base
            before = cred.cooldown_until
            await self._health.failure(cred, kind, delay, self.backoff_base, self.backoff_cap, wall)
            cooling = cred.cooldown_until - now
            if (
                kind is not FailureKind.RATE_LIMITED
                and cooling > COOLING_ALERT
                and before - now <= COOLING_ALERT
            ):
                self._event(
                    "credential.cooling",
                    {
                        "credential": cred.name,
                        "seconds": round(cooling, 3),
                        "cause": kind.value,
                        "rate_limit_group": None,
                    },
                )
        except BaseException:
            observed = False  # no decision was made: nothing to tell
            raise
        finally:
            if observed:
                cooled = (was_enabled and not cred.enabled) or (
                    not was_cooling and cred.cooling(self.clock(), cool_group)
                )
                self._event(
                    "credential.failure", {"credential": cred.name, "kind": kind.value, "cooled": cooled}
                )

    async def enable(self, cred: Credential) -> None:
        cred.changed_at = time.monotonic()
        await self._health.enable(cred)
        cred.enabled, cred.disabled_reason = True, None
        cred.cooldown_until = cred.rate_limited_until = cred.rpm_full_until = 0.0
        cred.failures = 0

    async def disable(self, cred: Credential, reason: str) -> None:
        cred.changed_at = time.monotonic()
        was = cred.enabled
        await self._health.disable(cred, reason)
        cred.enabled, cred.disabled_reason = False, reason
        if was:
            self._event("credential.disabled", {"credential": cred.name, "reason": (reason or "")[:200]})

    # ------------------------------------------------------------------ reporting
    def describe(self, cred: Credential) -> dict[str, Any]:
        """Live health for the admin API (no secrets)."""
        now = self.clock()
        wall = time.time()
        recent = [(t, k) for t, k in cred.outcomes if t >= now - RECENT_WINDOW]
        errors: dict[str, int] = {}
        for _, kind in recent:
            if kind is not None:
                errors[kind] = errors.get(kind, 0) + 1
        n_err = sum(errors.values())
        until = max(cred.cooldown_until, cred.rate_limited_until)
        cooling = until > now
        rpm_used = None
        if cred.rpm is not None:
            rpm_used = sum(1 for t in cred.rpm_hits if t > now - RPM_WINDOW)
        groups = cred.groups_limited(now)
        return {
            "state": cred.state(now),
            "cooldown_until": wall + (until - now) if cooling else None,
            "cooldown_remaining_s": round(until - now, 3) if cooling else 0.0,
            "rate_limited_remaining_s": round(max(0.0, cred.rate_limited_until - now), 3),
            # rate-limit groups an upstream 429 cools on this credential (seconds left): the rest serve
            "rate_limited_groups": {g: round(left, 3) for g, left in sorted(groups.items())},
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
            "last_probe": cred.last_probe,
            "rpm_used": rpm_used,
            "spent_micro_this_month": cred.spent_micro,
            "shared_health": self._health.shared,
        }


def month_start(now: float | None = None) -> float:
    t = time.gmtime(time.time() if now is None else now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def _seconds_to_next_month() -> float:
    t = time.gmtime()
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return max(1.0, calendar.timegm((year, month, 1, 0, 0, 0)) - time.time())
