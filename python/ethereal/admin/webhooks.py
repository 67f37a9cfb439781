"""``/admin/api/webhooks``: register, list and delete webhooks; their delivery log.

``POST {"url", "secret"?, "events"?, "description"?}``: ``url`` http or https (loopback and
private addresses allowed: only the admin registers one); ``secret`` a Standard Webhooks secret
(``whsec_`` + base64 of 24 to 64 bytes), generated when omitted and shown in this response only;
``events`` a subset of ``EVENTS`` (default: every event). Every change is audited with the spend
limits' audit (``GET /v1/organizations/spend_limits/audit``), the secret never in it.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson
from blacksheep import Application, Request, Response

from ethereal.alerts.webhooks import EVENTS, generate_secret
from ethereal.api.common import anthropic_route, header_map, json_response
from ethereal.auth import require_admin, require_org
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.pipeline import parse_json_body
from ethereal.secretbox import SecretBox
from ethereal.spend.service import audit_id, rfc3339
from ethereal.wire import read_body

BASE = "/admin/api/webhooks"
_BODY_MAX = 64 * 1024
_URL_MAX = 2048


def parse_webhook(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_request("body: must be a JSON object")
    unknown = sorted(set(body) - {"url", "secret", "events", "description"})
    if unknown:
        raise invalid_request(f"{unknown[0]}: unknown field", param=unknown[0])
    url = body.get("url")
    if not isinstance(url, str) or len(url) > _URL_MAX:
        raise invalid_request("url: must be an http or https URL", param="url")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise invalid_request("url: not a valid URL", param="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_request("url: must be an http or https URL with a host", param="url")
    if parts.username or parts.password:
        raise invalid_request(
            "url: credentials in the URL are not allowed (sign with the secret)", param="url"
        )
    secret = body.get("secret")
    if secret is None:
        secret = generate_secret()
    else:
        if not isinstance(secret, str) or not secret.startswith("whsec_"):
            raise invalid_request("secret: must be whsec_ followed by base64", param="secret")
        try:
            raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise invalid_request("secret: must be whsec_ followed by base64", param="secret") from None
        if not 24 <= len(raw) <= 64:
            raise invalid_request("secret: the key must be 24 to 64 bytes", param="secret")
    events = body.get("events")
    if events is not None:
        if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
            raise invalid_request(
                f"events: must be a non-empty array of {', '.join(EVENTS)} (or omitted for all)",
                param="events",
            )
        events = sorted(set(events))
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 200:
        raise invalid_request("description: at most 200 characters", param="description")
    return {
        "id": "wh_" + uuid.uuid4().hex[:24],
        "url": url,
        "secret": secret,
        "events": events,
        "description": description,
        "created_at": time.time(),
    }


def webhook_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "webhook",
        "id": row["id"],
        "url": row["url"],
        "events": row.get("events") or list(EVENTS),
        "description": row.get("description") or "",
        "created_at": rfc3339(row["created_at"]),
    }


def delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "webhook_delivery",
        "id": row["id"],
        "webhook_id": row["webhook_id"],
        "event": row["event"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "created_at": rfc3339(row["created_at"]),
        "updated_at": rfc3339(row["updated_at"]),
    }


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings

    def ok(request_id: str, payload: Any, status: int = 200) -> Response:
        return json_response(status, orjson.dumps(payload), [(b"request-id", request_id.encode())])

    @anthropic_route
    async def create(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request))
        actor = require_org(settings, header_map(request), write=True)
        raw = await read_body(request, _BODY_MAX)
        row = parse_webhook(parse_json_body(raw) if raw.strip() else {})
        stored = dict(row)
        if settings.secret_key:  # encrypted at rest when there is a key to encrypt with
            stored["secret"] = SecretBox(settings.secret_key).encrypt(row["secret"])
        await gw.store.put_webhook(
            stored, {"id": audit_id(), "at": time.time(), "actor": actor, "object_type": "webhook"}
        )
        await gw.alerts.reload()
        return ok(request_id, {**webhook_json(row), "secret": row["secret"]}, 201)  # the secret, this once

    @anthropic_route
    async def list_hooks(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request))
        rows = await gw.store.list_webhooks()
        data = [webhook_json(r) for r in rows]
        return ok(
            request_id,
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    @anthropic_route
    async def delete(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request))
        actor = require_org(settings, header_map(request), write=True)
        hook_id = request.route_values.get("webhook_id") or ""
        before = await gw.store.delete_webhook(
            hook_id, {"id": audit_id(), "at": time.time(), "actor": actor, "object_type": "webhook"}
        )
        if before is None:
            raise GatewayError(404, f"no webhook with id {hook_id[:64]!r}")
        await gw.alerts.reload()
        return ok(request_id, {"id": hook_id, "type": "webhook_deleted"})

    @anthropic_route
    async def deliveries(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request))
        values = request.query.get("webhook_id")
        rows = await gw.store.list_deliveries(webhook_id=values[0] if values else None, limit=100)
        return ok(request_id, {"data": [delivery_json(r) for r in rows], "has_more": False})

    router = app.router
    router.add_post(BASE, create)
    router.add_get(BASE, list_hooks)
    router.add_get(BASE + "/deliveries", deliveries)
    router.add_delete(BASE + "/:webhook_id", delete)
