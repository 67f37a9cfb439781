"""The shared limiter: one EVALSHA of ``lua/admit.lua`` per request, one of ``settle.lua`` after it.

Every Redis key of one ethereal key carries the hash tag ``{k:<key_id>}`` so both scripts
run on Redis Cluster, and the layout version ``ethereal:v1:`` so replicas running a newer
layout never read an older one's counters. Scripts are loaded with SCRIPT LOAD and
reloaded on NOSCRIPT (a restarted or failed-over Redis).

Redis holds only hot counters: spend is seeded from the database (``store.spend_by_key``)
the first time a budgeted key is seen after Redis lost its state.

When Redis cannot be reached, requests are refused with 503 (fail closed) unless
``ETHEREAL_LIMITS_FAIL_OPEN=true``, in which case they are admitted unlimited; both are
logged. Settlements that fail are kept (bounded) and retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

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
from ethereal.limits.pipe import Pipe, encode_args

log = logging.getLogger("ethereal.limits")

LAYOUT = "ethereal:v1:"
STATE_TTL_MS = 7 * 24 * 3600 * 1000  # idle keys' counters expire; spend is re-seeded from the database
_MAX_PENDING_SETTLES = 100_000


def _args(args: Any, count: int | None = None) -> bytes:
    """RESP bulk strings of ``args``, behind an array header of ``count`` items when given."""
    body = encode_args(args)
    return body if count is None else b"*%d\r\n%s" % (count, body)


class _Spec:
    """One key's script keys and the pre-encoded constant parts of its admit and settle commands."""

    __slots__ = (
        "admit_head",
        "admit_sha",
        "admit_tail",
        "const1",
        "const2",
        "keys",
        "limits",
        "settle_head",
        "settle_sha",
        "settle_tail",
        "sizes",
    )

    def __init__(self, limits: KeyLimits, keys: list[str], sizes: list[int], const1: list[Any], const2: list[Any],
                 admit_sha: str | None, settle_sha: str | None) -> None:
        self.limits, self.keys, self.sizes, self.const1, self.const2 = limits, keys, sizes, const1, const2
        self.admit_sha, self.settle_sha = admit_sha, settle_sha
        self.admit_head = self.admit_tail = self.settle_head = self.settle_tail = b""


def _script(name: str) -> str:
    return (resources.files("ethereal.limits") / "lua" / name).read_text(encoding="utf-8")


