"""Bounds on what a client controls: request shape checks, log-safe values, bounded caches.

Every check here runs before the gateway spends anything on the value (a lookup, a
cache entry, a log line), so an attacker-chosen input costs at most its cap. The
request path calls these as one-liners (the pipeline owns the order, not the checks).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ethereal import _native
from ethereal.errors import invalid_request

if TYPE_CHECKING:
    from ethereal.models import Model

# Anthropic's model ids are under 40 characters; 256 leaves room for provider prefixes
# and operator aliases while keeping a hostile name from reaching the catalog, the
# limiter, the usage table or the log.
MAX_MODEL_NAME = 256
# A logged client value is cut to this many characters (the 5 MB model name that grew
# the log by 100 MB becomes one short line).
LOG_VALUE_CHARS = 200
# The deepest body a translating route (OpenAI chat, Responses) accepts. What it echoes or
# re-serialises (metadata, tool and text.format schemas, tool-call arguments) is written by
# orjson, which stops at 254 levels while it reads 1,024: a body held to this depth can always
# be written back, with room for the levels a translation or an event wrapper adds.
MAX_ECHO_DEPTH = 128


def check_model_name(name: object, *, param: str = "model") -> str:
    """The client's model name, or 400 when it is not a usable string (before any lookup)."""
    if not isinstance(name, str) or not name:
        raise invalid_request(
            f"{param}: Field required" if name is None else f"{param}: must be a non-empty string",
            param=param,
        )
    if len(name) > MAX_MODEL_NAME:
        raise invalid_request(
            f"{param}: must be at most {MAX_MODEL_NAME} characters (got {len(name)})", param=param
        )
    if not name.isprintable():
        # no model id has a control character; such a name would reach logs, metrics and the
        # store (PostgreSQL refuses NUL in text) as the client wrote it
        raise invalid_request(f"{param}: must not contain control characters", param=param)
    return name


def validate_messages_body(data: dict[str, Any], *, need_max_tokens: bool) -> str:
    """Check what the gateway itself relies on in a Messages body; returns the client's model name
    (``/v1/messages``, count_tokens and each batch item: one rule, no route imported for it)."""
    model = check_model_name(data.get("model"))
    if need_max_tokens:
        max_tokens = data.get("max_tokens")
        if max_tokens is None:
            raise invalid_request("max_tokens: Field required", param="max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise invalid_request("max_tokens: must be a positive integer", param="max_tokens")
    messages = data.get("messages")
    if messages is None:
        raise invalid_request("messages: Field required", param="messages")
    if not isinstance(messages, list):
        raise invalid_request("messages: must be an array", param="messages")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or "content" not in message
        ):
            raise invalid_request(
                f"messages.{i}: each message needs a role and content", param=f"messages.{i}"
            )
    return model


def check_body_shape(body: bytes, max_depth: int = _native.MAX_JSON_DEPTH, data: Any = None) -> None:
    """400 for a body whose top-level object repeats a key, or that nests past ``max_depth``
    (orjson's limit unless the route asks for less: ``MAX_ECHO_DEPTH``).

    A repeated key (``"model"`` twice) would be priced and authorised on the value the
    gateway's parser keeps while the upstream's parser may keep the other. Call it on a
    body that already parsed as JSON; one native pass, no Python objects. Past the depth,
    the 400 names the field that nests too deep when ``data`` (the parsed body) is given.
    """
    try:
        depth, duplicate, _ = _native.json_shape(body)
    except ValueError:
        raise invalid_request("request body is not valid JSON") from None
    if duplicate is not None:
        raise invalid_request(f"request body repeats the top-level key {clip(duplicate, 64)!r}")
    if depth > max_depth:
        path = (
            deep_field(data, max_depth)
            if isinstance(data, dict) and max_depth < _native.MAX_JSON_DEPTH
            else None
        )
        if path is not None:  # param: the top-level field; the message goes a few levels further
            field = path.partition(".")[0].partition("[")[0]
            raise invalid_request(f"{path}: nested more than {max_depth} levels deep", param=field)
        raise invalid_request(f"request body is nested {depth} levels deep; at most {max_depth} are accepted")


def nests_past(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) is more than ``limit`` containers deep; iterative, stops early."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return False


def deep_field(data: dict[str, Any], limit: int, levels: int = 3) -> str | None:
    """The path (``tools[3].parameters``, ``metadata.a.b``) of the field that makes ``data`` (the
    body, level 1) nest past ``limit``, named down to ``levels`` components; None if none does."""
    path = ""
    value: Any = data
    budget = limit
    for _ in range(levels):
        budget -= 1
        items = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        )
        for key, child in items:
            if nests_past(child, budget):
                path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
                value = child
                break
        else:
            break
    return clip(path, 128) if path else None


_ID = re.compile(r"[A-Za-z0-9_-]+")


def well_formed_id(value: str, prefix: str, max_len: int) -> bool:
    """Whether a client-given id (a batch's, a usage record's) can name anything: ``prefix`` then
    ASCII letters, digits, ``_`` and ``-`` only, at most ``max_len`` characters. Checked before
    any lookup: PostgreSQL refuses a text parameter holding a NUL (a 500), and no id holds one."""
    return (
        len(value) <= max_len and value.startswith(prefix) and _ID.fullmatch(value, len(prefix)) is not None
    )


