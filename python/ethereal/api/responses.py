"""OpenAI Responses API on ``POST /v1/responses``, served by Claude (what Codex CLI speaks).

An adapter on the request pipeline (pipeline.py), like ``/v1/chat/completions``: same keys,
limits, credential pool, failover and metering (route name ``responses``), with the request
translated by ``adapters.openai_responses`` and the reply translated back: streams by the
native ``ResponsesTranslator`` (one call per network chunk), whole messages in Python.
Errors answer in OpenAI's shape with the same statuses and retry hints (every 429/503/529
carries ``retry-after``: Codex gives up at once on a 429 without it).

``prompt_cache_key`` (Codex sends its session id) keys the credential choice, so a
conversation stays on the credential whose prompt cache holds its prefix; without it the
cache prefix of the translated body does (``cache_affinity``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from blacksheep import Application, Content, Request, Response

from ethereal import _native, ids
from ethereal.adapters import openai_responses
from ethereal.api.common import JSON, raw_headers
from ethereal.api.openai import OpenAIAdapter, upstream_request_headers
from ethereal.errors import invalid_request
from ethereal.gateway import Gateway
from ethereal.pipeline import Call, Outbound, Pipeline, Relay
from ethereal.upstream.affinity import cache_affinity

ROUTE = "responses"


def response_id(call: Call) -> str:
    return ids.response_id(call.request_id)


def prompt_cache_affinity(model: str | None, key: str) -> bytes:
    """16-byte affinity key of a client's ``prompt_cache_key`` (the same width as ``cache_affinity``)."""
    return hashlib.blake2b(f"{model}\0{key}".encode(), digest_size=16, person=b"eth-pck").digest()


class Responses(OpenAIAdapter):
    """``POST /v1/responses``: a Responses request translated to a Messages body, the reply
    translated back (streams by the native ``ResponsesTranslator``, whole messages in Python)."""

    route = ROUTE

    def validate(self, data: dict[str, Any]) -> str:
        return openai_responses.model_name(data)

    def build(self, call: Call, raw: bytes, data: dict[str, Any], request: Request) -> Outbound:
        t = self.translation(call)
        req, account = self.bound(
            call,
            t,
            lambda drop: openai_responses.to_anthropic(
                data,
                model=call.model_name or "",
                max_output=t.max_output,
                response_id=response_id(call),
                created_at=int(call.started),
                rules=t.rules,
                default_max_tokens=t.default_max_tokens,
                auto_cache=t.auto_cache,
                drop_thinking=drop,
            ),
        )
        call.notes = [(k.encode(), v.encode()) for k, v in req.notes.items()]
        try:  # the body depth bound (OpenAIAdapter.max_depth) keeps both writable: a last guard, before admission
            body = orjson.dumps(req.body)
            if req.stream:  # the translator's head, written once here rather than after the upstream answered
                req.head_text = req.head_json()
        except orjson.JSONEncodeError as exc:
            raise invalid_request(f"request cannot be translated: {exc}") from None
        affinity: bytes | None
        if req.cache_key:
            affinity = prompt_cache_affinity(call.model_name, req.cache_key)
        else:
            affinity = cache_affinity(req.body, call.model_name, body)
        return Outbound(
            body=body,
            data=req.body,
            path="/v1/messages",
            headers=upstream_request_headers(raw_headers(request)),
            stream=req.stream,
            max_tokens=int(req.body["max_tokens"]),
            affinity=affinity,
            context=req,
            account=account,
        )

    def stream_relay(self, call: Call, out: Outbound) -> tuple[Relay, bool]:
        req = _request(out)
        self.remember_thinking(call, out)
        translator = _native.ResponsesTranslator(
            req.head["id"],
            req.head_text or req.head_json(),
            custom_tools=req.custom_tools,
            namespaced=req.namespaced,
            json_tool=req.json_tool,
        )
        return translator, True

    def reply(self, call: Call, out: Outbound, payload: bytes, message: dict[str, Any]) -> Response:
        self.remember_thinking(call, out, message)
        response = openai_responses.to_response(message, _request(out))
        return Response(200, self.headers(call), Content(JSON, orjson.dumps(response)))


def _request(out: Outbound) -> openai_responses.ResponsesRequest:
    req = out.context
    if not isinstance(req, openai_responses.ResponsesRequest):
        raise TypeError("a response's outbound request carries its translation")
    return req


def register(app: Application, gw: Gateway, pipeline: Pipeline) -> None:
    app.router.add_post("/v1/responses", pipeline.route(Responses()))