class RedisLimiter(BaseLimiter):
    def __init__(self, url: str, *, fail_open: bool = False, max_connections: int = 8,
                 socket_timeout: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.fail_open = fail_open
        # the hot path (EVALSHA, SCRIPT LOAD) on one pipelined connection; redis.asyncio for pub/sub
        self.pipe = Pipe(url, timeout=socket_timeout, connect_timeout=min(1.0, socket_timeout))
        self.pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout, socket_timeout=socket_timeout,
            socket_connect_timeout=min(1.0, socket_timeout),
        )
        self.redis = aioredis.Redis(connection_pool=self.pool)
        self._admit_src, self._settle_src = _script("admit.lua"), _script("settle.lua")
        self._charge_src = _script("charge.lua")
        self._charge_sha: str | None = None
        self._admit_sha: str | None = None
        self._settle_sha: str | None = None
        self._pending: deque[bytes] = deque(maxlen=_MAX_PENDING_SETTLES)  # encoded settles to retry
        self._retry_task: asyncio.Task[None] | None = None
        self._last_outage_log = 0.0
        self._specs: dict[str, _Spec] = {}

    # plumbing
    def spec_for(self, key_id: str, limits: KeyLimits) -> _Spec:
        """The key's script keys and the constant parts of both commands, encoded once per key and limits."""
        found = self._specs.get(key_id)
        if found is not None and found.limits is limits and found.admit_sha == self._admit_sha \
                and found.settle_sha == self._settle_sha:
            return found
        tag = f"{LAYOUT}{{k:{key_id}}}"
        keys = [f"{tag}:b", f"{tag}:z"] + [f"{tag}:w:{w.name}:{w.window_ms}:{w.bucket_ms}" for w in limits.windows]
        sizes = [n for w in limits.windows for n in (w.window_ms, w.bucket_ms)]
        const1 = [-1 if limits.budget_tokens is None else limits.budget_tokens,
                  -1 if limits.budget_micro is None else limits.budget_micro,
                  -1 if limits.max_concurrency is None else limits.max_concurrency, self.reservation_ttl_ms]
        const2: list[Any] = [STATE_TTL_MS, len(limits.windows)]
        for w in limits.windows:
            const2 += [w.window_ms, w.bucket_ms, -1 if w.requests is None else w.requests,
                       -1 if w.tokens is None else w.tokens]
        spec = _Spec(limits, keys, sizes, const1, const2, self._admit_sha, self._settle_sha)
        if self._admit_sha is not None:
            n_admit = 3 + len(keys) + 14 + 4 * len(limits.windows)
            spec.admit_head = _args(["EVALSHA", self._admit_sha, len(keys), *keys], n_admit)
            spec.admit_tail = _args([*const1, 0, 0, 0, *const2])
        if self._settle_sha is not None:
            n_settle = 3 + len(keys) + 7 + len(sizes)
            spec.settle_head = _args(["EVALSHA", self._settle_sha, len(keys), *keys], n_settle)
            spec.settle_tail = _args([STATE_TTL_MS, len(limits.windows), *sizes])
        if len(self._specs) > 100_000:
            self._specs.clear()
        self._specs[key_id] = spec
        return spec

    def keys_for(self, key_id: str, limits: KeyLimits) -> tuple[list[str], list[int]]:
        """The script keys of a key (all under its hash tag) and the window sizes settle needs."""
        spec = self.spec_for(key_id, limits)
        return spec.keys, spec.sizes

    async def _eval(self, which: str, keys: list[str], argv: list[Any]) -> Any:
        """EVALSHA on the pipelined connection (the slow path: seeding, retries)."""
        sha = self._admit_sha if which == "admit" else self._settle_sha
        if sha is None:
            sha = await self._load(which)
        try:
            return await self.pipe.execute("EVALSHA", sha, len(keys), *keys, *argv)
        except NoScriptError:  # Redis restarted or SCRIPT FLUSH: load both again (settles follow admits)
            await self._load("settle" if which == "admit" else "admit")
            sha = await self._load(which)
            return await self.pipe.execute("EVALSHA", sha, len(keys), *keys, *argv)

    async def _send(self, payload: bytes) -> Any:
        """An encoded EVALSHA; on NOSCRIPT both scripts are loaded again and it is resent (same SHA1)."""
        pipe = self.pipe
        if not pipe.connected:
            await pipe.connection()
        try:
            return await pipe.send(payload)
        except NoScriptError:
            await self._load("settle")
            await self._load("admit")
            return await pipe.execute_raw(payload)

    def _settle_failed(self, exc: Exception, payload: bytes) -> None:
        if isinstance(exc, NoScriptError) or not isinstance(exc, ResponseError):
            if not isinstance(exc, NoScriptError):
                self._outage(exc)
            self._pending.append(payload)  # retried (NOSCRIPT: after loading the script again)
            self._kick_retries()
        else:
            log.error("settle.lua failed: %s", exc)  # a bug, not an outage: no retry

    def _kick_retries(self) -> None:
        if self._pending and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_settles())

    async def _load(self, which: str) -> str:
        src = self._admit_src if which == "admit" else self._settle_src
        raw = await self.pipe.execute("SCRIPT", "LOAD", src)
        sha = raw.decode() if isinstance(raw, bytes) else str(raw)
        if which == "admit":
            self._admit_sha = sha
        else:
            self._settle_sha = sha
        return sha

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
            await self._load("admit")
            await self._load("settle")
        except RedisError as exc:
            self._outage(exc)  # scripts load lazily once Redis answers

    async def admit(self, key: KeyRecord, *, model: str | None, input_tokens: int, max_tokens: int,
                    price_in: float, price_out: float) -> Admission:
        limits = self.limits_for(key)
        if limits.empty:
            return Admission(key_id=key.id)
        in_t, allow_t = max(0, int(input_tokens)), max(0, int(max_tokens))
        in_m, allow_m = self.price(in_t, price_in), self.price(allow_t, price_out)
        rid = os.urandom(16).hex() if limits.reserving else ""
        try:
            if self._admit_sha is None or self._settle_sha is None:
                await self._load("admit")
                await self._load("settle")
            spec = self.spec_for(key.id, limits)
            payload = b"".join((spec.admit_head, _args((rid, in_t, allow_t, in_m, allow_m)), spec.admit_tail))
            res = await self._send(payload)
            if res[0] == NEED_SEED:
                tokens, micro = await self.seed(key.id)
                argv = [rid, in_t, allow_t, in_m, allow_m, *spec.const1, 1, tokens, micro, *spec.const2]
                res = await self._eval("admit", spec.keys, argv)
        except (RedisError, OSError) as exc:
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
        return Admission(key_id=key.id, reserved_tokens=in_t + allow_t, reserved_micro=in_m + allow_m,
                         headers=ratelimit_headers(req, tok), token=rid, limited=True, input_tokens=in_t,
                         admitted_ms=now, spec=spec)

    async def settle(self, admission: Admission, *, tokens: int, cost_micro: int) -> None:
        if not admission.limited or admission.settled:
            return
        admission.settled = True
        spec: _Spec = admission.spec
        payload = b"".join((spec.settle_head, _args((admission.token, int(tokens), int(cost_micro),
                                                      admission.admitted_ms, admission.input_tokens)),
                            spec.settle_tail))
        # Sent without waiting for the reply: this worker's later commands (the key's next admit)
        # run after it on the same connection; failures are retried from the error callback.
        try:
            if not self.pipe.connected:
                await self.pipe.connection()
            self.pipe.send_nowait(payload, lambda exc: self._settle_failed(exc, payload), defer=True)
        except (RedisError, OSError) as exc:
            self._outage(exc)
            self._pending.append(payload)

    async def charge(self, key: KeyRecord, *, tokens: int, cost_micro: int, check: bool) -> None:
        if not self.budgeted(key):
            return
        limits = self.limits_for(key)
        b = f"{LAYOUT}{{k:{key.id}}}:b"
        budget = [-1 if limits.budget_tokens is None else limits.budget_tokens,
                  -1 if limits.budget_micro is None else limits.budget_micro]
        try:
            if self._charge_sha is None:
                self._charge_sha = await self._load_src(self._charge_src)
            argv: list[Any] = [int(tokens), int(cost_micro), *budget, int(check), 0, 0, 0, STATE_TTL_MS]
            res = await self._eval_charge(b, argv)
            if res[0] == NEED_SEED:
                seeded_tokens, seeded_micro = await self.seed(key.id)
                argv[5:8] = [1, seeded_tokens, seeded_micro]
                res = await self._eval_charge(b, argv)
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

    async def _load_src(self, src: str) -> str:
        raw = await self.pipe.execute("SCRIPT", "LOAD", src)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def _eval_charge(self, key: str, argv: list[Any]) -> Any:
        try:
            return await self.pipe.execute("EVALSHA", self._charge_sha, 1, key, *argv)
        except NoScriptError:
            self._charge_sha = await self._load_src(self._charge_src)
            return await self.pipe.execute("EVALSHA", self._charge_sha, 1, key, *argv)

    async def _retry_settles(self) -> None:
        while self._pending:
            payload = self._pending[0]
            try:
                await self._send(payload)
            except ResponseError:
                log.exception("settle.lua failed on retry")
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
                continue
            self._pending.popleft()

    async def snapshot(self, key_id: str) -> dict[str, int]:
        """Spent and held totals of a key (tests, the admin API)."""
        tag = f"{LAYOUT}{{k:{key_id}}}"
        values = await self.pipe.execute("HMGET", f"{tag}:b", "st", "sm", "ft", "fm")  # after this worker's settles
        in_flight = await self.pipe.execute("ZCARD", f"{tag}:z")
        st, sm, ft, fm = (int(v) if v is not None else 0 for v in values)
        return {"spent_tokens": st, "spent_micro": sm, "held_tokens": ft, "held_micro": fm, "in_flight": in_flight}

    async def close(self) -> None:
        for task in (self._retry_task,):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        await self.pipe.close()  # waits (bounded) for settles still on the wire
        await self.redis.aclose()
        await self.pool.disconnect()
