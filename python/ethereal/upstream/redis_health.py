"""Credential health shared by every replica through Redis.

Keys (one hash tag, so the poll's pipeline and the scripts are Redis-Cluster safe):

``{ethereal:up}:cool:<name>``   exists while the credential cools down (PX = the cooldown): a preference
``{ethereal:up}:rl:<name>``     exists while an upstream 429's retry-after runs (PX = that time): a wall
                                (a 429 no model was named for: the whole credential)
``{ethereal:up}:rlg:<name>``    set: the rate-limit groups a 429 cools on this credential (expires after the
                                longest of them); for each group ``<g>``:
``{ethereal:up}:rlw:<name>:<g>``  exists while that group's 429 retry-after runs (PX): a wall for its models
``{ethereal:up}:rlc:<name>:<g>``  exists while a 429 that named no time cools the group (PX): a preference
``{ethereal:up}:fails:<name>``  consecutive backoff failures (expires after 10 min)
``{ethereal:up}:off:<name>``    "<unix time>|<reason>": disabled (failed probe or an admin), 1 day TTL;
                                stored credentials also carry the flag in the database
``{ethereal:up}:rpm:<name>``    sorted set: the sliding 60 s request window of an RPM-capped credential
``{ethereal:up}:ver``           bumped on every admin change: replicas reload credentials at once

Cooldowns travel as remaining milliseconds (PTTL), never as wall-clock instants, so
clock skew between replicas does not matter. Every replica polls the keys of all
credentials in one pipelined round trip (default every 0.5 s; a second one reads the groups'
cooldowns while a group set exists) and writes on failure.
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

_GROUP = """
local pref = tonumber(ARGV[2])
local wall = tonumber(ARGV[3])
if pref > 0 and pref > redis.call('PTTL', KEYS[3]) then
  redis.call('SET', KEYS[3], '1', 'PX', pref)
end
if wall > 0 and wall > redis.call('PTTL', KEYS[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', wall)
end
redis.call('SADD', KEYS[1], ARGV[1])
local keep = math.max(pref, wall) + 1000
if keep > redis.call('PTTL', KEYS[1]) then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return {redis.call('PTTL', KEYS[3]), redis.call('PTTL', KEYS[2])}
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


def group_keys(name: str, group: str) -> tuple[str, str, str]:
    """The group set of credential ``name``, and ``group``'s wall and preference keys."""
    return key("rlg", name), key("rlw", f"{name}:{group}"), key("rlc", f"{name}:{group}")


class RedisHealth(Health):
    shared = True

    def __init__(self, url: str, client: aioredis.Redis | None = None) -> None:
        super().__init__()
        # a RedisCluster for redis+cluster:// URLs: every key here shares one hash tag, so the scripts
        # and the poll's pipeline each go to the one master owning that slot
        self.redis = client or redisconn.async_client(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._failure = self.redis.register_script(_FAILURE)
        self._group = self.redis.register_script(_GROUP)
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

    async def failure(
        self,
        cred: Credential,
        kind: FailureKind,
        delay: float,
        base: float,
        cap: float,
        wall: float | None = None,
    ) -> None:
        try:
            pttl, fails, rl = await self._failure(
                keys=[key("cool", cred.name), key("fails", cred.name), key("rl", cred.name)],
                args=[
                    1 if kind.backs_off else 0,
                    int(delay * 1000),
                    int(base * 1000),
                    int(cap * 1000),
                    int((wall or 0.0) * 1000),
                ],
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

    async def group_failure(self, cred: Credential, group: str, delay: float, wall: float | None) -> None:
        try:
            pref_ms, wall_ms = await self._group(
                keys=list(group_keys(cred.name, group)),
                args=[group, int(delay * 1000), int((wall or 0.0) * 1000)],
            )
        except RedisError as exc:
            self._warn("failure", exc)
            await super().group_failure(cred, group, delay, wall)
            return
        now = self.clock()
        cred.cool_group(
            group,
            now,
            int(pref_ms) / 1000.0 if int(pref_ms) > 0 else 0.0,
            int(wall_ms) / 1000.0 if int(wall_ms) > 0 else None,
        )

    async def group_success(self, cred: Credential, group: str) -> None:
        await super().group_success(cred, group)
        try:
            await self.redis.delete(group_keys(cred.name, group)[2])
        except RedisError as exc:
            self._warn("success", exc)

    async def _drop_groups(self, name: str) -> None:
        groups = await self.redis.smembers(key("rlg", name))
        doomed = [key("rlg", name)]
        for g in groups or ():
            doomed.extend(
                group_keys(name, g.decode("utf-8", "replace") if isinstance(g, bytes) else str(g))[1:]
            )
        await self.redis.delete(*doomed)

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
            await self.redis.delete(
                key("off", cred.name), key("cool", cred.name), key("fails", cred.name), key("rl", cred.name)
            )
            await self._drop_groups(cred.name)
        except RedisError as exc:
            self._warn("enable", exc)
        await super().enable(cred)

    async def forget(self, name: str) -> None:
        try:
            await self.redis.delete(
                key("off", name), key("cool", name), key("fails", name), key("rpm", name), key("rl", name)
            )
            await self._drop_groups(name)
        except RedisError as exc:
            self._warn("forget", exc)

    async def take_rpm(self, cred: Credential, now: float) -> tuple[bool, float]:
        assert cred.rpm is not None
        self._seq += 1
        try:
            ok, wait_ms = await self._rpm(
                keys=[key("rpm", cred.name)],
                args=[cred.rpm, int(RPM_WINDOW * 1000), f"{self._tag}-{self._seq}"],
            )
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
                    pipe.smembers(key("rlg", c.name))
                pipe.get(key("ver"))
                results = await pipe.execute()
            groups = [
                (c, g.decode("utf-8", "replace") if isinstance(g, bytes) else str(g))
                for i, c in enumerate(creds)
                for g in results[5 * i + 4] or ()
            ]
            left: list[int] = []
            if groups:  # only while some 429 cools a group: their walls and preferences
                async with self.redis.pipeline(transaction=False) as pipe:
                    for c, g in groups:
                        _, wall_key, pref_key = group_keys(c.name, g)
                        pipe.pttl(wall_key)
                        pipe.pttl(pref_key)
                    left = [int(v or 0) for v in await pipe.execute()]
        except RedisError as exc:
            self._warn("poll", exc)
            return False
        now = self.clock()
        for c in creds:
            c.group_walls, c.group_cool = {}, {}
        for j, (c, g) in enumerate(groups):
            wall_ms, pref_ms = left[2 * j], left[2 * j + 1]
            if wall_ms > 0:
                c.group_walls[g] = now + wall_ms / 1000.0
            if pref_ms > 0:
                c.group_cool[g] = now + pref_ms / 1000.0
        for i, c in enumerate(creds):
            pttl, fails, off, rl = results[5 * i : 5 * i + 4]
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
