"""``/v1/organizations/usage_report/messages`` and ``/v1/organizations/cost_report``: the usage
and cost reports FinOps tools already read, in Anthropic's Admin API shapes (#22), served from the
sums the console keeps (storage/report.py; docs/reports.md says what is Anthropic's and what is an
extension).

Both answer ``{"data": [{"starting_at", "ending_at", "results": [...]}], "has_more",
"next_page"}``: one entry per time bucket of ``bucket_width`` (``1d``, ``1h``, ``1m``; UTC,
``starting_at`` snapped to the start of its bucket), ``limit`` buckets per page (1d: 7 by default,
at most 31; 1h: 24/168; 1m: 60/1440), ``page`` = the previous answer's ``next_page``. Buckets end
at or before ``ending_at`` (exclusive); without it, the buckets up to the current one.

Usage results carry Anthropic's token fields (``uncached_input_tokens``,
``cache_creation.{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}``,
``cache_read_input_tokens``, ``output_tokens``, ``server_tool_use.web_search_requests``) and the
grouped dimensions (null when not grouped). Cost results carry ``amount`` (a decimal string of
USD cents, exact: micro-USD / 10,000), ``currency``, and, grouped by ``description``,
``cost_type``/``token_type``/``model``/``description``/``service_tier``/``context_window``.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from blacksheep import Application, Request, Response

from ethereal.admin.keyspec import parse_time
from ethereal.api.common import anthropic_route, header_map, json_response
from ethereal.auth import require_org
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.spend.service import cents_text

USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"

WIDTHS = {"1d": 86400, "1h": 3600, "1m": 60}
LIMITS = {"1d": (7, 31), "1h": (24, 168), "1m": (60, 1440)}
# group_by value -> the store's dimension; dimensions the gateway has no notion of are always null
USAGE_GROUPS = {
    "api_key_id": "key_id",
    "model": "model",
    "service_tier": "service_tier",
    "context_window": "context_window",
    "inference_geo": "inference_geo",
    "speed": "speed",
    "owner": "owner",
    "team": "teams",
    "workspace_id": None,
    "account_id": None,
    "service_account_id": None,
}
COST_GROUPS = {
    "workspace_id": None,
    "description": "description",
    "api_key_id": "key_id",
    "model": "model",
    "service_tier": "service_tier",
    "context_window": "context_window",
    "inference_geo": "inference_geo",
    "speed": "speed",
    "owner": "owner",
    "team": "teams",
}
# filter parameter -> dimension
FILTERS = {
    "api_key_ids": "key_id",
    "models": "model",
    "service_tiers": "service_tier",
    "context_window": "context_window",
    "inference_geos": "inference_geo",
    "speeds": "speed",
    "owners": "owner",
    "teams": "teams",
    "workspace_ids": None,
    "account_ids": None,
    "service_account_ids": None,
}
TOKEN_TYPES = (
    ("uncached_input_tokens", "input_tokens", "Input Tokens", "input"),
    ("output_tokens", "output_tokens", "Output Tokens", "output"),
    ("cache_read_input_tokens", "cache_read", "Input Tokens, Cache Hit", "cache_read"),
    (
        "cache_creation.ephemeral_5m_input_tokens",
        "cache_creation_5m",
        "Input Tokens, Cache Write 5m",
        "cache_write_5m",
    ),
    (
        "cache_creation.ephemeral_1h_input_tokens",
        "cache_creation_1h",
        "Input Tokens, Cache Write 1h",
        "cache_write_1h",
    ),
)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _values(request: Request, name: str) -> list[str]:
    """``name[]=a&name[]=b`` (what Anthropic's SDKs send), ``name=a&name=b`` or ``name=a,b``."""
    out: list[str] = []
    for key in (f"{name}[]", name):
        for raw in request.query.get(key, []):
            out.extend(v.strip() for v in raw.split(",") if v.strip())
    return list(dict.fromkeys(out))


def _one(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def page_token(start: float) -> str:
    return "page_" + base64.urlsafe_b64encode(rfc3339(start).encode()).decode()


def parse_page(token: str) -> float:
    try:
        text = base64.urlsafe_b64decode(token.removeprefix("page_").encode()).decode()
        ts = parse_time("page", text)
    except (binascii.Error, ValueError, UnicodeDecodeError, GatewayError):
        raise invalid_request("page: not a next_page token of this report", param="page") from None
    assert ts is not None
    return ts


class ReportQuery:
    """A report's validated parameters and the buckets of this page."""

    def __init__(self, request: Request, *, groups: dict[str, str | None], cost: bool) -> None:
        known = {"starting_at", "ending_at", "bucket_width", "limit", "page", "beta"}
        known |= {g for name in ("group_by", *FILTERS) for g in (name, f"{name}[]")}
        unknown = sorted(set(request.query) - known)
        if unknown:
            raise invalid_request(f"{unknown[0]}: unknown query parameter", param=unknown[0])
        raw_start = _one(request, "starting_at")
        if not raw_start:
            raise invalid_request("starting_at: required (an RFC 3339 timestamp)", param="starting_at")
        start = parse_time("starting_at", raw_start)
        width_name = _one(request, "bucket_width") or "1d"
        if width_name not in WIDTHS:
            raise invalid_request("bucket_width: must be 1d, 1h or 1m", param="bucket_width")
        width = WIDTHS[width_name]
        default, maximum = LIMITS[width_name]
        raw_limit = _one(request, "limit")
        try:
            limit = default if raw_limit is None else int(raw_limit)
        except ValueError:
            raise invalid_request("limit: must be an integer", param="limit") from None
        if not 1 <= limit <= maximum:
            raise invalid_request(
                f"limit: must be between 1 and {maximum} for bucket_width={width_name}", param="limit"
            )
        assert start is not None
        first = math.floor(start / width) * width
        raw_end = _one(request, "ending_at")
        now = time.time()
        if raw_end:
            end = parse_time("ending_at", raw_end)
            assert end is not None
            if end <= start:
                raise invalid_request("ending_at: must be after starting_at", param="ending_at")
            last_end = math.floor(end / width) * width  # buckets that end at or before ending_at
        else:
            last_end = (math.floor(now / width) + 1) * width  # up to the current bucket
        token = _one(request, "page")
        page_start = parse_page(token) if token else first
        if page_start < first or page_start % width:
            raise invalid_request("page: not a next_page token of this report", param="page")
        page_end = min(last_end, page_start + limit * width)
        self.width_name, self.width = width_name, width
        self.start, self.end = page_start, max(page_start, page_end)
        self.has_more = page_end < last_end
        self.next_page = page_token(page_end) if self.has_more else None
        group_by = _values(request, "group_by")
        for g in group_by:
            if g not in groups:
                raise invalid_request(f"group_by: {g!r} is not one of {', '.join(groups)}", param="group_by")
        self.group_by = group_by
        self.filters: dict[str, list[str]] = {}
        self.empty = False  # a filter on a dimension the gateway does not have matches nothing
        for name, dim in FILTERS.items():
            values = _values(request, name)
            if not values:
                continue
            if dim is None:
                self.empty = True
            else:
                self.filters[dim] = values


def _explode(
    rows: Iterable[dict[str, Any]], *, by_team: bool, team_filter: list[str] | None
) -> list[dict[str, Any]]:
    """Records keep a key's teams joined by ","; a team filter keeps the rows of any team named,
    grouping by team counts a row under each of its teams (a row of no team: team null)."""
    wanted = set(team_filter) if team_filter else None
    out = []
    for row in rows:
        teams = [t for t in (row.get("teams") or "").split(",") if t]
        if wanted is not None:
            teams = [t for t in teams if t in wanted]
            if not teams:
                continue
        if by_team:
            for team in teams or [None]:
                out.append({**row, "team": team})
        else:
            out.append(row)
    return out


async def _sums(gw: Gateway, q: ReportQuery, dims: list[str]) -> list[dict[str, Any]]:
    if q.empty or q.end <= q.start:
        return []
    need = list(dict.fromkeys(dims))
    if "teams" in q.filters and "teams" not in need:
        need.append("teams")
    rows = await gw.store.report_sums(since=q.start, until=q.end, step=q.width, dims=need, filters=q.filters)
    if "teams" not in need:
        return rows
    return _explode(rows, by_team="teams" in dims, team_filter=q.filters.get("teams"))


def _buckets(q: ReportQuery) -> list[float]:
    return [float(b) for b in range(int(q.start), int(q.end), q.width)]


def _envelope(q: ReportQuery, results: dict[float, list[dict[str, Any]]]) -> dict[str, Any]:
    data = [
        {"starting_at": rfc3339(b), "ending_at": rfc3339(b + q.width), "results": results.get(b, [])}
        for b in _buckets(q)
    ]
    return {"data": data, "has_more": q.has_more, "next_page": q.next_page}


_USAGE_STANDARD = (
    "api_key_id",
    "workspace_id",
    "model",
    "service_tier",
    "context_window",
    "inference_geo",
    "account_id",
    "service_account_id",
)
_COST_STANDARD = (
    "workspace_id",
    "description",
    "cost_type",
    "token_type",
    "model",
    "service_tier",
    "context_window",
    "inference_geo",
)


def allocate(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder): parts sum to ``total``."""
    whole = sum(weights)
    if total == 0:
        return [0] * len(weights)
    if whole <= 0:
        return [total] + [0] * (len(weights) - 1)
    parts = [total * w // whole for w in weights]
    rest = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:rest]:
        parts[i] += 1
    return parts


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings

    def ok(request_id: str, payload: Any) -> Response:
        return json_response(200, orjson.dumps(payload), [(b"request-id", request_id.encode())])

    def shown_fields(group_by: list[str], groups: dict[str, str | None]) -> list[tuple[str, str]]:
        return [
            (g, "team" if d == "teams" else d)
            for g in group_by
            if (d := groups[g]) is not None and d != "description"
        ]

    @anthropic_route
    async def usage_report(request: Request, request_id: str) -> Response:
        require_org(settings, header_map(request), write=False)
        q = ReportQuery(request, groups=USAGE_GROUPS, cost=False)
        dims = [d for g in q.group_by if (d := USAGE_GROUPS[g]) is not None]
        fields = shown_fields(q.group_by, USAGE_GROUPS)
        standard = dict.fromkeys(_USAGE_STANDARD)
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        buckets: dict[float, list[dict[str, Any]]] = {}
        rows = await _sums(gw, q, dims)
        if "teams" not in dims and isinstance(rows, list) and rows and not isinstance(rows[0], dict):
            # one source, groups unique (PostgreSQL's rollup): one result per row, built at once
            names = [g for g, _ in fields]
            cols = [f for _, f in fields]
            std = [k for k in _USAGE_STANDARD if k not in names]
            for r in rows:
                if not r["requests"]:
                    continue
                item = {
                    "uncached_input_tokens": r["input_tokens"],
                    "cache_creation": {
                        "ephemeral_1h_input_tokens": r["cache_creation_1h"],
                        "ephemeral_5m_input_tokens": r["cache_creation_5m"],
                    },
                    "cache_read_input_tokens": r["cache_read"],
                    "output_tokens": r["output_tokens"],
                    "server_tool_use": {"web_search_requests": r["web_search_requests"]},
                }
                for k in std:
                    item[k] = None
                for k, c in zip(names, cols, strict=True):
                    item[k] = r[c] or None
                b = r["bucket"]
                found = buckets.get(b)
                if found is None:
                    buckets[b] = [item]
                else:
                    found.append(item)
            return ok(request_id, _envelope(q, buckets))
        for row in rows:
            if not row["requests"]:
                continue
            values = tuple(row[f] or None for _, f in fields)  # "" (no key, no owner): null
            bucket = float(row["bucket"])
            key = (bucket, *values)
            item = merged.get(key)
            if item is None:
                item = merged[key] = {
                    "uncached_input_tokens": 0,
                    "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                    "cache_read_input_tokens": 0,
                    "output_tokens": 0,
                    "server_tool_use": {"web_search_requests": 0},
                    **standard,
                }
                for (g, _), v in zip(fields, values, strict=True):
                    item[g] = v
                buckets.setdefault(bucket, []).append(item)
            item["uncached_input_tokens"] += int(row["input_tokens"])
            cc = item["cache_creation"]
            cc["ephemeral_1h_input_tokens"] += int(row["cache_creation_1h"])
            cc["ephemeral_5m_input_tokens"] += int(row["cache_creation_5m"])
            item["cache_read_input_tokens"] += int(row["cache_read"])
            item["output_tokens"] += int(row["output_tokens"])
            item["server_tool_use"]["web_search_requests"] += int(row["web_search_requests"])
        return ok(request_id, _envelope(q, buckets))

    def split_cost(row: dict[str, Any]) -> list[tuple[str, str | None, str | None, int]]:
        """(cost_type, token_type, model, micro) parts of one row's exact cost: web searches at
        their per-use price, the rest across token types in proportion to the row's tokens at
        its model's current rates (a record keeps its total cost, not its parts)."""
        registry = gw.registry
        total = int(row["cost_micro"])
        web = min(total, int(row["web_search_requests"]) * registry.server_tools.web_search_micro)
        model_name = row.get("model") or None
        model = registry.resolve(model_name) if model_name else None
        if model is None and model_name:
            model = registry.provisional(model_name)
        weights = []
        if model is not None:
            rates = model.card_at(time.time()).rates
            weights = [int(row[col]) * int(getattr(rates, rate)) for _, col, _, rate in TOKEN_TYPES]
        else:
            weights = [int(row[col]) for _, col, _, _ in TOKEN_TYPES]
        parts = allocate(total - web, weights)
        out: list[tuple[str, str | None, str | None, int]] = [
            ("tokens", TOKEN_TYPES[i][0], model_name, micro) for i, micro in enumerate(parts) if micro
        ]
        if web:
            out.append(("web_search", None, None, web))
        return out

    def description_of(cost_type: str, token_type: str | None, model: str | None) -> str:
        if cost_type == "web_search":
            return "Web Search Usage"
        found = gw.registry.get(model) if model else None
        name = found.display_name if found is not None else (model or "Unknown model")
        label = next(t[2] for t in TOKEN_TYPES if t[0] == token_type)
        return f"{name} Usage - {label}"

    @anthropic_route
    async def cost_report(request: Request, request_id: str) -> Response:
        require_org(settings, header_map(request), write=False)
        q = ReportQuery(request, groups=COST_GROUPS, cost=True)
        by_description = "description" in q.group_by
        dims = [d for g in q.group_by if (d := COST_GROUPS[g]) is not None and d != "description"]
        if by_description:
            dims = list(dict.fromkeys([*dims, "model", "service_tier", "context_window"]))
        fields = shown_fields(q.group_by, COST_GROUPS)
        standard = dict.fromkeys(_COST_STANDARD)
        merged: dict[tuple[Any, ...], list[Any]] = {}  # key -> [item, micro]
        buckets: dict[float, list[list[Any]]] = {}
        rows = await _sums(gw, q, dims)
        if (
            not by_description
            and "teams" not in dims
            and isinstance(rows, list)
            and rows
            and not isinstance(rows[0], dict)
        ):
            # one source, groups unique (PostgreSQL's rollup): one result per row, built at once
            names = [g for g, _ in fields]
            cols = [f for _, f in fields]
            std = [k for k in _COST_STANDARD if k not in names]
            fast: dict[float, list[dict[str, Any]]] = {}
            for r in rows:
                if not r["requests"]:
                    continue
                item: dict[str, Any] = {"amount": cents_text(int(r["cost_micro"])), "currency": "USD"}
                for k in std:
                    item[k] = None
                for k, c in zip(names, cols, strict=True):
                    item[k] = r[c] or None
                fast.setdefault(r["bucket"], []).append(item)
            return ok(request_id, _envelope(q, fast))
        for row in rows:
            if not row["requests"]:
                continue
            values = tuple(row[f] or None for _, f in fields)
            bucket = float(row["bucket"])
            if by_description:
                tier = row["service_tier"] or None
                parts: list[tuple[Any, ...]] = [
                    (ct, tt, m, micro, tier, row["context_window"] if ct == "tokens" else None)
                    for ct, tt, m, micro in split_cost(row)
                ]
            else:
                parts = [(None, None, None, int(row["cost_micro"]), None, None)]
            for cost_type, token_type, model, micro, tier, window in parts:
                key = (bucket, *values, cost_type, token_type, model, tier, window)
                acc = merged.get(key)
                if acc is None:
                    item = {"amount": "", "currency": "USD", **standard}
                    for (g, _), v in zip(fields, values, strict=True):
                        item[g] = v
                    if by_description:
                        item.update(
                            cost_type=cost_type,
                            token_type=token_type,
                            model=model,
                            service_tier=tier,
                            context_window=window,
                            description=description_of(cost_type, token_type, model),
                        )
                    acc = merged[key] = [item, 0]
                    buckets.setdefault(bucket, []).append(acc)
                acc[1] += micro
        results: dict[float, list[dict[str, Any]]] = {}
        for bucket, accs in buckets.items():
            out = results[bucket] = []
            for item, micro in accs:
                item["amount"] = cents_text(micro)
                out.append(item)
        return ok(request_id, _envelope(q, results))

    app.router.add_get(USAGE_PATH, usage_report)
    app.router.add_get(COST_PATH, cost_report)
