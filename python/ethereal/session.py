"""Console sessions: a signed cookie instead of the admin key in the browser.

Signing in with the admin key sets ``ethereal_console`` = ``<sid>.<expires>.<mac>``, an HMAC
under a key derived from the admin key (and ``ETHEREAL_SECRET_KEY`` when set), so every
worker and replica checks it without shared state, and changing the admin key ends every
session at once. The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no
other site's page sends it), ``Secure`` when the console is served over TLS, and expires
after ``ETHEREAL_CONSOLE_SESSION_HOURS`` (12 by default).

Requests that change something (any method but GET/HEAD) made with the cookie also need
the session's CSRF token (``x-csrf-token`` header from the page's script, or a ``csrf``
form field) and, when the browser sends one, an ``Origin`` of this very host: a page on
another site can neither read the token nor pass the origin check.

Sign-out clears the cookie and remembers the session id as ended in this process; other
workers learn nothing, so a copied cookie stays valid there until it expires. Rotate the
admin key to end every session everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from ethereal.settings import Settings

COOKIE = "ethereal_console"
_ENDED_MAX = 10_000
_ended: OrderedDict[str, float] = OrderedDict()  # session ids signed out in this process


def _signing_key(settings: Settings) -> bytes:
    assert settings.admin_key
    material = settings.admin_key + "\x00" + (settings.secret_key or "")
    return hashlib.sha256(b"ethereal-console-session-v1\x00" + material.encode()).digest()


def _mac(key: bytes, text: str) -> str:
    return (
        base64.urlsafe_b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()[:24])
        .decode()
        .rstrip("=")
    )


def issue(settings: Settings, now: float | None = None) -> tuple[str, int]:
    """A new cookie value and its lifetime in seconds."""
    lifetime = int(settings.console_session_hours * 3600)
    expires = int((now or time.time()) + lifetime)
    body = f"{secrets.token_urlsafe(18)}.{expires}"
    return f"{body}.{_mac(_signing_key(settings), body)}", lifetime


def session_id(settings: Settings, cookie: str | None, now: float | None = None) -> str | None:
    """The session id of a valid, unexpired, not signed-out cookie value; else None."""
    if not cookie or not settings.admin_key or len(cookie) > 200:
        return None
    parts = cookie.split(".")
    if len(parts) != 3:
        return None
    sid, expires, mac = parts
    if not hmac.compare_digest(mac, _mac(_signing_key(settings), f"{sid}.{expires}")):
        return None
    try:
        if int(expires) <= (now or time.time()):
            return None
    except ValueError:
        return None
    if sid in _ended:
        return None
    return sid


def csrf_token(settings: Settings, sid: str) -> str:
    return _mac(_signing_key(settings), "csrf\x00" + sid)


def end(sid: str, expires_in: float) -> None:
    _ended[sid] = time.time() + expires_in
    while len(_ended) > _ENDED_MAX:
        _ended.popitem(last=False)


def cookie_of(headers: dict[bytes, bytes]) -> str | None:
    raw = headers.get(b"cookie")
    if not raw:
        return None
    for part in raw.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def same_origin(headers: dict[bytes, bytes]) -> bool:
    """True unless the browser says the request comes from another origin."""
    origin = headers.get(b"origin")
    if origin is None:
        fetch_site = headers.get(b"sec-fetch-site")
        return fetch_site is None or fetch_site in (b"same-origin", b"none")
    host = headers.get(b"host", b"").decode("latin-1").lower()
    try:
        netloc = urlsplit(origin.decode("latin-1")).netloc.lower()
    except ValueError:
        return False
    return bool(host) and netloc == host


def check(settings: Settings, method: str, headers: dict[bytes, bytes], form_token: str | None = None) -> str:
    """``"ok"``, ``"none"`` (no valid session) or ``"csrf"`` (a session, but a cross-site or tokenless change)."""
    sid = session_id(settings, cookie_of(headers))
    if sid is None:
        return "none"
    if method in ("GET", "HEAD"):
        return "ok"
    presented = headers.get(b"x-csrf-token", b"").decode("latin-1") or form_token or ""
    if not same_origin(headers) or not hmac.compare_digest(presented, csrf_token(settings, sid)):
        return "csrf"
    return "ok"


def set_cookie_header(value: str, max_age: int, secure: bool) -> bytes:
    flags = f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    if secure:
        flags += "; Secure"
    return flags.encode()


def over_tls(scope: Any, headers: dict[bytes, bytes]) -> bool:
    # behind a TLS-terminating proxy the app sees http; the proxy says https in x-forwarded-proto
    return scope.get("scheme") == "https" or headers.get(b"x-forwarded-proto", b"").lower() == b"https"
