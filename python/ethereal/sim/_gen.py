"""Deterministic response generation: text, thinking, tool calls, token counts, prompt cache.

Everything here is pure computation over the parsed request; the server module turns a
:class:`Plan` into bytes (a Message JSON body or SSE frames).

Token rules (the contract the gateway's estimator relies on):

* Output text is made of "tokens" drawn from a fixed table in which token lengths (leading
  space included) come in pairs summing to 8 characters, so any run of N tokens is
  ``4*N ± 4`` characters long. Every output block (text, thinking, tool input JSON) is billed
  ``ceil(len(chars) / 4)`` output tokens, so ``output_tokens == sum(ceil(len(block)/4))``.
* Input tokens: ``max(1, ceil(C / 4))`` where C counts the characters of every text-bearing
  part of the request: system text, text/thinking blocks, string contents, tool_result content
  (recursively), tool_use input as compact JSON, each tool definition as compact JSON, and any
  other block (image, document, ...) as its compact JSON, except images which count 6400 chars
  (≈1600 tokens) when base64-encoded or 0 chars more than their JSON otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import re
import time
from typing import Any

import orjson

# --------------------------------------------------------------------------------------------
# token table

_WORDS: dict[int, tuple[str, ...]] = {
    1: ("a", "I"),
    2: (
        "of",
        "to",
        "in",
        "it",
        "is",
        "on",
        "we",
        "as",
        "at",
        "by",
        "an",
        "be",
        "or",
        "so",
        "up",
        "no",
        "if",
        "do",
    ),
    3: (
        "the",
        "and",
        "for",
        "you",
        "not",
        "are",
        "but",
        "can",
        "new",
        "one",
        "all",
        "way",
        "use",
        "its",
        "how",
        "may",
        "any",
        "out",
        "two",
        "our",
        "day",
        "get",
        "has",
        "see",
        "set",
        "run",
        "key",
        "end",
        "few",
        "low",
    ),
    4: (
        "that",
        "with",
        "this",
        "from",
        "have",
        "will",
        "each",
        "more",
        "when",
        "then",
        "some",
        "data",
        "time",
        "like",
        "into",
        "only",
        "over",
        "most",
        "such",
        "same",
        "well",
        "also",
        "both",
        "long",
        "many",
        "what",
        "used",
        "make",
        "test",
        "work",
        "path",
        "fast",
        "rule",
        "text",
        "code",
        "even",
        "just",
    ),
    5: (
        "which",
        "there",
        "their",
        "model",
        "about",
        "would",
        "these",
        "other",
        "could",
        "first",
        "token",
        "where",
        "value",
        "state",
        "cache",
        "after",
        "while",
        "since",
        "every",
        "small",
        "large",
        "reply",
        "input",
        "check",
        "limit",
        "write",
        "sends",
        "given",
        "still",
        "never",
        "order",
    ),
}

TABLE_SIZE = 1 << 16
_MASK = TABLE_SIZE - 1


def _build_table() -> list[str]:
    rng = random.Random(0x5EED)
    out: list[str] = []
    capital = True
    until_period = rng.randint(6, 16)
    while len(out) < TABLE_SIZE:
        first = rng.choice((2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6))
        for length in (first, 8 - first):  # lengths incl. the leading space; each pair sums to 8
            until_period -= 1
            end = until_period <= 0 and length >= 3
            wlen = length - 1 - (1 if end else 0)
            word = rng.choice(_WORDS[wlen])
            if capital:
                word = word[0].upper() + word[1:]
            capital = False
            if end:
                word += "."
                capital = True
                until_period = rng.randint(6, 16)
            out.append(" " + word)
    return out


TOKENS: list[str] = _build_table()
# per-delta group sizes (tokens per text_delta), mean 3
_rg = random.Random(7)
_GROUPS = bytes(_rg.choice((1, 2, 3, 3, 4, 5)) for _ in range(4096))
# padding lengths 0..15 for data lines
_rp = random.Random(11)
PADS = bytes(_rp.randrange(16) for _ in range(4096))
SPACES = [b" " * i for i in range(16)]


def take_tokens(offset: int, n: int) -> list[str]:
    offset &= _MASK
    if offset + n <= TABLE_SIZE:
        return TOKENS[offset : offset + n]
    out: list[str] = []
    while n > 0:
        chunk = TOKENS[offset : offset + n]
        out.extend(chunk)
        n -= len(chunk)
        offset = 0
    return out


def group_tokens(tokens: list[str], seed: int) -> list[str]:
    """Joins tokens into text_delta pieces of 1-5 tokens; the first piece loses its leading space
    and is capitalised (a reply starts a sentence)."""
    pieces: list[str] = []
    i = 0
    g = seed & 4095
    n = len(tokens)
    while i < n:
        k = _GROUPS[g & 4095]
        g += 1
        pieces.append("".join(tokens[i : i + k]))
        i += k
    if pieces:
        first = pieces[0].lstrip(" ")
        pieces[0] = first[:1].upper() + first[1:]
    return pieces


def ctok(s: str) -> int:
    """Billed output tokens for a block's characters."""
    return (len(s) + 3) // 4


