"""The gateway's services, built once per worker process and shared by routes."""

from __future__ import annotations

import logging

from ethereal.auth import Authenticator
from ethereal.catalog import Catalog, load_catalog
from ethereal.limits import Limiter, build_limiter
from ethereal.metering.config import MeterConfig
from ethereal.metering.meter import Meter
from ethereal.settings import Settings
from ethereal.storage import open_store
from ethereal.storage.base import Store
from ethereal.upstream.client import Timeouts, UpstreamClient
from ethereal.upstream.pool import Pool
from ethereal.upstream.service import UpstreamService

log = logging.getLogger("ethereal")


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.models_file)
        self.pool = Pool(default_retry_after=settings.upstream_default_retry_after,
                         backoff_base=settings.upstream_backoff_base, backoff_cap=settings.upstream_backoff_cap)
        self.client = UpstreamClient(
            Timeouts(settings.connect_timeout, settings.first_byte_timeout, settings.idle_stream_timeout)
        )
        self.upstreams = UpstreamService(settings, self.pool, self.client, self.catalog)
        self.limiter: Limiter = Limiter()
        self.store: Store | None = None
        self.auth: Authenticator | None = None
        self.meter: Meter | None = None

    async def start(self) -> None:
        settings = self.settings
        self.store = await open_store(settings.storage_url)
        self.auth = Authenticator(self.store, ttl=settings.key_cache_ttl)
        # RedisLimiter with ETHEREAL_REDIS_URL (shared by replicas), else the in-process LocalLimiter;
        # key changes published by another replica's admin API drop the key from this cache at once
        self.limiter = build_limiter(settings, self.store)
        await self.limiter.start(on_key_change=self.auth.invalidate)
        self.meter = Meter(self.store, MeterConfig.from_settings(settings))
        self.meter.start()
        # env credential + stored ones (SecretKeyError when they cannot be decrypted), replica sync
        await self.upstreams.start(self.store)

    async def stop(self) -> None:
        if self.meter is not None:
            await self.meter.close()
        await self.limiter.close()
        await self.upstreams.stop()
        await self.client.close()
        if self.store is not None:
            await self.store.close()
