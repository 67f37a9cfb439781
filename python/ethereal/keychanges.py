"""Key-change notifications: a key revoked, updated or deleted reaches every key cache at once.

The admin API and the CLI ``publish`` a changed key's hash; every worker's ``Authenticator``
``listen``s and drops it from its cache. With Redis configured the notice goes through one
pub/sub channel, so other workers and replicas drop it too; without Redis, this worker's
cache is dropped directly and the others follow within the key cache TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ethereal.keys")

CHANNEL = "ethereal:v1:keys:changed"  # the name replicas of every version agree on


class KeyChanges:
    """In-process notifications (the embedded default)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], Any]] = []

    def listen(self, callback: Callable[[str], Any]) -> None:
        self._listeners.append(callback)

    async def start(self) -> None:
        return None

    async def publish(self, key_hash: str) -> None:
        self._deliver(key_hash)

    def _deliver(self, key_hash: str) -> None:
        for callback in self._listeners:
            callback(key_hash)

    async def close(self) -> None:
        return None


class RedisKeyChanges(KeyChanges):
    """Notifications through a Redis channel: every worker of every replica hears them."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None

    async def start(self) -> None:
        from ethereal.redisconn import async_client

        # a RedisCluster for redis+cluster:// URLs: a PUBLISH on any node reaches every node's subscribers
        self._client = async_client(self.url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._task = asyncio.get_running_loop().create_task(self._subscribe(), name="ethereal-key-changes")

    async def publish(self, key_hash: str) -> None:
        self._deliver(key_hash)  # this worker at once, whatever Redis says
        try:
            await self._client.publish(CHANNEL, key_hash)
        except Exception as exc:  # noqa: BLE001 - the cache TTL still bounds how long a replica lags
            log.warning(
                "could not publish a key change (%s); other workers drop it within the cache TTL",
                type(exc).__name__,
            )

    async def _subscribe(self) -> None:
        import redis.asyncio as aioredis

        from ethereal.redisconn import pubsub_urls

        urls = pubsub_urls(self.url)  # the server, or each seed node of a cluster in turn
        attempt = 0
        while True:
            client = aioredis.Redis.from_url(urls[attempt % len(urls)], socket_connect_timeout=1.0)
            attempt += 1
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    data = message.get("data")
                    if isinstance(data, bytes) and len(data) == 64:  # a sha256 hex digest
                        self._deliver(data.decode("ascii", "replace"))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis away: listen again when it is back
                await asyncio.sleep(1.0 if attempt % len(urls) == 0 else 0.05)  # next seed node at once
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await self._task
        if self._client is not None:
            await self._client.aclose()


def build_key_changes(redis_url: str | None) -> KeyChanges:
    return RedisKeyChanges(redis_url) if redis_url else KeyChanges()


def publish_once(redis_url: str | None, key_hash: str, *, cache_ttl: float) -> None:
    """For a one-shot process (the CLI): tell running gateways a key changed."""
    if not redis_url:
        return
    try:
        from ethereal.redisconn import sync_client

        client = sync_client(redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.publish(CHANNEL, key_hash)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the cache TTL still bounds how long a replica can lag
        print(
            f"(could not notify gateways through Redis: {exc}; they pick the change up within"
            f" {cache_ttl:g} s)",
            file=sys.stderr,
        )