# --------------------------------------------------------------------------------------------
# ids

_B58 = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_TRANS = bytes(_B58[i % 58] for i in range(256))
_idrng = random.Random()


def seed_ids(seed: int) -> None:
    _idrng.seed(seed)


def rand_id(prefix: str, n: int) -> str:
    return prefix + _idrng.randbytes(n).translate(_TRANS).decode()


def request_id() -> str:
    return rand_id("req_011C", 20)


def message_id() -> str:
    return rand_id("msg_01", 22)


def tool_id() -> str:
    return rand_id("toolu_01", 22)


# --------------------------------------------------------------------------------------------
# request errors


class RequestError(Exception):
    def __init__(self, status: int, etype: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.etype = etype
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(400, "invalid_request_error", message)


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, as the API words a 400 for it."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"There was an error parsing the body of your request: {exc}") from None
    if not isinstance(req, dict):
        raise invalid("Input should be a valid dictionary")
    return req


def page_limit(params: dict[str, str]) -> int:
    """A list endpoint's ``limit`` (default 20, 1 to 1000)."""
    try:
        limit = int(params.get("limit", 20))
    except ValueError:
        raise invalid("limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise invalid("limit: Input should be between 1 and 1000")
    return limit


def check_api_key(headers: dict[bytes, bytes], keys: Any) -> None:
    """A 401 unless the request carries one of ``keys`` (any key when None): as ``x-api-key``, or
    as an OpenAI-style bearer token."""
    key = headers.get(b"x-api-key")
    if key is None:
        auth = headers.get(b"authorization")
        if auth is not None and auth[:7].lower() == b"bearer ":
            key = auth[7:].strip()
    if not key or (keys is not None and key not in keys):
        raise RequestError(401, "authentication_error", "invalid x-api-key")


# --------------------------------------------------------------------------------------------
# input token counting and prompt cache

_IMAGE_CHARS = 6400


def block_chars(b: Any) -> int:
    if isinstance(b, str):
        return len(b)
    if not isinstance(b, dict):
        return _json_chars(b)
    t = b.get("type")
    if t == "text":
        v = b.get("text")
        return len(v) if isinstance(v, str) else 0
    if t == "thinking":
        v = b.get("thinking")
        return len(v) if isinstance(v, str) else 0
    if t == "tool_result":
        c = b.get("content")
        if isinstance(c, str):
            return len(c)
        if isinstance(c, list):
            return sum(block_chars(x) for x in c)
        return 0
    if t == "tool_use":
        return _json_chars(b.get("input")) + len(str(b.get("name", "")))
    if t == "image":
        return _IMAGE_CHARS
    return _json_chars(b)


def _json_chars(value: object) -> int:
    """Serialised size; orjson refuses to write past 254 levels what it reads up to 1,024 deep."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return len(repr(value)) if not isinstance(value, (list, dict)) else 2048


def _units(req: dict[str, Any]) -> list[tuple[Any, int, str | None]]:
    """The prompt in cache order (tools, system, messages) as (unit, chars, ttl-if-breakpoint)."""
    units: list[tuple[Any, int, str | None]] = []

    def ttl_of(x: Any) -> str | None:
        if isinstance(x, dict):
            cc = x.get("cache_control")
            if isinstance(cc, dict):
                return "1h" if cc.get("ttl") == "1h" else "5m"
        return None

    tools = req.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            units.append((tool, _json_chars(tool), ttl_of(tool)))
    system = req.get("system")
    if isinstance(system, str):
        units.append((system, len(system), None))
    elif isinstance(system, list):
        for blk in system:
            units.append((blk, block_chars(blk), ttl_of(blk)))
    for msg in req.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        role = msg.get("role")
        if isinstance(content, str):
            units.append(((role, content), len(content), None))
        elif isinstance(content, list):
            for blk in content:
                units.append(((role, blk), block_chars(blk), ttl_of(blk)))
    top = req.get("cache_control")
    if isinstance(top, dict) and units:
        # request-level automatic caching: breakpoint on the last block
        u, c, _ = units[-1]
        units[-1] = (u, c, "1h" if top.get("ttl") == "1h" else "5m")
    return units


def count_input_chars(req: dict[str, Any]) -> int:
    return sum(c for _, c, _ in _units(req))


def tokens_of(chars: int, tokenizer: int = 1) -> int:
    """Input tokens for ``chars`` characters: ``ceil(chars / 4)`` on the first tokenizer
    generation, ``ceil(chars * 1.3 / 4)`` (exactly ``ceil(13 * chars / 40)``) on the newer one
    (``tokenizer = 2``: Opus 4.7 and later, Sonnet 5+, Haiku 5.5, Fable/Mythos), which counts
    about 30% more tokens for the same text."""
    if tokenizer >= 2:
        return (13 * chars + 39) // 40
    return (chars + 3) // 4


def prefix_tokens(chars: int, tokenizer: int = 1) -> int:
    """Tokens of a cached prefix (rounded down, so a prefix never exceeds the whole prompt)."""
    return 13 * chars // 40 if tokenizer >= 2 else chars // 4


def input_tokens(req: dict[str, Any], tokenizer: int = 1) -> int:
    """What ``count_tokens`` answers, and ``input_tokens`` before caching: at least 1."""
    return max(1, tokens_of(count_input_chars(req), tokenizer))


class PromptCache:
    """Prefix hashes seen recently -> expiry (monotonic seconds).

    ``min_tokens`` None: each model's own minimum cacheable prompt (``min_cache_tokens`` in the
    registry, given to ``account``); a number overrides it for every model (0: no minimum)."""

    def __init__(self, min_tokens: int | None = None) -> None:
        self.entries: dict[bytes, float] = {}
        self.min_tokens = min_tokens

    def clear(self) -> None:
        self.entries.clear()

    def account(
        self, req: dict[str, Any], model: str, has_cc: bool, *, tokenizer: int = 1, min_tokens: int = 0
    ) -> tuple[int, int, int, int]:
        """(input_tokens, cache_creation_5m, cache_creation_1h, cache_read). A breakpoint whose
        prefix is shorter than the minimum cacheable prompt caches nothing (and is no error)."""
        floor = self.min_tokens if self.min_tokens is not None else min_tokens
        units = _units(req)
        total_chars = sum(c for _, c, _ in units)
        total = max(1, tokens_of(total_chars, tokenizer))
        if not has_cc:
            return total, 0, 0, 0
        now = time.monotonic()
        h = hashlib.blake2b(model.encode(), digest_size=16)
        cum = 0
        bps: list[tuple[bytes, int, str]] = []  # (prefix hash, prefix tokens, ttl)
        for unit, chars, ttl in units:
            try:
                h.update(orjson.dumps(unit, option=orjson.OPT_SORT_KEYS))
            except orjson.JSONEncodeError:  # past orjson's 254 levels: keyed by its size alone
                h.update(b"\0deep%d" % chars)
            cum += chars
            if ttl is not None:
                toks = prefix_tokens(cum, tokenizer)
                if toks >= floor and toks > 0:
                    bps.append((h.digest(), toks, ttl))
        if not bps:
            return total, 0, 0, 0
        entries = self.entries
        hit = -1
        for i in range(len(bps) - 1, -1, -1):
            exp = entries.get(bps[i][0])
            if exp is not None and exp > now:
                hit = i
                break
        read = bps[hit][1] if hit >= 0 else 0
        c5 = c1 = 0
        prev = read
        for i, (key, toks, ttl) in enumerate(bps):
            life = 3600.0 if ttl == "1h" else 300.0
            if i > hit:
                seg = toks - prev
                if ttl == "1h":
                    c1 += seg
                else:
                    c5 += seg
                prev = toks
            # writing or reading refreshes the entry's lifetime
            old = entries.get(key, 0.0)
            entries[key] = max(old, now + life)
        if len(entries) > 200_000:
            for k in [k for k, e in entries.items() if e <= now][:100_000]:
                del entries[k]
            if len(entries) > 200_000:
                entries.clear()
        return max(0, total - read - c5 - c1), c5, c1, read


# --------------------------------------------------------------------------------------------
# directives

_DIRECTIVE = re.compile(r"sim:replay\s+([A-Za-z0-9_.\-]+)|sim:([a-z_]+)(?:=(\S+))?")


def last_user_text(messages: list[Any]) -> tuple[str, bool]:
    """(text of the last user message, whether it carries tool_result blocks)."""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            c = msg.get("content")
            if isinstance(c, str):
                return c, False
            if isinstance(c, list):
                texts = []
                has_tr = False
                for b in c:
                    if isinstance(b, dict):
                        t = b.get("type")
                        if t == "text" and isinstance(b.get("text"), str):
                            texts.append(b["text"])
                        elif t == "tool_result":
                            has_tr = True
                return "\n".join(texts), has_tr
            return "", False
    return "", False


def parse_directives(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if "sim:" not in text:
        return out
    for m in _DIRECTIVE.finditer(text):
        if m.group(1):
            out.setdefault("replay", m.group(1))
        else:
            out.setdefault(m.group(2), m.group(3) or "")
    return out


def reply_delay(timing: tuple[float, float, float], output_tokens: int) -> float:
    """Seconds before a non-streamed reply: latency, time to first token, then its tokens at the rate."""
    latency, ttft, tps = timing
    return latency + ttft + (output_tokens / tps if tps > 0 else 0.0)


def directive_int(d: dict[str, str], key: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    try:
        return int(float(v))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# tool input from a JSON schema


def _gen_value(schema: Any, name: str, rng: random.Random, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > 6:
        return "example"
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[rng.randrange(len(enum))]
    if "default" in schema and rng.random() < 0.3:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        opts = schema.get(key)
        if isinstance(opts, list) and opts:
            for o in opts:
                if isinstance(o, dict) and o.get("type") != "null":
                    return _gen_value(o, name, rng, depth + 1)
            return None
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t is None:
        t = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if t == "object":
        props = schema.get("properties") or {}
        req = schema.get("required")
        keys = [k for k in req if isinstance(k, str)] if isinstance(req, list) else []
        if not keys and isinstance(props, dict) and props:
            keys = [next(iter(props))]
        return {
            k: _gen_value(props.get(k, {}) if isinstance(props, dict) else {}, k, rng, depth + 1)
            for k in keys
        }
    if t == "array":
        n = schema.get("minItems")
        n = n if isinstance(n, int) and n > 0 else 1
        n = min(n, 3)
        return [_gen_value(schema.get("items", {}), name, rng, depth + 1) for _ in range(n)]
    if t == "integer":
        lo = schema.get("minimum", 1)
        hi = schema.get("maximum", lo + 99 if isinstance(lo, (int, float)) else 100)
        lo = int(lo) if isinstance(lo, (int, float)) else 1
        hi = int(hi) if isinstance(hi, (int, float)) else lo + 99
        return rng.randint(lo, max(lo, min(hi, lo + 1000)))
    if t == "number":
        lo = schema.get("minimum", 0)
        lo = float(lo) if isinstance(lo, (int, float)) else 0.0
        return round(lo + rng.random() * 100, 2)
    if t == "boolean":
        return rng.random() < 0.5
    if t == "null":
        return None
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2025-06-01T12:00:00Z"
    if fmt == "date":
        return "2025-06-01"
    if fmt in ("uri", "url"):
        return "https://example.com/" + name
    if fmt == "email":
        return "user@example.com"
    n = rng.randint(1, 4)
    words = "".join(take_tokens(rng.randrange(TABLE_SIZE), n)).strip().rstrip(".")
    maxlen = schema.get("maxLength")
    if isinstance(maxlen, int) and maxlen > 0:
        words = words[:maxlen]
    minlen = schema.get("minLength")
    if isinstance(minlen, int) and len(words) < minlen:
        words = words + "x" * (minlen - len(words))
    return words


def structured_output_schema(req: dict[str, Any]) -> dict[str, Any] | None:
    """``output_config.format: {"type": "json_schema", "schema": …}``: the schema the answer's
    text follows (structured outputs), else None."""
    oc = req.get("output_config")
    fmt = oc.get("format") if isinstance(oc, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("schema")
    return schema if isinstance(schema, dict) else None


def tool_input(tool: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    schema = tool.get("input_schema")
    v = _gen_value(schema if isinstance(schema, dict) else {"type": "object"}, "input", rng, 0)
    return v if isinstance(v, dict) else {"value": v}


def scripted_input(encoded: str) -> dict[str, Any]:
    """``sim:input=…``: the first call's input, a JSON object in unpadded base64url."""
    try:
        value = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, binascii.Error):
        raise invalid("sim: input must be a base64url-encoded JSON object") from None
    if not isinstance(value, dict):
        raise invalid("sim: input must be a base64url-encoded JSON object")
    return value


