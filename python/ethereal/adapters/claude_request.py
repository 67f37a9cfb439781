"""What the two OpenAI adapters share in building a Claude Messages request.

``openai_chat`` (``/v1/chat/completions``) and ``openai_responses`` (``/v1/responses``) parse
different wire shapes, but what they produce is the same Claude body, and the rules for it are
the same: how a content part becomes a block (text, images, files, tool results), how turns
merge, how tool ids are made safe, how ``max_tokens`` and a thinking budget fit together, and
how thinking, effort, sampling, ``tool_choice`` and a JSON output format are expressed for the
model asked for. Each of those is written once, here; the adapters only read their own shapes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

import orjson

from ethereal.errors import invalid_request
from ethereal.guards import MAX_ECHO_DEPTH, check_model_name, nests_past

JSON_TOOL = "json_response"
DEFAULT_MAX_TOKENS = 4096  # for a model the catalog does not know
MIN_THINKING_BUDGET = 1024
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_PROVIDER = re.compile(r"^anthropic/", re.IGNORECASE)
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_DATA_URL = re.compile(r"^data:([^;,]+)?((?:;[^;,]+)*);base64,(.*)$", re.DOTALL)

Blocks = list[dict[str, Any]]


# ---- scalar parameters ----------------------------------------------------------------------


def model_name(body: dict[str, Any]) -> str:
    """The request's model without an ``anthropic/`` prefix (400 when missing)."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid_request("model: you must provide a model parameter", param="model")
    check_model_name(model)  # over 256 characters: 400 before any work on it
    return _PROVIDER.sub("", model.strip())


def opt_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid_request(f"{name}: must be a boolean", param=name)
    return value


