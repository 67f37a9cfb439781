"""Anthropic-native routes: /v1/messages, count_tokens, models, usage."""

from __future__ import annotations

from typing import Any

import orjson
from blacksheep import Application, Content, Request, Response, StreamedContent

from ethereal import _native
from ethereal.admin.auth import is_admin
from ethereal.api.common import (
    JSON,
    anthropic_route,
    header_map,
    is_openai_client,
    json_response,
    raw_headers,
    read_body,
)
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.metering.usage import extras as usage_extras
from ethereal.proxy import (
    Call,
    admit,
    finish,
    open_upstream,
    parse_json_body,
    recording,
    resolve_model,
    response_headers,
    splice_model,
    streamed,
    tap_stream,
    upstream_error,
    usage_from_message,
    validate_messages_body,
)
from ethereal.proxy import authenticate as proxy_authenticate
from ethereal.upstream.affinity import cache_affinity
from ethereal.upstream.client import UpstreamStreamError

SSE = b"text/event-stream; charset=utf-8"


def path_with_query(request: Request) -> str:
    query = request.scope.get("query_string") or b""
    path = request.scope["path"]
    return f"{path}?{query.decode('latin-1')}" if query else path


def model_page(items: list[dict[str, object]], request: Request) -> dict[str, object]:
    """Anthropic's cursor pagination: before_id / after_id / limit (1-1000, default 20)."""
    params = request.query
    try:
        limit = int(params.get("limit", ["20"])[0])
    except ValueError:
        raise invalid_request("limit: must be an integer", param="limit") from None
    if not 1 <= limit <= 1000:
        raise invalid_request("limit: must be between 1 and 1000", param="limit")
    ids_ = [m["id"] for m in items]
    before = params.get("before_id", [None])[0]
    after = params.get("after_id", [None])[0]
    if before is not None and after is not None:
        raise invalid_request("before_id and after_id cannot both be set")
    if after is not None:
        if after not in ids_:
            raise invalid_request(f"after_id: unknown model {after!r}", param="after_id")
        start = ids_.index(after) + 1
        page = items[start:start + limit]
        has_more = start + limit < len(items)
    elif before is not None:
        if before not in ids_:
            raise invalid_request(f"before_id: unknown model {before!r}", param="before_id")
        end = ids_.index(before)
        page = items[max(0, end - limit):end]
        has_more = end - limit > 0
    else:
        page = items[:limit]
        has_more = limit < len(items)
    return {
        "data": page,
        "has_more": has_more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings

    async def authenticate(request: Request, call: Call) -> None:
        await proxy_authenticate(gw, header_map(request), call)

    @anthropic_route
    async def messages(request: Request, request_id: str) -> Response:
        call = Call(request_id=request_id, route="messages")
        await authenticate(request, call)
        async with recording(gw, call):  # exactly one usage record, whatever happens below
            return await _messages(request, call)

    async def read_messages_body(request: Request, call: Call, *, need_max_tokens: bool
                                 ) -> tuple[bytes, dict[str, Any]]:
        """The body as it came, validated, with an aliased model spliced to its canonical id."""
        body = await read_body(request, settings.max_body_bytes)
        data = parse_json_body(body)
        name = validate_messages_body(data, need_max_tokens=need_max_tokens)
        resolve_model(gw, call, name)
        if call.model_name != name:
            body = splice_model(body, data, call.model_name)  # type: ignore[arg-type]
        return body, data

    async def _messages(request: Request, call: Call) -> Response:
        body, data = await read_messages_body(request, call, need_max_tokens=True)
        call.stream = data.get("stream") is True
        await admit(gw, call, body, int(data["max_tokens"]))
        try:
            resp = await open_upstream(gw, call, path_with_query(request), raw_headers(request), body,
                                       affinity=cache_affinity(data, call.model_name, body))
        except GatewayError as exc:
            await finish(gw, call, status=exc.status, error_type=exc.type)
            raise
        if resp.is_event_stream and resp.status == 200:
            call.stream = True
            headers = response_headers(call, resp.content_type)
            headers.append((b"cache-control", b"no-cache"))
            return Response(200, headers, StreamedContent(SSE, streamed(lambda: tap_stream(gw, call, resp), request)))
        try:
            payload = await resp.read()
        except UpstreamStreamError as exc:
            await finish(gw, call, status=502, error_type="api_error")
            raise GatewayError(502, "the upstream connection was interrupted") from exc
        call.ttfb_ms = call.ttfb_ms or 0.0
        if resp.status >= 400:
            err = upstream_error(resp.status, payload, None)
            await finish(gw, call, status=resp.status, error_type=err.type)
            raise err
        try:
            usage = orjson.loads(payload).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            usage = None
        inp, out, c5, c1, cr, assumed = usage_from_message(usage)
        iterations, searches = usage_extras(usage)
        await finish(gw, call, status=resp.status, input_tokens=inp, output_tokens=out, cache_5m=c5,
                     cache_1h=c1, cache_read=cr, exact=isinstance(usage, dict), ttl_assumed=assumed,
                     iterations=iterations, web_searches=searches)
        return Response(resp.status, response_headers(call, resp.content_type or "application/json"),
                        Content(JSON, payload))

    @anthropic_route
    async def count_tokens(request: Request, request_id: str) -> Response:
        call = Call(request_id=request_id, route="count_tokens")
        await authenticate(request, call)
        async with recording(gw, call):
            return await _count_tokens(request, call)

    async def _count_tokens(request: Request, call: Call) -> Response:
        # counting is free: the record carries no tokens and no cost, only that it happened
        body, _ = await read_messages_body(request, call, need_max_tokens=False)
        try:
            resp = await open_upstream(gw, call, path_with_query(request), raw_headers(request), body,
                                       health=False)
            payload = await resp.read()
        except (GatewayError, UpstreamStreamError) as exc:
            if isinstance(exc, GatewayError) and exc.status < 500 and exc.status != 429:
                await finish(gw, call, status=exc.status, error_type=exc.type)
                raise
            # no upstream could answer: the native estimate, marked as such
            estimate = _native.estimate_tokens(body)
            await finish(gw, call, status=200, exact=False)
            headers = response_headers(call, "application/json")
            headers.append((b"ethereal-estimated", b"true"))
            return json_response(200, orjson.dumps({"input_tokens": estimate}), headers)
        await finish(gw, call, status=resp.status)
        if resp.status >= 400:
            raise upstream_error(resp.status, payload, None)
        return Response(resp.status, response_headers(call, resp.content_type or "application/json"),
                        Content(JSON, payload))

    @anthropic_route
    async def list_models(request: Request, request_id: str) -> Response:
        call = Call(request_id=request_id, route="models")
        await authenticate(request, call)
        async with recording(gw, call):
            if is_openai_client(header_map(request)):  # OpenAI's list shape for OpenAI clients
                payload = orjson.dumps({"object": "list", "data": [m.to_openai() for m in gw.catalog.models]})
            else:
                items = [m.to_anthropic() for m in gw.catalog.models]
                payload = orjson.dumps(model_page(items, request))
            await finish(gw, call, status=200)
        return json_response(200, payload, [(b"request-id", request_id.encode())])

    @anthropic_route
    async def get_model(request: Request, request_id: str) -> Response:
        call = Call(request_id=request_id, route="models")
        await authenticate(request, call)
        async with recording(gw, call):
            model_id = request.route_values.get("model_id", "")
            model = gw.catalog.resolve(model_id)
            call.model_name = model.id if model else model_id
            if model is None:
                raise GatewayError(404, f"model: {model_id}")
            await finish(gw, call, status=200)
        shape = model.to_openai() if is_openai_client(header_map(request)) else model.to_anthropic()
        return json_response(200, orjson.dumps(shape), [(b"request-id", request_id.encode())])

    @anthropic_route
    async def get_usage(request: Request, request_id: str) -> Response:
        """One request's usage. A key sees its own requests, the admin key every request.

        Not itself recorded (polling it would write a row per poll). Answers as soon as the
        request's response has ended: from this worker's memory, else the database, waiting
        up to ETHEREAL_METER_LOOKUP_WAIT for a record another worker has not flushed yet."""
        headers = header_map(request)
        usage_id = request.route_values.get("request_id", "")
        assert gw.auth is not None and gw.meter is not None
        key = None if is_admin(settings, headers) else await gw.auth.authenticate(headers)
        if not usage_id.startswith("req_") or len(usage_id) > 64:
            raise GatewayError(404, f"no usage record for request {usage_id[:64]!r}")
        rec = await gw.meter.get(usage_id)
        # a key sees only its own requests; the same 404 for "not yours" and "unknown"
        if rec is None or (key is not None and rec.key_id != key.id):
            raise GatewayError(404, f"no usage record for request {usage_id!r}")
        return json_response(200, orjson.dumps(rec.to_api()), [(b"request-id", request_id.encode())])

    async def root(request: Request) -> Response:
        return json_response(200, b'{"name":"ethereal","status":"ok"}')

    async def healthz(request: Request) -> Response:
        return json_response(200, b'{"status":"ok"}')

    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/:model_id", get_model)
    app.router.add_get("/v1/usage/:request_id", get_usage)
    app.router.add_get("/", root)
    app.router.add_head("/", root)
    app.router.add_get("/healthz", healthz)
