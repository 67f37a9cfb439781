"""Upstream credentials: loading, replica sync, and management (admin API and CLI).

The database holds the credentials (API key encrypted with ``ETHEREAL_SECRET_KEY``);
every replica reloads them every ``upstream_reload_interval`` seconds (2 s by default),
and at once when an admin change bumps the Redis version key (polled with the health
state every ``upstream_health_poll`` seconds). Live ``Credential`` objects are updated
in place, so requests in flight keep a valid reference.

The single env credential (``ETHEREAL_UPSTREAM_URL`` + ``ETHEREAL_UPSTREAM_KEY``) is
named ``default``, needs no secret key and cannot be edited through the API (only
disabled and enabled); a stored credential named ``default`` takes its place.

A 401/403 on a client's request never disables a credential by itself (a model or beta the
organisation lacks answers 403 too, and a client must not be able to take the gateway down):
it schedules a probe, ``GET /v1/models?limit=1`` with the credential and nothing from the
client, at most once per ``upstream_probe_interval`` per credential. Only when the probe is
refused with 401/403 too is the credential disabled, with the reason shown to the admin.

Model discovery: each credential's ``GET /v1/models`` is read at start-up and every
``upstream_models_interval`` seconds (3 h by default), off the request path, bounded (pages,
bytes, ids, id length). What a list names only ever adds to the registry
(``Registry.learn_upstream``): an id it does not describe becomes listable and is billed
provisionally. Nothing is refused, answered locally or routed away because a credential's list
lacks a model (lists can be partial or stale): only a credential's operator-set ``models``
restricts routing (``Pool.acquire``). What each credential listed is kept (``listed``) for
``ethereal models check`` and the console; a failure is logged once per streak, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from ethereal.errors import GatewayError
from ethereal.models import Registry
from ethereal.secretbox import SecretBox, SecretKeyError
from ethereal.settings import Settings
from ethereal.storage.base import MAX_INT4, MAX_INT8, Store
from ethereal.storage.records import StoredCredential
from ethereal.upstream.pool import Credential, Pool, month_start

if TYPE_CHECKING:
    from ethereal.upstream.client import UpstreamClient

log = logging.getLogger("ethereal.upstream")

ENV_NAME = "default"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SPEND_REFRESH = 15.0
PROBE_TIMEOUT = 15.0
MODELS_TIMEOUT = 30.0  # one credential's whole model list, every page
MODELS_PAGE = 1000  # ids per page asked for (the API's maximum)
MODELS_MAX_PAGES = 20
MODELS_MAX_IDS = 2000
MODELS_MAX_BYTES = 4 * 1024 * 1024  # one page's body
MODELS_RETRY = 300.0  # a credential whose list could not be read is asked again after this long
MUTABLE = ("base_url", "api_key", "weight", "models", "rpm", "spend_cap_micro", "enabled")
NO_SECRET_KEY = (
    "ETHEREAL_SECRET_KEY is not set: upstream credentials are stored encrypted and need it. "
    "Set it to a long random string (and keep it: the stored credentials cannot be read without it)."
)


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param)


def validate_spec(data: Any, registry: Registry | None, *, partial: bool) -> dict[str, Any]:
    """Checked and normalised credential fields from an admin request (or CLI flags)."""
    if not isinstance(data, dict):
        raise _bad("body must be a JSON object")
    allowed = set(MUTABLE) | ({"name"} if not partial else set())
    unknown = sorted(set(data) - allowed - {"disabled_reason"})
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
    out: dict[str, Any] = {}
    if not partial:
        for required in ("name", "base_url", "api_key"):
            if data.get(required) in (None, ""):
                raise _bad(f"{required}: Field required", param=required)
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _bad("name: 1-64 characters of letters, digits, '.', '_' or '-'", param="name")
        out["name"] = name
    if "base_url" in data:
        url = data["base_url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
            raise _bad("base_url: must be an http(s) URL", param="base_url")
        url = url.rstrip("/")
        url = url.removesuffix("/v1")  # requests already carry /v1/...
        out["base_url"] = url
    if "api_key" in data:
        key = data["api_key"]
        if not isinstance(key, str) or not key.strip() or len(key) > 4096:
            raise _bad("api_key: must be a non-empty string", param="api_key")
        out["api_key"] = key.strip()
    if "weight" in data:
        w = data["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1_000_000:
            raise _bad("weight: must be a positive number", param="weight")
        out["weight"] = float(w)
    if "models" in data:
        models = data["models"]
        if models is None or models == []:
            out["models"] = None
        elif isinstance(models, list) and all(isinstance(m, str) and m for m in models):
            canonical = []
            for m in models:
                resolved = registry.resolve(m) if (registry is not None and not m.endswith("*")) else None
                canonical.append(resolved.id if resolved else m)
            out["models"] = sorted(set(canonical))
        else:
            raise _bad("models: must be a list of model ids (or null for all)", param="models")
    # bounded by what both stores keep in the column (storage/base.py)
    for field_name, lo, hi in (("rpm", 1, MAX_INT4), ("spend_cap_micro", 0, MAX_INT8)):
        if field_name in data:
            v = data[field_name]
            if v is None:
                out[field_name] = None
            elif isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise _bad(f"{field_name}: must be an integer from {lo} to {hi}, or null", param=field_name)
            else:
                out[field_name] = v
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise _bad("enabled: must be true or false", param="enabled")
        out["enabled"] = data["enabled"]
    return out


class UpstreamService:
    def __init__(
        self, settings: Settings, pool: Pool, client: UpstreamClient | None, registry: Registry | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.registry = registry
        self.store: Store | None = None
        self._box: SecretBox | None = None
        self._task: asyncio.Task[None] | None = None
        self._reload_now = asyncio.Event()
        self._shadow_warned = False
        self._probes: set[asyncio.Task[int | None]] = set()
        self._probed_at: dict[str, float] = {}
        # what each credential's GET /v1/models listed: {"ids", "at", "error", "truncated"}
        self.listed: dict[str, dict[str, Any]] = {}
        self._models_read_at: dict[str, float] = {}  # time.monotonic() of the last attempt
        self._discovery: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox(self.settings.secret_key)  # raises SecretKeyError when unset
        return self._box

    async def attach(self, store: Store) -> None:
        """Store and (when configured) Redis health, without loading or background tasks."""
        self.store = store
        if self.settings.redis_url and not self.pool.health.shared:
            from ethereal.upstream.redis_health import RedisHealth

            self.pool.health = RedisHealth(self.settings.redis_url)
        self.pool.on_auth_failure = self.schedule_probe

    async def start(self, store: Store) -> None:
        """Load every credential (raising SecretKeyError when they cannot be decrypted)."""
        await self.attach(store)
        settings = self.settings
        if settings.upstream_url and settings.upstream_key:
            self.pool.add(
                Credential(
                    name=ENV_NAME,
                    base_url=settings.upstream_url.rstrip("/"),
                    api_key=settings.upstream_key,
                    source="env",
                )
            )
        await self.reload(strict=True)
        await self.pool.health.sync(self.pool.credentials)
        await self.refresh_spend(only_capped=True)
        if not self.pool.credentials:
            log.warning("no upstream credential configured: every request will get 503")
        self._maybe_discover(time.monotonic())  # every credential's model list, in the background
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ethereal-upstreams")

    async def stop(self) -> None:
        for probe in list(self._probes):
            probe.cancel()
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._discovery
            self._discovery = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.pool.health.close()

    async def _run(self) -> None:
        settings = self.settings
        poll = max(0.05, settings.upstream_health_poll)
        last_reload = last_spend = time.monotonic()
        while True:
            try:
                try:
                    await asyncio.wait_for(self._reload_now.wait(), poll)
                except TimeoutError:
                    pass
                now = time.monotonic()
                changed = await self.pool.health.sync(self.pool.credentials)
                if (
                    changed
                    or self._reload_now.is_set()
                    or now - last_reload >= settings.upstream_reload_interval
                ):
                    self._reload_now.clear()
                    last_reload = now
                    await self.reload()
                    if changed:
                        await self.pool.health.sync(self.pool.credentials)
                if now - last_spend >= settings.upstream_spend_refresh:
                    last_spend = now
                    await self.refresh_spend(only_capped=True)
                self._maybe_discover(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upstream credential sync failed; retrying")
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ loading
    async def reload(self, *, strict: bool = False) -> None:
        """Bring the pool in line with the store (in place)."""
        assert self.store is not None
        started = time.monotonic()
        rows = await self.store.list_credentials()
        pool = self.pool
        seen: set[str] = set()
        for row in rows:
            seen.add(row.name)
            cred = pool.get(row.name)
            try:
                if cred is None or cred.source != "store":
                    if cred is not None and not self._shadow_warned:
                        self._shadow_warned = True
                        log.warning(
                            "stored credential %r replaces the one from ETHEREAL_UPSTREAM_URL", row.name
                        )
                    api_key = self.box.decrypt(row.api_key_enc)
                    cred = Credential(
                        name=row.name,
                        base_url=row.base_url,
                        api_key=api_key,
                        source="store",
                        secret_ref=row.api_key_enc,
                    )
                    self._apply_row(cred, row, started)
                    pool.add(cred)
                    continue
                if cred.secret_ref != row.api_key_enc:
                    cred.api_key = self.box.decrypt(row.api_key_enc)
                    cred.secret_ref = row.api_key_enc
                if cred.base_url != row.base_url:
                    cred.base_url = row.base_url
                    if self.client is not None:
                        await self.client.drop(cred.name)
                self._apply_row(cred, row, started)
            except SecretKeyError as exc:
                if strict:
                    if not self.settings.secret_key:
                        raise SecretKeyError(
                            f"{len(rows)} upstream credential(s) are stored in the database but {NO_SECRET_KEY}"
                        ) from None
                    raise SecretKeyError(f"upstream credential {row.name!r}: {exc}") from None
                log.error("upstream credential %r cannot be loaded: %s", row.name, exc)
        for cred in list(pool.credentials):
            if cred.source == "store" and cred.name not in seen:
                pool.remove(cred.name)
                if self.client is not None:
                    await self.client.drop(cred.name)
        settings = self.settings
        if (
            ENV_NAME not in seen
            and pool.get(ENV_NAME) is None
            and settings.upstream_url
            and settings.upstream_key
        ):
            pool.add(
                Credential(
                    name=ENV_NAME,
                    base_url=settings.upstream_url.rstrip("/"),
                    api_key=settings.upstream_key,
                    source="env",
                )
            )

    @staticmethod
    def _apply_row(cred: Credential, row: StoredCredential, started: float) -> None:
        cred.weight = row.weight if row.weight > 0 else 1.0
        cred.models = row.models or None
        cred.rpm = row.rpm
        cred.spend_cap_micro = row.spend_cap_micro
        cred.store_updated_at = row.updated_at
        if cred.changed_at > started:
            return  # enabled/disabled here while the rows were read: keep the newer local state
        flagged = cred.off_flag_at > row.updated_at  # a shared 401 flag newer than the row
        was_enabled = cred.enabled
        cred.enabled = row.enabled and not flagged
        if not cred.enabled:
            cred.disabled_reason = row.disabled_reason if not row.enabled else cred.disabled_reason
        else:
            cred.disabled_reason = None
            if not was_enabled:
                cred.cooldown_until, cred.failures = 0.0, 0

    async def refresh_spend(self, *, only_capped: bool = False) -> None:
        if self.store is None:
            return
        if only_capped and not any(c.spend_cap_micro is not None for c in self.pool.credentials):
            return
        totals = await self.store.usage_totals(group_by="credential", since=month_start())
        spent = {row.get("credential"): int(row.get("cost_micro") or 0) for row in totals}
        for cred in self.pool.credentials:
            cred.spent_micro = spent.get(cred.name, 0)

    # ------------------------------------------------------------------ model discovery
    def _due(self, cred: Credential, now: float) -> bool:
        last = self._models_read_at.get(cred.name)
        if last is None:
            return True
        if (self.listed.get(cred.name) or {}).get("error"):
            return now - last >= min(MODELS_RETRY, self.settings.upstream_models_interval or MODELS_RETRY)
        interval = self.settings.upstream_models_interval
        return interval > 0 and now - last >= interval

    def _maybe_discover(self, now: float) -> None:
        """Start reading the model lists that are due (one task at a time, off the request path)."""
        if self.client is None or (self._discovery is not None and not self._discovery.done()):
            return
        due = [c for c in self.pool.credentials if c.enabled and self._due(c, now)]
        if due:
            self._discovery = asyncio.get_running_loop().create_task(
                self.discover_all(due), name="ethereal-models-discovery"
            )

    async def discover_all(self, creds: list[Credential] | None = None) -> None:
        for cred in list(self.pool.credentials if creds is None else creds):
            await self.discover(cred)
        for name in [n for n in self.listed if self.pool.get(n) is None]:  # deleted credentials
            self.listed.pop(name, None)
            self._models_read_at.pop(name, None)

    async def discover(self, cred: Credential) -> list[str] | None:
        """Read ``cred``'s ``GET /v1/models`` (every page, bounded) and teach the registry the ids.

        Returns the ids, or None when the list could not be read (logged once per streak)."""
        if self.client is None:
            return None
        self._models_read_at[cred.name] = time.monotonic()
        try:
            ids, truncated = await asyncio.wait_for(self._read_models(cred), MODELS_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a list that cannot be read changes nothing
            error = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
            before = self.listed.get(cred.name) or {}
            if not before.get("error"):
                log.warning(
                    "upstream credential %r: GET /v1/models failed (%s); models keep being served "
                    "as before, the list is read again later",
                    cred.name,
                    error,
                )
            self.listed[cred.name] = {
                **before,
                "ids": before.get("ids", []),
                "error": error,
                "failed_at": time.time(),
            }
            return None
        before = self.listed.get(cred.name) or {}
        if before.get("error"):
            log.info("upstream credential %r: GET /v1/models answered again (%d models)", cred.name, len(ids))
        self.listed[cred.name] = {"ids": ids, "at": time.time(), "error": None, "truncated": truncated}
        if self.registry is not None:
            new = self.registry.learn_upstream(ids)
            unknown = [m for m in new if (found := self.registry.get(m)) is None or found.provisional]
            if unknown:
                log.warning(
                    "upstream credential %r serves %d model(s) the registry does not describe: %s "
                    "(served and billed provisionally; add them to ETHEREAL_MODELS_FILE)",
                    cred.name,
                    len(unknown),
                    ", ".join(m[:64] for m in unknown[:10]),
                )
        return ids

    async def _read_models(self, cred: Credential) -> tuple[list[str], bool]:
        assert self.client is not None
        from ethereal.models.registry import MAX_MODEL_NAME

        ids: list[str] = []
        seen: set[str] = set()
        after: str | None = None
        for _ in range(MODELS_MAX_PAGES):
            query = f"?limit={MODELS_PAGE}" + (f"&after_id={quote(after, safe='')}" if after else "")
            resp = await self.client.request(
                "GET",
                cred.base_url + "/v1/models" + query,
                {"x-api-key": cred.api_key, "anthropic-version": "2023-06-01"},
                None,
                pool_key=cred.name,
            )
            body = bytearray()
            try:
                async for chunk in resp.iter_chunks():
                    body += chunk
                    if len(body) > MODELS_MAX_BYTES:
                        raise ValueError(f"a page of the model list is over {MODELS_MAX_BYTES} bytes")
            finally:
                resp.close()
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            page = orjson.loads(bytes(body))
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise TypeError("the model list has no data array")
            for item in data:
                mid = item.get("id") if isinstance(item, dict) else None
                if (
                    isinstance(mid, str)
                    and 0 < len(mid) <= MAX_MODEL_NAME
                    and mid.isprintable()
                    and mid not in seen
                ):
                    seen.add(mid)
                    ids.append(mid)
                    if len(ids) >= MODELS_MAX_IDS:
                        return ids, True
            last = page.get("last_id")
            if not page.get("has_more") or not isinstance(last, str) or not last or last == after:
                return ids, False
            after = last
        return ids, True

    # ------------------------------------------------------------------ credential probes
    def schedule_probe(self, cred: Credential, detail: str | None = None) -> None:
        """A request got 401/403 through ``cred``: check the credential with a request of its own."""
        if self.client is None:
            return
        now = time.monotonic()
        last = self._probed_at.get(cred.name)
        if last is not None and now - last < self.settings.upstream_probe_interval:
            return
        if len(self._probed_at) > 4 * len(self.pool.credentials) + 64:  # bounded: drop the old entries
            self._probed_at = {
                k: v for k, v in self._probed_at.items() if now - v < self.settings.upstream_probe_interval
            }
        self._probed_at[cred.name] = now
        task = asyncio.get_running_loop().create_task(
            self.probe(cred, detail), name=f"ethereal-probe-{cred.name}"
        )
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def probe(self, cred: Credential, after: str | None = None) -> int | None:
        """``GET /v1/models?limit=1`` with the credential alone; disables it on 401/403.

        Returns the probe's status (None when the upstream could not be reached)."""
        assert self.client is not None
        status: int | None = None
        detail = None
        try:
            resp = await asyncio.wait_for(
                self.client.request(
                    "GET",
                    cred.base_url + "/v1/models?limit=1",
                    {"x-api-key": cred.api_key, "anthropic-version": "2023-06-01"},
                    None,
                    pool_key=cred.name,
                ),
                PROBE_TIMEOUT,
            )
            status = resp.status
            with contextlib.suppress(
                Exception
            ):  # the status is the answer; the body only frees the connection
                await asyncio.wait_for(resp.read(), PROBE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - unreachable is not a verdict on the credential
            detail = type(exc).__name__
        cred.last_probe = {
            "at": time.time(),
            "request": "GET /v1/models?limit=1",
            "status": status,
            "after": after,
            "error": detail,
        }
        if status in (401, 403):
            reason = (
                f"the upstream refused the credential itself: its probe GET /v1/models answered HTTP {status}"
                f"{f' (after a request got {after})' if after else ''}; enable it again once fixed"
            )
            await self.pool.disable(cred, reason)
            await self._persist_disable(cred, reason)
        elif status is not None:
            log.info(
                "upstream credential %r: probe after %s answered %d, credential kept",
                cred.name,
                after,
                status,
            )
        return status

    async def _persist_disable(self, cred: Credential, reason: str) -> None:
        """A failed probe disables a stored credential in the database too, until an admin acts."""
        log.error("upstream credential %r disabled: %s", cred.name, reason)
        if cred.source != "store" or self.store is None:
            return
        try:
            row = await self.store.get_credential(cred.name)
            if row is not None and row.enabled:
                row.enabled, row.disabled_reason = False, reason
                await self.store.upsert_credential(row)
                cred.store_updated_at = row.updated_at
        except Exception:
            log.exception("could not persist the disabled state of %r", cred.name)
        await self.pool.health.bump_version()

    # ------------------------------------------------------------------ management
    def view(self, name: str, row: StoredCredential | None) -> dict[str, Any]:
        cred = self.pool.get(name)
        if row is not None:
            out: dict[str, Any] = {
                "name": row.name,
                "source": "store",
                "base_url": row.base_url,
                "weight": row.weight,
                "models": row.models,
                "rpm": row.rpm,
                "spend_cap_micro": row.spend_cap_micro,
                "enabled": row.enabled,
                "disabled_reason": row.disabled_reason,
                "created_at": row.created_at,
                "updated_at": row.updated_at,
            }
        elif cred is not None:
            out = {
                "name": cred.name,
                "source": cred.source,
                "base_url": cred.base_url,
                "weight": cred.weight,
                "models": cred.models,
                "rpm": cred.rpm,
                "spend_cap_micro": cred.spend_cap_micro,
                "enabled": cred.enabled,
                "disabled_reason": cred.disabled_reason,
                "created_at": None,
                "updated_at": None,
            }
        else:
            raise GatewayError(404, f"no upstream credential named {name!r}")
        if cred is not None:
            out["api_key_hint"] = "…" + cred.api_key[-4:] if len(cred.api_key) >= 12 else "…"
            if not cred.enabled and out["enabled"]:
                out["enabled"], out["disabled_reason"] = False, cred.disabled_reason
            out["health"] = self.pool.describe(cred)
        else:
            out["api_key_hint"] = None
            out["health"] = None
        out["models_listed"] = self.models_listed(name)
        return out

    def models_listed(self, name: str) -> dict[str, Any] | None:
        """What the credential's last ``GET /v1/models`` said (None: not read yet), the ids the
        registry does not describe picked out (served, billed provisionally)."""
        seen = self.listed.get(name)
        if seen is None:
            return None
        ids = list(seen.get("ids") or [])
        reg = self.registry
        undescribed = [
            m for m in ids if reg is not None and ((found := reg.get(m)) is None or found.provisional)
        ]
        return {
            "count": len(ids),
            "ids": ids,
            "undescribed": undescribed,
            "at": seen.get("at"),
            "error": seen.get("error"),
            "truncated": bool(seen.get("truncated")),
        }

    async def list(self) -> list[dict[str, Any]]:
        assert self.store is not None
        rows = {r.name: r for r in await self.store.list_credentials()}
        try:
            await self.refresh_spend()
        except Exception:
            log.exception("spend refresh failed")
        names = sorted(set(rows) | {c.name for c in self.pool.credentials})
        return [self.view(n, rows.get(n)) for n in names]

    async def get(self, name: str) -> dict[str, Any]:
        assert self.store is not None
        return self.view(name, await self.store.get_credential(name))

    def _env_only(self, name: str) -> bool:
        cred = self.pool.get(name)
        return cred is not None and cred.source == "env"

    async def add(self, data: Any) -> dict[str, Any]:
        assert self.store is not None
        spec = validate_spec(data, self.registry, partial=False)
        if await self.store.get_credential(spec["name"]) is not None:
            raise GatewayError(
                409,
                f"an upstream credential named {spec['name']!r} already exists",
                type="invalid_request_error",
            )
        try:
            enc = self.box.encrypt(spec["api_key"])
        except SecretKeyError:
            raise GatewayError(400, f"cannot store the credential: {NO_SECRET_KEY}") from None
        row = StoredCredential(
            name=spec["name"],
            base_url=spec["base_url"],
            api_key_enc=enc,
            weight=spec.get("weight", 1.0),
            models=spec.get("models"),
            rpm=spec.get("rpm"),
            spend_cap_micro=spec.get("spend_cap_micro"),
            enabled=spec.get("enabled", True),
            disabled_reason=None if spec.get("enabled", True) else "disabled by an admin",
        )
        await self.store.upsert_credential(row)
        await self._changed(row.name)
        log.info("upstream credential %r added (%s)", row.name, row.base_url)
        return await self.get(row.name)

    async def update(self, name: str, data: Any) -> dict[str, Any]:
        assert self.store is not None
        spec = validate_spec(data, self.registry, partial=True)
        row = await self.store.get_credential(name)
        if row is None:
            if self._env_only(name):
                raise GatewayError(
                    409,
                    f"{name!r} comes from ETHEREAL_UPSTREAM_URL/KEY: change the environment "
                    "(it can only be disabled and enabled here)",
                    type="invalid_request_error",
                )
            raise GatewayError(404, f"no upstream credential named {name!r}")
        if "api_key" in spec:
            try:
                row.api_key_enc = self.box.encrypt(spec.pop("api_key"))
            except SecretKeyError:
                raise GatewayError(400, f"cannot store the credential: {NO_SECRET_KEY}") from None
        enabled = spec.pop("enabled", None)
        for k, v in spec.items():
            setattr(row, k, v)
        await self.store.upsert_credential(row)
        if enabled is not None:
            return await self.set_enabled(name, enabled)
        await self._changed(name)
        return await self.get(name)

    async def set_enabled(self, name: str, enabled: bool, reason: str | None = None) -> dict[str, Any]:
        assert self.store is not None
        row = await self.store.get_credential(name)
        cred = self.pool.get(name)
        if row is None and (cred is None or cred.source != "env"):
            raise GatewayError(404, f"no upstream credential named {name!r}")
        reason = reason or "disabled by an admin"
        if row is not None:
            row.enabled = enabled
            row.disabled_reason = None if enabled else reason
            await self.store.upsert_credential(row)
        target = (
            cred
            if cred is not None
            else Credential(name=name, base_url=row.base_url if row else "", api_key="", source="store")
        )
        if enabled:
            await self.pool.enable(target)
        else:
            await self.pool.disable(target, reason)
        if row is not None:
            target.store_updated_at = row.updated_at
        await self._changed(name)
        log.info("upstream credential %r %s", name, "enabled" if enabled else "disabled")
        return await self.get(name)

    async def delete(self, name: str) -> bool:
        assert self.store is not None
        if not await self.store.delete_credential(name):
            if self._env_only(name):
                raise GatewayError(
                    409,
                    f"{name!r} comes from ETHEREAL_UPSTREAM_URL/KEY: unset it to remove it "
                    "(or disable it here)",
                    type="invalid_request_error",
                )
            raise GatewayError(404, f"no upstream credential named {name!r}")
        await self.pool.health.forget(name)
        await self._changed(name)
        log.info("upstream credential %r deleted", name)
        return True

    async def _changed(self, name: str) -> None:
        await self.pool.health.bump_version()
        if self._task is not None:  # a running gateway: apply at once here, other replicas follow
            try:
                await self.reload()
            except Exception:
                log.exception("reload after a change to %r failed", name)
                self._reload_now.set()


async def stored_credential_count(store: Store, settings: Settings) -> int:
    """Start-up check: the stored credentials can be decrypted with the configured secret key.

    Raises SecretKeyError with an operator-facing message otherwise."""
    rows = await store.list_credentials()
    if not rows:
        return 0
    if not settings.secret_key:
        raise SecretKeyError(
            f"{len(rows)} upstream credential(s) are stored in the database but {NO_SECRET_KEY}"
        )
    box = SecretBox(settings.secret_key)
    for row in rows:
        try:
            box.decrypt(row.api_key_enc)
        except SecretKeyError:
            raise SecretKeyError(
                f"upstream credential {row.name!r} cannot be decrypted with ETHEREAL_SECRET_KEY "
                "(was the key changed?)"
            ) from None
    rewrapped = await rewrap_credentials(store, box)
    if rewrapped:
        log.warning("%d upstream credential(s) re-encrypted with the scrypt-derived key", rewrapped)
    return len(rows)


async def rewrap_credentials(store: Store, box: SecretBox) -> int:
    """Migration: re-encrypt credentials stored before the KDF (sha256 of the secret as key).

    Runs at start-up (``ethereal serve``, ``ethereal migrate``) once every stored value is
    known to decrypt. A row changed meanwhile (its ciphertext is no longer the one read)
    is left for the next start."""
    count = 0
    for row in await store.list_credentials():
        if not SecretBox.needs_rewrap(row.api_key_enc):
            continue
        plaintext = box.decrypt(row.api_key_enc)
        current = await store.get_credential(row.name)
        if current is None or current.api_key_enc != row.api_key_enc:
            continue
        current.api_key_enc = box.encrypt(plaintext)
        await store.upsert_credential(current)
        count += 1
    return count
