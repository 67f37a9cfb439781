"""OpenAI Chat Completions on ``POST /v1/chat/completions``, served by Claude.

An adapter on the request pipeline (pipeline.py), like ``/v1/messages``: same keys,
limits, credential pool, failover and metering (route name ``chat.completions``), with
the request translated by ``adapters.openai_chat`` and the response translated back:
streams by the native ``ChatTranslator`` (one call per network chunk), whole messages in
Python. Errors answer in OpenAI's shape with the same statuses and retry hints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from blacksheep import Application, Content, Request, Response

from ethereal import _native
from ethereal.adapters import openai_chat
from ethereal.api.common import JSON, openai_error, raw_headers
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.guards import MAX_ECHO_DEPTH
from ethereal.models import Rules
from ethereal.models.learnt import learn, learnt_rules
from ethereal.pipeline import Adapter, Call, Outbound, Pipeline, Relay, response_headers
from ethereal.upstream.affinity import cache_affinity
from ethereal.upstream.binding import replayed_tokens

log = logging.getLogger("ethereal.api.openai")


@dataclass(frozen=True, slots=True)
class Translation:
    rules: Rules
    max_output: int | None
    default_max_tokens: int | None
    auto_cache: bool | None  # None: the caching policy decides (claude_request.wants_auto_cache)


def auto_cache_for(call: Call, gw: Gateway | None) -> bool | None:
    """False when automatic caching is off for this request's key (its metadata ``auto_cache``,
    else the ``ETHEREAL_AUTO_CACHE`` setting); True when the key asks for it on every request;
    None: the policy decides."""
    key = call.key
    flag = key.metadata.get("auto_cache") if key is not None and isinstance(key.metadata, dict) else None
    if isinstance(flag, bool):
        return None if flag else False
    if gw is not None and not gw.settings.auto_cache:
        return False
    return None


ROUTE = "chat.completions"
T = TypeVar("T")

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
        family, _, field = name[len(b"anthropic-ratelimit-") :].rpartition(b"-")
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


class OpenAIAdapter(Adapter):
    """What every OpenAI-shaped route answers alike: ``x-request-id`` and OpenAI's rate-limit
    headers beside Anthropic's, errors in OpenAI's shape. What they echo or re-serialise is
    written by orjson: bodies deeper than ``MAX_ECHO_DEPTH`` are refused before admission."""

    max_depth = MAX_ECHO_DEPTH

    def headers(self, call: Call) -> list[tuple[bytes, bytes]]:
        headers = response_headers(call)
        headers.append((b"x-request-id", call.request_id.encode()))
        if call.admission is not None:
            headers.extend(openai_ratelimit_headers(call.admission.headers))
        return headers

    def error(self, exc: GatewayError, request_id: str) -> Response:
        return openai_error(exc, request_id)

    def may_reshape(self, call: Call) -> bool:
        return call.model is not None and call.model.provisional and self.gw is not None

    def reshape(
        self, call: Call, out: Outbound, payload: bytes, raw: bytes, data: dict[str, Any], request: Request
    ) -> Outbound | None:
        """A model the registry does not describe, refused with a documented text: the rule it names
        is corrected and remembered for the model (models/learnt.py), and the request built again."""
        gw, model = self.gw, call.model
        if gw is None or model is None:
            return None
        try:
            err = orjson.loads(payload).get("error")
            message = err.get("message") if isinstance(err, dict) else None
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(message, str):
            return None
        found = learn(gw.registry, model.id, model.rules, message)
        if found is None:
            return None
        key, _ = found
        log.warning(
            "model %s refused a translated request (%s): retried with the corrected shape, "
            "remembered for the model",
            model.id[:64],
            key,
        )
        again = self.build(call, raw, data, request)
        call.notes.append((b"ethereal-reshaped", key.encode()))
        return again

    def bound(self, call: Call, t: Translation, translate: Callable[[bool], T]) -> tuple[T, str | None]:
        """The translated request, and the upstream account it must go to when its replayed
        thinking is bound to one (``thinking_binding = "account"``; upstream/binding.py). When no
        credential of that account serves the model, the replayed thinking is left out (the
        ``ethereal-dropped-thinking`` header says so) rather than sent where it is refused."""
        req = translate(False)
        gw = self.gw
        if gw is None or t.rules.thinking_binding != "account":
            return req, None
        tokens = replayed_tokens(req.body["messages"])  # type: ignore[attr-defined]
        account = gw.pool.thinking_accounts.account_of(tokens) if tokens else None
        if account is None:
            return req, None
        if gw.pool.has_account(call.model_name, account):
            return req, account
        return translate(True), None

    def remember_thinking(self, call: Call, out: Outbound, message: dict[str, Any] | None = None) -> None:
        """A served request's replayed thinking (and a whole reply's own) belongs to the account of
        the credential that served it."""
        gw, cred, model = self.gw, call.credential, call.model
        if (
            gw is None
            or cred is None
            or cred.account is None
            or model is None
            or model.rules.thinking_binding != "account"
        ):
            return
        tokens = replayed_tokens(out.data.get("messages") or [])
        if message is not None:
            tokens += replayed_tokens([{"role": "assistant", "content": message.get("content")}])
        if tokens:
            gw.pool.thinking_accounts.record(tokens, cred.account)

    def translation(self, call: Call) -> Translation:
        """What a translation reads besides the body: the model's rules (learnt ones for a model
        the registry does not describe), its output limit, the registry's default allowance and
        whether cache breakpoints are added for this key."""
        gw = self.gw
        model = call.model
        rules = model.rules if model is not None else Rules()
        max_output = model.max_output if model is not None and not model.provisional else None
        default = gw.registry.default_max_tokens if gw is not None else None
        if model is not None and model.provisional and gw is not None:
            rules = learnt_rules(gw.registry, model.id, rules)
        return Translation(rules, max_output, default, auto_cache_for(call, gw))


class ChatCompletions(OpenAIAdapter):
    """``POST /v1/chat/completions``: OpenAI's request translated to a Messages body, the reply
    translated back (streams by the native ``ChatTranslator``, whole messages in Python)."""

    route = ROUTE

    def validate(self, data: dict[str, Any]) -> str:
        return openai_chat.model_name(data)

    def build(self, call: Call, raw: bytes, data: dict[str, Any], request: Request) -> Outbound:
        t = self.translation(call)
        chat, account = self.bound(
            call,
            t,
            lambda drop: openai_chat.to_anthropic(
                data,
                model=call.model_name or "",
                max_output=t.max_output,
                rules=t.rules,
                default_max_tokens=t.default_max_tokens,
                auto_cache=t.auto_cache,
                drop_thinking=drop,
            ),
        )
        call.notes = [(k.encode(), v.encode()) for k, v in chat.notes.items()]
        try:  # the body depth bound (max_depth) keeps it writable: a last guard, before admission
            body = orjson.dumps(chat.body)
        except orjson.JSONEncodeError as exc:
            raise invalid_request(f"request cannot be translated: {exc}") from None
        return Outbound(
            body=body,
            data=chat.body,
            path="/v1/messages",
            headers=upstream_request_headers(raw_headers(request)),
            stream=chat.stream,
            max_tokens=int(chat.body["max_tokens"]),
            affinity=cache_affinity(chat.body, call.model_name, body),
            context=chat,
            account=account,
        )

    def stream_relay(self, call: Call, out: Outbound) -> tuple[Relay, bool]:
        chat = _chat(out)
        self.remember_thinking(call, out)
        translator = _native.ChatTranslator(
            call.model_name or "",
            completion_id(call),
            int(call.started),
            chat.include_usage,
            json_tool=chat.json_tool,
            legacy_functions=chat.legacy_functions,
        )
        return translator, True

    def reply(self, call: Call, out: Outbound, payload: bytes, message: dict[str, Any]) -> Response:
        chat = _chat(out)
        self.remember_thinking(call, out, message)
        completion = openai_chat.to_chat_completion(
            message,
            completion_id=completion_id(call),
            created=int(call.started),
            model=call.model_name or "",
            json_tool=chat.json_tool,
            legacy_functions=chat.legacy_functions,
        )
        return Response(200, self.headers(call), Content(JSON, orjson.dumps(completion)))


def _chat(out: Outbound) -> openai_chat.ChatRequest:
    chat = out.context
    if not isinstance(chat, openai_chat.ChatRequest):
        raise TypeError("a chat completion's outbound request carries its translation")
    return chat


def completion_id(call: Call) -> str:
    return "chatcmpl-" + call.request_id.removeprefix("req_")


def register(app: Application, gw: Gateway, pipeline: Pipeline) -> None:
    app.router.add_post("/v1/chat/completions", pipeline.route(ChatCompletions()))
