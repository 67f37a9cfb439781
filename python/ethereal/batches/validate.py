"""Checking a batch at create, item by item, as ``POST /v1/messages`` would check each request.

Everything the gateway can refuse is refused here, before anything goes upstream: the whole
batch is answered 400 (403 for a model the key may not use) naming the first bad item's index,
so a client never pays for a batch that was half its own mistakes. What passes goes upstream
as the client's bytes; the only edit is an aliased ``model`` spliced to its canonical id.

The body is read from its raw bytes one item at a time (``_items``): a 250 MB batch never
becomes a tree of Python objects, only its current item does, and every byte of it is checked
to be JSON on the way (items, separators, the object around the array). An item, or its
``params``, that repeats a key is refused like a repeated top-level key: the gateway and the
upstream could read different values.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ethereal import _native
from ethereal.errors import GatewayError, invalid_request
from ethereal.guards import clip, estimate_args, validate_messages_body, with_margin
from ethereal.metering.reserve import ReserveConfig, batch_item
from ethereal.models import Model, Registry

_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_WS = re.compile(rb"[ \t\r\n]*")
# the object around the array, as clients write it: only "requests" in it
_PREFIX = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"requests"[ \t\r\n]*:[ \t\r\n]*')
_SUFFIX = re.compile(rb"[ \t\r\n]*\}[ \t\r\n]*")
_FIRST_WINDOW = 4096
_AFTER_DOCUMENT = "unexpected content after document"
_YIELD_EVERY = 32  # items


@dataclass(slots=True)
class CheckedBatch:
    """A batch that passed: its items' custom_ids, models, and the estimate held against the budget."""

    count: int = 0
    models: set[str] = field(default_factory=set)  # canonical ids (or the client's name when unknown)
    aliases: dict[str, str] = field(default_factory=dict)  # client name -> canonical id, to splice
    estimated_tokens: int = 0
    estimated_micro: int = 0
    # (start, end) byte span in the body of each aliased item's model value, and the canonical id's JSON
    splices: list[tuple[int, int, bytes]] = field(default_factory=list)


class _Item:
    """One item of the array: its index, where it starts in the body, its bytes, and what it parses to."""

    __slots__ = ("data", "index", "raw", "start")

    def __init__(self, index: int, start: int, raw: bytes, data: Any) -> None:
        self.index, self.start, self.raw, self.data = index, start, raw, data


def _refuse(index: int, message: str, status: int = 400, type_: str | None = None) -> GatewayError:
    return GatewayError(status, f"requests.{index}: {message}", type=type_, param=f"requests.{index}")


def _requests_span(body: bytes) -> tuple[int, int]:
    """The byte span of the ``requests`` array of a body not in the usual ``{"requests": [...]}``
    form; 400 for one that is not such an object. One native pass over the whole body (balance,
    depth, a repeated top-level key), then the bytes around the array parsed on their own."""
    if not body.strip():
        raise invalid_request("request body is empty: expected a JSON object")
    try:
        depth, duplicate, span = _native.json_shape(body, "requests")
    except ValueError:
        raise invalid_request("request body is not valid JSON") from None
    if duplicate is not None:
        raise invalid_request(f"request body repeats the top-level key {clip(duplicate, 64)!r}")
    if depth > _native.MAX_JSON_DEPTH:
        raise invalid_request(
            f"request body is nested {depth} levels deep; at most {_native.MAX_JSON_DEPTH} are accepted"
        )
    if span is None:
        if not body.lstrip().startswith(b"{"):
            raise invalid_request("request body must be a JSON object")
        raise invalid_request("requests: Field required", param="requests")
    start, end = span
    if body[start : start + 1] != b"[":
        raise invalid_request("requests: must be an array", param="requests")
    try:
        rest = orjson.loads(body[:start] + b"[]" + body[end:])
    except orjson.JSONDecodeError:
        raise invalid_request("request body is not valid JSON") from None
    if not isinstance(rest, dict):
        raise invalid_request("request body must be a JSON object")
    extra = set(rest) - {"requests"}
    if extra:
        raise invalid_request(f"{clip(min(extra), 64)}: Extra inputs are not permitted")
    return start, end


def _item_end(view: memoryview, pos: int, window: int, limit: int, index: int) -> int:
    """Where the JSON value starting at ``pos`` ends: orjson reads a window of the body, growing it
    until the value ends inside it; never more than ``limit`` bytes of it."""
    stop = len(view)
    while True:
        cut = min(stop, pos + window)
        while cut < stop and 0x80 <= view[cut] < 0xC0:  # never inside a UTF-8 sequence
            cut -= 1
        try:
            orjson.loads(view[pos:cut])
        except orjson.JSONDecodeError as exc:
            if exc.msg == _AFTER_DOCUMENT:
                doc = exc.doc
                return pos + (exc.pos if doc.isascii() else len(doc[: exc.pos].encode()))
            if cut >= stop:
                raise _refuse(index, f"not valid JSON ({exc.msg})") from None
            if cut - pos >= limit:
                raise _refuse(index, f"an item is at most {limit} bytes", 413) from None
            window = min(window * 4, limit + 1)
            continue
        return cut  # the value runs to the end of the body: what follows it is missing


