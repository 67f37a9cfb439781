"""Authenticates a request's key: ``x-api-key`` or ``Authorization: Bearer``.

Lookups are cached in-process for a short TTL (default 1 s) so a hot key costs
one dict lookup, and a revocation reaches every replica within that TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord
from ethereal.settings import Settings
from ethereal.storage.base import Store

log = logging.getLogger("ethereal.auth")


def extract_key(headers: dict[bytes, bytes]) -> str | None:
    key = headers.get(b"x-api-key")
    if key:
        return key.decode("latin-1").strip()
    auth = headers.get(b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        return auth[7:].decode("latin-1").strip()
    return None


class Authenticator:
    def __init__(self, store: Store, ttl: float = 1.0, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    def invalidate(self, key_hash: str | None = None) -> None:
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)

    async def lookup(self, plaintext: str) -> KeyRecord | None:
        key_hash = hashlib.sha256(plaintext.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            record = await self.store.get_key_by_hash(key_hash)
        except Exception as exc:  # noqa: BLE001 - the key store is down
            if hit is not None:
                # Serve the last known answer: a database outage must not stop traffic for keys
                # seen recently. A revocation made during the outage applies once it is back.
                log.warning("key store unreachable (%s); using the cached key record", type(exc).__name__)
                return hit[1]
            log.error("key store unreachable (%s) and the key is not cached", type(exc).__name__)
            raise GatewayError(503, "the key store is temporarily unavailable", type="overloaded_error",
                               retry_after=2.0) from exc
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key_hash] = (now, record)
        return record

    async def authenticate(self, headers: dict[bytes, bytes]) -> KeyRecord:
        plaintext = extract_key(headers)
        if not plaintext:
            raise GatewayError(401, "missing API key: send it as x-api-key or Authorization: Bearer")
        record = await self.lookup(plaintext)
        if record is None:
            raise GatewayError(401, "invalid x-api-key")
        if record.revoked:
            raise GatewayError(401, "this API key has been revoked")
        if record.is_expired():
            raise GatewayError(401, "this API key has expired")
        return record


def is_admin(settings: Settings, headers: dict[bytes, bytes]) -> bool:
    """The admin key guards /admin/api and the dashboard. A minted user key never works there."""
    presented = extract_key(headers)
    if not presented or not settings.admin_key:
        return False
    return hmac.compare_digest(presented.encode(), settings.admin_key.encode())


def require_admin(settings: Settings, headers: dict[bytes, bytes]) -> None:
    if not settings.admin_key:
        raise GatewayError(403, "the admin API is disabled: set ETHEREAL_ADMIN_KEY to enable it")
    if not is_admin(settings, headers):
        raise GatewayError(401, "admin routes need the admin key")
