"""``configure_application(settings)``: the BlackSheep app with every route wired."""

from __future__ import annotations

import logging

from blacksheep import Application, Request, Response

from ethereal import ids
from ethereal.admin import routes as admin_routes
from ethereal.api import anthropic, openai
from ethereal.api.common import anthropic_error, openai_error
from ethereal.errors import GatewayError
from ethereal.gateway import Gateway
from ethereal.metering import routes as metering_routes
from ethereal.settings import Settings, load_settings
from ethereal.upstream import routes as upstream_routes

log = logging.getLogger("ethereal")

_OPENAI_PATHS = ("/v1/chat/", "/v1/responses", "/v1/completions", "/v1/embeddings")


def configure_application(settings: Settings) -> Application:
    app = Application(show_error_details=False)
    gw = Gateway(settings)
    app.services.register(Gateway, instance=gw)
    app.state = gw  # type: ignore[attr-defined]

    for module in (anthropic, openai, admin_routes, metering_routes, upstream_routes):
        module.register(app, gw)

    async def not_found(request: Request) -> Response:
        exc = GatewayError(404, f"Not Found: {request.method} {request.url.path.decode('latin-1')}")
        if request.url.path.decode("latin-1").startswith(_OPENAI_PATHS):
            return openai_error(exc, ids.request_id())
        return anthropic_error(exc, ids.request_id())

    app.router.fallback = not_found

    async def on_start(application: Application) -> None:
        await gw.start()

    async def on_stop(application: Application) -> None:
        await gw.stop()

    app.on_start += on_start
    app.on_stop += on_stop
    return app


def create_app() -> Application:
    """ASGI factory for server workers: settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return configure_application(load_settings())