class _Items:
    """The items of the array whose ``[`` is at ``start``, one at a time, each checked to be JSON;
    ``close`` is where the array's ``]`` is once they are all read. The array's end is found by
    reading it, never by a pass over the whole body (which would hold the interpreter's lock for
    the whole of it)."""

    def __init__(self, body: bytes, start: int, *, max_requests: int, max_item_bytes: int) -> None:
        self.body, self.start = body, start
        self.max_requests, self.max_item_bytes = max_requests, max_item_bytes
        self.close = -1

    def __iter__(self) -> Iterator[_Item]:
        body, limit = self.body, self.max_item_bytes
        view = memoryview(body)
        pos = _WS.match(body, self.start + 1).end()  # type: ignore[union-attr]
        window = _FIRST_WINDOW
        index = 0
        try:
            if body[pos : pos + 1] == b"]":
                self.close = pos
                return
            while True:
                if index >= self.max_requests:
                    raise invalid_request(
                        f"requests: a batch holds at most {self.max_requests} requests, got more",
                        param="requests",
                    )
                item_end = _item_end(view, pos, window, limit, index)
                raw = body[pos:item_end]
                if len(raw) > limit:
                    raise _refuse(index, f"an item is at most {limit} bytes", 413)
                yield _Item(index, pos, raw, orjson.loads(raw))
                window = max(_FIRST_WINDOW, 2 * len(raw))
                index += 1
                if not index % _YIELD_EVERY:
                    # give the interpreter's lock away: in a thread, the event loop waiting for it
                    # gets it now, not at the end of the switch interval (/healthz stays prompt)
                    time.sleep(0)
                pos = _WS.match(body, item_end).end()  # type: ignore[union-attr]
                following = body[pos : pos + 1]
                if following == b"]":
                    self.close = pos
                    return
                if following != b",":
                    raise _refuse(index - 1, "not valid JSON (expected ',' or ']' after it)")
                pos = _WS.match(body, pos + 1).end()  # type: ignore[union-attr]
                if body[pos : pos + 1] == b"]":
                    raise _refuse(index - 1, "not valid JSON (a trailing ',' after it)")
        finally:
            view.release()


def _params_of(item: _Item) -> tuple[bytes | None, int]:
    """The raw bytes of an item's ``params`` (None when it has none) and where they start in the
    item; 400 for an item, or ``params``, that repeats a key (one native pass each)."""
    depth, duplicate, span = _native.json_shape(item.raw, "params")
    if duplicate is not None:
        raise invalid_request(f"repeats the key {clip(duplicate, 64)!r}")
    if depth + 2 > _native.MAX_JSON_DEPTH:  # inside the body's object and array
        raise invalid_request(
            f"nested {depth + 2} levels deep in the body; at most {_native.MAX_JSON_DEPTH} are accepted"
        )
    if span is None:
        return None, 0
    params = item.raw[span[0] : span[1]]
    try:
        _, duplicate, _ = _native.json_shape(params)
    except ValueError:  # not an object: _check_params says so
        duplicate = None
    if duplicate is not None:
        raise invalid_request(f"params: repeats the key {clip(duplicate, 64)!r}")
    return params, span[0]


def _check_params(params: Any) -> str:
    """What the ``/v1/messages`` adapter checks of a body, plus no streaming (a batch has no stream)."""
    if not isinstance(params, dict):
        raise invalid_request("params: must be a Messages request object")
    model = validate_messages_body(params, need_max_tokens=True)
    if "stream" in params and params["stream"] is not False:
        raise invalid_request("stream: streaming is not supported in batch requests")
    return model


