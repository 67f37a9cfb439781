"""``/v1/organizations/spend_limits`` in the shapes of Anthropic's Admin API.

Authenticated by the admin key (``x-api-key``), the read-only admin key (reads only), or the
console's session (auth.require_org). Errors are Anthropic's envelope with ``request-id``.

- ``POST``: create or replace the limit of a (scope, period) (and ``shared``): an upsert;
- ``GET``: list, newest last (``limit`` 1-1000, default 20; ``after_id``/``before_id``; filters
  ``scope_type``, ``user_id``, ``rbac_group_id``, ``api_key_id``, ``period``);
- ``GET /{id}``, ``DELETE /{id}`` (``spend_limit_deleted``);
- ``GET /effective?user_id=``: each person's cap per period, its source, spend so far, reset;
- ``GET /audit``: every change (who, when, before and after), newest first.
"""

from __future__ import annotations

from typing import Any

import orjson
from blacksheep import Application, Request, Response

from ethereal.api.common import anthropic_route, header_map, json_response
from ethereal.auth import require_org
from ethereal.errors import invalid_request
from ethereal.gateway import Gateway
from ethereal.pipeline import parse_json_body
from ethereal.spend.limits import SCOPES, SpendLimit
from ethereal.spend.periods import PERIODS
from ethereal.spend.service import audit_json, limit_json, not_found, parse_limit, people_of
from ethereal.wire import read_body

BASE = "/v1/organizations/spend_limits"
_BODY_MAX = 64 * 1024


