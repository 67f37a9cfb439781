"""Credential health shared by every replica through Redis.

Keys (one hash tag, so the poll's pipeline and the scripts are Redis-Cluster safe):

``{ethereal:up}:cool:<name>``   exists while the credential cools down (PX = the cooldown): a preference
``{ethereal:up}:rl:<name>``     exists while an upstream 429's retry-after runs (PX = that time): a wall
``{ethereal:up}:fails:<name>``  consecutive backoff failures (expires after 10 min)
``{ethereal:up}:off:<name>``    "<unix time>|<reason>": disabled (failed probe or an admin), 1 day TTL;
                                stored credentials also carry the flag in the database
``{ethereal:up}:rpm:<name>``    sorted set: the sliding 60 s request window of an RPM-capped credential
``{ethereal:up}:ver``           bumped on every admin change: replicas reload credentials at once

Cooldowns travel as remaining milliseconds (PTTL), never as wall-clock instants, so
clock skew between replicas does not matter. Every replica polls the keys of all
credentials in one pipelined round trip (default every 0.5 s) and writes on failure.
When Redis is unreachable the pool keeps working on in-process health.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ethereal import redisconn
from ethereal.upstream.pool import RPM_WINDOW, Credential, FailureKind, Health

log = logging.getLogger("ethereal.upstream")

TAG = "{ethereal:up}"
OFF_TTL = 86400

_FAILURE = """
local backoff = ARGV[1] == '1'
local delay = tonumber(ARGV[2])
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then pttl = 0 end
local rl = redis.call('PTTL', KEYS[3])
if rl < 0 then rl = 0 end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if backoff then
  if pttl > 0 then return {pttl, n, rl} end
  n = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 600000)
  delay = math.floor(math.min(tonumber(ARGV[3]) * 2 ^ (n - 1), tonumber(ARGV[4])))
end
if delay > pttl then
  redis.call('SET', KEYS[1], '1', 'PX', delay)
  pttl = delay
end
local wall = tonumber(ARGV[5])
if wall > rl then
  redis.call('SET', KEYS[3], '1', 'PX', wall)
  rl = wall
end
return {pttl, n, rl}
"""

_RPM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window + 1000)
return {1, 0}
"""


def key(kind: str, name: str = "") -> str:
    return f"{TAG}:{kind}:{name}" if name else f"{TAG}:{kind}"


