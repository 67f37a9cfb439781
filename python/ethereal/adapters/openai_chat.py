"""OpenAI Chat Completions ⇄ Anthropic Messages, as pure functions.

``to_anthropic(body, model=…, max_output=…)`` turns a ``/v1/chat/completions`` request
into a Messages request (raising ``GatewayError`` 400 with ``param`` for what cannot be
translated); ``to_chat_completion(message, …)`` turns a Messages response into a
``chat.completion``. The streaming direction is the Rust ``ChatTranslator``
(rust/ethereal-core/src/openai_chat.rs); both share the rules below.

Choices worth knowing (also in docs/openai-translation.md):

- ``system`` and ``developer`` messages, wherever they appear, are joined in order into
  ``system``. Consecutive same-role turns are merged (Claude alternates roles); in a user
  turn holding tool results, the ``tool_result`` blocks come first, as Claude requires.
- ``temperature``: OpenAI's range is 0–2, Claude's 0–1. Values are **clamped** to 1, not
  scaled: both APIs default to 1 and clients overwhelmingly send values in 0–1
  (0, 0.2, 0.7…), which then mean the same on both sides; scaling would halve them.
- Everything that depends on the model (``reasoning_effort`` and ``thinking``, thinking off,
  sampling parameters, ``response_format``, forcing ``tool_choice``, a trailing assistant
  prefill, ``max_tokens``, cache breakpoints) follows the model's rules in the registry, in
  one place shared with the Responses adapter: ``claude_request.build_body``
  (docs/openai-translation.md, with the response headers that say what was changed).
- Thinking comes back as ``reasoning_content`` plus ``reasoning_signature``: the raw
  signature when the reply had one thinking block, else an opaque ``eth1~…`` form that
  also carries redacted thinking and block boundaries. An assistant message sent back
  with both fields is restored as thinking block(s), so tool use with thinking works
  across turns. (LiteLLM's ``thinking_blocks`` list is accepted too.)
- Accepted but without effect: ``presence_penalty``, ``frequency_penalty``, ``seed``,
  ``store``, ``metadata``, ``service_tier``, ``prediction``, ``verbosity``,
  ``prompt_cache_key``, ``tools[].function.strict``, image ``detail``. Refused with a 400
  naming the parameter: ``n`` > 1, ``logprobs``, ``top_logprobs``, ``audio``, audio in
  ``modalities``, ``logit_bias``, ``web_search_options``, audio/``file_id`` content parts,
  non-function tools.
- ``user`` (or ``safety_identifier``) → ``metadata.user_id``. ``cache_control`` on content
  parts and tools is passed through (the OpenRouter/LiteLLM convention), and the gateway adds
  breakpoints of its own for conversations and agents (the caching policy in
  ``claude_request``). Non-standard ``top_k`` and ``thinking``
  are passed through.
- ``content`` is the reply's text blocks joined; text that follows a non-text block (a
  server tool call and its result, say) starts a new paragraph (a blank line), so text around
  web searches does not run together. Server tools, their results and citations are not
  shown (an OpenAI client cannot act on them).
- Tool call ids are Claude's (``toolu_…``) so they round-trip unchanged; ids a client
  made up are sanitised to Claude's ``[A-Za-z0-9_-]`` alphabet the same way on the
  ``tool_calls`` and ``tool`` sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ethereal.adapters import claude_request as cr
from ethereal.adapters.claude_request import JSON_TOOL, model_name
from ethereal.errors import GatewayError, invalid_request
from ethereal.models import Rules
from ethereal.usage import Usage

SIGNATURE_PREFIX = "eth1~"


@dataclass(slots=True)
class ChatRequest:
    """A translated request: the Messages body plus what the response side needs."""

    body: dict[str, Any]
    stream: bool
    include_usage: bool
    json_tool: str | None  # response_format went through this forced tool
    legacy_functions: bool  # the client used ``functions``: answer with ``function_call``
    notes: dict[str, str] = field(default_factory=dict)  # response headers saying what was changed


# ---- request ----------------------------------------------------------------------------


def to_anthropic(
    body: dict[str, Any],
    *,
    model: str,
    max_output: int | None,
    rules: Rules | None = None,
    default_max_tokens: int | None = None,
    auto_cache: bool | None = None,
    drop_thinking: bool = False,
) -> ChatRequest:
    """Translate a Chat Completions request body (already parsed) for ``model``.

    ``rules``: the model's request rules (models.toml; without them, the shipped registry's for
    ``model``). ``max_output`` is the model's output limit (None when unknown): the default for
    ``max_tokens`` and its cap; ``default_max_tokens`` the default when it is unknown.
    ``auto_cache``: add cache breakpoints (None: the caching policy, ``wants_auto_cache``).
    """
    _refuse_unsupported(body)
    stream = cr.opt_bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid_request("stream_options: must be an object", param="stream_options")
        include_usage = bool(options.get("include_usage")) and stream

    raw_messages = body.get("messages")
    system, messages = translate_messages(raw_messages)
    tools, legacy = _tools(body)
    tool_choice = _tool_choice(body, tools, legacy)
    if (
        tools
        and isinstance(body.get("tool_choice"), dict)
        and body["tool_choice"].get("type") == "allowed_tools"
    ):
        tools = _allowed_tools(body["tool_choice"], tools)
    asked = cr.Asked(
        model=model,
        system=system,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        tool_choice_param="function_call"
        if body.get("tool_choice") is None and body.get("function_call") is not None
        else "tool_choice",
        client_max=_client_max(body),
    )
    _thinking(body, asked)
    asked.summary = asked.effort not in (None, "none") or _reads_reasoning(raw_messages)
    cr.sampling_params(body, asked, top_k=True)
    fmt = body.get("response_format")
    if fmt is not None:
        asked.fmt = cr.response_format(fmt)
    asked.drop_thinking = drop_thinking
    built = cr.build_body(
        asked, rules, max_output=max_output, default_max_tokens=default_max_tokens, auto_cache=auto_cache
    )
    out = built.body
    stop = _stop(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    cr.finish_body(body, out, stream=stream)
    return ChatRequest(out, stream, include_usage, built.json_tool, legacy, built.notes)


def _reads_reasoning(messages: Any) -> bool:
    """The client sends its assistant turns back with their reasoning: it shows or keeps it."""
    return isinstance(messages, list) and any(
        isinstance(m, dict)
        and m.get("role") == "assistant"
        and (m.get("reasoning_content") or m.get("thinking_blocks"))
        for m in messages
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid_request("n: only n=1 is supported (Claude returns one choice per request)", param="n")
    if body.get("logprobs"):
        raise invalid_request(
            "logprobs: log probabilities are not available for Claude models", param="logprobs"
        )
    if body.get("top_logprobs"):
        raise invalid_request(
            "top_logprobs: log probabilities are not available for Claude models", param="top_logprobs"
        )
    if body.get("audio") is not None:
        raise invalid_request("audio: audio output is not supported", param="audio")
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise invalid_request('modalities: only ["text"] is supported', param="modalities")
    if body.get("logit_bias"):
        raise invalid_request("logit_bias: not supported for Claude models", param="logit_bias")
    if body.get("web_search_options") is not None:
        raise invalid_request(
            "web_search_options: not supported on this endpoint", param="web_search_options"
        )


def _client_max(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens``, else the older ``max_tokens``."""
    given = cr.positive_int(body, "max_completion_tokens")
    return given if given is not None else cr.positive_int(body, "max_tokens")


