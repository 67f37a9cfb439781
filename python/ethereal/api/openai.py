"""OpenAI Chat Completions on ``POST /v1/chat/completions``, served by Claude.

The same path as the native ``/v1/messages`` route (api/anthropic.py) — same keys,
limits, credential pool, failover and metering (route name ``chat.completions``) — with
the request translated by ``adapters.openai_chat`` and the response translated back:
streams by the native ``ChatTranslator`` (one call per network chunk), whole messages in
Python. Errors answer in OpenAI's shape (``openai_route``) with the same statuses and
``retry-after``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

import orjson
from blacksheep import Application, Content, Request, Response, StreamedContent

from ethereal import _native
from ethereal.adapters import openai_chat
from ethereal.api.common import JSON, header_map, openai_route, raw_headers, read_body
from ethereal.errors import GatewayError
from ethereal.gateway import Gateway
from ethereal.metering.usage import extras as usage_extras
from ethereal.proxy import (
    Call,
    admit,
    authenticate,
    finish,
    open_upstream,
    parse_json_body,
    recording,
    relay_stream,
    resolve_model,
    response_headers,
    streamed,
    upstream_error,
    usage_from_message,
)
from ethereal.upstream.affinity import cache_affinity
from ethereal.upstream.client import UpstreamStreamError

log = logging.getLogger("ethereal.api.openai")

SSE = "text/event-stream; charset=utf-8"
ROUTE = "chat.completions"

# anthropic-ratelimit-<family>-<field> → OpenAI's x-ratelimit-<field>-<family>
_RATELIMIT_FAMILIES = {b"requests": b"requests", b"tokens": b"tokens"}


def upstream_request_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """What an OpenAI client's headers contribute upstream: ``anthropic-*`` (betas a client
    opted into) and its user-agent. Its ``accept``, ``x-stainless-*`` and OpenAI headers are
    about the OpenAI wire and stay here."""
    return [(k, v) for k, v in raw if k.lower().startswith(b"anthropic-") or k.lower() == b"user-agent"]


def openai_ratelimit_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` beside Anthropic's, for
    OpenAI clients that pace themselves on them. Resets are OpenAI-style durations (``12s``)."""
    out: list[tuple[bytes, bytes]] = []
    now = time.time()
    for name, value in headers:
        if not name.startswith(b"anthropic-ratelimit-"):
            continue
        family, _, field = name[len(b"anthropic-ratelimit-"):].rpartition(b"-")
        family = _RATELIMIT_FAMILIES.get(family)  # type: ignore[assignment]
        if family is None or field not in (b"limit", b"remaining", b"reset"):
            continue
        if field == b"reset":
            try:
                at = datetime.fromisoformat(value.decode()).timestamp()  # RFC 3339, "Z" included (3.11+)
            except ValueError:
                continue
            value = f"{max(0, round(at - now))}s".encode()
        out.append((b"x-ratelimit-" + field + b"-" + family, value))
    return out


def register(app: Application, gw: Gateway) -> None:
    settings = gw.settings

    @openai_route
    async def chat_completions(request: Request, request_id: str) -> Response:
        call = Call(request_id=request_id, route=ROUTE)
        await authenticate(gw, header_map(request), call)
        async with recording(gw, call):  # exactly one usage record, whatever happens below
            return await _chat(request, call)

    async def _chat(request: Request, call: Call) -> Response:
        data = parse_json_body(await read_body(request, settings.max_body_bytes))
        resolve_model(gw, call, openai_chat.model_name(data))
        model = call.model
        chat = openai_chat.to_anthropic(data, model=call.model_name,  # type: ignore[arg-type]
                                        max_output=model.max_output if model else None)
        body = orjson.dumps(chat.body)
        call.stream = chat.stream
        await admit(gw, call, body, int(chat.body["max_tokens"]))
        try:
            resp = await open_upstream(gw, call, "/v1/messages", upstream_request_headers(raw_headers(request)),
                                       body, affinity=cache_affinity(chat.body, call.model_name, body))
        except GatewayError as exc:
            await finish(gw, call, status=exc.status, error_type=exc.type)
            raise
        completion_id = "chatcmpl-" + call.request_id.removeprefix("req_")
        created = int(call.started)
        if resp.is_event_stream and resp.status == 200:
            translator = _native.ChatTranslator(call.model_name or "", completion_id, created, chat.include_usage,
                                                json_tool=chat.json_tool, legacy_functions=chat.legacy_functions)
            headers = _headers(call, SSE)
            headers.append((b"cache-control", b"no-cache"))
            source = streamed(lambda: relay_stream(gw, call, resp, translator, translate=True), request)
            return Response(200, headers, StreamedContent(SSE.encode(), source))
        try:
            payload = await resp.read()
        except UpstreamStreamError as exc:
            await finish(gw, call, status=502, error_type="api_error")
            raise GatewayError(502, "the upstream connection was interrupted") from exc
        call.ttfb_ms = call.ttfb_ms or (time.perf_counter() - call.t0) * 1000.0
        if resp.status >= 400:
            err = upstream_error(resp.status, payload, None)
            await finish(gw, call, status=resp.status, error_type=err.type)
            raise err
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            await finish(gw, call, status=502, exact=False, error_type="api_error")
            raise GatewayError(502, "the upstream answered with a body that is not a message")
        usage = message.get("usage")
        inp, out, c5, c1, cr, assumed = usage_from_message(usage)
        iterations, searches = usage_extras(usage)
        await finish(gw, call, status=resp.status, input_tokens=inp, output_tokens=out, cache_5m=c5,
                     cache_1h=c1, cache_read=cr, exact=isinstance(usage, dict), ttl_assumed=assumed,
                     iterations=iterations, web_searches=searches)
        completion = openai_chat.to_chat_completion(message, completion_id=completion_id, created=created,
                                                    model=call.model_name,  # type: ignore[arg-type]
                                                    json_tool=chat.json_tool,
                                                    legacy_functions=chat.legacy_functions)
        return Response(200, _headers(call, "application/json"), Content(JSON, orjson.dumps(completion)))

    app.router.add_post("/v1/chat/completions", chat_completions)


def _headers(call: Call, content_type: str) -> list[tuple[bytes, bytes]]:
    # the body's Content sets content-type itself
    headers = [h for h in response_headers(call, content_type) if h[0] != b"content-type"]
    headers.append((b"x-request-id", call.request_id.encode()))
    if call.admission is not None:
        headers.extend(openai_ratelimit_headers(call.admission.headers))
    return headers
