"""OpenAI Responses API ⇄ Anthropic Messages, as pure functions.

``to_anthropic(body, model=…, max_output=…, response_id=…, created_at=…)`` turns a
``POST /v1/responses`` request into a Messages request plus what the response side needs
(raising ``GatewayError`` 400 with ``param`` for what cannot be translated);
``to_response(message, request)`` turns a Messages response into the full ``response``
object. The streaming direction is the Rust ``ResponsesTranslator``
(rust/ethereal-core/src/responses.rs); both follow the rules below, and the test suite holds
them to the same output.

Request (what Codex CLI and the openai SDK send):

- ``instructions``, then every ``system``/``developer`` message wherever it appears, join
  ``system`` in order. ``input`` is a string (one user message) or items: ``message``
  (``input_text``, ``input_image`` → image blocks (data URLs or http(s)), ``input_file`` →
  document blocks, ``output_text``/``refusal`` in assistant turns), ``function_call`` →
  ``tool_use`` (its ``call_id`` is the block id, so Claude's ``toolu_…`` ids round-trip) and
  ``function_call_output`` → ``tool_result``; ``custom_tool_call``/``custom_tool_call_output``
  likewise; ``reasoning`` items restored from ``encrypted_content`` (below);
  ``additional_tools`` items add their ``tools``; ``web_search_call`` items are dropped
  (Claude cannot replay a server tool call without its result, and the answer text around
  it is kept). Consecutive same-role turns merge; tool results lead their user turn.
- Tools: ``function`` (``strict`` accepted, Claude follows the schema) → a Claude tool;
  ``custom`` (freeform, optionally with a Lark/regex grammar) → a Claude tool with one string
  parameter ``input`` whose description carries the grammar, and its calls come back as
  ``custom_tool_call`` with that string as ``input``; ``namespace`` groups are flattened to
  ``<namespace>__<name>`` (a hash-shortened name past Claude's 64 characters) and the calls
  come back with ``namespace`` and the inner ``name``; ``web_search`` (and its preview /
  dated names) → Claude's ``web_search_20250305`` server tool (``allowed_domains`` and
  ``user_location`` carried over) — except with ``external_web_access: false`` (Codex's
  cached-only mode), where no live search may run, so the tool is left out. Other hosted
  tools (file search, code interpreter, computer use, image generation, MCP, hosted shell)
  get a 400 naming them.
- ``tool_choice``: ``auto``/``none``/``required``, a named function or custom tool,
  ``allowed_tools`` (the tool list narrowed), a hosted web search; ``parallel_tool_calls:
  false`` → ``disable_parallel_tool_use``.
- ``reasoning.effort``, ``reasoning.summary`` (``display: summarized`` where the model would
  omit the text), ``text.format`` (structured outputs for ``json_schema``), ``temperature`` and
  ``top_p``, a forcing ``tool_choice``, ``max_output_tokens`` and prompt caching follow the
  model's rules in the registry, written once for both OpenAI routes in
  ``claude_request.build_body`` (docs/openai-translation.md). ``text.verbosity`` is accepted.
- ``user``/``safety_identifier`` → ``metadata.user_id``; ``metadata`` and ``store`` are echoed
  (nothing is stored: ``store`` comes back false); ``include``, ``prompt_cache_key`` (which keys
  the credential choice, see ``cache_affinity``), ``service_tier``, ``truncation``,
  ``client_metadata``, ``stream_options``, ``max_tool_calls`` are accepted.
- Prompt caching: breakpoints on the last tool, the last system block and the last user turns
  (within Claude's four), so a conversation resent whole every turn (Codex, ``store: false``)
  reads its growing prefix from the cache; ``input_tokens_details.cached_tokens`` reports the
  cache reads.
- Refused with a 400 naming the parameter: ``previous_response_id`` and ``conversation``
  (ethereal stores no responses: send the whole history, as Codex does), ``background``,
  ``prompt`` (stored prompt templates), ``top_logprobs`` and the logprobs ``include``,
  ``item_reference`` items, audio.

Response:

- Items in Claude's block order: a run of text blocks is one ``message`` (one
  ``output_text`` part per block); ``thinking`` → ``reasoning`` with the text as its summary
  and ``encrypted_content`` = ``eth1r.`` + base64 of the Claude block as JSON (thinking +
  signature, or a ``redacted_thinking`` block's data), which restores the block exactly when
  the item is sent back; ``tool_use`` → ``function_call`` / ``custom_tool_call``; a web search
  → ``web_search_call``. Other server tools and their results are not shown.
- ``status``: ``completed``; ``incomplete`` with ``max_output_tokens`` (max tokens or the
  context window) or ``content_filter`` (a refusal). ``usage``: ``input_tokens`` counts every
  input token (cache reads and writes included), ``cached_tokens`` the reads,
  ``reasoning_tokens`` an estimate from the thinking text (Claude does not report it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from ethereal.adapters import claude_request as cr
from ethereal.adapters.claude_request import model_name
from ethereal.errors import invalid_request
from ethereal.models import Rules
from ethereal.usage import Usage

REASONING_PREFIX = "eth1r."
MAX_TOOL_NAME = 64  # Claude's limit on a tool name
WEB_SEARCH_TOOLS = frozenset(
    {"web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"}
)
_REFUSED = {
    "previous_response_id": "previous_response_id: not supported: ethereal does not store responses; send the "
    "whole conversation in input (with store: false, as Codex does)",
    "conversation": "conversation: not supported: ethereal does not store conversations; send the whole "
    "conversation in input",
    "background": "background: background responses are not supported",
    "prompt": "prompt: stored prompt templates are not supported; send instructions and input",
    "top_logprobs": "top_logprobs: log probabilities are not available for Claude models",
    "audio": "audio: audio output is not supported",
}


@dataclass(slots=True)
class ResponsesRequest:
    """A translated request: the Messages body plus what the response side needs."""

    body: dict[str, Any]
    stream: bool
    head: dict[str, Any]  # the response object's request-derived members
    custom_tools: list[str] = field(default_factory=list)
    namespaced: list[tuple[str, str, str]] = field(default_factory=list)  # (flat, namespace, name)
    json_tool: str | None = None
    cache_key: str | None = None  # prompt_cache_key
    head_text: str = ""  # ``head_json()``, written before admission for a stream (api/responses.py)
    notes: dict[str, str] = field(default_factory=dict)  # response headers saying what was changed

    def head_json(self) -> str:
        """``head`` as JSON members without the braces (what the native translator takes)."""
        return orjson.dumps(self.head).decode()[1:-1]


# ---- request ----------------------------------------------------------------------------


def to_anthropic(
    body: dict[str, Any],
    *,
    model: str,
    max_output: int | None,
    response_id: str,
    created_at: int,
    rules: Rules | None = None,
    default_max_tokens: int | None = None,
    auto_cache: bool | None = None,
    drop_thinking: bool = False,
) -> ResponsesRequest:
    """Translate a Responses request body (already parsed) for ``model`` (``rules``: its request
    rules from the model registry, as for the chat adapter; ``auto_cache``: add cache breakpoints,
    None for the caching policy)."""
    for name, message in _REFUSED.items():
        if body.get(name) not in (None, False, ""):
            raise invalid_request(message, param=name)
    stream = cr.opt_bool(body, "stream")
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(x, str) for x in include):
            raise invalid_request("include: must be an array of strings", param="include")
        if "message.output_text.logprobs" in include:
            raise invalid_request(
                "include: message.output_text.logprobs: log probabilities are not available "
                "for Claude models",
                param="include",
            )

    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, (str, list)):
        raise invalid_request("instructions: must be a string", param="instructions")
    system: list[dict[str, Any]] = []
    if isinstance(instructions, str) and instructions:
        system.append({"type": "text", "text": instructions})
    elif isinstance(instructions, list):
        system.extend(_system_parts(instructions, "instructions"))

    tools_in = body.get("tools")
    if tools_in is not None and not isinstance(tools_in, list):
        raise invalid_request("tools: must be an array", param="tools")
    extra_tools: list[Any] = []
    messages = _input(body.get("input"), system, extra_tools)
    ctx = _Tools()
    for i, tool in enumerate(tools_in or []):
        ctx.add(tool, f"tools[{i}]")
    for i, tool in enumerate(extra_tools):
        ctx.add(tool, f"input.additional_tools[{i}]")
    tools = ctx.tools

    tool_choice = _tool_choice(body, ctx)
    asked = cr.Asked(
        model=model,
        system=system,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        effort_param="reasoning.effort",
        fmt_param="text.format",
        client_max=cr.positive_int(body, "max_output_tokens"),
        client_max_param="max_output_tokens",
    )
    _reasoning(body, asked)
    cr.sampling_params(body, asked, top_k=False)
    fmt = _text_format(body)
    if fmt is not None:
        asked.fmt = cr.response_format(fmt, "text.format")
    asked.drop_thinking = drop_thinking
    built = cr.build_body(
        asked, rules, max_output=max_output, default_max_tokens=default_max_tokens, auto_cache=auto_cache
    )
    out = built.body
    cr.finish_body(body, out, stream=stream)
    cache_key = body.get("prompt_cache_key")
    if cache_key is not None and not isinstance(cache_key, str):
        raise invalid_request("prompt_cache_key: must be a string", param="prompt_cache_key")
    head = _head(body, response_id=response_id, created_at=created_at, model=model, tools=tools_in or [])
    return ResponsesRequest(
        out, stream, head, ctx.custom, ctx.namespaced, built.json_tool, cache_key or None, notes=built.notes
    )


def response_head(body: dict[str, Any], *, response_id: str, created_at: int, model: str) -> dict[str, Any]:
    """The response object's request-derived members for a body that is not translated (a
    WebSocket warm-up, ``generate: false``, whose input may hold only instructions)."""
    tools = body.get("tools")
    return _head(
        body,
        response_id=response_id,
        created_at=created_at,
        model=model,
        tools=tools if isinstance(tools, list) else [],
    )


def _head(
    body: dict[str, Any], *, response_id: str, created_at: int, model: str, tools: list[Any]
) -> dict[str, Any]:
    reasoning: dict[str, Any] = body["reasoning"] if isinstance(body.get("reasoning"), dict) else {}
    text: dict[str, Any] = body["text"] if isinstance(body.get("text"), dict) else {}
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid_request("metadata: must be an object", param="metadata")
    instructions = body.get("instructions")
    head: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": model,
        "instructions": instructions if instructions else None,
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": body.get("temperature") if body.get("temperature") is not None else 1.0,
        "text": {
            "format": text.get("format") or {"type": "text"},
            "verbosity": text.get("verbosity") or "medium",
        },
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": tools,
        "top_p": body.get("top_p") if body.get("top_p") is not None else 1.0,
        "truncation": body.get("truncation") or "disabled",
        "metadata": metadata or {},
    }
    if isinstance(body.get("user"), str):
        head["user"] = body["user"]
    return head


def _reasoning(body: dict[str, Any], asked: cr.Asked) -> None:
    """``reasoning.effort`` (an OpenAI effort) and ``reasoning.summary`` (the client reads the text)."""
    reasoning = body.get("reasoning")
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise invalid_request("reasoning: must be an object", param="reasoning")
    effort = reasoning.get("effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in cr.OPENAI_EFFORTS:
            raise invalid_request(
                f"reasoning.effort: must be one of {', '.join(cr.OPENAI_EFFORTS)}", param="reasoning.effort"
            )
        asked.effort = effort
    summary = reasoning.get("summary") or reasoning.get("generate_summary")
    asked.summary = isinstance(summary, str) and summary not in ("none", "")


def _text_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """``text.format`` in the chat adapter's ``response_format`` shape (None for plain text)."""
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid_request("text: must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid_request("text.format: must be an object with a type", param="text.format")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise invalid_request("text.format.schema: required (an object)", param="text.format.schema")
        spec = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if isinstance(fmt.get("description"), str):
            spec["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": spec}
    raise invalid_request(f"text.format.type: unsupported value {kind!r}", param="text.format.type")


# ---- tools ------------------------------------------------------------------------------


class _Tools:
    """Claude tools from Responses tools, with what the response side needs to map calls back."""

    def __init__(self) -> None:
        self.tools: list[dict[str, Any]] = []
        self.custom: list[str] = []
        self.namespaced: list[tuple[str, str, str]] = []
        self.names: set[str] = set()
        self.web_search = False

    def client_name(self, claude_name: str) -> str:
        for flat, ns, name in self.namespaced:
            if flat == claude_name:
                return f"{ns}.{name}"
        return claude_name

    def add(self, tool: Any, where: str, namespace: dict[str, Any] | None = None) -> None:
        if not isinstance(tool, dict):
            raise invalid_request(f"{where}: must be an object", param=where)
        kind = tool.get("type", "function")
        if not isinstance(kind, str):
            raise invalid_request(f"{where}.type: must be a string", param=f"{where}.type")
        if kind == "namespace" and namespace is None:
            ns = tool.get("name")
            if not isinstance(ns, str) or not ns:
                raise invalid_request(f"{where}.name: required", param=f"{where}.name")
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise invalid_request(f"{where}.tools: must be an array", param=f"{where}.tools")
            for j, t in enumerate(inner):
                self.add(t, f"{where}.tools[{j}]", tool)
            return
        if kind in WEB_SEARCH_TOOLS and namespace is None:
            self._web_search(tool)
            return
        if kind not in ("function", "custom"):
            raise invalid_request(
                f"{where}.type: {kind!r} tools are not supported on this endpoint "
                "(function, custom, namespace and web_search are)",
                param=f"{where}.type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_request(f"{where}.name: required", param=f"{where}.name")
        claude_name = name
        description: str = tool["description"] if isinstance(tool.get("description"), str) else ""
        if namespace is not None:
            claude_name = flat_name(namespace["name"], name)
            self.namespaced.append((claude_name, namespace["name"], name))
            ns_desc = namespace.get("description")
            if isinstance(ns_desc, str) and ns_desc:
                description = f"{ns_desc}\n\n{description}" if description else ns_desc
        if claude_name in self.names:
            return  # the same tool sent twice (tools and an additional_tools item)
        self.names.add(claude_name)
        claude: dict[str, Any] = {"name": claude_name}
        if kind == "custom":
            self.custom.append(claude_name)
            fmt = tool.get("format")
            grammar = ""
            if isinstance(fmt, dict) and fmt.get("type") == "grammar":
                grammar = (
                    f"\n\nThe input must follow this {fmt.get('syntax') or 'lark'} grammar exactly:\n"
                    f"{fmt.get('definition') or ''}"
                )
            if description or grammar:
                claude["description"] = (description + grammar).strip()
            claude["input_schema"] = {
                "type": "object",
                "properties": {
                    "input": {
                        "type": "string",
                        "description": "The tool's raw input text."
                        + (" It must follow the grammar in the tool description." if grammar else ""),
                    }
                },
                "required": ["input"],
            }
        else:
            schema = tool.get("parameters")
            if schema is None:
                schema = {"type": "object", "properties": {}}
            elif not isinstance(schema, dict):
                raise invalid_request(f"{where}.parameters: must be an object", param=f"{where}.parameters")
            elif "type" not in schema:
                schema = {"type": "object", **schema}
            if description:
                claude["description"] = description
            claude["input_schema"] = schema
        self.tools.append(claude)

    def _web_search(self, tool: dict[str, Any]) -> None:
        if tool.get("external_web_access") is False or self.web_search:
            return  # cached-only search: no live search may run, so Claude gets none
        self.web_search = True
        claude: dict[str, Any] = {"type": "web_search_20250305", "name": "web_search"}
        filters = tool.get("filters")
        if isinstance(filters, dict) and isinstance(filters.get("allowed_domains"), list):
            claude["allowed_domains"] = [d for d in filters["allowed_domains"] if isinstance(d, str)]
        loc = tool.get("user_location")
        if isinstance(loc, dict):
            claude["user_location"] = {
                "type": "approximate",
                **{
                    k: loc[k]
                    for k in ("city", "region", "country", "timezone")
                    if isinstance(loc.get(k), str)
                },
            }
        self.tools.append(claude)
        self.names.add("web_search")


def flat_name(namespace: str, name: str) -> str:
    """A namespace function's Claude tool name: ``ns__name``, hash-shortened past 64 characters."""
    flat = re.sub(r"[^A-Za-z0-9_-]", "_", f"{namespace}__{name}")
    if len(flat) <= MAX_TOOL_NAME:
        return flat
    digest = hashlib.sha256(flat.encode()).hexdigest()[:10]
    return flat[: MAX_TOOL_NAME - 11] + "_" + digest


def _tool_choice(body: dict[str, Any], ctx: _Tools) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid_request("parallel_tool_calls: must be a boolean", param="parallel_tool_calls")
    if not ctx.tools:
        return None
    if choice is None and parallel is not False:
        return None
    out: dict[str, Any]
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        name = choice.get("name")
        ns = choice.get("namespace")
        if isinstance(ns, str) and isinstance(name, str):
            name = flat_name(ns, name)
        if not isinstance(name, str) or name not in ctx.names:
            raise invalid_request(
                "tool_choice.name: names a tool that is not in tools", param="tool_choice.name"
            )
        out = {"type": "tool", "name": name}
    elif (
        isinstance(choice, dict)
        and isinstance(choice.get("type"), str)
        and choice["type"] in WEB_SEARCH_TOOLS
    ):
        if not ctx.web_search:
            raise invalid_request("tool_choice: names web search, which is not in tools", param="tool_choice")
        out = {"type": "tool", "name": "web_search"}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        mode = choice.get("mode")
        if mode not in ("auto", "required"):
            raise invalid_request("tool_choice.mode: must be auto or required", param="tool_choice.mode")
        allowed = set()
        for entry in choice.get("tools") or []:
            if isinstance(entry, dict):
                if isinstance(entry.get("type"), str) and entry["type"] in WEB_SEARCH_TOOLS:
                    allowed.add("web_search")
                elif isinstance(entry.get("name"), str):
                    ns = entry.get("namespace")
                    allowed.add(flat_name(ns, entry["name"]) if isinstance(ns, str) else entry["name"])
        kept = [t for t in ctx.tools if t["name"] in allowed]
        if not kept:
            raise invalid_request("tool_choice.tools: names no tool in tools", param="tool_choice.tools")
        ctx.tools[:] = kept
        out = {"type": "any" if mode == "required" else "auto"}
    else:
        raise invalid_request(
            "tool_choice: must be none, auto, required or a named tool", param="tool_choice"
        )
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


# ---- input ------------------------------------------------------------------------------


def _input(value: Any, system: list[dict[str, Any]], extra_tools: list[Any]) -> list[dict[str, Any]]:
    if value is None:
        raise invalid_request("input: Field required", param="input")
    if isinstance(value, str):
        if not value:
            raise invalid_request("input: must not be empty", param="input")
        return [{"role": "user", "content": [{"type": "text", "text": value}]}]
    if not isinstance(value, list) or not value:
        raise invalid_request("input: must be a string or a non-empty array of items", param="input")
    turns: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_request(f"{where}: must be an object", param=where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            _message(item, where, system, turns)
        elif kind == "function_call":
            cr.append_turn(turns, "assistant", [_call(item, where, custom=False)])
        elif kind == "custom_tool_call":
            cr.append_turn(turns, "assistant", [_call(item, where, custom=True)])
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise invalid_request(f"{where}.call_id: required", param=f"{where}.call_id")
            cr.append_turn(turns, "user", [_tool_result(cr.tool_id(call_id), item.get("output"), where)])
        elif kind == "reasoning":
            cr.append_turn(turns, "assistant", restore_reasoning(item))
        elif kind == "additional_tools":
            tools = item.get("tools")
            if not isinstance(tools, list):
                raise invalid_request(f"{where}.tools: must be an array", param=f"{where}.tools")
            extra_tools.extend(tools)
        elif kind == "web_search_call":
            continue
        elif kind == "item_reference":
            raise invalid_request(
                f"{where}: item references are not supported: ethereal does not store "
                "responses; send the items themselves",
                param=f"{where}.type",
            )
        else:
            raise invalid_request(
                f"{where}.type: unsupported input item type {kind!r}", param=f"{where}.type"
            )
    if not turns:
        raise invalid_request("input: at least one user or assistant message is required", param="input")
    cr.trim_prefill(turns)
    if not turns:
        raise invalid_request("input: at least one user message is required", param="input")
    return turns


def _message(
    item: dict[str, Any], where: str, system: list[dict[str, Any]], turns: list[dict[str, Any]]
) -> None:
    role = item.get("role")
    content = item.get("content")
    if role in ("system", "developer"):
        system.extend(_system_parts(content, f"{where}.content"))
    elif role == "user":
        cr.append_turn(turns, "user", _user_parts(content, f"{where}.content"))
    elif role == "assistant":
        cr.append_turn(turns, "assistant", _assistant_parts(content, f"{where}.content"))
    else:
        raise invalid_request(f"{where}.role: unsupported role {role!r}", param=f"{where}.role")


_TEXT_KINDS = ("input_text", "text", "output_text")


def _system_parts(content: Any, where: str) -> list[dict[str, Any]]:
    return cr.text_parts(content, where, _TEXT_KINDS, cache_control=False)


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    return cr.content_blocks(content, where, _user_part)


def _assistant_parts(content: Any, where: str) -> list[dict[str, Any]]:
    return cr.assistant_text_parts(
        content, where, ("output_text", "input_text", "text", "refusal"), cache_control=False
    )


def _tool_result(tool_use_id: str, output: Any, where: str) -> dict[str, Any]:
    return cr.tool_result(tool_use_id, output, where, "output", _user_parts)


def _user_part(part: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        raise invalid_request(f"{where}: must be an object", param=where)
    kind = part.get("type")
    if kind in _TEXT_KINDS:
        return cr.text_part(part, where)
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if part.get("file_id") is not None and url is None:
            raise invalid_request(
                f"{where}.file_id: uploaded files are not supported; send image_url", param=f"{where}.file_id"
            )
        if not isinstance(url, str) or not url:
            raise invalid_request(f"{where}.image_url: required", param=f"{where}.image_url")
        return {"type": "image", "source": cr.image_source(url, f"{where}.image_url")}
    if kind == "input_file":
        if part.get("file_url") is not None and part.get("file_data") is None:
            url = part["file_url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise invalid_request(f"{where}.file_url: must be an http(s) URL", param=f"{where}.file_url")
            return {"type": "document", "source": {"type": "url", "url": url}}
        return cr.file_block(part, where)
    if kind == "input_audio":
        raise invalid_request(f"{where}: audio input is not supported", param=where)
    raise invalid_request(f"{where}.type: unsupported content part type {kind!r}", param=f"{where}.type")


def _call(item: dict[str, Any], where: str, *, custom: bool) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid_request(f"{where}.call_id: required", param=f"{where}.call_id")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"{where}.name: required", param=f"{where}.name")
    ns = item.get("namespace")
    if isinstance(ns, str) and ns:
        name = flat_name(ns, name)
    if custom:
        raw = item.get("input")
        if not isinstance(raw, str):
            raise invalid_request(f"{where}.input: must be a string", param=f"{where}.input")
        tool_input: dict[str, Any] = {"input": raw}
    else:
        tool_input = cr.arguments(item.get("arguments"), f"{where}.arguments")
    return {"type": "tool_use", "id": cr.tool_id(call_id), "name": name, "input": tool_input}


# ---- reasoning round trip ------------------------------------------------------------------


def encode_reasoning(block: dict[str, Any]) -> str:
    """``encrypted_content`` for a thinking or redacted_thinking block (the Rust twin's format)."""
    if block.get("type") == "redacted_thinking":
        payload: dict[str, Any] = {"type": "redacted_thinking", "data": block.get("data") or ""}
    else:
        payload = {
            "type": "thinking",
            "thinking": block.get("thinking") or "",
            "signature": block.get("signature") or "",
        }
    raw = orjson.dumps(payload)
    return REASONING_PREFIX + base64.b64encode(raw).decode()


def restore_reasoning(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The Claude block a reasoning item carries, or nothing.

    Only ethereal's own ``encrypted_content`` restores a block; anything else (another
    provider's reasoning, a missing or altered payload) is dropped: Claude refuses a
    thinking block whose signature does not match.
    """
    enc = item.get("encrypted_content")
    if not isinstance(enc, str) or not enc.startswith(REASONING_PREFIX):
        return []
    try:
        payload = orjson.loads(base64.b64decode(enc[len(REASONING_PREFIX) :], validate=True))
    except (binascii.Error, ValueError):
        return []
    if not isinstance(payload, dict):
        return []
    if payload.get("type") == "thinking":
        thinking, signature = payload.get("thinking"), payload.get("signature")
        if isinstance(thinking, str) and isinstance(signature, str) and signature:
            return [{"type": "thinking", "thinking": thinking, "signature": signature}]
    elif payload.get("type") == "redacted_thinking":
        data = payload.get("data")
        if isinstance(data, str) and data:
            return [{"type": "redacted_thinking", "data": data}]
    return []


# ---- prompt caching ---------------------------------------------------------------------------


# ---- response ---------------------------------------------------------------------------


def incomplete_reason(stop_reason: str | None) -> str | None:
    if stop_reason in ("max_tokens", "model_context_window_exceeded"):
        return "max_output_tokens"
    if stop_reason == "refusal":
        return "content_filter"
    return None


def response_usage(usage: Any, reasoning_tokens: int) -> dict[str, Any]:
    u = Usage.from_message(usage)
    writes, reads, out = u.cache_5m + u.cache_1h, u.cache_read, u.output_tokens
    prompt = u.input_tokens + writes + reads
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": reads, "cache_write_tokens": writes},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, out)},
        "total_tokens": prompt + out,
    }


def output_items(
    content: list[Any], request: ResponsesRequest, suffix: str
) -> tuple[list[dict[str, Any]], int]:
    """(output items, estimated reasoning tokens) for a Message's content blocks."""
    from ethereal import _native

    items: list[dict[str, Any]] = []
    message: dict[str, Any] | None = None
    reasoning_tokens = 0
    namespaced = {flat: (ns, name) for flat, ns, name in request.namespaced}

    def item_id(prefix: str) -> str:
        return f"{prefix}_{suffix}_{len(items)}"

    def close() -> None:
        nonlocal message
        message = None

    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        is_json = (
            kind == "tool_use" and request.json_tool is not None and block.get("name") == request.json_tool
        )
        if kind == "text" or is_json:
            if message is None:
                message = {
                    "id": item_id("msg"),
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [],
                }
                items.append(message)
            text = orjson.dumps(block.get("input") or {}).decode() if is_json else block.get("text") or ""
            message["content"].append(
                {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            )
        elif kind == "thinking":
            close()
            text = block.get("thinking") or ""
            reasoning_tokens += _native.estimate_text_tokens(text)
            items.append(
                {
                    "id": item_id("rs"),
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": text}],
                    "encrypted_content": encode_reasoning(block),
                }
            )
        elif kind == "redacted_thinking":
            close()
            items.append(
                {
                    "id": item_id("rs"),
                    "type": "reasoning",
                    "summary": [],
                    "encrypted_content": encode_reasoning(block),
                }
            )
        elif kind == "tool_use":
            close()
            name = block.get("name") or ""
            call_id = block.get("id") or ""
            if name in request.custom_tools:
                tool_input = block.get("input") if isinstance(block.get("input"), dict) else {}
                raw = tool_input.get("input")
                text = raw if isinstance(raw, str) else orjson.dumps(tool_input).decode()
                items.append(
                    {
                        "id": item_id("ctc"),
                        "type": "custom_tool_call",
                        "call_id": call_id,
                        "name": name,
                        "input": text,
                    }
                )
            else:
                call: dict[str, Any] = {
                    "id": item_id("fc"),
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call_id,
                }
                if name in namespaced:
                    call["namespace"], name = namespaced[name]
                call["name"] = name
                call["arguments"] = orjson.dumps(block.get("input") or {}).decode()
                items.append(call)
        elif kind == "server_tool_use" and block.get("name") == "web_search":
            close()
            query = (block.get("input") or {}).get("query") if isinstance(block.get("input"), dict) else None
            items.append(
                {
                    "id": item_id("ws"),
                    "type": "web_search_call",
                    "status": "completed",
                    "action": {"type": "search", "query": query if isinstance(query, str) else ""},
                }
            )
    return items, reasoning_tokens


def to_response(message: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """A Messages response as the full ``response`` object."""
    response_id = request.head["id"]
    suffix = response_id.removeprefix("resp_")
    items, reasoning_tokens = output_items(message.get("content") or [], request, suffix)
    reason = incomplete_reason(message.get("stop_reason"))
    return {
        **request.head,
        "status": "incomplete" if reason else "completed",
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "output": items,
        "usage": response_usage(message.get("usage"), reasoning_tokens),
    }


__all__ = [
    "REASONING_PREFIX",
    "ResponsesRequest",
    "encode_reasoning",
    "flat_name",
    "incomplete_reason",
    "model_name",
    "output_items",
    "response_usage",
    "restore_reasoning",
    "to_anthropic",
    "to_response",
]
