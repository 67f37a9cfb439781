"""Metrics, the live ring and the request log (observability/) attached to a started gateway and
its application (``register``: the services' observers, ``/metrics``, the health details); the ASGI
entry switches them on per request with ``app.Ethereal.observed``.

``GET /metrics`` answers to the admin key or ``ETHEREAL_METRICS_TOKEN`` (as ``Authorization:
Bearer``); ``ethereal serve --metrics-port`` also serves it without credentials on a port of
its own (meant for a private network), from the supervising process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any

from blacksheep import Application, Content, Request, Response

from ethereal.auth import extract_key, is_admin
from ethereal.gateway import Gateway
from ethereal.lifecycle import LIFECYCLE
from ethereal.observability import live, logs
from ethereal.observability.http import note_record
from ethereal.observability.live import Ring
from ethereal.observability.metrics import (
    CONTENT_TYPE,
    FLUSH_SECONDS,
    Metrics,
    multiproc_dir,
    watch_limiter,
    watch_pool,
)

log = logging.getLogger("ethereal.observability")
_REFRESH = 1.0


class Observability:
    """This worker's metrics and live ring, attached to its started gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        directory = multiproc_dir()
        self.ring = Ring(directory)
        self.metrics = Metrics(
            gw.registry, in_flight=lambda: live.in_flight(directory, self.ring), ring=self.ring
        )
        self._task: asyncio.Task[None] | None = None
        # the pool, the limiter and the meter each tell their observers what they decided
        watch_pool(gw.pool, self.metrics)
        watch_limiter(gw.limiter, self.metrics)
        # on the request path a record is only appended; metrics and the ring count it at the flush
        gw.meter.observers.extend((self.metrics.records.append, note_record))
        self.metrics.forget_dead_workers()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="ethereal-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.metrics.flush()
        writer = logs.access_log()
        if writer is not None:
            writer.flush()

    def refresh(self) -> None:
        self.metrics.meter_stats(self.gw.meter.stats())
        self.metrics.check_models()
        self.metrics.flush()

    def models_health(self) -> dict[str, Any]:
        """``/healthz?verbose=1``'s ``models``: the registry version (replicas on different data
        differ), models whose card has expired with no successor (an alert) and models billed at a
        provisional card."""
        registry = self.gw.registry
        expired = [m.id for m in registry.expired()]
        out: dict[str, Any] = {
            "registry_version": registry.version,
            "source": registry.source,
            "expired": expired,
            "provisional": [m.id[:64] for m in registry.provisional_models()][:32],
        }
        if expired:
            out["alert"] = (
                f"no rate card in force for {', '.join(expired)}: priced at their last card; add a "
                "card to ETHEREAL_MODELS_FILE"
            )
        return out

    async def _refresh_loop(self) -> None:
        """Counts what the requests appended every ``FLUSH_SECONDS``; the meter's gauges once a second."""
        n = 0
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            n += 1
            try:
                if n % round(_REFRESH / FLUSH_SECONDS) == 0:
                    self.refresh()
                else:
                    self.metrics.flush()
            except Exception:
                log.exception("metrics flush failed")

    def allowed(self, headers: dict[bytes, bytes]) -> bool:
        settings = self.gw.settings
        if is_admin(settings, headers):
            return True
        token = settings.metrics_token
        presented = extract_key(headers)
        return bool(token and presented and hmac.compare_digest(presented.encode(), token.encode()))


_current: Observability | None = None  # this worker's (a server process runs one gateway)


def parts() -> tuple[Ring | None, Metrics | None]:
    obs = _current
    return (obs.ring, obs.metrics) if obs is not None else (None, None)


def register(app: Application, gw: Gateway) -> None:
    global _current
    obs = Observability(gw)
    app.observability = obs  # type: ignore[attr-defined]
    _current = obs

    async def on_start(application: Application) -> None:
        await obs.start()

    async def on_stop(application: Application) -> None:
        await obs.stop()

    app.on_start += on_start
    app.on_stop += on_stop
    LIFECYCLE.details["models"] = obs.models_health

    def limits_health() -> dict[str, Any]:
        # what the limiter does when its store is unreachable (budgets and spend limits alike)
        limiter = gw.limiter
        backend = type(limiter).__name__
        fail_open = bool(getattr(limiter, "fail_open", False))
        book = gw.spend.book
        return {
            "backend": backend,
            "when_store_unreachable": "fail_open" if fail_open else "fail_closed",
            "spend_limits": len(book),
            "spend_limits_loaded_at": book.version or None,
        }

    LIFECYCLE.details["limits"] = limits_health

    async def metrics(request: Request) -> Response:
        settings = gw.settings
        if not obs.allowed(dict(request.scope["headers"])):
            if not settings.admin_key and not settings.metrics_token:
                return Response(
                    403,
                    None,
                    Content(
                        b"text/plain",
                        b"metrics are disabled: set ETHEREAL_METRICS_TOKEN"
                        b" or ETHEREAL_ADMIN_KEY, or serve them with --metrics-port\n",
                    ),
                )
            return Response(
                401,
                [(b"www-authenticate", b'Bearer realm="metrics"')],
                Content(b"text/plain", b"metrics need the admin key or ETHEREAL_METRICS_TOKEN\n"),
            )
        obs.refresh()
        return Response(200, None, Content(CONTENT_TYPE.encode(), obs.metrics.render()))

    app.router.add_get("/metrics", metrics)


class LogSetup:
    """Applies ``--log-format``/``--log-level`` in the worker (picklable: it holds two strings)."""

    def __init__(self, log_format: str, level: str) -> None:
        self.log_format = log_format
        self.level = level

    def __call__(self) -> None:
        logs.configure(self.log_format, self.level)
