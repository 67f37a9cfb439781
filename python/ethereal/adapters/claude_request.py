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
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ethereal.errors import invalid_request
from ethereal.guards import MAX_ECHO_DEPTH, check_model_name, nests_past
from ethereal.models.registry import EFFORTS, Registry, Rules

JSON_TOOL = "json_response"
MIN_THINKING_BUDGET = 1024
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_PROVIDER = re.compile(r"^anthropic/", re.IGNORECASE)
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_DATA_URL = re.compile(r"^data:([^;,]+)?((?:;[^;,]+)*);base64,(.*)$", re.DOTALL)

Blocks = list[dict[str, Any]]


# ---- the model registry, for callers that pass no rules -----------------------------------------


@functools.cache
def _shipped_registry() -> Registry:
    return Registry()


def shipped_rules(model: str) -> Rules:
    """The shipped registry's rules for ``model`` (a model it does not describe: the defaults)."""
    found = _shipped_registry().resolve(model)
    return found.rules if found is not None else Rules()


def shipped_default_max_tokens() -> int:
    return _shipped_registry().default_max_tokens


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


def max_tokens(given: int | None, max_output: int | None, default: int) -> int:
    """``max_tokens``: the client's limit, else the model's output limit (``default`` for a model
    whose limit is not known: the registry's ``default_max_tokens``), capped by the former."""
    if given is None:
        return max_output or default
    # clamped rather than refused: clients send generous limits meant for other models
    return min(given, max_output) if max_output else given


def fit_budget(
    max_tokens: int, budget: int, max_output: int | None, *, explicit: bool
) -> tuple[int, int | None]:
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


def text_parts(
    content: Any, where: str, kinds: tuple[str, ...] = ("text",), *, cache_control: bool = True
) -> Blocks:
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


def assistant_text_parts(
    content: Any, where: str, kinds: tuple[str, ...], *, cache_control: bool = True
) -> Blocks:
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
            raise invalid_request(
                f"{where}[{j}]: assistant content parts must be {kinds[0]} or refusal", param=f"{where}[{j}]"
            )
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
            raise invalid_request(
                f"{where}: a data URL must be base64 (data:image/png;base64,...)", param=where
            )
        media_type = (match.group(1) or "").lower()
        if media_type not in IMAGE_TYPES:
            raise invalid_request(
                f"{where}: unsupported image type {media_type!r} (use {', '.join(sorted(IMAGE_TYPES))})",
                param=where,
            )
        return {"type": "base64", "media_type": media_type, "data": match.group(3)}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise invalid_request(f"{where}: must be an http(s) URL or a base64 data URL", param=where)


def file_block(spec: Any, where: str) -> dict[str, Any]:
    """A document block from ``file_data`` (a PDF or UTF-8 text, base64, optionally a data URL)."""
    if not isinstance(spec, dict):
        raise invalid_request(f"{where}: must be an object", param=where)
    if spec.get("file_id") is not None and spec.get("file_data") is None:
        raise invalid_request(
            f"{where}.file_id: uploaded files are not supported; send file_data", param=f"{where}.file_id"
        )
    data = spec.get("file_data")
    if not isinstance(data, str) or not data:
        raise invalid_request(f"{where}.file_data: required", param=f"{where}.file_data")
    media_type = "application/pdf"
    match = _DATA_URL.match(data)
    if match is not None:
        media_type = (match.group(1) or media_type).lower()
        data = match.group(3)
    if media_type == "application/pdf":
        block: dict[str, Any] = {
            "type": "document",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_request(
                f"{where}.file_data: not valid base64 UTF-8 text", param=f"{where}.file_data"
            ) from None
        block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    else:
        raise invalid_request(
            f"{where}.file_data: unsupported file type {media_type!r} (PDF or plain text)",
            param=f"{where}.file_data",
        )
    if isinstance(spec.get("filename"), str) and spec["filename"]:
        block["title"] = spec["filename"]
    return block


def tool_result(
    tool_use_id: str, content: Any, where: str, field: str, parts: Callable[[Any, str], Blocks]
) -> dict[str, Any]:
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


# ---- what the client asked for, and the model's rules ------------------------------------------

# OpenAI's reasoning efforts. ``minimal`` is below Claude's lowest level: it means ``low``.
OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# thinking budgets, for models that take ``budget_tokens`` (by the Claude effort level asked for)
THINKING_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768, "max": 32768}
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}

