"""The gateway's services, started once per worker process and shared by routes.

``await Gateway.start(settings)`` returns every service already started, so nothing on
the request path is ``Optional`` or checked for having been started: a route is built
from a started ``Gateway`` (``app.py``), and functions take the services they use.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from ethereal.alerts import Alerts, BudgetWatch
from ethereal.auth import Authenticator
from ethereal.keychanges import KeyChanges, build_key_changes
from ethereal.limits import Limiter, build_limiter
from ethereal.limits.plans import Plans
from ethereal.metering.config import MeterConfig
from ethereal.metering.meter import Meter
from ethereal.models import Registry, load_registry
from ethereal.secretbox import SecretBox
from ethereal.settings import Settings
from ethereal.spend.service import SpendService
from ethereal.storage import open_store
from ethereal.storage.base import Store
from ethereal.upstream.client import Timeouts, UpstreamClient
from ethereal.upstream.pool import Pool
from ethereal.upstream.service import UpstreamService

log = logging.getLogger("ethereal")


@dataclass(slots=True, eq=False)
class Gateway:
    settings: Settings
    registry: Registry
    plans: Plans
    store: Store
    auth: Authenticator
    limiter: Limiter
    meter: Meter
    pool: Pool
    client: UpstreamClient
    upstreams: UpstreamService
    key_changes: KeyChanges
    # spend limits (spend/) and alerts (alerts/): inert unless started with a store
    spend: SpendService = field(default_factory=lambda: SpendService(None))  # type: ignore[arg-type]
    alerts: Alerts = field(default_factory=Alerts)
    budget_watch: BudgetWatch = field(default_factory=lambda: BudgetWatch(Alerts(), None))

    @classmethod
    async def start(cls, settings: Settings) -> Gateway:
        """Open the store, start the limiter, meter and upstream pool; undo what started on failure."""
        registry = load_registry(settings.models_file)
        for model in registry.expired():  # an alert, also on /healthz?verbose=1 and in /metrics
            log.warning(
                "model %s has no rate card in force (its last card ended): requests are priced at "
                "that card; add a card to ETHEREAL_MODELS_FILE (docs/models.md)",
                model.id,
            )
        plans = Plans(settings.plans)
        pool = Pool(
            default_retry_after=settings.upstream_default_retry_after,
            backoff_base=settings.upstream_backoff_base,
            backoff_cap=settings.upstream_backoff_cap,
            rate_limit_cap=settings.upstream_429_cooldown_cap,
            group_of=registry.rate_limit_group,
        )
        client = UpstreamClient(
            Timeouts(settings.connect_timeout, settings.first_byte_timeout, settings.idle_stream_timeout),
            limit=settings.upstream_connections,
        )
        upstreams = UpstreamService(settings, pool, client, registry)
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(client.close)
            store = await open_store(settings.storage_url)
            undo.push_async_callback(store.close)
            auth = Authenticator(
                store,
                ttl=settings.key_cache_ttl,
                stale_max=settings.key_cache_stale_max,
                deadline=settings.store_timeout,
            )
            # a key changed by any replica's admin API (or the CLI) leaves this cache at once
            key_changes = build_key_changes(settings.redis_url)
            key_changes.listen(auth.invalidate)
            await key_changes.start()
            undo.push_async_callback(key_changes.close)
            # RedisLimiter with ETHEREAL_REDIS_URL (shared by replicas), else the in-process LocalLimiter
            limiter = build_limiter(settings, store, plans)
            await limiter.start()
            undo.push_async_callback(limiter.close)
            meter = Meter(store, MeterConfig.from_settings(settings))
            meter.start()
            undo.push_async_callback(meter.close)
            # env credential + stored ones (SecretKeyError when they cannot be decrypted), replica sync
            undo.push_async_callback(upstreams.stop)
            await upstreams.start(store)
            # spend limits in memory for admission; webhooks and the events that feed them
            spend = SpendService(store)
            await spend.start()
            undo.push_async_callback(spend.close)
            alerts = Alerts(store, secret_box=SecretBox(settings.secret_key) if settings.secret_key else None)
            await alerts.start()
            undo.push_async_callback(alerts.close)
            budget_watch = BudgetWatch(alerts, store, settle_delay=settings.meter_interval + 0.1)
            await budget_watch.start()
            undo.push_async_callback(budget_watch.close)
            pool.observers.append(alerts.observe)
            # spend limits enforced at admission: the limiter reads the book and emits the alerts
            limiter_gate = getattr(limiter, "gate", None)
            if limiter_gate is not None:
                limiter_gate.service = spend
                limiter_gate.alerts = alerts
            registry.on_provisional = alerts.model_provisional
            undo.pop_all()
        return cls(
            settings=settings,
            registry=registry,
            plans=plans,
            store=store,
            auth=auth,
            limiter=limiter,
            meter=meter,
            pool=pool,
            client=client,
            upstreams=upstreams,
            key_changes=key_changes,
            spend=spend,
            alerts=alerts,
            budget_watch=budget_watch,
        )

    async def stop(self) -> None:
        await self.budget_watch.close()
        await self.alerts.close()
        await self.spend.close()
        await self.meter.close()
        await self.limiter.close()
        await self.key_changes.close()
        await self.upstreams.stop()
        await self.client.close()
        await self.store.close()
