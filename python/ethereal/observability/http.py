"""The ASGI layer every HTTP request passes: in-flight count, response counter, the request log line.

It wraps the whole application (``app.create_app``) rather than living in a route, so a
stream is counted until its last byte and requests refused before any handler (404s,
401s) are logged too. The usage record of a metered request reaches the log line through
a context variable: ``Meter.record`` runs inside the same task as the request.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

from ethereal.observability import logs
from ethereal.observability.live import Ring
from ethereal.observability.metrics import Metrics
from ethereal.storage.records import UsageRecord

access = logging.getLogger("ethereal.access")
_record: contextvars.ContextVar[list[UsageRecord | None] | None] = contextvars.ContextVar(
    "ethereal_usage_record", default=None)
_PATH_MAX = 200


def note_record(rec: UsageRecord) -> None:
    """Meter observer: hand the record to the request's log line."""
    slot = _record.get()
    if slot is not None:
        slot[0] = rec


def fields_of(method: str, path: str, status: int, duration_ms: float, request_id: str | None,
              rec: UsageRecord | None) -> dict[str, Any]:
    out: dict[str, Any] = {"request_id": request_id, "method": method, "path": path[:_PATH_MAX], "status": status,
                           "duration_ms": round(duration_ms, 2)}
    if rec is not None:
        out.update({
            "key_id": rec.key_id, "route": rec.route, "model": rec.model, "credential": rec.credential,
            "input_tokens": rec.input_tokens, "output_tokens": rec.output_tokens,
            "cache_read": rec.cache_read, "cache_write": rec.cache_creation_5m + rec.cache_creation_1h,
            "cost_micro": rec.cost_micro, "ttfb_ms": None if rec.ttfb_ms is None else round(rec.ttfb_ms, 2),
            "stream": rec.stream, "exact": rec.exact, "error_type": rec.error_type,
        })
    return out


class Observed:
    """ASGI callable around the application (``app.Ethereal``).

    Picklable (uvicorn sends it to each spawned worker): it holds the application and two
    module-level functions; the worker's ring and metrics come from ``parts()`` once the
    worker has started, and the log format is applied when the worker's lifespan starts.
    """

    def __init__(self, app: Any, parts: Callable[[], tuple[Ring | None, Metrics | None]],
                 configure_logs: Callable[[], None] | None = None) -> None:
        self.app = app
        self.parts = parts
        self.configure_logs = configure_logs

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.configure_logs is not None:
                self.configure_logs()
            await self.app(scope, receive, send)
            return
        slot: list[UsageRecord | None] = [None]
        token = _record.set(slot)
        t0 = time.perf_counter()
        status = 0
        request_id: str | None = None
        ring, metrics = self.parts()
        if ring is not None:
            ring.enter()  # the in-flight count /metrics and the console read

        async def send_observed(message: dict[str, Any]) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers") or ():
                    if name == b"request-id" or name == b"x-request-id":
                        request_id = value.decode("latin-1")[:64]
                        break
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            _record.reset(token)
            if ring is not None:
                ring.leave()
            if metrics is not None:
                metrics.response(status or 499)
            if access.isEnabledFor(logging.INFO):
                fields = fields_of(scope.get("method", ""), scope.get("path", ""), status or 499,
                                   (time.perf_counter() - t0) * 1000.0, request_id, slot[0])
                writer = logs.access_log()
                if writer is not None:
                    writer.write(fields)
                else:  # logging as the embedding application configured it
                    access.info("request", extra={"fields": fields})