# response headers that say what the translation changed (docs/openai-translation.md)
DROPPED_PARAMS = "ethereal-dropped-params"
THINKING_NOTE = "ethereal-thinking"
PREFILL_NOTE = "ethereal-prefill"
DROPPED_THINKING = "ethereal-dropped-thinking"
CACHE_NOTE = "ethereal-auto-cache"


@dataclass(slots=True)
class Asked:
    """What an OpenAI-shaped request asks for, in the terms the rules below read. Each adapter
    fills it from its own wire shape; ``build_body`` turns it into what the model accepts."""

    model: str
    system: Blocks
    messages: list[dict[str, Any]]
    tools: Blocks = field(default_factory=list)
    tool_choice: dict[str, Any] | None = None  # Claude's shape
    tool_choice_param: str = "tool_choice"
    effort: str | None = None  # an OpenAI effort (OPENAI_EFFORTS); None: not said
    effort_param: str = "reasoning_effort"
    thinking: dict[str, Any] | None = None  # Claude's own ``thinking`` object, passed by a client
    summary: bool = False  # the client reads the reasoning text (a summary was asked for)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    fmt: dict[str, Any] | None = None  # a chat-shaped response_format (json_schema / json_object)
    fmt_param: str = "response_format"
    client_max: int | None = None
    client_max_param: str = "max_tokens"
    drop_thinking: bool = False  # replayed thinking cannot reach the account that made it: left out


@dataclass(slots=True)
class Built:
    """The Claude body and what the reply side and the response headers need."""

    body: dict[str, Any]
    json_tool: str | None = (
        None  # the forced tool that carries a JSON answer (models without structured outputs)
    )
    notes: dict[str, str] = field(default_factory=dict)  # response headers saying what was changed

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode(), v.encode()) for k, v in self.notes.items()]


def _level(rules: Rules, effort: str) -> str | None:
    """The model's effort level nearest an OpenAI effort (``minimal`` → ``low``; None: the model has none)."""
    return rules.nearest_effort("low" if effort == "minimal" else effort)


def _lowest(rules: Rules) -> str | None:
    return min(rules.effort_levels, key=EFFORTS.index) if rules.effort_levels else None


def _effort_of_budget(budget: int) -> str:
    for level in ("low", "medium", "high"):
        if budget <= THINKING_BUDGETS[level]:
            return level
    return "xhigh"


