"""The in-process limiter: admit.lua's semantics without Redis (the embedded mode).

Counters live in this process only: with several workers and no Redis, each worker
enforces the limits on its own share of the traffic (configure Redis to share them).
Spend is seeded from the database the first time a budgeted key is seen, as in Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord
from ethereal.limits import (
    BUDGET_MICRO,
    BUDGET_TOKENS,
    CONCURRENCY,
    HELD,
    OK,
    WINDOW_REQUESTS,
    WINDOW_TOKENS,
    Admission,
    BaseLimiter,
    KeyLimits,
    ratelimit_headers,
    refusal,
)
from ethereal.limits.plans import Window
from ethereal.spend import enforce
from ethereal.spend.enforce import CapSet
from ethereal.spend.periods import period_start

SEED_WINDOW_S = 60.0


@dataclass(slots=True)
class _KeyState:
    seeded: bool = False
    spent_tokens: int = 0
    spent_micro: int = 0
    held_in_tokens: int = 0
    held_in_micro: int = 0
    held_tokens: int = 0
    held_micro: int = 0
    dur: int | None = None  # moving average of request durations (ms): retry-after when the budget is held
    # rid -> (in_t, in_m, full_t, full_m, expiry ms, admitted ms)
    reservations: dict[str, tuple[int, int, int, int, int, int]] = field(default_factory=dict)
    windows: dict[tuple[str, int, int], dict[int, list[int]]] = field(
        default_factory=dict
    )  # bucket -> [req, tok]
    last_ms: int = 0


@dataclass(slots=True)
class _Spender:
    """A person's (or a pool's) cap counters: admit.lua's P, Pz and Ps in process memory."""

    counters: dict[str, int] = field(default_factory=dict)  # field -> micro-USD spent in its period
    watermarks: dict[str, int] = field(default_factory=dict)  # seeded fields -> seed watermark (ms)
    held_in: int = 0
    held: int = 0
    dur: int | None = None
    reservations: dict[str, tuple[int, int, int, int]] = field(
        default_factory=dict
    )  # rid -> in, full, expiry, at
    settled: dict[str, int] = field(default_factory=dict)  # rid -> ended ms (kept keep_ms)
    parked: dict[str, tuple[int, int, tuple[str, ...]]] = field(
        default_factory=dict
    )  # unseeded: cost, ended, fields
    holds: dict[str, tuple[int, tuple[str, ...]]] = field(
        default_factory=dict
    )  # batch id -> micro, its counters


