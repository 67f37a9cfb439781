"""The ASGI application: starts the gateway's services, then serves the BlackSheep app.

``Ethereal(settings)`` is what the server runs. On the ASGI lifespan startup it starts
every service (``Gateway.start``) and only then builds the BlackSheep application with
its routes bound to the started gateway (``build_application``), so no route ever sees a
service that is not running. Each HTTP request gets a cleanup list in its scope
(``pipeline.CLEANUP_SCOPE_KEY``): whatever the pipeline left pending there (a stream whose
body the server never iterated, a response whose start could not be sent) runs once the
response is over, so a request is settled and recorded whatever happened on the wire.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from blacksheep import Application, Request, Response, Router

from ethereal import ids, observing
from ethereal.admin import reports, spend_limits, upstreams, usage, webhooks
from ethereal.admin import routes as admin_routes
from ethereal.api import anthropic, batches, openai, responses, responses_ws
from ethereal.api.common import anthropic_error, openai_error
from ethereal.api.responses_ws import ResponsesSockets
from ethereal.auth import key_hash_of
from ethereal.dashboard import routes as dashboard_routes
from ethereal.errors import GatewayError, anthropic_error_body
from ethereal.gateway import Gateway
from ethereal.lifecycle import LIFECYCLE, Receive, Scope, Send, send_health
from ethereal.lifeline import die_with_parent
from ethereal.observability.http import Parts
from ethereal.paths import rewrite_scope
from ethereal.pipeline import CLEANUP_SCOPE_KEY, Cleanup, Pipeline
from ethereal.settings import Settings, load_settings

log = logging.getLogger("ethereal")

_OPENAI_PATHS = ("/v1/chat/", "/v1/responses", "/v1/completions", "/v1/embeddings")


def build_application(gw: Gateway, pipeline: Pipeline | None = None) -> Application:
    """The BlackSheep app with every route bound to the started ``gw``."""
    app = Application(router=Router(), show_error_details=False)  # its own router, not the module default
    pipeline = pipeline or Pipeline(gw)
    anthropic.register(app, gw, pipeline)
    batches.register(app, gw, pipeline)
    openai.register(app, gw, pipeline)
    responses.register(app, gw, pipeline)
    for module in (admin_routes, usage, upstreams, spend_limits, reports, webhooks):
        module.register(app, gw)
    observing.register(app, gw)  # /metrics, the live ring, meter/pool/limiter observers
    dashboard_routes.register(app, gw)  # /dashboard, /estimate

    async def not_found(request: Request) -> Response:
        exc = GatewayError(404, f"Not Found: {request.method} {request.url.path.decode('latin-1')[:256]}")
        if request.url.path.decode("latin-1").startswith(_OPENAI_PATHS):
            return openai_error(exc, ids.request_id())
        return anthropic_error(exc, ids.request_id())

    app.router.fallback = not_found
    return app


class Ethereal:
    """The ASGI entry: lifespan starts and stops the gateway; HTTP goes to the BlackSheep app.

    It is also the edge every request passes once (``observe``, set by ``observed``):
    health, stream tracking and drain (lifecycle.py), in flight, counters and the request log
    line, all in one layer and one send wrapper (``Lifecycle.serve``).
    """

    def __init__(self, settings: Settings, *, parent_pid: int | None = None) -> None:
        self.settings = settings
        self._base_path = settings.base_path  # /v1/v1 and ETHEREAL_BASE_PATH: see paths.py
        # `ethereal serve`'s pid: a worker process it spawns dies with it (lifeline.py)
        self.parent_pid = parent_pid
        self._gateway: Gateway | None = None
        self._app: Application | None = None
        self._sockets: ResponsesSockets | None = None  # the Responses API over WebSocket
        # module-level or picklable callables (the app is pickled into each worker): this worker's
        # ring and metrics once started, and the log setup its lifespan applies
        self.observe: Parts | None = None
        self.configure_logs: Callable[[], None] | None = None

    def observed(self) -> Ethereal:
        """What servers run: this entry with observing switched on (it is the one edge layer that
        answers health, tracks streams for a clean shutdown and counts and logs every request)."""
        settings = self.settings
        self.observe, self.configure_logs = (
            observing.parts,
            observing.LogSetup(settings.log_format, settings.log_level),
        )
        return self

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError("the gateway has not started")
        return self._gateway

    async def start(self) -> None:
        # a spawned worker process starts with no logging configured (a no-op where it is)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if self.parent_pid is not None and self.parent_pid != os.getpid():
            die_with_parent(self.parent_pid)
        gw = await Gateway.start(self.settings)
        pipeline = Pipeline(gw)
        app = build_application(gw, pipeline)
        await app.start()
        self._gateway, self._app = gw, app
        self._sockets = ResponsesSockets(pipeline, self.observe)

    async def stop(self) -> None:
        app, gw = self._app, self._gateway
        self._app = self._gateway = None
        self._sockets = None
        if app is not None:
            await app.stop()
        if gw is not None:
            await gw.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            health = LIFECYCLE.health_response(scope)
            if health is not None:
                await send_health(send, scope, *health)
                return
            app = self._app
            if app is None:
                await _not_ready(send)
                return
            scope = rewrite_scope(scope, self._base_path)
            pending: list[Cleanup] = []
            scope[CLEANUP_SCOPE_KEY] = pending
            query = scope.get("query_string")
            if not scope["path"].isprintable() or (query and b"%00" in query):
                # answered (counted and logged) like any request
                await LIFECYCLE.serve(_unprintable, scope, receive, send, self.observe, pending)
                return
            await LIFECYCLE.serve(app, scope, receive, send, self.observe, pending)
        elif kind == "websocket":
            await self._websocket(rewrite_scope(scope, self._base_path), receive, send)
        elif kind == "lifespan":
            if self.configure_logs is not None:
                self.configure_logs()
            await self._lifespan(receive, LIFECYCLE.lifespan_send(send))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket upgrade: the Responses API on ``/v1/responses`` (api/responses_ws.py); on
        any other path an immediate ``426 Upgrade Required`` (a client that can fall back to HTTP,
        as Codex CLI does, does so at once), logged and counted like any refused request."""
        sockets = self._sockets
        if sockets is not None and scope["path"] == responses_ws.PATH:
            await sockets.serve(scope, receive, send)
            return
        t0 = time.perf_counter()
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        request_id = ids.request_id(key_hash_of(scope["headers"]))
        if sockets is None:
            exc = GatewayError(503, "the gateway is starting", type="overloaded_error", retry_after=1.0)
        else:
            exc = GatewayError(
                426,
                f"WebSocket is not served on {scope['path'][:200]}: use HTTP",
                type="invalid_request_error",
                headers=[(b"connection", b"close")],
            )
        if self.observe is not None:
            _, metrics = self.observe()
            if metrics is not None:
                metrics.response(exc.status)
        await responses_ws.refuse(
            scope, send, exc, request_id, t0, openai=scope["path"].startswith(_OPENAI_PATHS)
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # noqa: BLE001 - shown to the operator, then the server exits
                    log.error("ethereal could not start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                tune_gc()  # a served worker (not an app started in a test's process)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.stop()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


GC_YOUNG_THRESHOLD = 5000  # the interpreter's default is 700


def tune_gc() -> None:
    """The cyclic collector in a serving worker. What startup built (modules, routes, catalogs:
    ~70k objects) lives as long as the worker: frozen, out of the collector's reach, a full
    collection scans only what requests made. A request frees its objects by reference
    counting (it leaves no cycle: tests/integration/test_pipeline_inprocess.py), so young
    collections under load only scan the objects of requests in flight; with 32 in flight the
    default threshold ran one every ~14 requests. Cycles that do occur (an exception's
    traceback) are still collected, a little later."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _unprintable(scope: Scope, receive: Receive, send: Send) -> None:
    """A path with a control character names nothing the gateway has (every id, name and route is
    printable): 404 before routing. A NUL in the query is a 400: no value the gateway reads from a
    query may hold one (PostgreSQL refuses NUL in text, and a log line would carry it)."""
    if scope["path"].isprintable():
        status, kind, message = 400, "invalid_request_error", "the query string contains a NUL byte (%00)"
    else:
        status, kind, message = 404, "not_found_error", "no resource has a control character in its path"
    request_id = ids.request_id(None)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"request-id", request_id.encode())],
        }
    )
    await send({"type": "http.response.body", "body": anthropic_error_body(kind, message, request_id)})


async def _not_ready(send: Send) -> None:
    body = anthropic_error_body("overloaded_error", "the gateway is starting", None)
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app() -> Any:
    """ASGI factory (``uvicorn --factory ethereal.app:create_app``): settings from the environment,
    inside the layer that counts in-flight requests and logs one line per request."""
    return Ethereal(load_settings()).observed()