def check_batch(
    body: bytes,
    *,
    resolve: Callable[[str], tuple[str, Model | None]],
    max_requests: int,
    max_item_bytes: int = 32 * 1024 * 1024,
    registry: Registry | None = None,
    config: ReserveConfig | None = None,
    at: float | None = None,
) -> CheckedBatch:
    """Validate every item of the raw body, one at a time; the estimate is each item's reservation
    as a request would have it (metering/reserve.py: input at the dearest rate it can incur, cache
    writes and tiers included, documents by their pages, output at its whole max_tokens, server-tool
    fees at their max_uses; hard budgets assume no item costs more), at the batch rate of each
    model's card. ``resolve`` maps a client's model name to (canonical id, model) or raises as the
    pipeline does (403 for a model the key may not use); it is called once per distinct name. An
    item is at most ``max_item_bytes`` (a Messages request's own limit). CPU-heavy for a big batch:
    call it in a thread."""
    prefix = _PREFIX.match(body)
    usual = prefix is not None and body[prefix.end() : prefix.end() + 1] == b"["
    # the usual body is read as it goes; any other is first checked whole (and refused, mostly)
    start, end = (prefix.end(), -1) if usual else _requests_span(body)  # type: ignore[union-attr]
    items = _Items(body, start, max_requests=max_requests, max_item_bytes=max_item_bytes)
    out = CheckedBatch()
    seen: set[str] = set()
    resolved: dict[str, tuple[str, Model | None] | GatewayError] = {}
    est_tokens = 0
    est_micro = 0
    config = config or ReserveConfig()
    when = time.time() if at is None else at
    for entry in items:
        i, item = entry.index, entry.data
        try:
            if not isinstance(item, dict):
                raise invalid_request("must be an object with custom_id and params")
            raw_params, params_at = _params_of(entry)
            unknown = set(item) - {"custom_id", "params"}
            if unknown:
                raise invalid_request(f"{clip(min(unknown), 64)}: Extra inputs are not permitted")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                raise invalid_request("custom_id: must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -")
            if custom_id in seen:
                raise invalid_request(
                    f"custom_id: {custom_id!r} is used by another request of this batch; "
                    "custom_id must be unique within a batch"
                )
            seen.add(custom_id)
            if raw_params is None:
                raise invalid_request("params: Field required")
            params = item["params"]
            name = _check_params(params)
            found = resolved.get(name)
            if found is None:
                try:
                    found = resolve(name)
                except GatewayError as exc:
                    found = exc
                resolved[name] = found
            if isinstance(found, GatewayError):
                raise found
            canonical, model = found
            max_tokens = params["max_tokens"]
            if model is not None and max_tokens > model.max_output:
                raise invalid_request(
                    f"max_tokens: {max_tokens} > {model.max_output}, which is the maximum "
                    f"allowed number of output tokens for {model.id}"
                )
        except GatewayError as exc:
            label = f"requests.{i}" + (
                f" (custom_id {item.get('custom_id')!r})"
                if isinstance(item, dict)
                and isinstance(item.get("custom_id"), str)
                and len(item["custom_id"]) <= 64
                else ""
            )
            raise GatewayError(
                exc.status, f"{label}: {exc.message}", type=exc.type, param=f"requests.{i}"
            ) from None
        out.count += 1
        out.models.add(canonical)
        if canonical != name:
            out.aliases[name] = canonical
            out.splices.append(_model_span(entry, raw_params, params_at, canonical))
        if model is not None:
            held = batch_item(
                registry,
                model,
                params,
                raw_params,
                at=when,
                input_tokens=with_margin(_native.estimate_tokens(raw_params, **estimate_args(model))),
                max_tokens=max_tokens,
                config=config,
            )
            est_tokens += held.input_tokens + held.output_tokens
            est_micro += held.input_micro + held.output_micro
        else:
            est_tokens += max_tokens
    if usual:
        after = _SUFFIX.match(body, items.close + 1)
        if after is None or after.end() != len(body):
            _requests_span(body)  # the precise 400 (another key, a repeated one)
            raise invalid_request("request body is not valid JSON")
    elif items.close != end - 1:
        raise invalid_request("request body is not valid JSON")
    if not out.count:
        raise invalid_request("requests: a batch needs at least one request", param="requests")
    out.estimated_tokens = est_tokens
    out.estimated_micro = est_micro
    return out


def _model_span(entry: _Item, raw_params: bytes, params_at: int, canonical: str) -> tuple[int, int, bytes]:
    """Where an item's ``model`` value sits in the body, and what replaces it: located by the native
    scan of its ``params`` (the one top-level ``model``: a repeated key was refused), never guessed."""
    _, _, span = _native.json_shape(raw_params, "model")
    assert span is not None  # _check_params read a model from these very bytes
    offset = entry.start + params_at
    return offset + span[0], offset + span[1], orjson.dumps(canonical)


def splice_models(body: bytes, checked: CheckedBatch) -> bytes:
    """The body with each aliased item's ``model`` value replaced, every other byte kept; the body
    itself when no item needs it (no copy)."""
    if not checked.splices:
        return body
    parts: list[bytes | memoryview] = []
    last = 0
    with memoryview(body) as view:
        for start, end, new in checked.splices:
            parts.append(view[last:start])
            parts.append(new)
            last = end
        parts.append(view[last:])
        return b"".join(parts)