def _thinking(body: dict[str, Any], asked: cr.Asked) -> None:
    thinking = body.get("thinking")  # Claude's own parameter, read as the client's intent
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise invalid_request("thinking: must be an object", param="thinking")
        asked.thinking = thinking
        return
    effort = body.get("reasoning_effort")
    if effort is None:
        return
    if not isinstance(effort, str) or effort not in cr.OPENAI_EFFORTS:
        raise invalid_request(
            f"reasoning_effort: must be one of {', '.join(cr.OPENAI_EFFORTS)}", param="reasoning_effort"
        )
    asked.effort = effort


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid_request("stop: must be a string or an array of strings", param="stop")
    return [s for s in stop if s]


# ---- tools ------------------------------------------------------------------------------


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Claude tools from ``tools`` (or legacy ``functions``); True when legacy."""
    tools = body.get("tools")
    legacy = False
    if tools is None and body.get("functions") is not None:
        functions = body["functions"]
        if not isinstance(functions, list):
            raise invalid_request("functions: must be an array", param="functions")
        tools = [{"type": "function", "function": f} for f in functions]
        legacy = True
        where = "functions"
    else:
        where = "tools"
    if tools is None:
        return [], False
    if not isinstance(tools, list):
        raise invalid_request("tools: must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        param = f"{where}[{i}]"
        if not isinstance(tool, dict):
            raise invalid_request(f"{param}: must be an object", param=param)
        if tool.get("type", "function") != "function":
            raise invalid_request(f"{param}.type: only function tools are supported", param=f"{param}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise invalid_request(f"{param}.function.name: required", param=f"{param}.function.name")
        schema = fn.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict):
            raise invalid_request(
                f"{param}.function.parameters: must be an object", param=f"{param}.function.parameters"
            )
        elif "type" not in schema:
            schema = {"type": "object", **schema}
        claude: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            claude["description"] = fn["description"]
        claude["input_schema"] = schema
        cc = tool.get("cache_control") or fn.get("cache_control")
        if cc is not None:
            claude["cache_control"] = cc
        out.append(claude)
    return out, legacy


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]], legacy: bool) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    param = "tool_choice"
    if choice is None and body.get("function_call") is not None:
        choice, param = body["function_call"], "function_call"
        if isinstance(choice, dict) and "name" in choice:
            choice = {"type": "function", "function": {"name": choice["name"]}}
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid_request("parallel_tool_calls: must be a boolean", param="parallel_tool_calls")
    if not tools:
        return None
    if choice is None and not (parallel is False or legacy):
        return None  # Claude's default is auto
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not any(t["name"] == name for t in tools):
            raise invalid_request(f"{param}: names a function that is not in tools", param=param)
        out = {"type": "tool", "name": name}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        spec = choice.get("allowed_tools")
        mode = spec.get("mode") if isinstance(spec, dict) else None
        if mode not in ("auto", "required"):
            raise invalid_request(
                "tool_choice.allowed_tools.mode: must be auto or required",
                param="tool_choice.allowed_tools.mode",
            )
        out = {"type": "any" if mode == "required" else "auto"}
    else:
        raise invalid_request(f"{param}: must be none, auto, required or a named function", param=param)
    if parallel is False or legacy:
        out["disable_parallel_tool_use"] = True
    return out


def _allowed_tools(choice: dict[str, Any], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = set()
    for entry in choice["allowed_tools"].get("tools") or []:
        fn = entry.get("function") if isinstance(entry, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            names.add(entry["name"])
    kept = [t for t in tools if t["name"] in names]
    if not kept:
        raise invalid_request(
            "tool_choice.allowed_tools.tools: names no function in tools",
            param="tool_choice.allowed_tools.tools",
        )
    return kept


# ---- messages ---------------------------------------------------------------------------


def translate_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, Claude messages) from OpenAI ``messages``."""
    if messages is None:
        raise invalid_request("messages: Field required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("messages: must be a non-empty array", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    legacy_ids: dict[str, list[str]] = {}  # function name → ids of unanswered legacy calls
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid_request(f"{where}: must be an object", param=where)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(cr.text_parts(msg.get("content"), f"{where}.content"))
        elif role == "user":
            cr.append_turn(turns, "user", _user_blocks(msg.get("content"), f"{where}.content"))
        elif role == "assistant":
            cr.append_turn(turns, "assistant", _assistant_blocks(msg, where, i, legacy_ids))
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid_request(f"{where}.tool_call_id: required", param=f"{where}.tool_call_id")
            cr.append_turn(turns, "user", [_tool_result(cr.tool_id(call_id), msg.get("content"), where)])
        elif role == "function":
            name = msg.get("name")
            pending = legacy_ids.get(name) if isinstance(name, str) else None
            if not pending:
                raise invalid_request(
                    f"{where}: function result without a preceding function_call", param=f"{where}.name"
                )
            cr.append_turn(turns, "user", [_tool_result(pending.pop(0), msg.get("content"), where)])
        else:
            raise invalid_request(f"{where}.role: unsupported role {role!r}", param=f"{where}.role")
    cr.trim_prefill(turns)
    if not turns:
        raise invalid_request(
            "messages: at least one user or assistant message is required", param="messages"
        )
    return system, turns


def _tool_result(tool_use_id: str, content: Any, where: str) -> dict[str, Any]:
    return cr.tool_result(tool_use_id, content, where, "content", _user_blocks)


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    return cr.content_blocks(content, where, _user_part)


def _user_part(part: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        raise invalid_request(f"{where}: must be an object", param=where)
    kind = part.get("type")
    if kind == "text":
        block = cr.text_part(part, where)
        return cr.with_cache_control(block, part) if block else None
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str) or not url:
            raise invalid_request(f"{where}.image_url.url: required", param=f"{where}.image_url.url")
        return cr.with_cache_control(
            {"type": "image", "source": cr.image_source(url, f"{where}.image_url.url")}, part
        )
    if kind == "file":
        return cr.with_cache_control(cr.file_block(part.get("file"), f"{where}.file"), part)
    if kind == "input_audio":
        raise invalid_request(f"{where}: audio input is not supported", param=where)
    raise invalid_request(f"{where}.type: unsupported content part type {kind!r}", param=f"{where}.type")


def _assistant_blocks(
    msg: dict[str, Any], where: str, i: int, legacy_ids: dict[str, list[str]]
) -> list[dict[str, Any]]:
    blocks = restore_reasoning(msg)
    texts = cr.assistant_text_parts(msg.get("content"), f"{where}.content", ("text", "refusal"))
    blocks.extend(texts)
    calls = msg.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise invalid_request(f"{where}.tool_calls: must be an array", param=f"{where}.tool_calls")
        for j, call in enumerate(calls):
            at = f"{where}.tool_calls[{j}]"
            if not isinstance(call, dict):
                raise invalid_request(f"{at}: must be an object", param=at)
            if call.get("type", "function") != "function":
                raise invalid_request(f"{at}.type: only function calls are supported", param=f"{at}.type")
            fn = call.get("function")
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid_request(f"{at}.id: required", param=f"{at}.id")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise invalid_request(f"{at}.function.name: required", param=f"{at}.function.name")
            blocks.append(
                {
                    "type": "tool_use",
                    "id": cr.tool_id(call_id),
                    "name": fn["name"],
                    "input": cr.arguments(fn.get("arguments"), f"{at}.function.arguments"),
                }
            )
    fc = msg.get("function_call")
    if fc is not None:
        if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
            raise invalid_request(
                f"{where}.function_call.name: required", param=f"{where}.function_call.name"
            )
        call_id = f"toolu_fn{i}"
        legacy_ids.setdefault(fc["name"], []).append(call_id)
        blocks.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": fc["name"],
                "input": cr.arguments(fc.get("arguments"), f"{where}.function_call.arguments"),
            }
        )
    return blocks


