"""The admin API for keys: mint (one or up to 500 at once), list, show, update, revoke, delete;
and for the model registry: its version and alerts, and price corrections (re-pricing stored
usage after a correction to ``ETHEREAL_MODELS_FILE``, metering/reprice.py).

Everything under ``/admin/api/`` answers only to ``ETHEREAL_ADMIN_KEY`` (auth.py,
constant-time); errors are Anthropic-shaped. A key's plaintext appears once, in the
mint response. A change to a key (revoke, update, delete) is dropped from this
worker's key cache at once and published to the other replicas through Redis when
Redis is configured; without Redis it reaches them within the key cache TTL (1 s).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import orjson
from blacksheep import Application, Request, Response

from ethereal.admin.keyspec import KEY_FIELDS, MAX_BATCH, key_json, parse_key_fields
from ethereal.api.common import anthropic_route, header_map, json_response
from ethereal.auth import require_admin
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.guards import refuse_nul
from ethereal.keys import KeyRecord, mint
from ethereal.limits.plans import Plans
from ethereal.metering.reprice import RepriceError, correction_json, parse_bound, reprice
from ethereal.models import RegistryError, load_registry
from ethereal.pipeline import parse_json_body
from ethereal.wire import read_body

_ADMIN_BODY_MAX = 4 * 1024 * 1024
_STATES = ("active", "revoked", "expired")


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings

    def plans() -> Plans:
        return gw.plans

    def ok(request_id: str, payload: Any, status: int = 200) -> Response:
        return json_response(status, orjson.dumps(payload), [(b"request-id", request_id.encode())])

    async def body_of(request: Request) -> Any:
        raw = await read_body(request, _ADMIN_BODY_MAX)
        data = parse_json_body(raw) if raw.strip() else {}
        refuse_nul(data)  # the store could not keep it (PostgreSQL)
        return data

    def store() -> Any:
        return gw.store

    async def spend_of(ids: list[str]) -> dict[str, dict[str, int]]:
        return await store().spend_by_key(ids) if ids else {}

    async def changed(record: KeyRecord) -> None:
        await gw.key_changes.publish(record.key_hash)  # this worker's cache at once, then every replica

    async def find(request: Request) -> KeyRecord:
        key_id = request.route_values.get("key_id") or ""
        record = await store().get_key(key_id)
        if record is None:
            raise GatewayError(404, f"no API key with id {key_id[:64]!r}")
        return record

    def minted(attrs: dict[str, Any]) -> tuple[str, KeyRecord]:
        return mint(settings.key_prefix, **attrs)

    @anthropic_route
    async def create_key(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        attrs = parse_key_fields(await body_of(request), registry=gw.registry, plans=plans())
        plaintext, record = minted(attrs)
        await store().insert_keys([record])
        return ok(request_id, {**key_json(record), "key": plaintext}, 201)

    @anthropic_route
    async def create_batch(request: Request, request_id: str) -> Response:
        """``{"count": N, ...shared attributes}`` or ``{"keys": [{...}, ...]}``: 1 to 500 keys, all or none."""
        require_admin(settings, header_map(request), request.scope)
        body = await body_of(request)
        if not isinstance(body, dict):
            raise invalid_request("body: must be a JSON object")
        if "keys" in body:
            if set(body) != {"keys"}:
                extra = min(set(body) - {"keys"})
                raise invalid_request(f"{extra}: not allowed with keys (set attributes per key)", param=extra)
            items = body["keys"]
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
                raise invalid_request(f"keys: must be an array of 1 to {MAX_BATCH} objects", param="keys")
            specs = [
                parse_key_fields(item, registry=gw.registry, plans=plans(), prefix=f"keys.{i}.")
                for i, item in enumerate(items)
            ]
        else:
            count = body.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
                raise invalid_request(f"count: must be an integer from 1 to {MAX_BATCH}", param="count")
            shared = parse_key_fields(
                {k: v for k, v in body.items() if k != "count"}, registry=gw.registry, plans=plans()
            )
            specs = [shared] * count
        pairs = [minted(copy.deepcopy(spec)) for spec in specs]  # no metadata dict shared between records
        await store().insert_keys([record for _, record in pairs])  # one transaction: all or nothing
        data = [{**key_json(record), "key": plaintext} for plaintext, record in pairs]
        return ok(request_id, {"data": data, "count": len(data)}, 201)

    @anthropic_route
    async def list_keys(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        query = request.query
        unknown = sorted(set(query) - {"limit", "after_id", "owner", "team", "plan", "state"})
        if unknown:
            raise invalid_request(f"{unknown[0]}: unknown query parameter", param=unknown[0])

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        raw_limit = one("limit") or "100"
        try:
            limit = int(raw_limit)
        except ValueError:
            raise invalid_request("limit: must be an integer", param="limit") from None
        if not 1 <= limit <= 1000:
            raise invalid_request("limit: must be between 1 and 1000", param="limit")
        state = one("state")
        if state is not None and state not in _STATES:
            raise invalid_request(f"state: must be one of {', '.join(_STATES)}", param="state")
        plan = one("plan")
        if plan is not None:
            found = plans().get(plan)
            plan = found.name if found else plan
        records = await store().list_keys(
            owner=one("owner"),
            team=one("team"),
            plan=plan,
            state=state,
            limit=limit + 1,
            after_id=one("after_id"),
        )
        has_more = len(records) > limit
        records = records[:limit]
        spend = await spend_of([r.id for r in records])
        data = [key_json(r, spend.get(r.id)) for r in records]
        return ok(
            request_id,
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    @anthropic_route
    async def get_key(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        record = await find(request)
        spend = await spend_of([record.id])
        return ok(request_id, key_json(record, spend.get(record.id)))

    @anthropic_route
    async def update_key(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        body = await body_of(request)
        changes = parse_key_fields(body, registry=gw.registry, plans=plans(), allow=(*KEY_FIELDS, "revoked"))
        if not changes:
            raise invalid_request("body: no field to update")
        record = await find(request)
        updated = await store().update_key(record.id, changes)
        if updated is None:
            raise GatewayError(404, f"no API key with id {record.id!r}")
        await changed(updated)
        spend = await spend_of([updated.id])
        return ok(request_id, key_json(updated, spend.get(updated.id)))

    @anthropic_route
    async def revoke_key(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        record = await find(request)
        updated = await store().update_key(record.id, {"revoked": True})
        if updated is None:
            raise GatewayError(404, f"no API key with id {record.id!r}")
        await changed(updated)
        return ok(request_id, key_json(updated))

    @anthropic_route
    async def delete_key(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        record = await find(request)
        await store().delete_key(record.id)
        await changed(record)
        return ok(request_id, {"id": record.id, "type": "api_key_deleted", "deleted": True})

    @anthropic_route
    async def list_plans(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        return ok(request_id, {"data": plans().describe()})

    @anthropic_route
    async def models_status(request: Request, request_id: str) -> Response:
        """The registry this worker serves: its version, models whose current card has expired,
        models billed provisionally, and the last price correction."""
        require_admin(settings, header_map(request))
        registry = gw.registry
        return ok(
            request_id,
            {
                "registry_version": registry.version,
                "source": registry.source,
                "expired": [m.id for m in registry.expired()],
                "provisional": [m.id for m in registry.provisional_models()],
                "last_correction": correction_json(await store().last_price_correction()),
            },
        )

    @anthropic_route
    async def reprice_models(request: Request, request_id: str) -> Response:
        """``{"since": DATE, "until": DATE, "dry_run": bool}``: re-price the records of the range
        with the models file as it is now (read again: the correction may be newer than this
        worker), rewrite the sums and move the keys' budget counters; answers what changed."""
        require_admin(settings, header_map(request))
        body = await body_of(request)
        if not isinstance(body, dict):
            raise invalid_request("body: must be a JSON object")
        unknown = sorted(set(body) - {"since", "until", "dry_run"})
        if unknown:
            raise invalid_request(f"{unknown[0]}: unknown field", param=unknown[0])
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise invalid_request("dry_run: must be true or false", param="dry_run")
        try:
            since = parse_bound(body.get("since"), field_name="since")
            until = (
                parse_bound(body["until"], field_name="until", end=True)
                if body.get("until") is not None
                else time.time()
            )
            registry = load_registry(settings.models_file)
            result = await reprice(store(), registry, gw.limiter, since=since, until=until, dry_run=dry_run)
        except RepriceError as exc:
            raise invalid_request(str(exc)) from None
        except RegistryError as exc:
            raise invalid_request(f"the models file cannot be used: {exc}") from None
        return ok(request_id, result.to_json(serving_version=gw.registry.version))

    router = app.router
    router.add_get("/admin/api/models", models_status)
    router.add_post("/admin/api/models/reprice", reprice_models)
    router.add_post("/admin/api/keys", create_key)
    router.add_post("/admin/api/keys/batch", create_batch)
    router.add_get("/admin/api/keys", list_keys)
    router.add_get("/admin/api/keys/:key_id", get_key)
    router.add_patch("/admin/api/keys/:key_id", update_key)
    router.add_post("/admin/api/keys/:key_id/revoke", revoke_key)
    router.add_delete("/admin/api/keys/:key_id", delete_key)
    router.add_get("/admin/api/plans", list_plans)
