"""Admin API for upstream credentials, behind the admin key.

``GET    /admin/api/upstreams``                 list, with live health
``POST   /admin/api/upstreams``                 add ``{name, base_url, api_key, weight?, models?, rpm?,
                                                spend_cap_micro?, enabled?}``
``GET    /admin/api/upstreams/{name}``          one, with live health
``PATCH  /admin/api/upstreams/{name}``          update any of the fields but ``name``
``POST   /admin/api/upstreams/{name}/disable``  ``{reason?}``
``POST   /admin/api/upstreams/{name}/enable``   also clears a cooldown and a 401/403 disable
``DELETE /admin/api/upstreams/{name}``

API keys are write-only: answers show ``api_key_hint`` (the last 4 characters), never the key.
Health (``state``, ``cooldown_until``, ``in_flight``, recent error rates, ``last_error``) is the
answering replica's view; cooldowns and disabled flags are shared through Redis when configured.
"""

from __future__ import annotations

from typing import Any

import orjson
from blacksheep import Application, Request, Response

from ethereal.api.common import anthropic_route, header_map, json_response
from ethereal.auth import require_admin
from ethereal.errors import invalid_request
from ethereal.gateway import Gateway
from ethereal.guards import refuse_nul
from ethereal.wire import read_body

BASE = "/admin/api/upstreams"
MAX_BODY = 64 * 1024


async def _json(request: Request, *, optional: bool = False) -> Any:
    body = await read_body(request, MAX_BODY)
    if not body.strip():
        if optional:
            return {}
        raise invalid_request("request body is empty: expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}") from None
    refuse_nul(data)  # the store could not keep it (PostgreSQL)
    return data


def _ok(request_id: str, payload: Any, status: int = 200) -> Response:
    return json_response(status, orjson.dumps(payload), [(b"request-id", request_id.encode())])


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings
    svc = gw.upstreams

    def name_of(request: Request) -> str:
        return request.route_values.get("name") or ""

    @anthropic_route
    async def list_upstreams(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        items = await svc.list()
        return _ok(request_id, {"data": items})

    @anthropic_route
    async def add_upstream(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        return _ok(request_id, await svc.add(await _json(request)), 201)

    @anthropic_route
    async def get_upstream(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        return _ok(request_id, await svc.get(name_of(request)))

    @anthropic_route
    async def update_upstream(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        return _ok(request_id, await svc.update(name_of(request), await _json(request)))

    @anthropic_route
    async def disable_upstream(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        data = await _json(request, optional=True)
        reason = data.get("reason") if isinstance(data, dict) else None
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            raise invalid_request("reason: must be a string of at most 500 characters", param="reason")
        return _ok(request_id, await svc.set_enabled(name_of(request), False, reason))

    @anthropic_route
    async def enable_upstream(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        return _ok(request_id, await svc.set_enabled(name_of(request), True))

    @anthropic_route
    async def delete_upstream(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        name = name_of(request)
        await svc.delete(name)
        return _ok(request_id, {"name": name, "deleted": True})

    app.router.add_get(BASE, list_upstreams)
    app.router.add_post(BASE, add_upstream)
    app.router.add_get(BASE + "/:name", get_upstream)
    app.router.add_patch(BASE + "/:name", update_upstream)
    app.router.add_put(BASE + "/:name", update_upstream)
    app.router.add_delete(BASE + "/:name", delete_upstream)
    app.router.add_post(BASE + "/:name/disable", disable_upstream)
    app.router.add_post(BASE + "/:name/enable", enable_upstream)
