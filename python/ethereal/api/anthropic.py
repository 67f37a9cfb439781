"""Anthropic-native routes: /v1/messages, count_tokens (pipeline adapters), models, usage."""

from __future__ import annotations

from typing import Any

import orjson
from blacksheep import Application, Content, Request, Response

from ethereal import ids
from ethereal.api.common import (
    JSON,
    anthropic_error,
    anthropic_route,
    header_map,
    is_openai_client,
    json_response,
    path_with_query,
    raw_headers,
)
from ethereal.auth import is_admin
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.guards import estimate_input_tokens, validate_messages_body, well_formed_id
from ethereal.pipeline import Adapter, Call, Outbound, Pipeline, response_headers, splice_model
from ethereal.upstream.affinity import cache_affinity
from ethereal.usage import Usage
from ethereal.wire import read_body

EVENT_LOG_MAX_BYTES = 1024 * 1024  # a telemetry batch the gateway reads (and drops) at most


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
        page = items[start : start + limit]
        has_more = start + limit < len(items)
    elif before is not None:
        if before not in ids_:
            raise invalid_request(f"before_id: unknown model {before!r}", param="before_id")
        end = ids_.index(before)
        page = items[max(0, end - limit) : end]
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


class Messages(Adapter):
    """``POST /v1/messages``: the client's bytes go upstream as they came (an aliased model
    spliced in), the upstream's bytes come back unchanged, streams metered by the native tap."""

    route = "messages"

    def validate(self, data: dict[str, Any]) -> str:
        return validate_messages_body(data, need_max_tokens=True)

    def build(self, call: Call, raw: bytes, data: dict[str, Any], request: Request) -> Outbound:
        body = raw
        if call.model_name != data["model"]:
            body = splice_model(raw, data, call.model_name or data["model"])
        return Outbound(
            body=body,
            data=data,
            path=path_with_query(request),
            headers=raw_headers(request),
            stream=data.get("stream") is True,
            max_tokens=int(data["max_tokens"]),
            affinity=cache_affinity(data, call.model_name, body),
        )

    def reply(self, call: Call, out: Outbound, payload: bytes, message: dict[str, Any]) -> Response:
        return Response(200, response_headers(call), Content(JSON, payload))

    def error(self, exc: GatewayError, request_id: str) -> Response:
        return anthropic_error(exc, request_id)


class CountTokens(Messages):
    """``POST /v1/messages/count_tokens``: free. Counts against the key's requests and
    concurrency only; its upstream failures never cool a credential; when no upstream can
    answer, the native estimate, marked ``ethereal-estimated: true``."""

    route = "count_tokens"
    metered = False

    def validate(self, data: dict[str, Any]) -> str:
        return validate_messages_body(data, need_max_tokens=False)

    def build(self, call: Call, raw: bytes, data: dict[str, Any], request: Request) -> Outbound:
        body = raw
        if call.model_name != data["model"]:
            body = splice_model(raw, data, call.model_name or data["model"])
        return Outbound(
            body=body,
            data=data,
            path=path_with_query(request),
            headers=raw_headers(request),
            stream=False,
            max_tokens=0,
        )

    def unavailable(self, call: Call, out: Outbound, exc: GatewayError) -> Response | None:
        if exc.status < 500 and exc.status != 429:
            return None  # the client's own error (400, 404, ...): answered as the upstream gave it
        headers = response_headers(call)
        headers.append((b"ethereal-estimated", b"true"))
        # the plain estimate for this model, no margin: a count, not a reservation
        return json_response(
            200, orjson.dumps({"input_tokens": estimate_input_tokens(out.body, call.model)}), headers
        )