class RedisHealth(Health):
    shared = True

    def __init__(self, url: str, client: aioredis.Redis | None = None) -> None:
        super().__init__()
        # a RedisCluster for redis+cluster:// URLs: every key here shares one hash tag, so the scripts
        # and the poll's pipeline each go to the one master owning that slot
        self.redis = client or redisconn.async_client(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._failure = self.redis.register_script(_FAILURE)
        self._rpm = self.redis.register_script(_RPM)
        self._version: bytes | None = None
        self._synced = False
        self._seq = 0
        self._tag = f"{os.getpid()}-{id(self):x}"
        self._warned = 0.0

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned > 10.0:
            self._warned = now
            log.warning("redis unavailable for upstream health (%s): %s; using in-process state", what, exc)

    async def failure(self, cred: Credential, kind: FailureKind, delay: float, base: float, cap: float,
                      wall: float | None = None) -> None:
        try:
            pttl, fails, rl = await self._failure(
                keys=[key("cool", cred.name), key("fails", cred.name), key("rl", cred.name)],
                args=[1 if kind.backs_off else 0, int(delay * 1000), int(base * 1000), int(cap * 1000),
                      int((wall or 0.0) * 1000)],
            )
        except RedisError as exc:
            self._warn("failure", exc)
            await super().failure(cred, kind, delay, base, cap, wall)
            return
        now = self.clock()
        cred.failures = int(fails)
        cred.cooldown_until = max(cred.cooldown_until, now + int(pttl) / 1000.0)
        if int(rl) > 0:
            cred.rate_limited_until = max(cred.rate_limited_until, now + int(rl) / 1000.0)

    async def success(self, cred: Credential) -> None:
        cred.failures = 0
        cred.cooldown_until = 0.0
        try:
            await self.redis.delete(key("fails", cred.name), key("cool", cred.name))
        except RedisError as exc:
            self._warn("success", exc)

    async def disable(self, cred: Credential, reason: str) -> None:
        now = time.time()
        cred.off_flag_at = now
        try:
            await self.redis.set(key("off", cred.name), f"{now:.3f}|{reason}", ex=OFF_TTL)
        except RedisError as exc:
            self._warn("disable", exc)
        await super().disable(cred, reason)

    async def enable(self, cred: Credential) -> None:
        cred.off_flag_at = 0.0
        try:
            await self.redis.delete(key("off", cred.name), key("cool", cred.name), key("fails", cred.name),
                                    key("rl", cred.name))
        except RedisError as exc:
            self._warn("enable", exc)
        await super().enable(cred)

    async def forget(self, name: str) -> None:
        try:
            await self.redis.delete(key("off", name), key("cool", name), key("fails", name), key("rpm", name),
                                    key("rl", name))
        except RedisError as exc:
            self._warn("forget", exc)

    async def take_rpm(self, cred: Credential, now: float) -> tuple[bool, float]:
        assert cred.rpm is not None
        self._seq += 1
        try:
            ok, wait_ms = await self._rpm(keys=[key("rpm", cred.name)],
                                          args=[cred.rpm, int(RPM_WINDOW * 1000), f"{self._tag}-{self._seq}"])
        except RedisError as exc:
            self._warn("rpm", exc)
            return await super().take_rpm(cred, now)
        if int(ok):
            cred.rpm_hits.append(now)  # for the admin view
            while cred.rpm_hits and cred.rpm_hits[0] <= now - RPM_WINDOW:
                cred.rpm_hits.popleft()
            return True, 0.0
        return False, int(wait_ms) / 1000.0

    async def sync(self, credentials: Iterable[Credential]) -> bool:
        creds = list(credentials)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for c in creds:
                    pipe.pttl(key("cool", c.name))
                    pipe.get(key("fails", c.name))
                    pipe.get(key("off", c.name))
                    pipe.pttl(key("rl", c.name))
                pipe.get(key("ver"))
                results = await pipe.execute()
        except RedisError as exc:
            self._warn("poll", exc)
            return False
        now = self.clock()
        for i, c in enumerate(creds):
            pttl, fails, off, rl = results[4 * i: 4 * i + 4]
            pttl, rl = int(pttl or 0), int(rl or 0)
            c.cooldown_until = now + pttl / 1000.0 if pttl > 0 else 0.0
            c.rate_limited_until = now + rl / 1000.0 if rl > 0 else 0.0
            c.failures = int(fails or 0)
            apply_off_flag(c, off)
        version = results[-1]
        changed = self._synced and version != self._version
        self._version, self._synced = version, True
        return changed

    async def bump_version(self) -> None:
        try:
            await self.redis.incr(key("ver"))
        except RedisError as exc:
            self._warn("version", exc)

    async def close(self) -> None:
        await self.redis.aclose()


def apply_off_flag(cred: Credential, raw: bytes | None) -> None:
    """A shared disabled flag: authoritative for the env credential; for a stored one, it
    counts only while newer than the stored row (an admin enable rewrites the row)."""
    if raw is None:
        cred.off_flag_at = 0.0
        if cred.source == "env" and not cred.enabled:
            cred.enabled, cred.disabled_reason = True, None  # enabled on another replica
        return
    text = raw.decode("utf-8", "replace")
    stamp, _, reason = text.partition("|")
    try:
        at = float(stamp)
    except ValueError:
        at = time.time()
    cred.off_flag_at = at
    if (cred.source == "env" or at > cred.store_updated_at) and cred.enabled:
        cred.enabled, cred.disabled_reason = False, reason or "disabled"