# ---- reasoning round trip ------------------------------------------------------------------


def encode_reasoning_signature(blocks: list[dict[str, Any]]) -> str | None:
    """``reasoning_signature`` for a reply's thinking/redacted_thinking blocks (see the Rust twin)."""
    if not blocks:
        return None
    if len(blocks) == 1 and blocks[0]["type"] == "thinking":
        return blocks[0].get("signature") or None
    entries = []
    for block in blocks:
        if block["type"] == "thinking":
            entries.append(f"t{len(block.get('thinking') or '')}:{block.get('signature') or ''}")
        else:
            entries.append(f"r:{block.get('data') or ''}")
    return SIGNATURE_PREFIX + "~".join(entries)


def restore_reasoning(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """Thinking blocks for an assistant message sent back with its reasoning.

    ``reasoning_content`` + ``reasoning_signature`` (what ethereal returns), or LiteLLM's
    ``thinking_blocks``. Reasoning that cannot be restored exactly (no signature, lengths
    that do not add up) is dropped: an unsigned or altered thinking block would be refused.
    """
    given = msg.get("thinking_blocks")
    if isinstance(given, list) and given:
        out = []
        for block in given:
            if isinstance(block, dict) and block.get("type") == "thinking" and block.get("signature"):
                out.append(
                    {
                        "type": "thinking",
                        "thinking": block.get("thinking") or "",
                        "signature": block["signature"],
                    }
                )
            elif isinstance(block, dict) and block.get("type") == "redacted_thinking" and block.get("data"):
                out.append({"type": "redacted_thinking", "data": block["data"]})
        return out
    signature = msg.get("reasoning_signature")
    if not isinstance(signature, str) or not signature:
        return []
    text = msg.get("reasoning_content")
    text = text if isinstance(text, str) else ""
    if not signature.startswith(SIGNATURE_PREFIX):
        return [{"type": "thinking", "thinking": text, "signature": signature}]
    out = []
    pos = 0
    for entry in signature[len(SIGNATURE_PREFIX) :].split("~"):
        kind, _, rest = entry.partition(":")
        if kind == "r" and rest:
            out.append({"type": "redacted_thinking", "data": rest})
        elif kind[:1] == "t" and kind[1:].isdecimal() and len(kind) <= 12 and rest:
            n = int(kind[1:])
            out.append({"type": "thinking", "thinking": text[pos : pos + n], "signature": rest})
            pos += n
        else:
            return []
    if pos != len(text):
        return []
    return out


# ---- response ---------------------------------------------------------------------------

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None, tool_calls: bool, legacy: bool = False) -> str:
    """OpenAI's finish_reason (the same table as the Rust translator)."""
    if stop_reason == "tool_use" and tool_calls:
        return "function_call" if legacy else "tool_calls"
    return _FINISH.get(stop_reason or "", "stop")


