"""The gateway's services, built once per worker process and shared by routes."""

from __future__ import annotations

import logging

from ethereal.auth import Authenticator
from ethereal.catalog import Catalog, load_catalog
from ethereal.limits import Limiter
from ethereal.metering.meter import Meter
from ethereal.settings import Settings
from ethereal.storage import open_store
from ethereal.storage.base import Store
from ethereal.upstream.client import Timeouts, UpstreamClient
from ethereal.upstream.pool import Credential, Pool

log = logging.getLogger("ethereal")


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog: Catalog = load_catalog(settings.models_file)
        self.pool = Pool()
        self.client = UpstreamClient(
            Timeouts(settings.connect_timeout, settings.first_byte_timeout, settings.idle_stream_timeout)
        )
        self.limiter: Limiter = Limiter()
        self.store: Store | None = None
        self.auth: Authenticator | None = None
        self.meter: Meter | None = None

    async def start(self) -> None:
        settings = self.settings
        self.store = await open_store(settings.storage_url)
        self.auth = Authenticator(self.store, ttl=settings.key_cache_ttl)
        self.meter = Meter(self.store)
        self.meter.start()
        if settings.upstream_url and settings.upstream_key:
            self.pool.add(Credential(name="default", base_url=settings.upstream_url.rstrip("/"),
                                     api_key=settings.upstream_key))
        if not self.pool.credentials:
            log.warning("no upstream credential configured: every request will get 503")

    async def stop(self) -> None:
        if self.meter is not None:
            await self.meter.close()
        await self.limiter.close()
        await self.client.close()
        if self.store is not None:
            await self.store.close()