class _Thinking:
    """The thinking decision under construction: on (with an effort), off, or the model's default."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.state = "default"  # "on", "off" or "default" (nothing said: the model's default)
        self.effort: str | None = None  # a Claude level, when on
        self.budget: int | None = None  # an explicit budget_tokens, when the client gave one
        self.extra: dict[str, Any] = {}  # other members of the client's own thinking object

    @property
    def on(self) -> bool:
        return self.state == "on" or (self.state == "default" and self.rules.thinking_default == "adaptive")

    def can_turn_off(self) -> bool:
        r = self.rules
        if r.thinking_off == "none":
            return False
        return r.thinking_off_max_effort is None or r.effort_at_most(None, r.thinking_off_max_effort)


def _asked_thinking(asked: Asked, rules: Rules) -> _Thinking:
    t = _Thinking(rules)
    given = asked.thinking
    if given is not None:
        kind = given.get("type")
        if kind in ("disabled", "between_tools"):
            t.state = "off"
        elif kind in ("enabled", "adaptive"):
            t.state = "on"
            budget = given.get("budget_tokens")
            if isinstance(budget, int) and not isinstance(budget, bool):
                t.budget = budget
                t.effort = rules.nearest_effort(_effort_of_budget(budget))
            t.extra = {k: v for k, v in given.items() if k not in ("type", "budget_tokens")}
        return t
    if asked.effort is None:
        return t
    if asked.effort == "none":
        t.state = "off"
    else:
        t.state = "on"
        t.effort = _level(rules, asked.effort)
        if t.effort is None:  # a model without effort levels (budget only): the budget says it
            t.budget = THINKING_BUDGETS["low" if asked.effort == "minimal" else asked.effort]
    return t


def build_body(
    asked: Asked,
    rules: Rules | None,
    *,
    max_output: int | None,
    default_max_tokens: int | None = None,
    auto_cache: bool | None = None,
) -> Built:
    """The Claude body for ``asked`` that the model with these ``rules`` accepts.

    Every choice is read from the rules (models.toml), never from the model's name. Where the
    client asked for something the model refuses and an equivalent exists, the equivalent is
    sent and a response header says so; where none exists, a 400 names the client's parameter.
    ``rules`` None: the shipped registry's for the model; ``default_max_tokens`` None: the shipped
    registry's; ``auto_cache`` None: the caching policy (``wants_auto_cache``).
    """
    if rules is None:
        rules = shipped_rules(asked.model)
    if default_max_tokens is None:
        default_max_tokens = shipped_default_max_tokens()
    if auto_cache is None:
        auto_cache = wants_auto_cache(asked)
    built = Built({"model": asked.model})
    notes = built.notes
    system, messages, tools = asked.system, asked.messages, list(asked.tools)
    tool_choice = asked.tool_choice
    limit = max_tokens(asked.client_max, max_output, default_max_tokens)
    thinking = _asked_thinking(asked, rules)

    if asked.drop_thinking:
        dropped = _drop_thinking(messages)
        if dropped:
            notes[DROPPED_THINKING] = f"{dropped}; reason=account-unavailable"
    _prefill(messages, rules, notes)

    # a JSON answer: structured outputs where the model has them, else a forced tool or an instruction
    output_format: dict[str, Any] | None = None
    if asked.fmt is not None:
        kind = asked.fmt["type"]
        instruction = _json_instruction(asked.fmt)
        if kind == "json_schema" and rules.structured_outputs:
            output_format = {"type": "json_schema", "schema": structured_schema(asked.fmt["schema"])}
        elif (
            asked.fmt["schema"].get("type") != "object"
            or tools
            or thinking.on
            or not rules.forced_tool_choice
        ):
            system.append({"type": "text", "text": instruction})
        else:
            built.json_tool = JSON_TOOL
            tools = [
                {
                    "name": JSON_TOOL,
                    "description": asked.fmt.get("description")
                    or "Give your complete answer as this tool's input.",
                    "input_schema": asked.fmt["schema"],
                }
            ]
            tool_choice = {"type": "tool", "name": JSON_TOOL}

    forcing = bool(tools) and tool_choice is not None and tool_choice["type"] in ("any", "tool")
    if forcing and not rules.forced_tool_choice:
        raise invalid_request(
            f'{asked.tool_choice_param}: {asked.model} does not accept a forced tool choice ("required" or a '
            'named function); send "auto" and describe the tool to use in the prompt, or use a model that '
            "accepts it",
            param=asked.tool_choice_param,
        )
    if forcing and thinking.on and not rules.forced_tool_with_thinking:
        if not thinking.can_turn_off():
            raise invalid_request(
                f"{asked.tool_choice_param}: {asked.model} thinks on every request and refuses a forced tool "
                'choice with thinking; send "auto"',
                param=asked.tool_choice_param,
            )
        if thinking.state == "on":
            notes[THINKING_NOTE] = "off; reason=forced-tool-choice"
        thinking.state = "off"

    # a tool loop whose assistant turn has no thinking block to send back: refused with thinking on
    if thinking.on and not _thinking_restorable(messages) and thinking.can_turn_off():
        if thinking.state == "on":
            notes[THINKING_NOTE] = "off; reason=tool-loop-without-thinking"
        thinking.state = "off"

    _thinking_body(built.body, thinking, rules, asked, notes)
    if "thinking" in built.body and built.body["thinking"].get("type") == "enabled":
        limit, budget = fit_budget(
            limit, built.body["thinking"]["budget_tokens"], max_output, explicit=asked.client_max is not None
        )
        if budget is None:
            del built.body["thinking"]
            built.body.pop("output_config", None)
            thinking.state = "off"
        else:
            built.body["thinking"]["budget_tokens"] = budget
    built.body["max_tokens"] = limit
    if output_format is not None:
        built.body.setdefault("output_config", {})["format"] = output_format

    if auto_cache:
        cache_breakpoints(system, tools, messages)
    out = built.body
    # the members in the order Claude documents them (kept stable: tests and logs read them)
    ordered: dict[str, Any] = {"model": out.pop("model"), "max_tokens": out.pop("max_tokens")}
    if system:
        ordered["system"] = system
    ordered["messages"] = messages
    if tools:
        ordered["tools"] = tools
        if tool_choice is not None:
            ordered["tool_choice"] = tool_choice
    ordered.update(out)
    _sampling(asked, rules, thinking.on, ordered, notes)
    built.body = ordered
    return built


def _thinking_body(
    out: dict[str, Any], thinking: _Thinking, rules: Rules, asked: Asked, notes: dict[str, str]
) -> None:
    """``thinking`` and ``output_config.effort`` for the decision taken."""
    if thinking.state == "default":
        if thinking.on and asked.summary:
            display = _display(rules, asked)
            if display:
                out["thinking"] = {"type": "adaptive", "display": display}
        return
    if thinking.state == "off":
        if rules.thinking_off != "none" and not thinking.can_turn_off() and rules.thinking_off_max_effort:
            # off only at an effort at or below a ceiling the model's default is above: ask for the ceiling
            out["thinking"] = {"type": rules.thinking_off}
            out["output_config"] = {"effort": rules.thinking_off_max_effort}
        elif rules.thinking_off == "none":
            # thinking cannot be off here: the least of it, and the client is told
            out["thinking"] = {"type": "adaptive"}
            lowest = _lowest(rules)
            if lowest:
                out["output_config"] = {"effort": lowest}
            notes[THINKING_NOTE] = f"on; reason=cannot-be-off; effort={lowest or 'default'}"
        elif rules.thinking_default == "adaptive":
            out["thinking"] = {"type": rules.thinking_off}  # disabled, or between_tools
        return
    # on
    if rules.adaptive:
        block: dict[str, Any] = {"type": "adaptive"}
    elif rules.budget_thinking:
        budget = thinking.budget or THINKING_BUDGETS.get(
            thinking.effort or "medium", THINKING_BUDGETS["medium"]
        )
        block = {"type": "enabled", "budget_tokens": budget}
    else:
        return  # a model that cannot think: nothing to ask
    for key in ("display",):
        if key in thinking.extra and thinking.extra[key] in rules.display_values:
            block[key] = thinking.extra[key]
    if asked.summary and "display" not in block:
        display = _display(rules, asked)
        if display:
            block["display"] = display
    out["thinking"] = block
    if thinking.effort is not None and rules.effort_levels:
        out["output_config"] = {"effort": thinking.effort}


def _display(rules: Rules, asked: Asked) -> str | None:
    """``summarized`` when the client reads the reasoning text and the model would omit it."""
    if "summarized" in rules.display_values and rules.display_default != "summarized":
        return "summarized"
    return None


def _sampling(asked: Asked, rules: Rules, thinking: bool, out: dict[str, Any], notes: dict[str, str]) -> None:
    """``temperature`` (clamped to Claude's 0–1), ``top_p``, ``top_k`` as the model takes them.

    Claude requires the defaults with thinking on, some models take only one of temperature and
    top_p, and the newest take none but the defaults: what is not sent is named in a header."""
    given: dict[str, float | int] = {}
    if asked.temperature is not None:
        given["temperature"] = min(asked.temperature, 1)
    if asked.top_p is not None:
        given["top_p"] = asked.top_p
    if asked.top_k:
        given["top_k"] = asked.top_k
    dropped: list[str] = []
    for name, value in given.items():
        default = SAMPLING_DEFAULTS.get(name)
        if thinking or rules.sampling == "default_only":
            if value != default:
                dropped.append(name)
        elif name == "top_p" and "temperature" in given:
            dropped.append(name)  # only one of them: recent models refuse both, OpenAI advises one
        else:
            out[name] = value
    if dropped:
        notes[DROPPED_PARAMS] = ",".join(dropped)


def _drop_thinking(messages: list[dict[str, Any]]) -> int:
    """Remove replayed thinking blocks (turns left empty go, same-role neighbours merge); how many."""
    kept: list[dict[str, Any]] = []
    dropped = 0
    for msg in messages:
        blocks = msg["content"]
        if msg["role"] == "assistant":
            blocks = [b for b in blocks if b.get("type") not in ("thinking", "redacted_thinking")]
            dropped += len(msg["content"]) - len(blocks)
        append_turn(kept, msg["role"], blocks)
    messages[:] = kept
    return dropped


def _prefill(messages: list[dict[str, Any]], rules: Rules, notes: dict[str, str]) -> None:
    """A trailing assistant turn (a prefill) on a model that refuses prefill: its text becomes
    context at the end of the user turn before it, asking the reply to continue from it."""
    if rules.prefill or not messages or messages[-1]["role"] != "assistant":
        return
    last = messages[-1]
    if any(b.get("type") != "text" for b in last["content"]):
        return  # tool calls or thinking last: not a prefill (Claude says what is wrong with it)
    messages.pop()
    text = "".join(b["text"] for b in last["content"])
    note = {
        "type": "text",
        "text": f"Your reply must continue this text, which is already written (do not repeat it):\n{text}",
    }
    if messages and messages[-1]["role"] == "user":
        messages[-1]["content"].append(note)
    else:
        messages.append({"role": "user", "content": [note]})
    notes[PREFILL_NOTE] = "folded-into-user-turn"


def _thinking_restorable(messages: list[dict[str, Any]]) -> bool:
    """Thinking can be on: no tool loop is under way, or its assistant turn starts with thinking.

    Claude requires the assistant turn of an ongoing tool loop to start with its thinking
    block when thinking is on; history without one (from another model, or reasoning the
    client dropped) would be refused."""
    last = messages[-1] if messages else None
    if (
        last is None
        or last["role"] != "user"
        or not any(b.get("type") == "tool_result" for b in last["content"])
    ):
        return True
    for msg in reversed(messages):
        if msg["role"] == "assistant":
            first = msg["content"][0] if msg["content"] else {}
            return first.get("type") in ("thinking", "redacted_thinking")
    return True


# ---- JSON output --------------------------------------------------------------------------------

_UNSUPPORTED_SCHEMA = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "maxItems",
    "minProperties",
    "maxProperties",
)


def response_format(fmt: Any, param: str = "response_format") -> dict[str, Any] | None:
    """A chat-shaped ``response_format`` checked: ``{"type": "json_schema", "schema", "name",
    "description"}`` or ``{"type": "json_object"}``; None for plain text."""
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise invalid_request(f"{param}: must be an object with a type", param=param)
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        # any object: a tool's input schema can say it, structured outputs (every object closed) cannot
        return {
            "type": "json_object",
            "schema": {"type": "object", "additionalProperties": True},
            "description": "Give your complete answer as this tool's input: a single JSON object.",
        }
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise invalid_request(
                f"{param}.json_schema: must be an object with a schema", param=f"{param}.json_schema"
            )
        schema = spec.get("schema") or {"type": "object"}
        if "type" not in schema and "properties" in schema:
            schema = {"type": "object", **schema}
        out = {"type": "json_schema", "schema": schema, "name": spec.get("name") or "response"}
        if isinstance(spec.get("description"), str):
            out["description"] = spec["description"]
        return out
    raise invalid_request(f"{param}.type: unsupported value {kind!r}", param=f"{param}.type")


def _json_instruction(fmt: dict[str, Any]) -> str:
    if fmt["type"] == "json_object":
        return "Respond only with a single valid JSON object, with no other text before or after it."
    return (
        "Respond only with a JSON value that conforms to this JSON Schema, with no other text before or "
        f"after it:\n{orjson.dumps(fmt['schema']).decode()}"
    )


def structured_schema(schema: Any, depth: int = 0) -> Any:
    """A JSON Schema as Claude's structured outputs take it: every object closed
    (``additionalProperties: false`` unless the client said otherwise) and the constraints it
    does not enforce (numeric bounds, string lengths, patterns) moved into the description, as
    Anthropic's SDKs do."""
    if depth > MAX_ECHO_DEPTH:
        return schema
    if isinstance(schema, list):
        return [structured_schema(s, depth + 1) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    moved: list[str] = []
    for key, value in schema.items():
        if key in _UNSUPPORTED_SCHEMA or (key == "minItems" and value not in (0, 1)):
            moved.append(f"{key}: {orjson.dumps(value).decode()}")
        elif key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = (
                {k: structured_schema(v, depth + 1) for k, v in value.items()}
                if isinstance(value, dict)
                else value
            )
        elif key in ("items", "anyOf", "allOf", "oneOf", "not", "additionalProperties", "prefixItems"):
            out[key] = structured_schema(value, depth + 1) if isinstance(value, dict | list) else value
        else:
            out[key] = value
    if moved:
        note = "{" + ", ".join(moved) + "}"
        out["description"] = (
            f"{out['description']} {note}" if isinstance(out.get("description"), str) else note
        )
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


# ---- prompt caching -----------------------------------------------------------------------------

_EPHEMERAL = {"type": "ephemeral"}
_NO_CACHE_CONTROL = frozenset({"thinking", "redacted_thinking"})
MAX_BREAKPOINTS = 4  # Claude's limit per request


def wants_auto_cache(asked: Asked) -> bool:
    """The caching policy of the OpenAI routes: on for a request with tools or an earlier assistant
    turn (an agent or a conversation, resent whole every turn), off for a one-shot prompt."""
    return bool(asked.tools) or any(m["role"] == "assistant" for m in asked.messages)


def cache_breakpoints(system: Blocks, tools: Blocks, messages: list[dict[str, Any]]) -> int:
    """Breakpoints on the last tool, the last system block and the last user turns, in that order
    of priority, as many as fit beside the client's own ``cache_control`` in Claude's four: each
    turn's request reads the prefix the previous turn wrote. Returns how many were added."""
    used = sum(1 for b in (*tools, *system) if "cache_control" in b) + sum(
        1 for m in messages for b in m["content"] if isinstance(b, dict) and "cache_control" in b
    )
    added = 0

    def room() -> bool:
        return used + added < MAX_BREAKPOINTS

    if tools and "cache_control" not in tools[-1] and room():
        tools[-1] = {**tools[-1], "cache_control": _EPHEMERAL}
        added += 1
    if system and "cache_control" not in system[-1] and room():
        system[-1] = {**system[-1], "cache_control": _EPHEMERAL}
        added += 1
    marked = 0
    for msg in reversed(messages):
        if marked == 2 or not room():
            break
        if msg["role"] != "user" or not msg["content"]:
            continue
        last = msg["content"][-1]
        if last.get("type") in _NO_CACHE_CONTROL or (last.get("type") == "text" and not last.get("text")):
            continue
        marked += 1
        if "cache_control" not in last:
            msg["content"][-1] = {**last, "cache_control": _EPHEMERAL}
            added += 1
    return added


def finish_body(body: dict[str, Any], out: dict[str, Any], *, stream: bool) -> None:
    """``user`` (or ``safety_identifier``) → ``metadata.user_id`` (Claude takes 256 characters), and
    ``stream``."""
    user = body.get("user") or body.get("safety_identifier")
    if user is not None:
        if not isinstance(user, str):
            raise invalid_request("user: must be a string", param="user")
        if user:
            out["metadata"] = {"user_id": user[:256]}
    if stream:
        out["stream"] = True


def sampling_params(body: dict[str, Any], asked: Asked, *, top_k: bool) -> None:
    """``temperature`` (OpenAI's 0–2), ``top_p``, and ``top_k`` where the wire has it, checked."""
    asked.temperature = number(body, "temperature", 0, 2)
    asked.top_p = number(body, "top_p", 0, 1)
    if not top_k:
        return
    value = body.get("top_k")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid_request("top_k: must be a non-negative integer", param="top_k")
        asked.top_k = value or None
