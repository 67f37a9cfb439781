"""Admin API for usage (admin key only).

``GET /admin/api/usage?group_by=key_id|model|credential|route|error_type&since=&until=``
    Requests, errors, tokens (input, output, cache writes 5m/1h, cache reads),
    web searches and spend (micro-USD and USD) per group over ``[since, until)``.
    ``since``/``until``: unix seconds or RFC 3339 (``2026-01-31T00:00:00Z``,
    ``2026-01-31``); open when absent.
``GET /admin/api/meter``
    The meter's counters: queue depth, spool size, flushed rows, failures, drops.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import orjson
from blacksheep import Application, Request, Response

from ethereal.api.common import anthropic_route, header_map, json_response
from ethereal.auth import require_admin
from ethereal.errors import invalid_request
from ethereal.gateway import Gateway
from ethereal.metering.aggregate import GROUPS, usage_totals

# unix seconds the API accepts: 1970 to the end of year 9999 (what datetime can render)
_MAX_UNIX = 253402300799.0


def parse_time(name: str, raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        # nan, inf (1e400) and instants datetime cannot hold are the client's 400, not a 500
        if not math.isfinite(value) or not 0.0 <= value <= _MAX_UNIX:
            raise invalid_request(
                f"{name}: unix seconds must be between 0 and {_MAX_UNIX:.0f}, got {raw[:64]!r}", param=name
            )
        return value
    text = raw.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise invalid_request(
            f"{name}: expected unix seconds or an RFC 3339 time, got {raw[:64]!r}", param=name
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    value = parsed.timestamp()
    if not 0.0 <= value <= _MAX_UNIX:
        raise invalid_request(f"{name}: must be between 1970 and 9999, got {raw[:64]!r}", param=name)
    return value


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings

    @anthropic_route
    async def usage(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        params = request.query
        group_by = params.get("group_by", ["key_id"])[0]
        if group_by not in GROUPS:
            raise invalid_request(f"group_by: must be one of {', '.join(GROUPS)}", param="group_by")
        since = parse_time("since", params.get("since", [None])[0])
        until = parse_time("until", params.get("until", [None])[0])
        if not gw.meter.degraded:
            # this worker's queue first, so a request that just ended is counted (others flush within 0.2 s)
            try:
                await asyncio.wait_for(asyncio.shield(gw.meter.flush()), 2.0)
            except TimeoutError:
                pass
        rows = await usage_totals(gw.store, group_by=group_by, since=since, until=until)
        totals = {
            name: sum(r[name] for r in rows)
            for name in ("requests", "cost_micro", "input_tokens", "output_tokens")
        }
        body = {
            "group_by": group_by,
            "since": _rfc3339(since),
            "until": _rfc3339(until),
            "data": rows,
            "totals": {**totals, "cost_usd": f"{totals['cost_micro'] / 1_000_000:.6f}"},
        }
        return json_response(200, orjson.dumps(body), [(b"request-id", request_id.encode())])

    @anthropic_route
    async def meter_stats(request: Request, request_id: str) -> Response:
        require_admin(settings, header_map(request), request.scope)
        stats = gw.meter.stats()
        return json_response(200, orjson.dumps(stats), [(b"request-id", request_id.encode())])

    app.router.add_get("/admin/api/usage", usage)
    app.router.add_get("/admin/api/meter", meter_stats)