def split_json(s: str, rng: random.Random) -> list[str]:
    """partial_json pieces: first always "", then arbitrary cuts of 1-12 characters."""
    pieces = [""]
    i = 0
    n = len(s)
    while i < n:
        k = rng.randint(1, 12)
        pieces.append(s[i : i + k])
        i += k
    return pieces


def signature(rng: random.Random) -> str:
    n = rng.randrange(180, 420, 3)
    return base64.b64encode(b"\x12" + rng.randbytes(n - 1)).decode()


# --------------------------------------------------------------------------------------------
# the plan

# block kinds
THINKING, TEXT, TOOL = 0, 1, 2


class Plan:
    __slots__ = (
        "blocks",
        "cache_read",
        "cc1",
        "cc5",
        "fetches",
        "geo",
        "hidden",
        "input_tokens",
        "iterations",
        "model",
        "output_tokens",
        "searches",
        "seed",
        "speed",
        "stop_reason",
        "stop_sequence",
        "tier",
    )
    model: str
    blocks: list[tuple[Any, ...]]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    cc5: int
    cc1: int
    cache_read: int
    output_tokens: int
    seed: int

    def __init__(self) -> None:
        self.blocks: list[tuple] = []
        self.stop_sequence: str | None = None
        self.speed = "standard"
        self.geo = "global"
        self.searches: int | None = None  # server_tool_use counts (None: no server tool offered)
        self.fetches: int | None = None
        self.iterations: list[dict[str, Any]] | None = None
        self.hidden = 0  # thinking tokens billed but not shown (display "omitted")
        self.tier = "standard"  # usage.service_tier ("batch" for a Message Batch item)