def register(app: Application, gw: Gateway, pipeline: Pipeline) -> None:
    settings = gw.settings

    async def authenticate(request: Request, call: Call) -> None:
        await pipeline.authenticate(header_map(request), call)

    @anthropic_route
    async def list_models(request: Request, request_id: str) -> Response:
        """Every model the registry describes that is not retired, and the ids the upstreams' own
        lists name (learnt at start-up and every few hours), newest first; Anthropic's shape and
        pagination, or OpenAI's list for OpenAI clients. A provisional model is listed like the
        others (the console and ``ethereal models list`` flag it)."""
        call = Call(request_id=request_id, route="models")
        await authenticate(request, call)
        async with pipeline.recording(call):
            if is_openai_client(header_map(request)):  # OpenAI's list shape for OpenAI clients
                payload = orjson.dumps(
                    {"object": "list", "data": [m.to_openai() for m in gw.registry.listed()]}
                )
            else:
                items = [m.to_anthropic() for m in gw.registry.listed()]
                payload = orjson.dumps(model_page(items, request))
            await pipeline.finish(call, 200, Usage())
        return json_response(200, payload, [(b"request-id", request_id.encode())])

    @anthropic_route
    async def get_model(request: Request, request_id: str) -> Response:
        call = Call(request_id=request_id, route="models")
        await authenticate(request, call)
        async with pipeline.recording(call):
            model_id = request.route_values.get("model_id") or ""
            provider = request.route_values.get("provider")
            if provider:  # GET /v1/models/anthropic/<id>: a provider prefix before the id
                model_id = f"{provider}/{model_id}"
            model = gw.registry.resolve(model_id)
            call.model_name = model.id if model else model_id
            if model is None or model.retired:  # as the API answers: retired ids no longer exist
                raise GatewayError(404, f"model: {model_id[:256]}")
            await pipeline.finish(call, 200, Usage())
        shape = model.to_openai() if is_openai_client(header_map(request)) else model.to_anthropic()
        return json_response(200, orjson.dumps(shape), [(b"request-id", request_id.encode())])

    @anthropic_route
    async def get_usage(request: Request, request_id: str) -> Response:
        """One request's usage. A key sees its own requests, the admin key every request.

        Not itself recorded (polling it would write a row per poll). Answers as soon as the
        request's response has ended: from this worker's memory, else the database, waiting
        up to ETHEREAL_METER_LOOKUP_WAIT for a record another worker has not flushed yet."""
        headers = header_map(request)
        usage_id = request.route_values.get("request_id") or ""
        key = None if is_admin(settings, headers) else await gw.auth.authenticate(headers)
        if not well_formed_id(usage_id, "req_", 96):  # batch items: req_<24>_<custom_id>
            raise GatewayError(404, f"no usage record for request {usage_id[:96]!r}")
        # an id not issued to this key: one lookup (ids from before tagging), no waiting
        rec = await gw.meter.get(
            usage_id, wait=None if key is None or ids.issued_to(usage_id, key.key_hash) else 0.0
        )
        # a key sees only its own requests; the same 404 for "not yours" and "unknown"
        if rec is None or (key is not None and rec.key_id != key.id):
            raise GatewayError(404, f"no usage record for request {usage_id[:64]!r}")
        return json_response(200, orjson.dumps(rec.to_api()), [(b"request-id", request_id.encode())])

    async def root(request: Request) -> Response:
        return json_response(200, b'{"name":"ethereal","status":"ok"}')

    async def hello(request: Request) -> Response:
        # Claude Code's start-up probe (HEAD /api/hello): answered here, no key, nothing upstream
        return json_response(200, b'{"name":"ethereal","status":"ok"}')

    async def event_logging(request: Request) -> Response:
        # Claude Code's telemetry batches (older releases post them to the base URL): read within a
        # bound, then discarded; never forwarded, never stored, no key needed
        try:
            await read_body(request, EVENT_LOG_MAX_BYTES)
        except GatewayError as exc:
            return anthropic_error(exc, ids.request_id())
        return json_response(200, b"{}")

    async def healthz(request: Request) -> Response:
        return json_response(200, b'{"status":"ok"}')

    app.router.add_post("/v1/messages", pipeline.route(Messages()))
    app.router.add_post("/v1/messages/count_tokens", pipeline.route(CountTokens()))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/:model_id", get_model)
    app.router.add_get("/v1/models/:provider/:model_id", get_model)
    app.router.add_get("/v1/usage/:request_id", get_usage)
    app.router.add_get("/", root)
    app.router.add_head("/", root)
    app.router.add_get("/api/hello", hello)
    app.router.add_head("/api/hello", hello)
    app.router.add_post("/api/event_logging/batch", event_logging)
    app.router.add_post("/api/event_logging/v2/batch", event_logging)
    app.router.add_get("/healthz", healthz)
