"""The shared limiter: one FCALL of ``ethereal_admit_v2`` per request, one of ``ethereal_settle_v2`` after it.

The scripts (``lua/admit.lua``, ``settle.lua``, ``refresh.lua``) are loaded as one Redis
Functions library whose name carries its version (``ethereal_limits_v2``, functions
``ethereal_admit_v2`` …): a replica running another version calls its own functions, side by
side, and every version that shares the key layout (``ethereal:v1:``) shares the counters.
Functions are replicated and persisted with the data; they are loaded again (FUNCTION LOAD
REPLACE, on every master) when a server answers that they are missing (a restart without
persistence, a new node).

Every Redis key of one ethereal key carries the hash tag ``{k:<key_id>}``, so each call's keys
live in one slot and the limiter runs on Redis Cluster (``redis+cluster://`` URLs, see
``ethereal/redisconn.py``): commands go to the master owning the slot, MOVED/ASK are followed.

Redis holds only hot counters: spend is seeded from the database (``store.seed_spend``)
the first time a budgeted key is seen after Redis lost its state, exactly: settles are
idempotent per request id (``settle.lua`` remembers the ids it applied, the seed the ids of the
recent rows it read, rows older than its watermark are in its sum), each replica re-announces
what Redis lost of its own (its reservations in flight, its settles of the last
``RECENT_SETTLES_S``) as soon as it sees the loss (``epoch.lua``, polled every ``EPOCH_POLL_S``),
and keys seeded right after a loss hold their admissions ``recovery_hold`` seconds for the
other replicas to do so (docs/limits.md, "Redis loss and restart").

When Redis (or the master owning a key's slot) cannot be reached, requests are refused with
503 (fail closed) unless ``ETHEREAL_LIMITS_FAIL_OPEN=true``, in which case they are admitted
unlimited; both are logged. Settlements that fail are kept (bounded) and retried; requests
recover on their own once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from importlib import resources
from typing import Any

from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ethereal import redisconn
from ethereal.keys import KeyRecord
from ethereal.limits import (
    NEED_SEED,
    OK,
    Admission,
    BaseLimiter,
    KeyLimits,
    ratelimit_headers,
    refusal,
    unavailable,
)
from ethereal.limits.pipe import Cluster, Redirect, Single, Unavailable, encode_args, encode_command

log = logging.getLogger("ethereal.limits")

LAYOUT = "ethereal:v1:"
STATE_TTL_MS = 7 * 24 * 3600 * 1000  # idle keys' counters expire; spend is re-seeded from the database
_MAX_PENDING_SETTLES = 100_000
VERSION = 3
LIBRARY = f"ethereal_limits_v{VERSION}"
ADMIT_FN, SETTLE_FN, REFRESH_FN, CHARGE_FN, SEED_FN, RESTORE_FN, EPOCH_FN = (
    f"ethereal_{name}_v{VERSION}" for name in ("admit", "settle", "refresh", "charge", "seed", "restore", "epoch"))
_SCRIPTS = ((ADMIT_FN, "admit.lua"), (SETTLE_FN, "settle.lua"), (REFRESH_FN, "refresh.lua"), (CHARGE_FN, "charge.lua"),
            (SEED_FN, "seed.lua"), (RESTORE_FN, "restore.lua"), (EPOCH_FN, "epoch.lua"))
# the seed reads the rows of requests that ended in the last SEED_WINDOW_S one by one (their ids
# deduplicate settles), older ones as a sum; a replica keeps its settles of the last
# RECENT_SETTLES_S to send again after a loss (rows reach the database well within that)
SEED_WINDOW_S = 60.0
RECENT_SETTLES_S = 30.0
_MAX_RECENT = 200_000
EPOCH_POLL_S = 0.25


def _args(args: Any, count: int | None = None) -> bytes:
    """RESP bulk strings of ``args``, behind an array header of ``count`` items when given."""
    body = encode_args(args)
    return body if count is None else b"*%d\r\n%s" % (count, body)


class _Spec:
    """One key's script keys and the pre-encoded constant parts of its admit and settle commands."""

    __slots__ = ("admit_head", "admit_tail", "const1", "const2", "keys", "limits", "refresh_head",
                 "settle_head", "settle_tail", "sizes", "slot")

    def __init__(self, limits: KeyLimits, keys: list[str], sizes: list[int], const1: list[Any], const2: list[Any],
                 slot: int) -> None:
        self.limits, self.keys, self.sizes, self.const1, self.const2 = limits, keys, sizes, const1, const2
        self.slot = slot
        self.admit_head = self.admit_tail = self.settle_head = self.settle_tail = self.refresh_head = b""