def number(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise invalid_request(f"{name}: must be a number between {lo:g} and {hi:g}", param=name)
    return value


def positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid_request(f"{name}: must be a positive integer", param=name)
    return value


def max_tokens(given: int | None, max_output: int | None) -> int:
    """``max_tokens``: the client's limit, else the model's output limit, capped by the latter."""
    if given is None:
        return max_output or DEFAULT_MAX_TOKENS
    # clamped rather than refused: clients send generous limits meant for other models
    return min(given, max_output) if max_output else given


def fit_budget(max_tokens: int, budget: int, max_output: int | None,
               *, explicit: bool) -> tuple[int, int | None]:
    """(max_tokens, budget) with budget < max_tokens; budget None when thinking cannot fit."""
    if budget >= max_tokens:
        if explicit:
            max_tokens = budget + max_tokens  # the client's limit bounds the answer after thinking
        else:
            max_tokens = budget * 2
        if max_output:
            max_tokens = min(max_tokens, max_output)
    if budget >= max_tokens:
        budget = max_tokens - 1
    if budget < MIN_THINKING_BUDGET:
        return max_tokens, None
    return max_tokens, budget


def sampling(body: dict[str, Any], out: dict[str, Any], *, top_k: bool) -> None:
    """``temperature`` (clamped to Claude's 0–1), else ``top_p``; ``top_k`` where the wire has it."""
    temperature = number(body, "temperature", 0, 2)
    top_p = number(body, "top_p", 0, 1)
    if temperature is not None:
        out["temperature"] = min(temperature, 1)
    elif top_p is not None:
        out["top_p"] = top_p
    if not top_k:
        return
    value = body.get("top_k")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid_request("top_k: must be a non-negative integer", param="top_k")
        if value:
            out["top_k"] = value


# ---- JSON output --------------------------------------------------------------------------------


def response_format(fmt: Any, *, has_tools: bool,
                    thinking: bool) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(json_tool, system instruction, tool definition) for a chat-shaped ``response_format``."""
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid_request("response_format: must be an object with a type", param="response_format")
    kind = fmt["type"]
    if kind == "text":
        return None, None, None
    if kind == "json_object":
        schema: dict[str, Any] = {"type": "object", "additionalProperties": True}
        description = "Give your complete answer as this tool's input: a single JSON object."
        instruction = "Respond only with a single valid JSON object, with no other text before or after it."
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise invalid_request("response_format.json_schema: must be an object with a schema",
                                  param="response_format.json_schema")
        schema = spec.get("schema") or {"type": "object"}
        if "type" not in schema and "properties" in schema:
            schema = {"type": "object", **schema}
        name = spec.get("name") or "response"
        description = (spec.get("description") or f"Give your complete answer as this tool's input ({name}).")
        instruction = ("Respond only with a JSON value that conforms to this JSON Schema, with no other text "
                       f"before or after it:\n{orjson.dumps(schema).decode()}")
        if schema.get("type") != "object":
            return None, instruction, None  # a tool's input must be an object
    else:
        raise invalid_request(f"response_format.type: unsupported value {kind!r}",
                              param="response_format.type")
    if has_tools or thinking:
        return None, instruction, None
    return JSON_TOOL, None, {"name": JSON_TOOL, "description": description, "input_schema": schema}


# ---- turns and blocks ---------------------------------------------------------------------------


def append_turn(turns: list[dict[str, Any]], role: str, blocks: Blocks) -> None:
    """Add blocks as a turn, merging into the previous one of the same role (Claude alternates
    roles); in a user turn, ``tool_result`` blocks lead, before any text, as Claude requires."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        content = turns[-1]["content"]
    else:
        content = []
        turns.append({"role": role, "content": content})
    for block in blocks:
        if block["type"] == "tool_result":
            pos = 0
            while pos < len(content) and content[pos]["type"] == "tool_result":
                pos += 1
            content.insert(pos, block)
        else:
            content.append(block)


def trim_prefill(turns: list[dict[str, Any]]) -> None:
    """A trailing assistant turn is a prefill, which Claude refuses with trailing whitespace:
    its last text is stripped (and dropped when nothing is left, with the turn if it empties)."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    content = turns[-1]["content"]
    if content and content[-1]["type"] == "text":
        content[-1]["text"] = content[-1]["text"].rstrip()
        if not content[-1]["text"]:
            content.pop()
    if not content:
        turns.pop()


def tool_id(raw: str) -> str:
    """A client's tool call id in Claude's ``[A-Za-z0-9_-]`` alphabet (Claude's own ids unchanged)."""
    return _BAD_ID_CHARS.sub("_", raw)


def with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """The part's own ``cache_control`` carried onto its block (the OpenRouter/LiteLLM convention)."""
    cc = part.get("cache_control")
    if cc is not None:
        block["cache_control"] = cc
    return block


def text_parts(content: Any, where: str, kinds: tuple[str, ...] = ("text",), *,
               cache_control: bool = True) -> Blocks:
    """Text blocks of a content that may only hold text (a system or developer message)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise invalid_request(f"{where}: must be a string or an array of content parts", param=where)
    out = []
    for j, part in enumerate(content):
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str) or part.get("type") not in kinds:
            raise invalid_request(f"{where}[{j}]: only text parts are allowed here", param=f"{where}[{j}]")
        if text:
            block = {"type": "text", "text": text}
            out.append(with_cache_control(block, part) if cache_control else block)
    return out


def assistant_text_parts(content: Any, where: str, kinds: tuple[str, ...], *,
                         cache_control: bool = True) -> Blocks:
    """Text blocks of an assistant message's content (text and refusal parts; the part types
    named by ``kinds``, the refusal's text in ``refusal``)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise invalid_request(f"{where}: must be a string, an array or null", param=where)
    out = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise invalid_request(f"{where}[{j}]: must be an object", param=f"{where}[{j}]")
        text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
        if part.get("type") not in kinds or not isinstance(text, str):
            raise invalid_request(f"{where}[{j}]: assistant content parts must be {kinds[0]} or refusal",
                                  param=f"{where}[{j}]")
        if text:
            block = {"type": "text", "text": text}
            out.append(with_cache_control(block, part) if cache_control else block)
    return out


def content_blocks(content: Any, where: str, part: Callable[[Any, str], dict[str, Any] | None]) -> Blocks:
    """Blocks of a user content: a string, or parts each translated by ``part`` (None: dropped)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise invalid_request(f"{where}: must be a string or an array of content parts", param=where)
    out = []
    for j, item in enumerate(content):
        block = part(item, f"{where}[{j}]")
        if block is not None:
            out.append(block)
    return out


def text_part(part: dict[str, Any], where: str) -> dict[str, Any] | None:
    text = part.get("text")
    if not isinstance(text, str):
        raise invalid_request(f"{where}.text: must be a string", param=f"{where}.text")
    return {"type": "text", "text": text} if text else None


def image_source(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None:
            raise invalid_request(f"{where}: a data URL must be base64 (data:image/png;base64,...)", param=where)
        media_type = (match.group(1) or "").lower()
        if media_type not in IMAGE_TYPES:
            raise invalid_request(f"{where}: unsupported image type {media_type!r} "
                                  f"(use {', '.join(sorted(IMAGE_TYPES))})", param=where)
        return {"type": "base64", "media_type": media_type, "data": match.group(3)}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise invalid_request(f"{where}: must be an http(s) URL or a base64 data URL", param=where)


def file_block(spec: Any, where: str) -> dict[str, Any]:
    """A document block from ``file_data`` (a PDF or UTF-8 text, base64, optionally a data URL)."""
    if not isinstance(spec, dict):
        raise invalid_request(f"{where}: must be an object", param=where)
    if spec.get("file_id") is not None and spec.get("file_data") is None:
        raise invalid_request(f"{where}.file_id: uploaded files are not supported; send file_data",
                              param=f"{where}.file_id")
    data = spec.get("file_data")
    if not isinstance(data, str) or not data:
        raise invalid_request(f"{where}.file_data: required", param=f"{where}.file_data")
    media_type = "application/pdf"
    match = _DATA_URL.match(data)
    if match is not None:
        media_type = (match.group(1) or media_type).lower()
        data = match.group(3)
    if media_type == "application/pdf":
        block: dict[str, Any] = {"type": "document",
                                 "source": {"type": "base64", "media_type": media_type, "data": data}}
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_request(f"{where}.file_data: not valid base64 UTF-8 text",
                                  param=f"{where}.file_data") from None
        block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    else:
        raise invalid_request(f"{where}.file_data: unsupported file type {media_type!r} (PDF or plain text)",
                              param=f"{where}.file_data")
    if isinstance(spec.get("filename"), str) and spec["filename"]:
        block["title"] = spec["filename"]
    return block


def tool_result(tool_use_id: str, content: Any, where: str, field: str,
                parts: Callable[[Any, str], Blocks]) -> dict[str, Any]:
    """A ``tool_result`` block: a string, content parts (translated by ``parts``), or the older
    ``{"content": "...", "success": false}`` object some clients send."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    at = f"{where}.{field}"
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif isinstance(content, list):
        blocks = parts(content, at)
        if blocks:
            block["content"] = blocks
    elif isinstance(content, dict) and isinstance(content.get("content"), str):
        if content["content"]:
            block["content"] = content["content"]
        if content.get("success") is False:
            block["is_error"] = True
    elif content is not None:
        raise invalid_request(f"{at}: must be a string or an array of content parts", param=at)
    return block


def arguments(raw: Any, where: str) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON string, or an object) as the ``tool_use`` input."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        raise invalid_request(f"{where}: must be a JSON string", param=where)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_request(f"{where}: is not valid JSON", param=where) from None
    if not isinstance(value, dict):
        raise invalid_request(f"{where}: must encode a JSON object", param=where)
    # sent upstream as an object: held to the body's own depth (counting brackets is enough for most)
    if raw.count("{") + raw.count("[") > MAX_ECHO_DEPTH and nests_past(value, MAX_ECHO_DEPTH):
        raise invalid_request(f"{where}: nested more than {MAX_ECHO_DEPTH} levels deep", param=where)
    return value


# ---- prompt caching -----------------------------------------------------------------------------

_EPHEMERAL = {"type": "ephemeral"}
_NO_CACHE_CONTROL = frozenset({"thinking", "redacted_thinking"})


def cache_breakpoints(system: Blocks, tools: Blocks, messages: list[dict[str, Any]]) -> None:
    """Breakpoints on the last tool, the last system block and the last two user turns (4, Claude's
    maximum): each turn's request reads the prefix the previous turn wrote."""
    if tools:
        tools[-1] = {**tools[-1], "cache_control": _EPHEMERAL}
    if system:
        system[-1] = {**system[-1], "cache_control": _EPHEMERAL}
    marked = 0
    for msg in reversed(messages):
        if marked == 2:
            break
        if msg["role"] != "user" or not msg["content"]:
            continue
        last = msg["content"][-1]
        if last.get("type") in _NO_CACHE_CONTROL or (last.get("type") == "text" and not last.get("text")):
            continue
        msg["content"][-1] = {**last, "cache_control": _EPHEMERAL}
        marked += 1


# ---- the body -----------------------------------------------------------------------------------


def build_body(body: dict[str, Any], *, model: str, max_output: int | None, client_max: int | None,
               system: Blocks, messages: list[dict[str, Any]], tools: Blocks, tool_choice: dict[str, Any] | None,
               thinking: dict[str, Any] | None, effort: str | None, fmt: Any, top_k: bool,
               cache: bool = False) -> tuple[dict[str, Any], str | None]:
    """The Claude body from what an adapter parsed, and the name of the tool that carries a JSON
    answer (None when none does). ``fmt``: a chat-shaped ``response_format`` (None: plain text)."""
    limit = max_tokens(client_max, max_output)
    out: dict[str, Any] = {"model": model, "max_tokens": limit}
    forcing = tool_choice is not None and tool_choice["type"] in ("any", "tool")
    if thinking is not None and forcing:
        thinking, effort = None, None  # Claude refuses thinking with a forced tool; the tool_choice is the contract

    json_tool = None
    if fmt is not None:
        json_tool, instruction, tool_def = response_format(fmt, has_tools=bool(tools), thinking=thinking is not None)
        if tool_def is not None:
            tools = [tool_def]
            tool_choice = {"type": "tool", "name": JSON_TOOL}
        if instruction:
            system.append({"type": "text", "text": instruction})

    if thinking is not None and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and not isinstance(budget, bool):
            limit, fitted = fit_budget(limit, budget, max_output, explicit=client_max is not None)
            if fitted is None:
                thinking = None
            else:
                thinking = {**thinking, "budget_tokens": fitted}
                out["max_tokens"] = limit

    if cache:
        cache_breakpoints(system, tools, messages)
    if system:
        out["system"] = system
    out["messages"] = messages
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    if thinking is not None:
        out["thinking"] = thinking
        if effort is not None:
            out["output_config"] = {"effort": effort}
    else:
        sampling(body, out, top_k=top_k)
    return out, json_tool


def user_metadata(body: dict[str, Any], out: dict[str, Any]) -> None:
    """``user`` (or ``safety_identifier``) → ``metadata.user_id`` (Claude takes 256 characters)."""
    user = body.get("user") or body.get("safety_identifier")
    if user is not None:
        if not isinstance(user, str):
            raise invalid_request("user: must be a string", param="user")
        if user:
            out["metadata"] = {"user_id": user[:256]}
