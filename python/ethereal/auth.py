"""Authenticates a request's key: ``x-api-key`` or ``Authorization: Bearer``.

Lookups are cached in-process for a short TTL (default 1 s) so a hot key costs
one dict lookup, and a revocation reaches every replica within that TTL. Both caches
are keyed by client input (the hash of whatever key was sent), so both are bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from ethereal import session
from ethereal.errors import GatewayError
from ethereal.guards import BoundedLRU, FailureThrottle, client_address
from ethereal.keys import KeyRecord
from ethereal.settings import Settings
from ethereal.storage.base import Store, bounded

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

    A store that hangs (accepting connections, never answering) counts as down: a lookup
    waits at most ``deadline`` seconds. After a failed lookup the store is not asked again
    for ``retry_after`` seconds (cached keys are served from their last record at once, new
    keys fail fast), so a hang costs one request per key a bounded wait, not every request
    the whole hang. While one request refreshes a key's expired record, the key's other
    requests are served that record (they do not queue behind the refresh).
    """

    WARN_EVERY = 30.0  # seconds between two "using the cached key record" warnings

    def __init__(
        self,
        store: Store,
        ttl: float = 1.0,
        max_entries: int = 100_000,
        *,
        stale_max: float = 300.0,
        max_unknown: int = 10_000,
        deadline: float = 2.0,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.stale_max = stale_max
        self.deadline = deadline
        self.retry_after = retry_after
        self.clock = clock
        self._down_until = -1.0  # clock time before which the store is not asked (it just failed)
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self._warned_at = -1e18
        self._suppressed = 0
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
        if hit is not None and key_hash in self._inflight and now - hit[0] < self.stale_max:
            return hit[1]  # its refresh is under way: the others do not queue behind it
        try:
            if now < self._down_until:
                raise StoreDown("the key store failed a moment ago")
            record = await self._fetch(key_hash)
        except Exception as exc:  # the key store is down, or did not answer in time
            if not isinstance(exc, StoreDown):
                self._down_until = self.clock() + self.retry_after
            what = (
                "did not answer in time"
                if isinstance(exc, TimeoutError)
                else f"unreachable ({type(exc).__name__})"
            )
            if hit is not None and now - hit[0] < self.stale_max:
                # Serve the last known answer: a database outage must not stop traffic for keys
                # seen recently. A revocation made during the outage applies once it is back.
                self._warn_stale(what)
                return hit[1]
            if miss_at is not None and now - miss_at < self.stale_max:
                return None
            if not isinstance(exc, StoreDown):
                log.error(
                    "key store %s and the key is not cached%s",
                    what,
                    " recently enough" if hit is not None else "",
                )
            raise GatewayError(
                503, "the key store is temporarily unavailable", type="overloaded_error", retry_after=2.0
            ) from exc
        if record is None:
            self._known.pop(key_hash)
            self._unknown.put(key_hash, now)
        else:
            self._unknown.pop(key_hash)
            self._known.put(key_hash, (now, record), 512 + len(repr(record.metadata or "")))
        return record

    async def _fetch(self, key_hash: str) -> KeyRecord | None:
        """One store lookup per key at a time, bounded by the deadline (a hung store is a failure)."""
        pending = self._inflight.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(bounded(self.store.get_key_by_hash(key_hash), self.deadline))
            self._inflight[key_hash] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key_hash, None))
        return await asyncio.shield(pending)

    def _warn_stale(self, what: str) -> None:
        """At most one warning per WARN_EVERY seconds, counting the ones it stands for."""
        now = self.clock()
        if now - self._warned_at < self.WARN_EVERY:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more times since the last warning)" if self._suppressed else ""
        log.warning("key store %s; using the cached key record%s", what, more)
        self._warned_at = now
        self._suppressed = 0

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


class StoreDown(Exception):
    """The store failed a moment ago: not asked again yet."""


def is_admin(settings: Settings, headers: dict[bytes, bytes]) -> bool:
    """The admin key guards /admin/api and the dashboard. A minted user key never works there."""
    presented = extract_key(headers)
    if not presented or not settings.admin_key:
        return False
    return hmac.compare_digest(presented.encode(), settings.admin_key.encode())


_ADMIN_ATTEMPTS: dict[int, FailureThrottle] = {}


def admin_attempts(settings: Settings) -> FailureThrottle:
    """This process's count of wrong admin keys per client address (the admin API and the console's
    sign-in share it): ``ETHEREAL_ADMIN_AUTH_FAILURES`` a minute, then 429 until the minute is over."""
    limit = settings.admin_auth_failures
    found = _ADMIN_ATTEMPTS.get(limit)
    if found is None:
        found = _ADMIN_ATTEMPTS[limit] = FailureThrottle(limit, 60.0)
    return found


def admin_throttled(wait: float) -> GatewayError:
    return GatewayError(
        429,
        "too many wrong admin keys from this address: retry later",
        type="rate_limit_error",
        retry_after=max(1.0, float(round(wait + 0.5))),
    )


def require_admin(settings: Settings, headers: dict[bytes, bytes], scope: Any = None) -> None:
    """The admin key, or the console's session cookie with its CSRF token and this site's origin
    (session.py): the console's pages call the admin API from the browser without the key.

    With the request's ``scope``, wrong keys are counted per client address (``admin_attempts``;
    the address as ``ETHEREAL_TRUSTED_PROXIES`` says, see ``guards.client_address``): past the
    limit every admin call from that address is a 429 with a retry-after, the right key included,
    so guessing costs a minute per few tries. A request without any key guesses nothing and is
    not counted."""
    if not settings.admin_key:
        raise GatewayError(403, "the admin API is disabled: set ETHEREAL_ADMIN_KEY to enable it")
    attempts = client = None
    if scope is not None:
        attempts, client = admin_attempts(settings), client_address(scope, settings.trusted_proxies)
        wait = attempts.wait(client)
        if wait:
            raise admin_throttled(wait)
    if is_admin(settings, headers):
        return
    verdict = session.check(settings, "POST", headers)  # every admin API call with a cookie needs the token
    if verdict == "csrf":
        raise GatewayError(
            403,
            "cross-site or tokenless console request refused: it needs the page's CSRF"
            " token and this site's origin",
        )
    if verdict != "ok":
        if attempts is not None and client is not None and extract_key(headers):
            attempts.fail(client)
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
        if settings.admin_read_key and hmac.compare_digest(
            presented.encode(), settings.admin_read_key.encode()
        ):
            if write:
                raise GatewayError(403, "the read-only admin key cannot change anything: use the admin key")
            return "read_only_key"
    if settings.admin_key:
        verdict = session.check(settings, "POST" if write else "GET", headers)
        if verdict == "ok":
            return "console"
        if verdict == "csrf":
            raise GatewayError(
                403,
                "cross-site or tokenless console request refused: it needs the page's CSRF"
                " token and this site's origin",
            )
    raise GatewayError(401, "organization routes need an admin key (x-api-key)")