def plan_response(
    req: dict[str, Any],
    model: str,
    seed: int,
    directives: dict[str, str],
    has_tool_result: bool,
    usage: tuple[int, int, int, int],
    shape: Any = None,
) -> Plan:
    """``shape`` (``_rules.Shape``): the request with the model's defaults filled in (thinking on
    by default, its display, speed, region, server tools); None reads the request alone."""
    p = Plan()
    p.model = model
    p.seed = seed
    p.input_tokens, p.cc5, p.cc1, p.cache_read = usage
    searched = web_searches(req, directives)  # sim:searches=N, at most the tool's max_uses
    p.searches = searched or None
    budget: int = req["max_tokens"]
    used = 0
    stop = "end_turn"

    # thinking
    thinking = req.get("thinking")
    if shape is not None:
        thinking_on, display, bt = shape.thinking_on, shape.display, shape.budget
        p.speed, p.geo = shape.speed, shape.inference_geo
        if shape.web_search:
            p.searches = directive_int(directives, "web_search") or searched or 0
        if shape.web_fetch:
            p.fetches = directive_int(directives, "web_fetch") or 0
    else:
        thinking_on = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
        display = thinking.get("display") if isinstance(thinking, dict) else None
        bt = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if thinking_on:
        rng = random.Random(seed ^ 0x7417)
        cap = bt if isinstance(bt, int) and bt > 0 else budget // 2
        n = directive_int(directives, "thinking")
        if n is None:
            n = 20 + (seed >> 7) % 41
        n = max(1, min(n, cap, budget))
        limit = min(cap, budget)
        if display == "omitted":
            # the API bills the whole thinking and shows none of it: an empty block and its signature
            pieces: list[str] = []
            p.hidden = min(n, limit)
            used += p.hidden
        else:
            pieces = group_tokens(take_tokens(seed >> 3, n), seed >> 5)
            if ctok("".join(pieces)) > limit:
                pieces = _cut_pieces(pieces, 4 * limit)
            used += ctok("".join(pieces))
        p.blocks.append((THINKING, pieces, signature(rng)))
    if shape is not None and shape.advisor is not None:
        # the advisor's pass is its own iteration, billed at its model's rates (usage.iterations)
        p.iterations = [
            {
                "type": "advisor_message",
                "model": shape.advisor,
                "input_tokens": p.input_tokens + p.cache_read + p.cc5 + p.cc1,
                "output_tokens": 10 + (seed >> 13) % 31,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            }
        ]

    # tools?
    tools = req.get("tools")
    raw_choice = req.get("tool_choice")
    tool_choice: dict[str, Any] = raw_choice if isinstance(raw_choice, dict) else {}
    tc_type = tool_choice.get("type", "auto")
    custom = (
        [t for t in tools if isinstance(t, dict) and "input_schema" in t and isinstance(t.get("name"), str)]
        if isinstance(tools, list)
        else []
    )
    want_tools = (
        bool(custom)
        and tc_type != "none"
        and (not has_tool_result or tc_type in ("any", "tool"))
        and (directive_int(directives, "tools") != 0 or tc_type in ("any", "tool"))
    )
    script = scripted_tool(custom, directives) if want_tools else None
    if script == "none":
        want_tools = False
    elif script is not None:
        return _scripted_tool_plan(p, script, used)
    if want_tools:
        rng = random.Random(seed ^ 0x7001)
        if tc_type == "tool" or "tool" in directives:
            wanted = tool_choice.get("name") if tc_type == "tool" else directives["tool"]
            named = [t for t in custom if t.get("name") == wanted]
            if not named:
                raise invalid(f"tool_choice: tool `{wanted}` not found in `tools`")
            chosen_first = named[0]
        else:
            chosen_first = custom[seed % len(custom)]
        n_calls = directive_int(directives, "tools") or 1
        if tool_choice.get("disable_parallel_tool_use") or tc_type == "tool":
            n_calls = 1
        n_calls = max(1, min(n_calls, 16))
        # an optional short preamble (auto only)
        if tc_type == "auto" and (seed >> 11) % 2 == 0:
            pre = f"I'll use the {chosen_first['name']} tool to help with this."
            pieces = _word_pieces(pre)
            if used + ctok(pre) > budget:
                k = max(0, budget - used)
                pre = pre[: 4 * k]
                pieces = _word_pieces(pre)
                p.blocks.append((TEXT, pieces))
                p.output_tokens = used + ctok(pre)
                p.stop_reason = "max_tokens"
                return p
            used += ctok(pre)
            p.blocks.append((TEXT, pieces))
        start = custom.index(chosen_first)
        calls = 0
        for i in range(n_calls):
            tool = chosen_first if i == 0 else custom[(start + i) % len(custom)]
            inp = (
                scripted_input(directives["input"])
                if i == 0 and "input" in directives
                else tool_input(tool, rng)
            )
            js = json.dumps(inp, ensure_ascii=False)
            cost = ctok(js)
            if used + cost > budget:
                break
            used += cost
            calls += 1
            p.blocks.append((TOOL, tool_id(), tool["name"], inp, split_json(js, rng)))
        if calls:
            p.output_tokens = used
            p.stop_reason = "tool_use"
            return p
        # nothing fit: fall through to a truncated text answer
        stop = "max_tokens"

    # text answer
    n = directive_int(directives, "tokens")
    if n is None:
        n = 20 + seed % 41
    n = max(1, n)
    remaining = max(0, budget - used)
    schema = structured_output_schema(req)
    if schema is not None:  # structured outputs: the answer is JSON its schema accepts, compact
        js = json.dumps(_gen_value(schema, "output", random.Random(seed ^ 0x750F), 0), separators=(",", ":"))
        pieces = split_json(js, random.Random(seed ^ 0x750E))[1:]  # cut to max_tokens below
    else:
        if n > remaining:
            n = remaining
            stop = "max_tokens"
        tokens = take_tokens(seed, n)
        pieces = group_tokens(tokens, seed >> 9) if n else []
    stops = req.get("stop_sequences")
    if isinstance(stops, list) and stops and pieces:
        stops = [s for s in stops if isinstance(s, str) and s]
        if stops and "stop" in directives:
            # forced: cut halfway and report the first stop sequence
            pieces = pieces[: max(1, len(pieces) // 2)]
            stop, p.stop_sequence = "stop_sequence", stops[0]
        elif stops:
            text = "".join(pieces)
            best = -1
            which = None
            for s in stops:
                idx = text.find(s)
                if idx >= 0 and (best < 0 or idx < best):
                    best, which = idx, s
            if which is not None:
                pieces = _cut_pieces(pieces, best)
                stop, p.stop_sequence = "stop_sequence", which
    if used + ctok("".join(pieces)) > budget:
        pieces = _cut_pieces(pieces, 4 * max(0, budget - used))
        stop, p.stop_sequence = "max_tokens", None
    used += ctok("".join(pieces))
    p.blocks.append((TEXT, pieces))
    p.output_tokens = used
    p.stop_reason = stop
    return p


def scripted_tool(custom: list[dict[str, Any]], directives: dict[str, str]) -> Any:
    """``sim:tool=NAME sim:tool_input={"json":"without spaces"}`` scripts the call a
    test needs, e.g. a client's file-reading tool on a file it created; ``sim:tool=none`` answers
    in text although tools were offered. None: no script (or no offered tool of that name)."""
    name = directives.get("tool")
    if not name:
        return None
    if name == "none":
        return "none"
    if "tool_input" not in directives:
        return None  # ``sim:tool=NAME`` alone (or with base64 ``sim:input``): plan_response names the tool
    tool = next((t for t in custom if t.get("name") == name), None)
    if tool is None:
        return None
    raw = directives.get("tool_input")
    try:
        inp = json.loads(raw) if raw else {}
    except ValueError:
        raise invalid(f"sim: tool_input is not JSON: {raw!r}") from None
    if not isinstance(inp, dict):
        raise invalid("sim: tool_input must be a JSON object")
    return tool, inp


def _scripted_tool_plan(p: Plan, script: tuple[dict[str, Any], dict[str, Any]], used: int) -> Plan:
    tool, inp = script
    js = json.dumps(inp, ensure_ascii=False)
    p.blocks.append((TOOL, tool_id(), tool["name"], inp, split_json(js, random.Random(p.seed ^ 0x7002))))
    p.output_tokens = used + ctok(js)
    p.stop_reason = "tool_use"
    return p


def _word_pieces(s: str) -> list[str]:
    words = s.split(" ")
    out = []
    for i in range(0, len(words), 3):
        chunk = " ".join(words[i : i + 3])
        out.append(chunk if i == 0 else " " + chunk)
    return [x for x in out if x]


def _cut_pieces(pieces: list[str], at: int) -> list[str]:
    out = []
    pos = 0
    for piece in pieces:
        if pos + len(piece) <= at:
            out.append(piece)
            pos += len(piece)
        else:
            if at > pos:
                out.append(piece[: at - pos])
            break
    return out


# --------------------------------------------------------------------------------------------
# rendering


def _message_iteration(p: Plan, output_tokens: int) -> dict[str, Any]:
    return {
        "type": "message",
        "input_tokens": p.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": p.cc5 + p.cc1,
        "cache_read_input_tokens": p.cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": p.cc5, "ephemeral_1h_input_tokens": p.cc1},
    }


def _usage_extra(p: Plan, output_tokens: int) -> dict[str, Any]:
    """The fields every usage object carries after the token counts (BetaUsage, December 2026)."""
    out: dict[str, Any] = {
        "server_tool_use": {"web_search_requests": p.searches or 0, "web_fetch_requests": p.fetches or 0},
        "service_tier": p.tier,
        "inference_geo": p.geo,
        "speed": p.speed,
    }
    if p.iterations is not None:
        # the top-level counts are the message iterations'; the advisor's come beside them
        out["iterations"] = [_message_iteration(p, output_tokens), *p.iterations]
    return out


def web_searches(req: dict[str, Any], directives: dict[str, str]) -> int:
    """``sim:searches=N``: the searches a web search tool made, at most its ``max_uses``."""
    n = directive_int(directives, "searches")
    if not n:
        return 0
    for tool in req.get("tools") or ():
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search"):
            cap = tool.get("max_uses")
            return min(n, cap) if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0 else n
    return 0


def _usage_full(p: Plan, output_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": p.input_tokens,
        "cache_creation_input_tokens": p.cc5 + p.cc1,
        "cache_read_input_tokens": p.cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": p.cc5, "ephemeral_1h_input_tokens": p.cc1},
        "output_tokens": output_tokens,
        **_usage_extra(p, output_tokens),
    }
    return usage


def render_message(p: Plan, msg_id: str) -> bytes:
    content: list[dict[str, Any]] = []
    for blk in p.blocks:
        kind = blk[0]
        if kind == TEXT:
            content.append({"type": "text", "text": "".join(blk[1])})
        elif kind == THINKING:
            content.append({"type": "thinking", "thinking": "".join(blk[1]), "signature": blk[2]})
        else:
            content.append(
                {
                    "type": "tool_use",
                    "id": blk[1],
                    "name": blk[2],
                    "input": blk[3],
                    "caller": {"type": "direct"},
                }
            )
    return orjson.dumps(
        {
            "model": p.model,
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "content": content,
            "stop_reason": p.stop_reason,
            "stop_sequence": p.stop_sequence,
            "usage": _usage_full(p, p.output_tokens),
        }
    )


PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def render_frames(p: Plan, msg_id: str) -> tuple[list[bytes], list[int]]:
    """SSE frames plus, per frame, the number of output tokens it carries (for pacing)."""
    frames: list[bytes] = []
    costs: list[int] = []
    pad_i = p.seed & 4095
    dumps = orjson.dumps

    def frame(name: bytes, body: bytes, cost: int = 0) -> None:
        nonlocal pad_i
        frames.append(b"event: " + name + b"\ndata: " + body[:-1] + SPACES[PADS[pad_i & 4095]] + b"}\n\n")
        pad_i += 1
        costs.append(cost)

    frame(
        b"message_start",
        dumps(
            {
                "type": "message_start",
                "message": {
                    "model": p.model,
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": _usage_full(p, 1),
                },
            }
        ),
    )
    for idx, blk in enumerate(p.blocks):
        kind = blk[0]
        ib = b"%d" % idx
        start: dict[str, Any]
        if kind == TEXT:
            start = {"type": "text", "text": ""}
        elif kind == THINKING:
            start = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            start = {
                "type": "tool_use",
                "id": blk[1],
                "name": blk[2],
                "input": {},
                "caller": {"type": "direct"},
            }
        frame(
            b"content_block_start",
            b'{"type":"content_block_start","index":' + ib + b',"content_block":' + dumps(start) + b"}",
        )
        if idx == 0:
            frames.append(PING)
            costs.append(0)
        head = b'{"type":"content_block_delta","index":' + ib + b',"delta":'
        if kind in (TEXT, THINKING):
            delta = head + (
                b'{"type":"text_delta","text":' if kind == TEXT else b'{"type":"thinking_delta","thinking":'
            )
            for piece in blk[1]:
                frame(b"content_block_delta", delta + dumps(piece) + b"}}", ctok(piece))
            if kind == THINKING:
                frame(
                    b"content_block_delta",
                    head + b'{"type":"signature_delta","signature":' + dumps(blk[2]) + b"}}",
                )
        else:
            for piece in blk[4]:
                frame(
                    b"content_block_delta",
                    head + b'{"type":"input_json_delta","partial_json":' + dumps(piece) + b"}}",
                    (len(piece) + 3) // 4,
                )
        frame(b"content_block_stop", b'{"type":"content_block_stop","index":' + ib + b"}")
    frame(
        b"message_delta",
        dumps(
            {
                "type": "message_delta",
                "delta": {"stop_reason": p.stop_reason, "stop_sequence": p.stop_sequence},
                "usage": {
                    "input_tokens": p.input_tokens,
                    "cache_creation_input_tokens": p.cc5 + p.cc1,
                    "cache_read_input_tokens": p.cache_read,
                    "output_tokens": p.output_tokens,
                    **_usage_extra(p, p.output_tokens),
                },
            }
        ),
    )
    frame(b"message_stop", b'{"type":"message_stop"}')
    return frames, costs


def error_frame(
    request_id: str, etype: str = "overloaded_error", message: str = "Overloaded", pad: int = 1
) -> bytes:
    body = orjson.dumps(
        {
            "type": "error",
            "error": {"details": None, "type": etype, "message": message},
            "request_id": request_id,
        }
    )
    return b"event: error\ndata: " + body[:-1] + SPACES[pad & 15] + b"}\n\n"