def openai_usage(usage: Any) -> dict[str, Any]:
    """OpenAI's usage object from a Message's ``usage`` (read by the one parser, ``Usage``)."""
    u = Usage.from_message(usage)
    writes = u.cache_5m + u.cache_1h
    prompt = u.input_tokens + writes + u.cache_read
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": writes},
    }


def to_chat_completion(
    message: dict[str, Any],
    *,
    completion_id: str,
    created: int,
    model: str,
    json_tool: str | None = None,
    legacy_functions: bool = False,
) -> dict[str, Any]:
    """A Messages response as a ``chat.completion``."""
    texts: list[str] = []
    reasoning: list[str] = []
    reasoning_blocks: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    function_call: dict[str, Any] | None = None
    paragraph = False  # a non-text block followed some content: the next text starts a paragraph

    def add_text(text: str) -> None:
        nonlocal paragraph
        if text:
            texts.append("\n\n" + text if paragraph else text)
            paragraph = False

    for block in message.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind != "text" and texts:
            paragraph = True
        if kind == "text":
            add_text(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            reasoning_blocks.append(block)
        elif kind == "redacted_thinking":
            reasoning_blocks.append(block)
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if json_tool is not None and block.get("name") == json_tool:
                add_text(arguments)
            elif legacy_functions:
                if function_call is None:
                    function_call = {"name": block.get("name"), "arguments": arguments}
            else:
                tool_calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": arguments},
                    }
                )
    called = bool(tool_calls) or function_call is not None
    out_message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not called else None,
        "refusal": None,
    }
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    if function_call is not None:
        out_message["function_call"] = function_call
    if reasoning_blocks:
        out_message["reasoning_content"] = "".join(reasoning)
        signature = encode_reasoning_signature(reasoning_blocks)
        if signature:
            out_message["reasoning_signature"] = signature
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": out_message,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason"), called, legacy_functions),
            }
        ],
        "usage": openai_usage(message.get("usage")),
    }


__all__ = [
    "JSON_TOOL",
    "ChatRequest",
    "GatewayError",
    "encode_reasoning_signature",
    "finish_reason",
    "model_name",
    "openai_usage",
    "restore_reasoning",
    "to_anthropic",
    "to_chat_completion",
    "translate_messages",
]