def query_one(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def page_limit(request: Request, default: int = 20, maximum: int = 1000) -> int:
    raw = query_one(request, "limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_request("limit: must be an integer", param="limit") from None
    if not 1 <= value <= maximum:
        raise invalid_request(f"limit: must be between 1 and {maximum}", param="limit")
    return value


def check_query(request: Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise invalid_request(f"{unknown[0]}: unknown query parameter", param=unknown[0])


def query_many(request: Request, name: str) -> list[str]:
    """``name[]=a&name[]=b`` (what Anthropic's SDKs send), ``name=a&name=b`` or ``name=a,b``."""
    out: list[str] = []
    for key in (f"{name}[]", name):
        for raw in request.query.get(key, []):
            out.extend(v.strip() for v in raw.split(",") if v.strip())
    return list(dict.fromkeys(out))


def page_of(items: list[dict[str, Any]], request: Request, limit: int, key: str = "id") -> dict[str, Any]:
    """Anthropic's list envelopes over ``items`` sorted by ``key``: ``after_id`` (or ``page``, the
    previous answer's ``next_page``, what the SDKs' cursor pages send) pages forward,
    ``before_id`` backward; the answer carries ``first_id``/``last_id`` and ``next_page``."""
    after, before = (
        query_one(request, "after_id") or query_one(request, "page"),
        query_one(request, "before_id"),
    )
    if after is not None and before is not None:
        raise invalid_request("after_id: give after_id or before_id, not both", param="after_id")
    if after is not None:
        rest = [i for i in items if i[key] > after]
        page, more = rest[:limit], len(rest) > limit
    elif before is not None:
        rest = [i for i in items if i[key] < before]
        page, more = rest[-limit:], len(rest) > limit
    else:
        page, more = items[:limit], len(items) > limit
    last = page[-1][key] if page else None
    return {
        "data": page,
        "has_more": more,
        "first_id": page[0][key] if page else None,
        "last_id": last,
        "next_page": last if more else None,
    }


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings

    def ok(request_id: str, payload: Any, status: int = 200) -> Response:
        return json_response(status, orjson.dumps(payload), [(b"request-id", request_id.encode())])

    def find(limit_id: str) -> SpendLimit:
        for lim in gw.spend.book.limits:
            if lim.id == limit_id:
                return lim
        raise not_found(limit_id)

    @anthropic_route
    async def create(request: Request, request_id: str) -> Response:
        actor = require_org(settings, header_map(request), write=True)
        raw = await read_body(request, _BODY_MAX)
        lim = parse_limit(parse_json_body(raw) if raw.strip() else {})
        _before, after = await gw.spend.put(lim, actor)
        return ok(request_id, limit_json(after))

    @anthropic_route
    async def list_limits(request: Request, request_id: str) -> Response:
        require_org(settings, header_map(request), write=False)
        check_query(
            request,
            {
                "limit",
                "after_id",
                "before_id",
                "page",
                "scope_type",
                "scope_type[]",
                "user_id",
                "rbac_group_id",
                "api_key_id",
                "period",
                "beta",
            },
        )
        limit = page_limit(request)
        await gw.spend.reload()  # a list reads the store: another replica's change shows at once
        kinds, period = query_many(request, "scope_type"), query_one(request, "period")
        for kind in kinds:
            if kind not in SCOPES:
                raise invalid_request(f"scope_type: must be one of {', '.join(SCOPES)}", param="scope_type")
        if period is not None and period not in PERIODS:
            raise invalid_request(f"period: must be one of {', '.join(PERIODS)}", param="period")
        wanted = {name: query_one(request, name) for name in ("user_id", "rbac_group_id", "api_key_id")}
        items = []
        for lim in sorted(gw.spend.book.limits, key=lambda x: x.id):
            if (kinds and lim.scope_type not in kinds) or (period is not None and lim.period != period):
                continue
            scope = lim.scope()
            if any(v is not None and scope.get(name) != v for name, v in wanted.items()):
                continue
            items.append(limit_json(lim))
        return ok(request_id, page_of(items, request, limit))

    @anthropic_route
    async def get_limit(request: Request, request_id: str) -> Response:
        require_org(settings, header_map(request), write=False)
        await gw.spend.reload()
        return ok(request_id, limit_json(find(request.route_values.get("limit_id") or "")))

    @anthropic_route
    async def delete_limit(request: Request, request_id: str) -> Response:
        actor = require_org(settings, header_map(request), write=True)
        limit_id = request.route_values.get("limit_id") or ""
        before = await gw.spend.delete(limit_id, actor)
        if before is None:
            raise not_found(limit_id)
        return ok(request_id, {"id": before.id, "type": "spend_limit_deleted"})

    @anthropic_route
    async def effective(request: Request, request_id: str) -> Response:
        """Rows per (person, period); pages by person (``limit`` people, a person's rows never
        split), ``page`` = the previous ``next_page``."""
        require_org(settings, header_map(request), write=False)
        check_query(
            request,
            {
                "user_id",
                "user_ids",
                "user_ids[]",
                "period",
                "period[]",
                "limit",
                "after_id",
                "before_id",
                "page",
                "beta",
            },
        )
        limit = page_limit(request, default=20)
        periods = query_many(request, "period")
        for p in periods:
            if p not in PERIODS:
                raise invalid_request(f"period: must be among {', '.join(PERIODS)}", param="period")
        users = query_many(request, "user_ids") + query_many(request, "user_id")
        if len(users) > 100:
            raise invalid_request("user_ids: at most 100", param="user_ids")
        people: dict[str, list[str]] = {}
        if users:
            for user in users:
                people.update(await people_of(gw.store, user))
        else:
            people = await people_of(gw.store)
        names = page_of([{"id": name} for name in sorted(people)], request, limit)
        shown = {row["id"] for row in names["data"]}
        rows = await gw.spend.effective(
            {k: v for k, v in people.items() if k in shown}, periods=periods or None
        )
        return ok(request_id, {**names, "data": rows})

    @anthropic_route
    async def audit(request: Request, request_id: str) -> Response:
        require_org(settings, header_map(request), write=False)
        check_query(request, {"limit", "after_id", "before_id", "object_id", "beta"})
        limit = page_limit(request)
        rows, more = await gw.store.list_audit(
            limit=limit,
            after_id=query_one(request, "after_id"),
            before_id=query_one(request, "before_id"),
            object_id=query_one(request, "object_id"),
        )
        data = [audit_json(r) for r in rows]
        return ok(
            request_id,
            {
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    router = app.router
    router.add_post(BASE, create)
    router.add_get(BASE, list_limits)
    router.add_get(BASE + "/effective", effective)
    router.add_get(BASE + "/audit", audit)
    router.add_get(BASE + "/:limit_id", get_limit)
    router.add_delete(BASE + "/:limit_id", delete_limit)