def refuse_nul(value: Any, where: str = "request body") -> None:
    """400 when any string of a parsed JSON value (a key or a value, at any depth) holds a NUL:
    PostgreSQL refuses NUL in text and in jsonb, so an admin write carrying one would fail in the
    store. For small bodies (the admin API's): one walk over the value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise invalid_request(f"{where}: a string holds a NUL character (\\u0000)")
        elif isinstance(item, dict):
            for key, inner in item.items():
                if "\x00" in key:
                    raise invalid_request(f"{where}: a key holds a NUL character (\\u0000)")
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def splice_top_level(body: bytes, key: str, value: bytes) -> bytes | None:
    """``body`` with the top-level ``key``'s value replaced by the JSON ``value``, every other
    byte kept; None when the body has no such key. For a body ``check_body_shape`` passed
    (no repeated key), so the one occurrence found is the one every parser reads."""
    try:
        _, _, span = _native.json_shape(body, key)
    except ValueError:
        return None
    if span is None:
        return None
    return body[: span[0]] + value + body[span[1] :]


# Where the estimate decides something (budget admission, plan windows, batch reservations) it
# errs safe: the estimate plus ESTIMATE_MARGIN (ratio, tokens). Sized by
# scripts/estimator_accuracy.py so that estimate + margin >= the upstream's count for at least
# 99 % of the recorded requests (fixtures/, each for its own model) and of the simulated
# upstream's counts for the same bodies (its documented rule: ceil(chars / 4), x1.3 on the newer
# tokenizer; python/ethereal/sim/_gen.py). accuracy.json records the coverage; a test holds it.
ESTIMATE_MARGIN = (0.22, 16)


def estimate_args(model: Model | None) -> dict[str, Any]:
    """The estimator's per-model arguments (tokenizer, image tier, tool-use prompt) from the
    registry's rules; the earlier generation's when the model is not described."""
    if model is None:
        return {}
    return model.rules.estimate_kwargs  # shared: callers only unpack it


def estimate_input_tokens(body: bytes, model: Model | None = None) -> int:
    """The native input estimate for ``model``; a body it cannot read is the client's 400, never
    a 500. The plain estimate: what ``count_tokens`` answers when no upstream can."""
    try:
        return _native.estimate_tokens(body, **estimate_args(model))
    except ValueError as exc:
        raise invalid_request(str(exc)) from None


def with_margin(estimate: int) -> int:
    """An estimate raised by ``ESTIMATE_MARGIN``: what admission reserves."""
    ratio, tokens = ESTIMATE_MARGIN
    return estimate + -(-int(estimate * ratio * 1000) // 1000) + tokens


def admission_input_tokens(body: bytes, model: Model | None = None) -> int:
    """The input tokens budget admission and rate windows reserve: the estimate plus the margin."""
    return with_margin(estimate_input_tokens(body, model))


def client_address(scope: dict[str, Any] | Any, trusted: str) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy (``trusted``: a
    comma-separated list or ``*``), the nearest address in ``X-Forwarded-For`` that is not one.
    Only the routes that need an address call this (the request path never does)."""
    client = scope.get("client") or ("unknown", 0)
    host = str(client[0])
    allowed = {t.strip() for t in trusted.split(",") if t.strip()}
    if "*" not in allowed and host not in allowed:
        return host
    forwarded = b",".join(v for k, v in scope.get("headers", ()) if k == b"x-forwarded-for")
    hops = [h.strip() for h in forwarded.decode("latin-1").split(",") if h.strip()][-32:]
    for hop in reversed(hops):  # nearest first: the proxy appended the address it saw
        if "*" in allowed or hop not in allowed:
            return clip(hop, 64)
    return clip(hops[0], 64) if hops else host


def clip(value: object, limit: int = LOG_VALUE_CHARS) -> str:
    """A client-provided value made safe to log: at most ``limit`` characters, marked when cut."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text)} chars]"


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """A least-recently-used map bounded in entries and in (caller-estimated) bytes.

    For caches keyed by client input: whatever the keys, it never holds more than
    ``max_entries`` items or ``max_bytes`` of them; the oldest go first.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, size: int = 1) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes:
            return  # larger than the whole cache: not cached at all
        self._items[key] = (value, size)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped

    def pop(self, key: K) -> V | None:
        found = self._items.pop(key, None)
        if found is None:
            return None
        self.bytes -= found[1]
        return found[0]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


class FailureThrottle:
    """At most ``limit`` failed attempts per ``window`` seconds per client address, in this process.

    ``wait`` before checking a secret: while an address has used up its failures it is refused
    (right secret or not) until the oldest of them leaves the window; ``fail`` after a wrong one.
    Client addresses are hostile input: at most ``max_clients`` are remembered (the least recently
    failing forgotten first), each with at most ``limit`` timestamps.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def wait(self, client: str) -> float:
        """0 when ``client`` may try; else the seconds until it may."""
        failures = self._failures.get(client)
        if failures is None:
            return 0.0
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        return max(0.001, failures[0] + self.window - now)

    def fail(self, client: str) -> None:
        failures = self._failures.get(client)
        if failures is None:
            failures = self._failures[client] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(client)
        failures.append(self.clock())
