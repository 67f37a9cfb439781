"""Authenticates a request's key: ``x-api-key`` or ``Authorization: Bearer``.

Lookups are cached in-process for a short TTL (default 1 s) so a hot key costs
one dict lookup, and a revocation reaches every replica within that TTL. Both caches
are keyed by client input (the hash of whatever key was sent), so both are bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable

from ethereal.admin import session
from ethereal.errors import GatewayError
from ethereal.guards import BoundedLRU
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


def key_hash_of(headers: list[tuple[bytes, bytes]] | dict[bytes, bytes]) -> str | None:
    """sha256 hex of the key a request carries, for tagging its request id."""
    key = extract_key(headers if isinstance(headers, dict) else dict(headers))
    return hashlib.sha256(key.encode()).hexdigest() if key else None


class Authenticator:
    """Key lookups through two bounded LRU caches.

    Known keys and unknown ones live apart: a flood of made-up keys fills only the
    negative cache and can never evict a real key's record. While the key store is down,
    a key's last known record is served for at most ``stale_max`` seconds after it was
    last read (a revocation made during the outage applies once the store is back);
    after that, or for a key never seen, 503.
    """

    def __init__(self, store: Store, ttl: float = 1.0, max_entries: int = 100_000, *,
                 stale_max: float = 300.0, max_unknown: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.stale_max = stale_max
        self.clock = clock
        # a record is a few hundred bytes plus its metadata: counted by its metadata's size
        self._known: BoundedLRU[str, tuple[float, KeyRecord]] = BoundedLRU(max_entries, max_entries * 4096)
        self._unknown: BoundedLRU[str, float] = BoundedLRU(max_unknown, max_unknown * 64)

    def invalidate(self, key_hash: str | None = None) -> None:
        if key_hash is None:
            self._known.clear()
            self._unknown.clear()
        else:
            self._known.pop(key_hash)
            self._unknown.pop(key_hash)

    async def lookup(self, plaintext: str) -> KeyRecord | None:
        key_hash = hashlib.sha256(plaintext.encode()).hexdigest()
        now = self.clock()
        hit = self._known.get(key_hash)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        miss_at = self._unknown.get(key_hash) if hit is None else None
        if miss_at is not None and now - miss_at < self.ttl:
            return None
        try:
            record = await self.store.get_key_by_hash(key_hash)
        except Exception as exc:  # the key store is down
            if hit is not None and now - hit[0] < self.stale_max:
                # Serve the last known answer: a database outage must not stop traffic for keys
                # seen recently. A revocation made during the outage applies once it is back.
                log.warning("key store unreachable (%s); using the cached key record", type(exc).__name__)
                return hit[1]
            if miss_at is not None and now - miss_at < self.stale_max:
                return None
            log.error("key store unreachable (%s) and the key is not cached%s", type(exc).__name__,
                      " recently enough" if hit is not None else "")
            raise GatewayError(503, "the key store is temporarily unavailable", type="overloaded_error",
                               retry_after=2.0) from exc
        if record is None:
            self._known.pop(key_hash)
            self._unknown.put(key_hash, now)
        else:
            self._unknown.pop(key_hash)
            self._known.put(key_hash, (now, record), 512 + len(repr(record.metadata or "")))
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
    """The admin key, or the console's session cookie with its CSRF token and this site's origin
    (admin/session.py): the console's pages call the admin API from the browser without the key."""
    if not settings.admin_key:
        raise GatewayError(403, "the admin API is disabled: set ETHEREAL_ADMIN_KEY to enable it")
    if is_admin(settings, headers):
        return
    verdict = session.check(settings, "POST", headers)  # every admin API call with a cookie needs the token
    if verdict == "csrf":
        raise GatewayError(403, "cross-site or tokenless console request refused: it needs the page's CSRF"
                                " token and this site's origin")
    if verdict != "ok":
        raise GatewayError(401, "admin routes need the admin key")


def require_org(settings: Settings, headers: dict[bytes, bytes], *, write: bool) -> str:
    """The organization routes (``/v1/organizations/...``: spend limits, usage and cost reports):
    the admin key, the read-only admin key for reads (a write with it is 403), or the console's
    session (a write with its CSRF token and this site's origin). Returns who is asking, as the
    audit records it: ``admin_key``, ``read_only_key`` or ``console``."""
    if not settings.admin_key and not settings.admin_read_key:
        raise GatewayError(403, "the admin API is disabled: set ETHEREAL_ADMIN_KEY to enable it")
    presented = extract_key(headers)
    if presented:
        if settings.admin_key and hmac.compare_digest(presented.encode(), settings.admin_key.encode()):
            return "admin_key"
        if settings.admin_read_key and hmac.compare_digest(presented.encode(), settings.admin_read_key.encode()):
            if write:
                raise GatewayError(403, "the read-only admin key cannot change anything: use the admin key")
            return "read_only_key"
    if settings.admin_key:
        verdict = session.check(settings, "POST" if write else "GET", headers)
        if verdict == "ok":
            return "console"
        if verdict == "csrf":
            raise GatewayError(403, "cross-site or tokenless console request refused: it needs the page's CSRF"
                                    " token and this site's origin")
    raise GatewayError(401, "organization routes need an admin key (x-api-key)")