class LocalLimiter(BaseLimiter):
    def __init__(self, *, clock: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._spenders: dict[str, _Spender] = {}
        self._admits = 0
        self.keep_ms = max(self.reservation_ttl_ms, int(2 * SEED_WINDOW_S * 1000))

    def _prune(self, now: int) -> None:
        """Forget keys idle for longer than any window (a budgeted one is re-seeded from the store)."""
        idle = 8 * 24 * 3600 * 1000
        for key_id in [k for k, st in self._keys.items() if not st.reservations and now - st.last_ms > idle]:
            del self._keys[key_id]

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def state(self, key_id: str) -> _KeyState:
        st = self._keys.get(key_id)
        if st is None:
            st = self._keys[key_id] = _KeyState()
        return st

    @staticmethod
    def _release(st: _KeyState, rid: str) -> tuple[int, int, int, int, int, int] | None:
        res = st.reservations.pop(rid, None)
        if res is not None:
            st.held_in_tokens -= res[0]
            st.held_in_micro -= res[1]
            st.held_tokens -= res[2]
            st.held_micro -= res[3]
        return res

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
        observers = self.observers
        t0 = time.perf_counter() if observers else 0.0  # timed only when observed
        refused: GatewayError | None = None
        try:
            limits = self.limits_for(key)
            plan = self.gate.plan(key)
            if limits.empty and plan is None:
                return Admission(key_id=key.id)
            in_t, allow_t = max(0, int(input_tokens)), max(0, int(max_tokens))
            in_m = self.price(in_t, price_in) if input_micro is None else max(0, int(input_micro))
            allow_m = self.price(allow_t, price_out) if output_micro is None else max(0, int(output_micro))
            if plan is None:
                return await self._admit(key, limits, in_t, allow_t, in_m, allow_m)
            # every cap set checked (and seeded) before anything is reserved: one decision, as the
            # key's call and the pools' calls are on Redis (the undo there is not needed here)
            sets = [c for c in (plan.own, *plan.pools) if c is not None]
            now_s = self._clock()
            for caps in sets:
                await self._seed_caps(caps, caps.fields(now_s), now_s)
            st = self.state(key.id)
            if (limits.budget_tokens is not None or limits.budget_micro is not None) and not st.seeded:
                tokens, micro = await self.seed(key.id)
                if not st.seeded:
                    st.spent_tokens += tokens
                    st.spent_micro += micro
                    st.seeded = True
            # no await from here to the reservation: the decision and the reservation are one step
            now_s = self._clock()
            decided: list[tuple[CapSet, tuple[str, ...], list[int]]] = []
            for caps in sets:
                fields = caps.fields(now_s)
                await self._seed_caps(
                    caps, fields, now_s
                )  # a period that began meanwhile (no await otherwise)
                decided.append((caps, fields, self._check_caps(caps, fields, in_m, allow_m, now_s)))
            adm = await self._admit(key, limits, in_t, allow_t, in_m, allow_m, force_rid=True)
            now = adm.admitted_ms or self._now()
            adm.limited = True
            adm.pools = []
            for n, (caps, fields, spent) in enumerate(decided):
                sp = self._spender(caps.tag)
                sp.reservations[adm.token] = (in_m, in_m + allow_m, now + self.reservation_ttl_ms, now)
                sp.held_in += in_m
                sp.held += in_m + allow_m
                adm.headers += enforce.headers(caps, spent, now_s)
                self.gate.watch.observe(caps, spent, now_s)
                if n == 0 and caps is plan.own:
                    adm.caps, adm.cap_fields = caps, fields
                else:
                    adm.pools.append((caps, fields))
            return adm
        except GatewayError as exc:
            refused = exc
            raise
        except BaseException:
            t0 = 0.0  # no decision was made: nothing to tell
            raise
        finally:
            if t0:
                self.observed(t0, refused)

    def _spender(self, tag: str) -> _Spender:
        sp = self._spenders.get(tag)
        if sp is None:
            sp = self._spenders[tag] = _Spender()
        return sp

    async def _seed_caps(self, caps: CapSet, fields: tuple[str, ...], now_s: float) -> None:
        """spend_seed.lua in process: each counter not seeded yet, from the records."""
        sp = self._spender(caps.tag)
        for cap, f in zip(caps.caps, fields, strict=True):
            if f in sp.watermarks:
                continue
            since = now_s - SEED_WINDOW_S
            base, rows = await self.seed_cap(
                cap.seed_dim, cap.seed_value, period_start(cap.check.period, now_s), since
            )
            if f in sp.watermarks:  # seeded meanwhile
                continue
            w = int(since * 1000)
            read = {rid for rid, _ in rows}
            total = base + sum(m for _, m in rows)
            for rid, (cost, ended, pfields) in sp.parked.items():
                if f in pfields and ended >= w and rid not in read:
                    total += cost
            for rid in read:
                sp.settled.setdefault(rid, w)
            sp.counters[f] = sp.counters.get(f, 0) + total
            sp.watermarks[f] = w

    def _check_caps(
        self, caps: CapSet, fields: tuple[str, ...], in_m: int, allow_m: int, now_s: float
    ) -> list[int]:
        """admit.lua's cap rule; returns each cap's spend so far (raises the refusal)."""
        sp = self._spender(caps.tag)
        now = int(now_s * 1000)
        for rid in [r for r, res in sp.reservations.items() if res[2] <= now][:100]:
            self._release_cap(sp, rid)
        over: list[int] = []
        held = False
        spent: list[int] = []
        for i, (cap, f) in enumerate(zip(caps.caps, fields, strict=True), start=1):
            amount = cap.check.amount_micro
            used = sp.counters.get(f, 0)
            spent.append(used)
            if used >= amount or used + in_m > amount:
                over.append(i)
            elif used + sp.held + in_m + allow_m > amount:
                held = True
        if over:
            self.gate.watch.exceeded(caps, over, now_s)
            raise enforce.refusal(caps, over, now_s)
        if held and sp.reservations:
            avg = sp.dur if sp.dur is not None else 1000
            oldest = min(sp.reservations.values(), key=lambda r: r[2])
            raise enforce.held(max(100, min(60_000, avg - (now - oldest[3]))))
        return spent

    @staticmethod
    def _release_cap(sp: _Spender, rid: str) -> tuple[int, int, int, int] | None:
        res = sp.reservations.pop(rid, None)
        if res is not None:
            sp.held_in -= res[0]
            sp.held -= res[1]
        return res

    def _settle_caps(self, caps: CapSet, fields: tuple[str, ...], rid: str, cost: int, ended: int) -> None:
        sp = self._spender(caps.tag)
        res = self._release_cap(sp, rid)
        if res is not None and res[1] > res[0]:
            took = max(0, self._now() - res[3])
            sp.dur = took if sp.dur is None else int(sp.dur + (took - sp.dur) / 4)
        if rid in sp.settled:
            return
        parked: list[str] = []
        for f in fields:
            w = sp.watermarks.get(f)
            if w is None:
                parked.append(f)
            elif ended >= w:
                sp.counters[f] = sp.counters.get(f, 0) + cost
        if parked:
            sp.parked[rid] = (cost, ended, tuple(parked))
        sp.settled[rid] = ended
        if len(sp.settled) > 64:
            cut = ended - self.keep_ms
            for old in [r for r, at in sp.settled.items() if at < cut][:100]:
                del sp.settled[old]
                sp.parked.pop(old, None)

    async def charge_caps(
        self, key: KeyRecord, *, cost_micro: int, check: bool, hold: str = "", release: bool = False
    ) -> None:
        plan = self.gate.plan(key)
        if plan is None or (not cost_micro and not release):
            return
        when = self._clock()
        sets = [c for c in (plan.own, *plan.pools) if c is not None]
        if release and hold:
            for caps in sets:
                sp = self._spender(caps.tag)
                held = sp.holds.pop(hold, None)
                if held is not None:
                    for f in held[1]:
                        if f in sp.watermarks:
                            sp.counters[f] = sp.counters.get(f, 0) - held[0]
        if check:
            for caps in sets:
                await self._seed_caps(caps, caps.fields(when), when)
            for caps in sets:
                sp = self._spender(caps.tag)
                over = [
                    i
                    for i, (cap, f) in enumerate(zip(caps.caps, caps.fields(when), strict=True), start=1)
                    if sp.counters.get(f, 0) + sp.held_in + cost_micro > cap.check.amount_micro
                ]
                if over:
                    self.gate.watch.exceeded(caps, over, when)
                    raise enforce.refusal(caps, over, when)
        if not cost_micro:
            return
        for caps in sets:
            sp = self._spender(caps.tag)
            counted = [f for f in caps.fields(when) if f in sp.watermarks]
            for f in counted:
                sp.counters[f] = sp.counters.get(f, 0) + cost_micro
            if hold and not release:
                sp.holds[hold] = (cost_micro, tuple(counted))

    async def reseed_caps(
        self, spenders: set[tuple[str | None, str]], teams: set[str], now: float | None = None
    ) -> int:
        touched = 0
        for tag, fields in self.cap_fields(spenders, teams, self._clock() if now is None else now).items():
            if tag in self._spenders:
                self.forget_caps(tag, fields)
                touched += 1
        return touched

    def forget_caps(self, tag: str, fields: list[str]) -> None:
        """Drop cap counters (re-seeded from the records at their next use: a re-price)."""
        sp = self._spenders.get(tag)
        if sp is not None:
            for f in fields:
                sp.counters.pop(f, None)
                sp.watermarks.pop(f, None)

    async def admit_count(self, key: KeyRecord) -> Admission:
        limits = self.count_limits_for(key)
        if limits.empty:
            return Admission(key_id=key.id)
        return await self._admit(key, limits, 0, 0, 0, 0)

    async def refresh(self, admission: Admission) -> None:
        if not admission.limited or admission.settled or not admission.token:
            return
        st = self._keys.get(admission.key_id)
        res = st.reservations.get(admission.token) if st is not None else None
        now = self._now()
        if st is not None and res is not None and res[4] > now:  # an expired one is not revived (as in Redis)
            st.reservations[admission.token] = (*res[:4], now + self.reservation_ttl_ms, res[5])
        for caps in [c for c in (admission.caps, *(p for p, _ in admission.pools or ())) if c is not None]:
            sp = self._spenders.get(caps.tag)
            held = sp.reservations.get(admission.token) if sp is not None else None
            if sp is not None and held is not None and held[2] > now:
                sp.reservations[admission.token] = (held[0], held[1], now + self.reservation_ttl_ms, held[3])

    async def _admit(
        self,
        key: KeyRecord,
        limits: KeyLimits,
        in_t: int,
        allow_t: int,
        in_m: int,
        allow_m: int,
        *,
        force_rid: bool = False,
    ) -> Admission:
        budgeted = limits.budget_tokens is not None or limits.budget_micro is not None
        st = self.state(key.id)
        if budgeted and not st.seeded:
            tokens, micro = await self.seed(key.id)
            if not st.seeded:  # another request may have seeded meanwhile
                st.spent_tokens += tokens
                st.spent_micro += micro
                st.seeded = True
        now = self._now()
        st.last_ms = now
        self._admits += 1
        if self._admits % 10_000 == 0:
            self._prune(now)
        if limits.reserving:
            for rid in [r for r, res in st.reservations.items() if res[4] <= now][:100]:
                self._release(st, rid)
        code, retry, detail = self._check(st, limits, in_t, allow_t, in_m, allow_m, now)
        if code != OK:
            raise refusal(code, retry, limits, detail, now)
        req_hdr: tuple[int, int, int] | None = None
        tok_hdr: tuple[int, int, int] | None = None
        for window in limits.windows:
            buckets, cur, nb, bms = self._window(st, window, now)
            used_r = sum(v[0] for v in buckets.values())
            used_t = sum(v[1] for v in buckets.values())
            reset = (cur + nb + 1) * bms
            if window.requests is not None and (req_hdr is None or window.requests - used_r - 1 < req_hdr[1]):
                req_hdr = (window.requests, window.requests - used_r - 1, reset)
            if window.tokens is not None and (tok_hdr is None or window.tokens - used_t - in_t < tok_hdr[1]):
                tok_hdr = (window.tokens, window.tokens - used_t - in_t, reset)
            slot = buckets.setdefault(cur, [0, 0])
            slot[0] += 1
            slot[1] += in_t
        rid = uuid.uuid4().hex if force_rid else ""
        if limits.reserving:
            rid = rid or uuid.uuid4().hex
            st.reservations[rid] = (
                in_t,
                in_m,
                in_t + allow_t,
                in_m + allow_m,
                now + self.reservation_ttl_ms,
                now,
            )
            st.held_in_tokens += in_t
            st.held_in_micro += in_m
            st.held_tokens += in_t + allow_t
            st.held_micro += in_m + allow_m
        return Admission(
            key_id=key.id,
            reserved_tokens=in_t + allow_t,
            reserved_micro=in_m + allow_m,
            headers=ratelimit_headers(req_hdr, tok_hdr),
            token=rid,
            limited=True,
            input_tokens=in_t,
            admitted_ms=now,
            spec=limits,
        )

    def _window(self, st: _KeyState, window: Window, now: int) -> tuple[dict[int, list[int]], int, int, int]:
        bms = window.bucket_ms
        nb = window.window_ms // bms
        cur = now // bms
        buckets = st.windows.setdefault((window.name, window.window_ms, bms), {})
        for idx in [i for i in buckets if i < cur - nb]:
            del buckets[idx]
        return buckets, cur, nb, bms

    def _check(
        self, st: _KeyState, limits: KeyLimits, in_t: int, allow_t: int, in_m: int, allow_m: int, now: int
    ) -> tuple[int, float, int]:
        """admit.lua's decision, step for step (see its header for the hard-budget rule)."""
        busy = st.held_tokens > 0 or st.held_micro > 0
        held: int | None = None
        if limits.budget_tokens is not None:
            if st.spent_tokens >= limits.budget_tokens or st.spent_tokens + in_t > limits.budget_tokens:
                return BUDGET_TOKENS, 0, 0
            if st.spent_tokens + st.held_tokens + in_t + allow_t > limits.budget_tokens:
                held = -1
        if limits.budget_micro is not None:
            if st.spent_micro >= limits.budget_micro or st.spent_micro + in_m > limits.budget_micro:
                return BUDGET_MICRO, 0, 0
            if held is None and st.spent_micro + st.held_micro + in_m + allow_m > limits.budget_micro:
                held = -2
        if limits.max_concurrency is not None and len(st.reservations) >= limits.max_concurrency:
            first = min((r[4] for r in st.reservations.values()), default=now + 1000)
            return CONCURRENCY, min(1000, max(1, first - now)), 0
        allowances = st.held_tokens - st.held_in_tokens
        for i, window in enumerate(limits.windows, start=1):
            buckets, _cur, nb, bms = self._window(st, window, now)
            used_r = sum(v[0] for v in buckets.values())
            used_t = sum(v[1] for v in buckets.values())
            if window.requests is not None and used_r + 1 > window.requests:
                return (
                    WINDOW_REQUESTS,
                    self._wait(buckets, 0, used_r, 1, window.requests, nb, bms, now, window.window_ms),
                    i,
                )
            if window.tokens is not None and (used_t >= window.tokens or used_t + in_t > window.tokens):
                return (
                    WINDOW_TOKENS,
                    self._wait(buckets, 1, used_t, in_t, window.tokens, nb, bms, now, window.window_ms),
                    i,
                )
            if (
                held is None
                and window.tokens is not None
                and used_t + allowances + in_t + allow_t > window.tokens
            ):
                held = i
        if held is not None and busy:
            avg = st.dur if st.dur is not None else 1000
            oldest = min(st.reservations.values(), key=lambda r: r[4], default=None)
            age = now - oldest[5] if oldest is not None else 0
            return HELD, max(100, min(60_000, avg - age)), held
        return OK, 0, 0

    @staticmethod
    def _wait(
        buckets: dict[int, list[int]],
        kind: int,
        used: int,
        need: int,
        limit: int,
        nb: int,
        bms: int,
        now: int,
        wms: int,
    ) -> float:
        freed = 0
        for idx in sorted(buckets):
            freed += buckets[idx][kind]
            if used - freed + need <= limit:
                return (idx + nb + 1) * bms - now
        return wms

    async def settle(
        self, admission: Admission, *, tokens: int, cost_micro: int, ended_at: float | None = None
    ) -> None:
        if not admission.limited or admission.settled:
            return
        admission.settled = True
        if admission.caps is not None or admission.pools:
            ended = int((self._clock() if ended_at is None else ended_at) * 1000)
            if admission.caps is not None:
                self._settle_caps(admission.caps, admission.cap_fields, admission.token, cost_micro, ended)
            for pool, fields in admission.pools or ():
                self._settle_caps(pool, fields, admission.token, cost_micro, ended)
        st = self.state(admission.key_id)
        res = self._release(st, admission.token)
        if res is not None and res[2] > res[0]:  # held an output allowance: feeds the retry-after estimate
            took = max(0, self._now() - admission.admitted_ms)
            st.dur = took if st.dur is None else int(st.dur + (took - st.dur) / 4)
        if st.seeded:
            st.spent_tokens += tokens
            st.spent_micro += cost_micro
        delta = tokens - admission.input_tokens
        if delta == 0:
            return
        now = self._now()
        limits: KeyLimits = admission.spec
        for window in limits.windows:
            buckets, cur, nb, bms = self._window(st, window, now)
            aidx = admission.admitted_ms // bms
            if aidx >= cur - nb:
                slot = buckets.setdefault(aidx, [0, 0])
                slot[1] = max(0, slot[1] + delta)
            elif delta > 0:
                buckets.setdefault(cur, [0, 0])[1] += delta

    async def charge(self, key: KeyRecord, *, tokens: int, cost_micro: int, check: bool) -> None:
        if not self.budgeted(key):
            return
        st = self.state(key.id)
        if not st.seeded:
            if not check:
                return  # not tracked yet: the seed reads the database, which already has it
            seeded_tokens, seeded_micro = await self.seed(key.id)
            if not st.seeded:
                st.spent_tokens += seeded_tokens
                st.spent_micro += seeded_micro
                st.seeded = True
        if check:
            limits = self.limits_for(key)
            now = self._now()
            if (
                limits.budget_tokens is not None
                and st.spent_tokens + st.held_in_tokens + tokens > limits.budget_tokens
            ):
                raise refusal(BUDGET_TOKENS, 0, limits, 0, now)
            if (
                limits.budget_micro is not None
                and st.spent_micro + st.held_in_micro + cost_micro > limits.budget_micro
            ):
                raise refusal(BUDGET_MICRO, 0, limits, 0, now)
        st.spent_tokens += tokens
        st.spent_micro += cost_micro

    def snapshot(self, key_id: str) -> dict[str, int]:
        """Spent and held totals of a key (tests, the admin API)."""
        st = self.state(key_id)
        return {
            "spent_tokens": st.spent_tokens,
            "spent_micro": st.spent_micro,
            "held_tokens": st.held_tokens,
            "held_micro": st.held_micro,
            "in_flight": len(st.reservations),
        }
