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
from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord
from ethereal.limits import (
    CAP_HELD,
    CAP_SEED,
    CAP_SPENT,
    HELD,
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
from ethereal.spend import enforce
from ethereal.spend.enforce import CapSet, key_tag
from ethereal.spend.periods import period_start

log = logging.getLogger("ethereal.limits")

LAYOUT = "ethereal:v1:"
STATE_TTL_MS = 7 * 24 * 3600 * 1000  # idle keys' counters expire; spend is re-seeded from the database
_MAX_PENDING_SETTLES = 100_000
VERSION = 4
LIBRARY = f"ethereal_limits_v{VERSION}"
(
    ADMIT_FN,
    SETTLE_FN,
    REFRESH_FN,
    CHARGE_FN,
    SEED_FN,
    RESTORE_FN,
    EPOCH_FN,
    SPEND_SEED_FN,
    SPEND_CHARGE_FN,
    SPEND_RESTORE_FN,
) = (
    f"ethereal_{name}_v{VERSION}"
    for name in (
        "admit",
        "settle",
        "refresh",
        "charge",
        "seed",
        "restore",
        "epoch",
        "spend_seed",
        "spend_charge",
        "spend_restore",
    )
)
_SCRIPTS = (
    (ADMIT_FN, "admit.lua"),
    (SETTLE_FN, "settle.lua"),
    (REFRESH_FN, "refresh.lua"),
    (CHARGE_FN, "charge.lua"),
    (SEED_FN, "seed.lua"),
    (RESTORE_FN, "restore.lua"),
    (EPOCH_FN, "epoch.lua"),
    (SPEND_SEED_FN, "spend_seed.lua"),
    (SPEND_CHARGE_FN, "spend_charge.lua"),
    (SPEND_RESTORE_FN, "spend_restore.lua"),
)
_NO_LIMITS = KeyLimits(None, None, None, ())
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

    __slots__ = (
        "admit_head",
        "admit_tail",
        "cap_heads",
        "cap_keys",
        "const1",
        "const1_enc",
        "const2",
        "const2_enc",
        "keys",
        "limits",
        "owner",
        "refresh_head",
        "settle_head",
        "settle_tail",
        "settle_tail_enc",
        "sizes",
        "slot",
        "tag",
    )

    def __init__(
        self,
        limits: KeyLimits,
        keys: list[str],
        sizes: list[int],
        const1: list[Any],
        const2: list[Any],
        slot: int,
        tag: str = "",
    ) -> None:
        self.limits, self.keys, self.sizes, self.const1, self.const2 = limits, keys, sizes, const1, const2
        self.slot = slot
        self.tag = tag
        self.owner = ""
        self.admit_head = self.admit_tail = self.settle_head = self.settle_tail = self.refresh_head = b""
        self.const1_enc = self.const2_enc = self.settle_tail_enc = b""
        # spend limits: the spender's state on this tag (admit.lua's P, Pz, Ps) and the command heads
        # per number of caps
        self.cap_keys = [f"{LAYOUT}{{{tag}}}:p", f"{LAYOUT}{{{tag}}}:pz", f"{LAYOUT}{{{tag}}}:ps"]
        self.cap_heads: dict[tuple[str, int], bytes] = {}

    def admit_with_caps(self, ncap: int) -> bytes:
        head = self.cap_heads.get(("a", ncap))
        if head is None:
            keys = [*self.keys, *self.cap_keys]
            head = _args(
                ["FCALL", ADMIT_FN, len(keys), *keys],
                3 + len(keys) + 14 + 4 * len(self.limits.windows) + 2 * ncap,
            )
            self.cap_heads[("a", ncap)] = head
        return head

    def settle_with_caps(self, ncap: int) -> bytes:
        head = self.cap_heads.get(("s", ncap))
        if head is None:
            keys = [*self.keys, *self.cap_keys]
            head = _args(
                ["FCALL", SETTLE_FN, len(keys), *keys], 3 + len(keys) + 10 + len(self.sizes) + 1 + ncap
            )
            self.cap_heads[("s", ncap)] = head
        return head


def _script(name: str) -> str:
    return (resources.files("ethereal.limits") / "lua" / name).read_text(encoding="utf-8")


def library() -> str:
    """The Redis Functions library: each script's body becomes one function taking (KEYS, ARGV)."""
    parts = [f"#!lua name={LIBRARY}"]
    for fn, name in _SCRIPTS:
        parts.append(f"redis.register_function('{fn}', function(KEYS, ARGV)\n{_script(name)}\nend)")
    return "\n".join(parts)


class RedisLimiter(BaseLimiter):
    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = False,
        socket_timeout: float = 2.0,
        recovery_hold: float = 2.0,
        **kwargs: Any,
    ) -> None:
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
            self.router = Cluster(
                list(target.nodes),
                target.pipe_params(),
                timeout=socket_timeout,
                connect_timeout=connect_timeout,
            )
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
    @staticmethod
    def _prefix(key_id: str, owner: str | None) -> tuple[str, str]:
        """(hash tag, key name prefix) of a key's state: tagged by its person (spend/enforce.py), so
        the key's and its person's state are in one slot; a key nobody owns keeps ``{k:<key_id>}``."""
        tag = key_tag(owner, key_id)
        if owner:
            return tag, f"{LAYOUT}{{{tag}}}:k:{key_id}"
        return tag, f"{LAYOUT}{{{tag}}}"

    def spec_for(
        self, key_id: str, limits: KeyLimits, *, count: bool = False, owner: str | None = None
    ) -> _Spec:
        """The key's script keys and the constant parts of its commands, encoded once per key and limits."""
        cache_id = key_id if not count else key_id + "#count"
        found = self._specs.get(cache_id)
        if found is not None and found.limits is limits and found.owner == (owner or ""):
            return found
        hash_tag, tag = self._prefix(key_id, owner)
        keys = [f"{tag}:b", f"{tag}:z", f"{tag}:s"] + [
            f"{tag}:w:{w.name}:{w.window_ms}:{w.bucket_ms}" for w in limits.windows
        ]
        sizes = [n for w in limits.windows for n in (w.window_ms, w.bucket_ms)]
        const1 = [
            -1 if limits.budget_tokens is None else limits.budget_tokens,
            -1 if limits.budget_micro is None else limits.budget_micro,
            -1 if limits.max_concurrency is None else limits.max_concurrency,
            self.reservation_ttl_ms,
        ]
        const2: list[Any] = [STATE_TTL_MS, len(limits.windows)]
        for w in limits.windows:
            const2 += [
                w.window_ms,
                w.bucket_ms,
                -1 if w.requests is None else w.requests,
                -1 if w.tokens is None else w.tokens,
            ]
        spec = _Spec(limits, keys, sizes, const1, const2, key_slot(hash_tag.encode()), hash_tag)
        spec.owner = owner or ""
        n_admit = 3 + len(keys) + 14 + 4 * len(limits.windows)
        spec.admit_head = _args(["FCALL", ADMIT_FN, len(keys), *keys], n_admit)
        spec.admit_tail = _args([*const1, 0, 0, 0, *const2])
        spec.const1_enc = _args(const1)
        spec.const2_enc = _args(const2)
        n_settle = 3 + len(keys) + 10 + len(sizes)
        spec.settle_head = _args(["FCALL", SETTLE_FN, len(keys), *keys], n_settle)
        budgeted = int(limits.budget_tokens is not None or limits.budget_micro is not None)
        spec.settle_tail = _args([self.keep_ms, budgeted, STATE_TTL_MS, len(limits.windows), *sizes])
        spec.refresh_head = _args(["FCALL", REFRESH_FN, 2, keys[0], keys[1]], 3 + 2 + 3)
        if len(self._specs) > 100_000:
            self._specs.clear()
        self._specs[cache_id] = spec
        return spec

    def keys_for(
        self, key_id: str, limits: KeyLimits, owner: str | None = None
    ) -> tuple[list[str], list[int]]:
        """The script keys of a key (all under its hash tag) and the window sizes settle needs."""
        spec = self.spec_for(key_id, limits, owner=owner)
        return spec.keys, spec.sizes

    def pool_spec(self, tag: str) -> _Spec:
        """A pooled cap's spec: no key limits, only the pool's spender state on its own tag."""
        found = self._specs.get("#" + tag)
        if found is not None:
            return found
        prefix = f"{LAYOUT}{{{tag}}}:pool"
        keys = [f"{prefix}:b", f"{prefix}:z", f"{prefix}:s"]
        const1 = [-1, -1, -1, self.reservation_ttl_ms]
        const2: list[Any] = [STATE_TTL_MS, 0]
        spec = _Spec(_NO_LIMITS, keys, [], const1, const2, key_slot(tag.encode()), tag)
        spec.const1_enc = _args(const1)
        spec.const2_enc = _args(const2)
        spec.settle_tail = _args([self.keep_ms, 0, STATE_TTL_MS, 0])
        spec.refresh_head = b""
        self._specs["#" + tag] = spec
        return spec

    async def _send(self, payload: bytes, slot: int) -> Any:
        """An encoded FCALL; when the server has lost the functions they are loaded again and it is resent."""
        try:
            return await self.router.call(payload, slot)
        except NoScriptError:
            await self._load(force=True)
            return await self.router.call(payload, slot)

    def _on_settle_failure(self, payload: bytes, slot: int) -> Any:
        def failed(exc: Exception) -> None:
            self._settle_failed(exc, payload, slot)

        return failed

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
            self._loading = asyncio.ensure_future(
                self.router.everywhere("FUNCTION", "LOAD", "REPLACE", self._library)
            )
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
                log.error(
                    "Redis limiter unreachable (%s: %s): FAILING OPEN, requests are admitted without "
                    "budgets or rate limits (ETHEREAL_LIMITS_FAIL_OPEN=true)",
                    type(exc).__name__,
                    exc,
                )
            else:
                log.error(
                    "Redis limiter unreachable (%s: %s): failing closed, requests get 503 until it is "
                    "back (set ETHEREAL_LIMITS_FAIL_OPEN=true to admit them unlimited instead)",
                    type(exc).__name__,
                    exc,
                )

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
        res = await self._send(
            encode_command(["FCALL", EPOCH_FN, 1, name, uuid.uuid4().hex, known, self.recovery_hold_ms]), slot
        )
        current = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        self._epochs[name] = current
        if res[2]:
            log.warning(
                "Redis lost its state (epoch %s -> %s): giving back this replica's reservations in flight "
                "and recent settles",
                known,
                current,
            )
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
        by_spender: dict[str, tuple[_Spec, list[Admission]]] = {}
        for adm in list(self._held.values()):
            if adm.caps is not None and self._same_node(adm.spec.slot, slot):
                by_spender.setdefault(adm.caps.tag, (adm.spec, []))[1].append(adm)
            for pool, _fields in adm.pools or ():
                pspec = self.pool_spec(pool.tag)
                if self._same_node(pspec.slot, slot):
                    by_spender.setdefault(pool.tag, (pspec, []))[1].append(adm)
            budgeted = adm.spec.limits.budget_tokens is not None or adm.spec.limits.budget_micro is not None
            if budgeted and self._same_node(adm.spec.slot, slot):
                by_key.setdefault(adm.key_id, []).append(adm)
        calls: list[tuple[bytes, int]] = []
        for spec_of, adms in by_spender.values():
            cargv: list[Any] = [self.reservation_ttl_ms, STATE_TTL_MS, len(adms)]
            for a in adms:
                cargv += [a.token, a.reserved_micro - a.output_micro, a.reserved_micro, a.admitted_ms]
            calls.append(
                (encode_command(["FCALL", SPEND_RESTORE_FN, 3, *spec_of.cap_keys, *cargv]), spec_of.slot)
            )
        for adms in by_key.values():
            spec: _Spec = adms[0].spec
            argv: list[Any] = [self.reservation_ttl_ms, STATE_TTL_MS, len(adms)]
            for a in adms:
                in_m = a.reserved_micro - a.output_micro
                argv += [a.token, a.input_tokens, in_m, a.reserved_tokens, a.reserved_micro, a.admitted_ms]
            calls.append((encode_command(["FCALL", RESTORE_FN, 3, *spec.keys[:3], *argv]), spec.slot))
        horizon = time.monotonic() - RECENT_SETTLES_S
        settles = [
            (payload, s_slot)
            for at, s_slot, payload in list(self._recent)
            if at >= horizon and self._same_node(s_slot, slot)
        ]
        # reservations first (each key's in one call), then the settles; pipelined, in batches
        for batch in (calls, settles):
            for i in range(0, len(batch), 500):
                await asyncio.gather(*(self._send(payload, s) for payload, s in batch[i : i + 500]))
        if calls or settles:
            log.warning(
                "gave back %d reservation(s) of %d key(s) and %d recent settle(s) after the loss",
                sum(len(v) for v in by_key.values()),
                len(calls),
                len(settles),
            )

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
            spec = self.spec_for(key.id, limits, owner=key.owner)
            if plan is None:
                return await self._admit(key, limits, spec, in_t, allow_t, in_m, allow_m, request_id)
            rid = request_id or os.urandom(16).hex()
            if not plan.pools:
                return await self._admit(key, limits, spec, in_t, allow_t, in_m, allow_m, rid, plan.own)
            # shared pools: a second reserve call on each pool's tag, undone when any call refuses
            calls = [
                self._admit(key, limits, spec, in_t, allow_t, in_m, allow_m, rid, plan.own, force_rid=True)
            ]
            calls += [
                self._admit(key, _NO_LIMITS, self.pool_spec(pool.tag), 0, 0, in_m, allow_m, rid, pool)
                for pool in plan.pools
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                for r in results:
                    if isinstance(r, Admission):
                        await self.settle(r, tokens=0, cost_micro=0)
                raise failed
            adm = results[0]
            assert isinstance(adm, Admission)
            adm.pools = []
            for pool_adm in results[1:]:
                assert isinstance(pool_adm, Admission)
                adm.pools.append((pool_adm.caps, pool_adm.cap_fields))
                adm.headers.extend(pool_adm.headers)
            self._held[rid] = adm  # the whole admission (its pools too) is what a Redis loss gives back
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

    async def admit_count(self, key: KeyRecord) -> Admission:
        limits = self.count_limits_for(key)
        if limits.empty:
            return Admission(key_id=key.id)
        return await self._admit(
            key, limits, self.spec_for(key.id, limits, count=True, owner=key.owner), 0, 0, 0, 0
        )

    async def _seed_caps(self, spec: _Spec, caps: CapSet, fields: tuple[str, ...], need: list[int]) -> None:
        """Seed cap counters from the records (spend_seed.lua): the period's rows that ended before
        a watermark as a sum, the newer ones by request id, as the key seed does."""
        hold = await self._epoch_for(spec.slot)
        now = time.time()
        since = now - SEED_WINDOW_S
        for i in need:
            if not 0 < i <= len(caps.caps):
                continue
            cap = caps.caps[i - 1]
            start = period_start(cap.check.period, now)
            base, rows = await self.seed_cap(cap.seed_dim, cap.seed_value, start, since)
            argv: list[Any] = [fields[i - 1], base, int(since * 1000), hold, STATE_TTL_MS, len(rows)]
            for rid, micro in rows:
                argv += [rid, micro]
            await self._send(encode_command(["FCALL", SPEND_SEED_FN, 3, *spec.cap_keys, *argv]), spec.slot)

    async def _admit(
        self,
        key: KeyRecord,
        limits: KeyLimits,
        spec: _Spec,
        in_t: int,
        allow_t: int,
        in_m: int,
        allow_m: int,
        request_id: str | None = None,
        caps: CapSet | None = None,
        force_rid: bool = False,
    ) -> Admission:
        rid = (
            (request_id or os.urandom(16).hex()) if limits.reserving or caps is not None or force_rid else ""
        )
        fields: tuple[str, ...] = ()
        try:
            if not self._loaded:
                await self._load()
            if caps is None:
                payload = b"".join(
                    (spec.admit_head, _args((rid, in_t, allow_t, in_m, allow_m)), spec.admit_tail)
                )
            else:
                fields = caps.fields(time.time())
                flat: list[Any] = []
                for f, cap in zip(fields, caps.caps, strict=True):
                    flat += [f, cap.check.amount_micro]
                payload = b"".join(
                    (
                        spec.admit_with_caps(len(fields)),
                        _args((rid, in_t, allow_t, in_m, allow_m)),
                        spec.const1_enc,
                        _args((len(fields), 0, 0)),
                        spec.const2_enc,
                        _args(flat),
                    )
                )
            res = await self._send(payload, spec.slot)
            for _ in range(3):
                if res[0] == NEED_SEED:
                    await self._seed(key.id, spec)
                elif res[0] == CAP_SEED and caps is not None:
                    await self._seed_caps(spec, caps, fields, enforce.parse_list(res[10]))
                else:
                    break
                res = await self._send(payload, spec.slot)
            if res[0] in (NEED_SEED, CAP_SEED):
                raise Unavailable("the key's spend could not be seeded")
        except (RedisError, OSError) as exc:
            if isinstance(exc, Redirect) and not self.router.cluster:
                log.error(
                    "ETHEREAL_REDIS_URL names a node of a Redis Cluster (it answered %s): use "
                    "redis+cluster://host:port,... (docs/limits.md)",
                    exc,
                )
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
            if caps is not None:
                if code == CAP_SPENT:
                    over = enforce.parse_list(res[10])
                    self.gate.watch.exceeded(caps, over, now / 1000.0)
                    raise enforce.refusal(caps, over, now / 1000.0)
                if code == HELD and res[9] == CAP_HELD:
                    raise enforce.held(res[1])
            raise refusal(code, res[1], limits, res[9], now)
        req = (res[2], res[3], res[4]) if res[2] >= 0 else None
        tok = (res[5], res[6], res[7]) if res[5] >= 0 else None
        headers = ratelimit_headers(req, tok)
        if caps is not None:
            spent = enforce.parse_list(res[10])
            headers += enforce.headers(caps, spent, now / 1000.0)
            self.gate.watch.observe(caps, spent, now / 1000.0)
        adm = Admission(
            key_id=key.id,
            reserved_tokens=in_t + allow_t,
            reserved_micro=in_m + allow_m,
            headers=headers,
            token=rid,
            limited=True,
            input_tokens=in_t,
            admitted_ms=now,
            spec=spec,
            output_micro=allow_m,
            caps=caps,
            cap_fields=fields,
        )
        if limits.budget_tokens is not None or limits.budget_micro is not None or caps is not None:
            self._held[rid] = (
                adm  # given back (restore.lua, spend_restore.lua) if Redis loses it while in flight
            )
        return adm

    def _settle_payload(
        self,
        spec: _Spec,
        admission: Admission,
        tokens: int,
        cost_micro: int,
        ended_ms: int,
        caps: CapSet | None,
        fields: tuple[str, ...],
    ) -> bytes:
        args = _args(
            (
                admission.token,
                int(tokens),
                int(cost_micro),
                admission.admitted_ms,
                admission.input_tokens,
                ended_ms,
            )
        )
        if caps is None:
            return b"".join((spec.settle_head, args, spec.settle_tail))
        return b"".join(
            (spec.settle_with_caps(len(fields)), args, spec.settle_tail, _args((len(fields), *fields)))
        )

    async def settle(
        self, admission: Admission, *, tokens: int, cost_micro: int, ended_at: float | None = None
    ) -> None:
        if not admission.limited or admission.settled:
            return
        admission.settled = True
        spec: _Spec = admission.spec
        ended_ms = int((time.time() if ended_at is None else ended_at) * 1000)
        if admission.caps is None and not admission.pools:  # no spend limit: the common case
            payload = b"".join(
                (
                    spec.settle_head,
                    _args(
                        (
                            admission.token,
                            int(tokens),
                            int(cost_micro),
                            admission.admitted_ms,
                            admission.input_tokens,
                            ended_ms,
                        )
                    ),
                    spec.settle_tail,
                )
            )
            extra: list[tuple[bytes, int]] = []
        else:
            payload = self._settle_payload(
                spec, admission, tokens, cost_micro, ended_ms, admission.caps, admission.cap_fields
            )
            extra = [
                (
                    self._settle_payload(
                        self.pool_spec(pool.tag), admission, 0, cost_micro, ended_ms, pool, fields
                    ),
                    self.pool_spec(pool.tag).slot,
                )
                for pool, fields in admission.pools or ()
            ]
        if self._held.pop(admission.token, None) is not None:
            # sent again if Redis loses it before the usage row is in the database (idempotent)
            recent = self._recent
            now = time.monotonic()
            while recent and recent[0][0] < now - RECENT_SETTLES_S:
                recent.popleft()
            recent.append((now, spec.slot, payload))
            for body, slot in extra:
                recent.append((now, slot, body))
        # Sent without waiting for the reply: this worker's later commands (the key's next admit)
        # run after it on the same connection; failures are retried from the error callback.
        slot = spec.slot
        try:
            await self.router.cast(payload, slot, lambda exc: self._settle_failed(exc, payload, slot))
        except (RedisError, OSError) as exc:
            self._outage(exc)
            self._pending.append((payload, slot))
        for body, pslot in extra:
            try:
                await self.router.cast(body, pslot, self._on_settle_failure(body, pslot))
            except (RedisError, OSError) as exc:
                self._outage(exc)
                self._pending.append((body, pslot))

    async def refresh(self, admission: Admission) -> None:
        if not admission.limited or admission.settled or not admission.token:
            return
        spec: _Spec = admission.spec
        argv = (admission.token, self.reservation_ttl_ms, STATE_TTL_MS)
        calls = []
        if admission.caps is None:
            calls.append((b"".join((spec.refresh_head, _args(argv))), spec.slot))
        else:
            calls.append(
                (
                    encode_command(
                        [
                            "FCALL",
                            REFRESH_FN,
                            4,
                            spec.keys[0],
                            spec.keys[1],
                            spec.cap_keys[1],
                            spec.cap_keys[0],
                            *argv,
                        ]
                    ),
                    spec.slot,
                )
            )
        for pool, _fields in admission.pools or ():
            pspec = self.pool_spec(pool.tag)
            calls.append(
                (
                    encode_command(
                        [
                            "FCALL",
                            REFRESH_FN,
                            4,
                            pspec.keys[0],
                            pspec.keys[1],
                            pspec.cap_keys[1],
                            pspec.cap_keys[0],
                            *argv,
                        ]
                    ),
                    pspec.slot,
                )
            )
        for payload, slot in calls:
            try:
                await self.router.cast(payload, slot, self._refresh_failed)
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
        hash_tag, prefix = self._prefix(key.id, key.owner)
        b = f"{prefix}:b"
        budget = [
            -1 if limits.budget_tokens is None else limits.budget_tokens,
            -1 if limits.budget_micro is None else limits.budget_micro,
        ]
        slot = key_slot(hash_tag.encode())
        try:
            if not self._loaded:
                await self._load()
            argv: list[Any] = [int(tokens), int(cost_micro), *budget, int(check), 0, 0, 0, STATE_TTL_MS]
            payload = _args(["FCALL", CHARGE_FN, 1, b, *argv], 3 + 1 + len(argv))
            res = await self._send(payload, slot)
            if res[0] == NEED_SEED:
                await self._seed(key.id, self.spec_for(key.id, limits, owner=key.owner))
                res = await self._send(payload, slot)
        except (RedisError, OSError) as exc:
            self._outage(exc)
            if check and not self.fail_open:
                raise unavailable() from None
            if not check:
                # the batch is settled in the database already; a later seed reads it from there
                log.warning(
                    "could not move key %s spend by %d micro-USD (Redis unreachable)", key.id, cost_micro
                )
            return
        if res[0] != OK:
            raise refusal(res[0], 0, limits, 0, 0)

    async def charge_caps(
        self, key: KeyRecord, *, cost_micro: int, check: bool, hold: str = "", release: bool = False
    ) -> None:
        plan = self.gate.plan(key)
        if plan is None or (not cost_micro and not release):
            return
        when = time.time()
        done: list[_Spec] = []
        try:
            if not self._loaded:
                await self._load()
            for caps in [c for c in (plan.own, *plan.pools) if c is not None]:
                spec = (
                    self.spec_for(key.id, self.limits_for(key), owner=key.owner)
                    if caps is plan.own
                    else self.pool_spec(caps.tag)
                )
                fields = caps.fields(when)
                flat: list[Any] = []
                for f, cap in zip(fields, caps.caps, strict=True):
                    flat += [f, cap.check.amount_micro]
                payload = encode_command(
                    [
                        "FCALL",
                        SPEND_CHARGE_FN,
                        1,
                        spec.cap_keys[0],
                        int(check),
                        int(cost_micro),
                        STATE_TTL_MS,
                        hold,
                        int(release),
                        len(fields),
                        *flat,
                    ]
                )
                res = await self._send(payload, spec.slot)
                if res[0] == CAP_SEED:
                    await self._seed_caps(spec, caps, fields, enforce.parse_list(res[1]))
                    res = await self._send(payload, spec.slot)
                if res[0] == CAP_SPENT:
                    over = enforce.parse_list(res[1])
                    self.gate.watch.exceeded(caps, over, when)
                    raise enforce.refusal(caps, over, when)
                if res[0] != OK:
                    raise Unavailable("the spend limit could not be seeded")
                done.append(spec)
        except (RedisError, OSError) as exc:
            self._outage(exc)
            if check:
                await self._release_holds(done, hold)
                if not self.fail_open:
                    raise unavailable() from None
            else:
                log.warning(
                    "could not move %s's spend-limit counters by %d micro-USD (Redis unreachable)",
                    key.id,
                    cost_micro,
                )
        except BaseException:
            if check:
                await self._release_holds(done, hold)
            raise

    async def _release_holds(self, done: list[_Spec], hold: str) -> None:
        """Give back a hold taken on some spenders before another refused (or Redis failed)."""
        for spec in done:
            with contextlib.suppress(RedisError, OSError):
                await self._send(
                    encode_command(
                        ["FCALL", SPEND_CHARGE_FN, 1, spec.cap_keys[0], 0, 0, STATE_TTL_MS, hold, 1, 0]
                    ),
                    spec.slot,
                )

    async def reseed_caps(
        self, spenders: set[tuple[str | None, str]], teams: set[str], now: float | None = None
    ) -> int:
        touched = 0
        for tag, fields in self.cap_fields(spenders, teams, time.time() if now is None else now).items():
            names = [*fields, *(f"S|{f}" for f in fields), *(f"W|{f}" for f in fields)]
            try:
                await self.router.call(
                    encode_command(["HDEL", f"{LAYOUT}{{{tag}}}:p", *names]), key_slot(tag.encode())
                )
            except (RedisError, OSError) as exc:
                self._outage(exc)
                log.warning("could not drop the spend-limit counters of %s after a re-price: %s", tag, exc)
                continue
            touched += 1
        return touched

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

    async def snapshot(self, key_id: str, owner: str | None = None) -> dict[str, int]:
        """Spent and held totals of a key (tests, the admin API)."""
        hash_tag, tag = self._prefix(key_id, owner)
        slot = key_slot(hash_tag.encode())
        # on the pipelined connection: after this worker's settles
        values = await self.router.call(encode_command(("HMGET", f"{tag}:b", "st", "sm", "ft", "fm")), slot)
        in_flight = await self.router.call(encode_command(("ZCARD", f"{tag}:z")), slot)
        st, sm, ft, fm = (int(v) if v is not None else 0 for v in values)
        return {
            "spent_tokens": st,
            "spent_micro": sm,
            "held_tokens": ft,
            "held_micro": fm,
            "in_flight": in_flight,
        }

    async def close(self) -> None:
        for task in (self._retry_task, self._epoch_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                    await task
        await self.router.close()  # waits (bounded) for settles still on the wire
