"""``configure_application(settings)``: the BlackSheep app with every route wired."""

from __future__ import annotations

import logging

from blacksheep import Application, Request, Response

from ethereal import ids
from ethereal.api import anthropic
from ethereal.api.common import anthropic_error, openai_error
from ethereal.errors import GatewayError
from ethereal.gateway import Gateway
from ethereal.settings import Settings, load_settings

log = logging.getLogger("ethereal")

_OPENAI_PATHS = ("/v1/chat/", "/v1/responses", "/v1/completions", "/v1/embeddings")


def configure_application(settings: Settings) -> Application:
    app = Application(show_error_details=False)
    gw = Gateway(settings)
    app.services.register(Gateway, instance=gw)
    app.state = gw  # type: ignore[attr-defined]

    anthropic.register(app, gw)
    for module_name in ("ethereal.api.openai", "ethereal.admin.routes", "ethereal.metering.routes",
                        "ethereal.upstream.routes", "ethereal.dashboard.routes"):
        module = _optional(module_name)
        if module is not None:
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


def _optional(module_name: str):  # type: ignore[no-untyped-def]
    import importlib
    import importlib.util

    if importlib.util.find_spec(module_name) is None:
        return None
    return importlib.import_module(module_name)


def create_app() -> Application:
    """ASGI factory for server workers: settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return configure_application(load_settings())
