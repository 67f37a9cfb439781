"""The admin key guards /admin/api and the dashboard. A minted user key never works here."""

from __future__ import annotations

import hmac

from blacksheep import Request

from ethereal.auth import extract_key
from ethereal.errors import GatewayError
from ethereal.settings import Settings


def is_admin(settings: Settings, headers: dict[bytes, bytes]) -> bool:
    presented = extract_key(headers)
    if not presented or not settings.admin_key:
        return False
    return hmac.compare_digest(presented.encode(), settings.admin_key.encode())


def require_admin(settings: Settings, request: Request) -> None:
    if not settings.admin_key:
        raise GatewayError(403, "the admin API is disabled: set ETHEREAL_ADMIN_KEY to enable it")
    if not is_admin(settings, dict(request.scope["headers"])):
        raise GatewayError(401, "admin routes need the admin key")