def _script(name: str) -> str:
    return (resources.files("ethereal.limits") / "lua" / name).read_text(encoding="utf-8")


def library() -> str:
    """The Redis Functions library: each script's body becomes one function taking (KEYS, ARGV)."""
    parts = [f"#!lua name={LIBRARY}"]
    for fn, name in _SCRIPTS:
        parts.append(f"redis.register_function('{fn}', function(KEYS, ARGV)\n{_script(name)}\nend)")
    return "\n".join(parts)


class RedisLimiter(BaseLimiter):
    def __init__(self, url: str, *, fail_open: bool = False,
                 socket_timeout: float = 2.0, recovery_hold: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recovery_hold_ms = int(recovery_hold * 1000)
        self.keep_ms = max(self.reservation_ttl_ms, int(2 * SEED_WINDOW_S * 1000))
        self.url = url
        self.fail_open = fail_open
        connect_timeout = min(1.0, socket_timeout)
        target = redisconn.cluster(url)
        # every call on one pipelined connection per server (key-change notifications: keychanges.py)
        self.router: Single | Cluster
        if target is None:
            self.router = Single(url, timeout=socket_timeout, connect_timeout=connect_timeout)
        else:
            self.router = Cluster(list(target.nodes), target.pipe_params(), timeout=socket_timeout,
                                  connect_timeout=connect_timeout)
        self._library = library()
        self._loaded = False
        self._loading: asyncio.Future[list[Any]] | None = None
        self._pending: deque[tuple[bytes, int]] = deque(maxlen=_MAX_PENDING_SETTLES)  # settles to retry
        self._retry_task: asyncio.Task[None] | None = None
        self._last_outage_log = 0.0
        self._specs: dict[str, _Spec] = {}
        # what a Redis loss would take and this replica can give back: budgeted reservations in
        # flight (rid -> admission) and recent settles (monotonic time, slot, payload)
        self._held: dict[str, Admission] = {}
        self._recent: deque[tuple[float, int, bytes]] = deque(maxlen=_MAX_RECENT)
        self._epochs: dict[str, str] = {}  # epoch key (one per master) -> the id last seen there
        self._epoch_keys: list[tuple[str, int]] = []
        self._epoch_task: asyncio.Task[None] | None = None
        self._epoch_lock = asyncio.Lock()

    # plumbing
    def spec_for(self, key_id: str, limits: KeyLimits, *, count: bool = False) -> _Spec:
        """The key's script keys and the constant parts of its commands, encoded once per key and limits."""
        cache_id = key_id if not count else key_id + "#count"
        found = self._specs.get(cache_id)
        if found is not None and found.limits is limits:
            return found
        tag = f"{LAYOUT}{{k:{key_id}}}"
        keys = [f"{tag}:b", f"{tag}:z", f"{tag}:s"] + [f"{tag}:w:{w.name}:{w.window_ms}:{w.bucket_ms}"
                                                        for w in limits.windows]
        sizes = [n for w in limits.windows for n in (w.window_ms, w.bucket_ms)]
        const1 = [-1 if limits.budget_tokens is None else limits.budget_tokens,
                  -1 if limits.budget_micro is None else limits.budget_micro,
                  -1 if limits.max_concurrency is None else limits.max_concurrency, self.reservation_ttl_ms]
        const2: list[Any] = [STATE_TTL_MS, len(limits.windows)]
        for w in limits.windows:
            const2 += [w.window_ms, w.bucket_ms, -1 if w.requests is None else w.requests,
                       -1 if w.tokens is None else w.tokens]
        spec = _Spec(limits, keys, sizes, const1, const2, key_slot(f"k:{key_id}".encode()))
        n_admit = 3 + len(keys) + 14 + 4 * len(limits.windows)
        spec.admit_head = _args(["FCALL", ADMIT_FN, len(keys), *keys], n_admit)
        spec.admit_tail = _args([*const1, 0, 0, 0, *const2])
        n_settle = 3 + len(keys) + 10 + len(sizes)
        spec.settle_head = _args(["FCALL", SETTLE_FN, len(keys), *keys], n_settle)
        budgeted = int(limits.budget_tokens is not None or limits.budget_micro is not None)
        spec.settle_tail = _args([self.keep_ms, budgeted, STATE_TTL_MS, len(limits.windows), *sizes])
        spec.refresh_head = _args(["FCALL", REFRESH_FN, 2, keys[0], keys[1]], 3 + 2 + 3)
        if len(self._specs) > 100_000:
            self._specs.clear()
        self._specs[cache_id] = spec
        return spec

    def keys_for(self, key_id: str, limits: KeyLimits) -> tuple[list[str], list[int]]:
        """The script keys of a key (all under its hash tag) and the window sizes settle needs."""
        spec = self.spec_for(key_id, limits)
        return spec.keys, spec.sizes

    async def _send(self, payload: bytes, slot: int) -> Any:
        """An encoded FCALL; when the server has lost the functions they are loaded again and it is resent."""
        try:
            return await self.router.call(payload, slot)
        except NoScriptError:
            await self._load(force=True)
            return await self.router.call(payload, slot)

    def _settle_failed(self, exc: Exception, payload: bytes, slot: int) -> None:
        if isinstance(exc, NoScriptError | Unavailable) or not isinstance(exc, ResponseError):
            if not isinstance(exc, NoScriptError):
                self._outage(exc)
            self._pending.append((payload, slot))  # retried (NOSCRIPT: after loading the functions again)
            self._kick_retries()
        else:
            log.error("ethereal limiter function failed: %s", exc)  # a bug, not an outage: no retry

    def _kick_retries(self) -> None:
        if self._pending and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_settles())

    async def _load(self, *, force: bool = False) -> None:
        """FUNCTION LOAD REPLACE on every master (concurrent callers share one load)."""
        if self._loaded and not force:
            return
        if self._loading is None:
            self._loading = asyncio.ensure_future(self.router.everywhere("FUNCTION", "LOAD", "REPLACE",
                                                                         self._library))
        loading = self._loading
        try:
            await asyncio.shield(loading)
            self._loaded = True
        finally:
            if loading.done():
                self._loading = None

    def _outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_outage_log >= 10.0:
            self._last_outage_log = now
            if self.fail_open:
                log.error("Redis limiter unreachable (%s: %s): FAILING OPEN, requests are admitted without "
                          "budgets or rate limits (ETHEREAL_LIMITS_FAIL_OPEN=true)", type(exc).__name__, exc)
            else:
                log.error("Redis limiter unreachable (%s: %s): failing closed, requests get 503 until it is "
                          "back (set ETHEREAL_LIMITS_FAIL_OPEN=true to admit them unlimited instead)",
                          type(exc).__name__, exc)

    # the interface
    async def start(self) -> None:
        try:
            await self._load()
        except RedisError as exc:
            self._outage(exc)  # the functions load lazily once Redis answers
        self._epoch_task = asyncio.get_running_loop().create_task(self._watch_epochs())

    # Redis loss: detection (epoch.lua), re-announce (restore.lua + settles again), exact seed (seed.lua)
    async def _epoch_targets(self) -> list[tuple[str, int]]:
        """One epoch key per master: on a cluster a key whose slot that master serves."""
        router = self.router
        if not isinstance(router, Cluster):
            return [(f"{LAYOUT}epoch", 0)]
        await router.refresh()
        targets: list[tuple[str, int]] = []
        for master in router.masters:
            for n in range(100_000):
                name = f"{LAYOUT}{{epoch:{n}}}"
                slot = key_slot(name.encode())
                if router.slots[slot] == master:
                    targets.append((name, slot))
                    break
        return targets

    def _same_node(self, a: int, b: int) -> bool:
        router = self.router
        return not isinstance(router, Cluster) or router.slots[a] == router.slots[b]

    async def _check_epoch(self, name: str, slot: int) -> int:
        """Ask the server of ``slot`` whether it lost its state since this replica last looked; on a
        loss give back what this replica held there. Returns the hold (server ms, 0 = none)."""
        if not self._loaded:
            await self._load()
        known = self._epochs.get(name, "")
        res = await self._send(encode_command(["FCALL", EPOCH_FN, 1, name, uuid.uuid4().hex, known,
                                               self.recovery_hold_ms]), slot)
        current = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        self._epochs[name] = current
        if res[2]:
            log.warning("Redis lost its state (epoch %s -> %s): giving back this replica's reservations in flight "
                        "and recent settles", known, current)
            await self._reannounce(slot)
        return int(res[1])

    async def _epoch_for(self, slot: int) -> int:
        async with self._epoch_lock:
            if not self._epoch_keys:
                self._epoch_keys = await self._epoch_targets()
            for name, eslot in self._epoch_keys:
                if self._same_node(slot, eslot):
                    return await self._check_epoch(name, eslot)
            self._epoch_keys = []  # the slot map changed
            return 0

    async def _watch_epochs(self) -> None:
        while True:
            await asyncio.sleep(EPOCH_POLL_S)
            try:
                async with self._epoch_lock:
                    if not self._epoch_keys:
                        self._epoch_keys = await self._epoch_targets()
                    for name, slot in list(self._epoch_keys):
                        await self._check_epoch(name, slot)
            except (RedisError, OSError) as exc:
                self._epoch_keys = []
                self._outage(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Redis epoch check failed")

    async def _reannounce(self, slot: int) -> None:
        """Put back this replica's reservations in flight on the server of ``slot``, then send its
        recent settles there again (each counts once: settle.lua is idempotent per request id)."""
        by_key: dict[str, list[Admission]] = {}
        for adm in list(self._held.values()):
            if self._same_node(adm.spec.slot, slot):
                by_key.setdefault(adm.key_id, []).append(adm)
        calls: list[tuple[bytes, int]] = []
        for adms in by_key.values():
            spec: _Spec = adms[0].spec
            argv: list[Any] = [self.reservation_ttl_ms, STATE_TTL_MS, len(adms)]
            for a in adms:
                in_m = a.reserved_micro - a.output_micro
                argv += [a.token, a.input_tokens, in_m, a.reserved_tokens, a.reserved_micro, a.admitted_ms]
            calls.append((encode_command(["FCALL", RESTORE_FN, 3, *spec.keys[:3], *argv]), spec.slot))
        horizon = time.monotonic() - RECENT_SETTLES_S
        settles = [(payload, s_slot) for at, s_slot, payload in list(self._recent)
                   if at >= horizon and self._same_node(s_slot, slot)]
        # reservations first (each key's in one call), then the settles; pipelined, in batches
        for batch in (calls, settles):
            for i in range(0, len(batch), 500):
                await asyncio.gather(*(self._send(payload, s) for payload, s in batch[i:i + 500]))
        if calls or settles:
            log.warning("gave back %d reservation(s) of %d key(s) and %d recent settle(s) after the loss",
                        sum(len(v) for v in by_key.values()), len(calls), len(settles))

    async def _seed(self, key_id: str, spec: _Spec) -> None:
        """Seed a key's spend from the database: rows that ended before the watermark as a sum (with
        what the key's unsettled batches hold), the recent ones one by one (seed.lua)."""
        hold = await self._epoch_for(spec.slot)
        since = time.time() - SEED_WINDOW_S
        base_t, base_m, rows = await self.seed_rows(key_id, since)
        argv: list[Any] = [base_t, base_m, int(since * 1000), hold, self.keep_ms, STATE_TTL_MS, len(rows)]
        for rid, tokens, micro in rows:
            argv += [rid, tokens, micro]
        await self._send(encode_command(["FCALL", SEED_FN, 3, *spec.keys[:3], *argv]), spec.slot)

    async def admit(self, key: KeyRecord, *, model: str | None, input_tokens: int, max_tokens: int,
                    price_in: float = 0.0, price_out: float = 0.0, input_micro: int | None = None,
                    output_micro: int | None = None, request_id: str | None = None) -> Admission:
        limits = self.limits_for(key)
        if limits.empty:
            return Admission(key_id=key.id)
        in_t, allow_t = max(0, int(input_tokens)), max(0, int(max_tokens))
        in_m = self.price(in_t, price_in) if input_micro is None else max(0, int(input_micro))
        allow_m = self.price(allow_t, price_out) if output_micro is None else max(0, int(output_micro))
        return await self._admit(key, limits, self.spec_for(key.id, limits), in_t, allow_t, in_m, allow_m,
                                 request_id)

    async def admit_count(self, key: KeyRecord) -> Admission:
        limits = self.count_limits_for(key)
        if limits.empty:
            return Admission(key_id=key.id)
        return await self._admit(key, limits, self.spec_for(key.id, limits, count=True), 0, 0, 0, 0)

    async def _admit(self, key: KeyRecord, limits: KeyLimits, spec: _Spec, in_t: int, allow_t: int, in_m: int,
                     allow_m: int, request_id: str | None = None) -> Admission:
        rid = (request_id or os.urandom(16).hex()) if limits.reserving else ""
        try:
            if not self._loaded:
                await self._load()
            payload = b"".join((spec.admit_head, _args((rid, in_t, allow_t, in_m, allow_m)), spec.admit_tail))
            res = await self._send(payload, spec.slot)
            for _ in range(2):
                if res[0] != NEED_SEED:
                    break
                await self._seed(key.id, spec)
                res = await self._send(payload, spec.slot)
            if res[0] == NEED_SEED:
                raise Unavailable("the key's spend could not be seeded")
        except (RedisError, OSError) as exc:
            if isinstance(exc, Redirect) and not self.router.cluster:
                log.error("ETHEREAL_REDIS_URL names a node of a Redis Cluster (it answered %s): use "
                          "redis+cluster://host:port,... (docs/limits.md)", exc)
            elif isinstance(exc, ResponseError) and not isinstance(exc, Unavailable | NoScriptError):
                log.error("ethereal limiter function failed: %s", exc)
            self._outage(exc)
            if self.fail_open:
                return Admission(key_id=key.id)
            raise unavailable() from None
        if self._pending:
            self._kick_retries()
        code = res[0]
        now = res[8]
        if code != OK:
            raise refusal(code, res[1], limits, res[9], now)
        req = (res[2], res[3], res[4]) if res[2] >= 0 else None
        tok = (res[5], res[6], res[7]) if res[5] >= 0 else None
        adm = Admission(key_id=key.id, reserved_tokens=in_t + allow_t, reserved_micro=in_m + allow_m,
                        headers=ratelimit_headers(req, tok), token=rid, limited=True, input_tokens=in_t,
                        admitted_ms=now, spec=spec, output_micro=allow_m)
        if limits.budget_tokens is not None or limits.budget_micro is not None:
            self._held[rid] = adm  # given back (restore.lua) if Redis loses it while in flight
        return adm

    async def settle(self, admission: Admission, *, tokens: int, cost_micro: int,
                     ended_at: float | None = None) -> None:
        if not admission.limited or admission.settled:
            return
        admission.settled = True
        spec: _Spec = admission.spec
        ended_ms = int((time.time() if ended_at is None else ended_at) * 1000)
        payload = b"".join((spec.settle_head, _args((admission.token, int(tokens), int(cost_micro),
                                                      admission.admitted_ms, admission.input_tokens, ended_ms)),
                            spec.settle_tail))
        if self._held.pop(admission.token, None) is not None:
            # sent again if Redis loses it before the usage row is in the database (idempotent)
            recent = self._recent
            now = time.monotonic()
            while recent and recent[0][0] < now - RECENT_SETTLES_S:
                recent.popleft()
            recent.append((now, spec.slot, payload))
        # Sent without waiting for the reply: this worker's later commands (the key's next admit)
        # run after it on the same connection; failures are retried from the error callback.
        slot = spec.slot
        try:
            await self.router.cast(payload, slot, lambda exc: self._settle_failed(exc, payload, slot))
        except (RedisError, OSError) as exc:
            self._outage(exc)
            self._pending.append((payload, slot))

    async def refresh(self, admission: Admission) -> None:
        if not admission.limited or admission.settled or not admission.token:
            return
        spec: _Spec = admission.spec
        payload = b"".join((spec.refresh_head, _args((admission.token, self.reservation_ttl_ms, STATE_TTL_MS))))
        try:
            await self.router.cast(payload, spec.slot, self._refresh_failed)
        except (RedisError, OSError) as exc:
            self._outage(exc)  # the next refresh tries again; the ttl leaves room for a few misses

    def _refresh_failed(self, exc: Exception) -> None:
        if isinstance(exc, NoScriptError):
            self._loaded = False  # loaded again by the next admit
        elif isinstance(exc, ResponseError) and not isinstance(exc, Unavailable):
            log.error("ethereal limiter refresh failed: %s", exc)
        else:
            self._outage(exc)

    async def charge(self, key: KeyRecord, *, tokens: int, cost_micro: int, check: bool) -> None:
        if not self.budgeted(key):
            return
        limits = self.limits_for(key)
        b = f"{LAYOUT}{{k:{key.id}}}:b"
        budget = [-1 if limits.budget_tokens is None else limits.budget_tokens,
                  -1 if limits.budget_micro is None else limits.budget_micro]
        slot = key_slot(f"k:{key.id}".encode())
        try:
            if not self._loaded:
                await self._load()
            argv: list[Any] = [int(tokens), int(cost_micro), *budget, int(check), 0, 0, 0, STATE_TTL_MS]
            payload = _args(["FCALL", CHARGE_FN, 1, b, *argv], 3 + 1 + len(argv))
            res = await self._send(payload, slot)
            if res[0] == NEED_SEED:
                await self._seed(key.id, self.spec_for(key.id, limits))
                res = await self._send(payload, slot)
        except (RedisError, OSError) as exc:
            self._outage(exc)
            if check and not self.fail_open:
                raise unavailable() from None
            if not check:
                # the batch is settled in the database already; a later seed reads it from there
                log.warning("could not move key %s spend by %d micro-USD (Redis unreachable)", key.id, cost_micro)
            return
        if res[0] != OK:
            raise refusal(res[0], 0, limits, 0, 0)

    async def _retry_settles(self) -> None:
        while self._pending:
            payload, slot = self._pending[0]
            try:
                await self._send(payload, slot)
            except (Unavailable, NoScriptError):
                await asyncio.sleep(1.0)
                continue
            except ResponseError:
                log.exception("ethereal limiter settle failed on retry")
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
                continue
            self._pending.popleft()

    async def snapshot(self, key_id: str) -> dict[str, int]:
        """Spent and held totals of a key (tests, the admin API)."""
        tag = f"{LAYOUT}{{k:{key_id}}}"
        slot = key_slot(f"k:{key_id}".encode())
        # on the pipelined connection: after this worker's settles
        values = await self.router.call(encode_command(("HMGET", f"{tag}:b", "st", "sm", "ft", "fm")), slot)
        in_flight = await self.router.call(encode_command(("ZCARD", f"{tag}:z")), slot)
        st, sm, ft, fm = (int(v) if v is not None else 0 for v in values)
        return {"spent_tokens": st, "spent_micro": sm, "held_tokens": ft, "held_micro": fm, "in_flight": in_flight}

    async def close(self) -> None:
        for task in (self._retry_task, self._epoch_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                    await task
        await self.router.close()  # waits (bounded) for settles still on the wire
