"""The simulated Message Batches API (``/v1/messages/batches``), in the upstream's shapes.

``POST /v1/messages/batches`` ``{"requests":[{"custom_id","params"}]}`` answers a ``message_batch``
(``msgbatch_01…``) ``in_progress``. Items finish one after another over a simulated processing
time (``SimConfig.batch_processing_ms``, ``POST /_sim/config {"batch_processing_ms": …}``, or
``sim:batch_ms=N`` in the text of the first item's last user message); ``request_counts`` move
as they do. When the last one is done the batch is ``ended`` and ``results_url`` is set.

Each item's outcome is fixed at create time:

* ``succeeded``: the Message the sim's own generator gives for the params (same usage rules,
  prompt cache included, as ``POST /v1/messages`` with ``stream: false``);
* ``errored``: params ``/v1/messages`` would refuse (``invalid_request_error`` / ``not_found_error``
  with the same message), or ``sim:fault=KIND`` in the item's text (``500`` → api_error,
  ``529`` → overloaded_error, ``429``, ``400``…);
* ``expired``: ``sim:expire`` in the item's text (as when the 24 hours run out);
* ``canceled``: items not done when ``POST …/cancel`` came (``canceling`` for a short while, then
  ``ended``).

``GET …/results`` streams JSONL (``application/x-jsonl``) one line per item in request order:
``{"custom_id","result":{"type":"succeeded","message"}|{"type":"errored","error":{"type":"error",
"error":{…},"request_id":…}}|{"type":"canceled"}|{"type":"expired"}}``; before the end it is a 404
like the real API. ``GET /v1/messages/batches`` lists newest first (``limit``/``after_id``/
``before_id``); ``DELETE`` works once ended. Faults queued with ``POST /_sim/faults`` whose ``paths``
name a batch path (or ``"*"``) apply here too (status kinds and ``reset``).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson

from ethereal.models import Model

from . import _gen, _rules
from ._gen import RequestError, check_api_key, invalid, page_limit
from ._models import SimModels

PREFIX = "/v1/messages/batches"
MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024 * 1024
DAY = 24 * 3600.0
CANCEL_SECONDS = 0.2  # "canceling" lasts this long before the batch ends
_ERR_STATUS = {
    "400": 400,
    "401": 401,
    "403": 403,
    "404": 404,
    "429": 429,
    "500": 500,
    "503": 503,
    "529": 529,
    "overloaded": 529,
    "api_error": 500,
    "rate_limit": 429,
}
_STATUS_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_STATUS_MSG = {
    400: "Invalid request",
    401: "invalid x-api-key",
    403: "Permission denied",
    404: "Not Found",
    429: "Rate limited",
    500: "Internal server error",
    503: "Overloaded",
    529: "Overloaded",
}


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class SimBatch:
    __slots__ = (
        "_outcomes",
        "beta",
        "cancel_at",
        "created",
        "deleted",
        "duration",
        "id",
        "items",
        "models",
        "results",
    )

    def __init__(
        self,
        batch_id: str,
        items: list[tuple[str, dict[str, Any]]],
        duration: float,
        models: SimModels | None = None,
        beta: frozenset[str] = frozenset(),
    ) -> None:
        self.id = batch_id
        self.models = models or SimModels()  # what the upstream serves, checked as /v1/messages does
        self.beta = beta  # the create request's anthropic-beta: it applies to every item
        self.created = time.time()
        self.duration = max(0.0, duration)
        self.items = items  # (custom_id, params)
        self._outcomes: list[str] | None = None
        self.cancel_at: float | None = None
        self.results: bytes | None = None
        self.deleted = False

    @property
    def outcomes(self) -> list[str]:
        """Each item's fate ("succeeded" | "errored:<status>:<type>:<message>" | "expired"), decided
        from its params when first needed: create answers after parsing only, as the upstream does."""
        if self._outcomes is None:
            self._outcomes = [_outcome(p, self.models, self.beta) for _, p in self.items]
        return self._outcomes

    def done_count(self, now: float) -> int:
        """Items finished by ``now``: item i finishes at created + duration * (i + 1) / n."""
        n = len(self.items)
        if self.duration <= 0:
            return n
        elapsed = (min(now, self.cancel_at) if self.cancel_at is not None else now) - self.created
        return max(0, min(n, int(n * elapsed / self.duration)))

    def ended_at(self) -> float:
        if self.cancel_at is not None:
            natural = self.created + self.duration
            return min(natural, self.cancel_at + CANCEL_SECONDS)
        return self.created + self.duration

    def status(self, now: float) -> str:
        if now >= self.ended_at():
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def counts(self, now: float) -> dict[str, int]:
        done = self.done_count(now)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if done:
            for outcome in self.outcomes[:done]:
                counts[outcome.split(":", 1)[0]] += 1
        rest = len(self.items) - done
        if self.status(now) == "ended":
            counts["canceled"] += rest
        else:
            counts["processing"] = rest
        return counts

    def view(self, base_url: str, now: float) -> dict[str, Any]:
        status = self.status(now)
        ended = status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": self.counts(now),
            "ended_at": _rfc3339(self.ended_at()) if ended else None,
            "created_at": _rfc3339(self.created),
            "expires_at": _rfc3339(self.created + DAY),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(self.cancel_at),
            "results_url": f"{base_url}{PREFIX}/{self.id}/results" if ended else None,
        }


class Batches:
    """Every batch the sim holds (bounded: the oldest ended ones are forgotten past ``limit``)."""

    def __init__(self, limit: int = 1000) -> None:
        self.by_id: dict[str, SimBatch] = {}
        self.limit = limit

    def add(self, batch: SimBatch) -> None:
        if len(self.by_id) >= self.limit:
            now = time.time()
            for old in [b for b in self.by_id.values() if b.status(now) == "ended"][: len(self.by_id) // 2]:
                del self.by_id[old.id]
        self.by_id[batch.id] = batch


def batches_of(state: Any) -> Batches:
    found = getattr(state, "batches", None)
    if found is None:
        found = state.batches = Batches()
    return found


def _outcome(params: Any, models: SimModels, beta: frozenset[str] = frozenset()) -> str:
    """What will become of an item, decided like ``POST /v1/messages`` would decide its request."""
    try:
        _check_params(params, models, beta)
    except RequestError as exc:
        return f"errored:{exc.status}:{exc.etype}:{exc.message}"
    text, _ = _gen.last_user_text(params["messages"])
    directives = _gen.parse_directives(text)
    if "expire" in directives:
        return "expired"
    fault = directives.get("fault")
    if fault is not None:
        status = _ERR_STATUS.get(fault.split(",", 1)[0].strip().lower(), 500)
        return f"errored:{status}:{_STATUS_TYPE.get(status, 'api_error')}:{_STATUS_MSG.get(status, 'Error')}"
    return "succeeded"


def _check_params(
    req: Any, models: SimModels, beta: frozenset[str] = frozenset()
) -> tuple[Model, _rules.Shape]:
    if not isinstance(req, dict):
        raise invalid("params: Input should be a valid dictionary")
    model = req.get("model")
    if not isinstance(model, str):
        raise invalid("model: Field required" if model is None else "model: Input should be a valid string")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid(
            "messages: Field required" if messages is None else "messages: at least one message is required"
        )
    system_ok = _rules.PER_TURN_CONTROL in beta
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or "content" not in m
            or not (m.get("role") in ("user", "assistant") or (m.get("role") == "system" and system_ok))
        ):
            raise invalid(f"messages.{i}: Input should be a valid message")
    found = models.resolve(model)
    if found is None:
        raise RequestError(404, "not_found_error", models.not_found(model))
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise invalid(
            "max_tokens: Field required"
            if max_tokens is None
            else "max_tokens: Input should be greater than or equal to 1"
        )
    _rules.check_max_tokens(max_tokens, found, models.registry, batch=True)
    if req.get("stream"):
        raise invalid("stream: streaming is not supported in batches")
    shape = _rules.check(req, found, models.registry, beta, batch=True)
    thinking = req.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        bt = thinking.get("budget_tokens")
        if not isinstance(bt, int) or bt < 1024 or max_tokens <= bt:
            raise invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    return found, shape


def _result_line(state: Any, batch: SimBatch, custom_id: str, params: dict[str, Any], outcome: str) -> bytes:
    if outcome == "succeeded":
        model, shape = _check_params(params, batch.models, batch.beta)
        body = orjson.dumps(params)
        seed = zlib.crc32(body, state.seed_crc)
        text, has_tr = _gen.last_user_text(params["messages"])
        directives = _gen.parse_directives(text)
        usage = state.cache.account(
            params,
            model.id,
            b'"cache_control"' in body,
            tokenizer=model.rules.tokenizer,
            min_tokens=model.rules.min_cache_tokens,
        )
        plan = _gen.plan_response(params, model.id, seed, directives, has_tr, usage, shape)
        plan.tier = "batch"
        message = _gen.render_message(plan, _gen.message_id())
        return (
            b'{"custom_id":'
            + orjson.dumps(custom_id)
            + b',"result":{"type":"succeeded","message":'
            + message
            + b"}}\n"
        )
    if outcome.startswith("errored:"):
        _, _status, etype, text = outcome.split(":", 3)
        error = {"type": "error", "error": {"type": etype, "message": text}, "request_id": _gen.request_id()}
        return orjson.dumps({"custom_id": custom_id, "result": {"type": "errored", "error": error}}) + b"\n"
    return orjson.dumps({"custom_id": custom_id, "result": {"type": outcome}}) + b"\n"


def _results(state: Any, batch: SimBatch) -> bytes:
    """The JSONL, generated once when first asked for after the end (request order)."""
    if batch.results is None:
        now = time.time()
        done = batch.done_count(now)
        lines = []
        for i, ((custom_id, params), outcome) in enumerate(zip(batch.items, batch.outcomes, strict=False)):
            lines.append(_result_line(state, batch, custom_id, params, outcome if i < done else "canceled"))
        batch.results = b"".join(lines)
        batch.items = [(cid, {}) for cid, _ in batch.items]  # the params are not needed any more
    return batch.results


def _create(state: Any, body: bytes, beta: frozenset[str] = frozenset()) -> tuple[int, bytes]:
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"There was an error parsing the body of your request: {exc}") from None
    if not isinstance(req, dict) or set(req) - {"requests"}:
        raise invalid("Input should be an object with only `requests`")
    requests = req.get("requests")
    if not isinstance(requests, list) or not requests:
        raise invalid(
            "requests: Field required" if requests is None else "requests: List should have at least 1 item"
        )
    if len(requests) > MAX_REQUESTS:
        raise invalid(f"requests: List should have at most {MAX_REQUESTS} items")
    items: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or set(item) != {"custom_id", "params"}:
            raise invalid(f"requests.{i}: needs exactly `custom_id` and `params`")
        cid = item["custom_id"]
        if (
            not isinstance(cid, str)
            or not 1 <= len(cid) <= 64
            or not all(c.isascii() and (c.isalnum() or c in "_-") for c in cid)
        ):
            raise invalid(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if cid in seen:
            raise invalid(f"requests.{i}.custom_id: duplicate custom_id {cid!r}")
        seen.add(cid)
        items.append((cid, item["params"]))
    duration = state.config.batch_processing_ms / 1000.0
    first = items[0][1]
    if isinstance(first, dict) and isinstance(first.get("messages"), list):
        override = _gen.directive_int(
            _gen.parse_directives(_gen.last_user_text(first["messages"])[0]), "batch_ms"
        )
        if override is not None:
            duration = override / 1000.0
    batch = SimBatch(_gen.rand_id("msgbatch_01", 22), items, duration, getattr(state, "models", None), beta)
    batches_of(state).add(batch)
    return 200, orjson.dumps(batch.view(state.base_url, time.time()))


def _list(state: Any, query: bytes) -> bytes:
    params = dict(parse_qsl(query.decode("latin-1"))) if query else {}
    limit = page_limit(params)
    now = time.time()
    ordered = sorted(
        (b for b in batches_of(state).by_id.values() if not b.deleted), key=lambda b: b.created, reverse=True
    )
    ids = [b.id for b in ordered]
    if params.get("after_id"):
        start = ids.index(params["after_id"]) + 1 if params["after_id"] in ids else len(ids)
        page, has_more = ordered[start : start + limit], start + limit < len(ordered)
    elif params.get("before_id"):
        end = ids.index(params["before_id"]) if params["before_id"] in ids else 0
        page, has_more = ordered[max(0, end - limit) : end], end - limit > 0
    else:
        page, has_more = ordered[:limit], limit < len(ordered)
    data = [b.view(state.base_url, now) for b in page]
    return orjson.dumps(
        {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


def handle(
    proto: Any,
    method: bytes,
    path: str,
    query: bytes,
    headers: dict[bytes, bytes],
    body: bytes,
    rid: str,
    close: bool,
) -> Any:
    """Route one ``/v1/messages/batches…`` request; returns a coroutine when the answer streams."""
    state = proto.state
    if not hasattr(state, "base_url"):  # results_url names the address this request came to
        host, port = proto.transport.get_extra_info("sockname")[:2]
        state.base_url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    fault = state.take_fault(path)
    if fault is not None and fault.kind == "reset":
        state.count("batches", "reset")
        proto.closed = True
        proto.transport.abort()
        return None
    if fault is not None and fault.kind.isdigit():
        status = int(fault.kind)
        extra = b""
        if status == 429 or fault.retry_after is not None:
            extra = (
                b"retry-after: %s\r\n"
                % str(fault.retry_after if fault.retry_after is not None else 1).encode()
            )
        return _json(
            proto,
            status,
            _error(
                status,
                rid,
                _STATUS_TYPE.get(status, "api_error"),
                fault.message or _STATUS_MSG.get(status, "Error"),
            ),
            rid,
            close,
            extra,
        )
    try:
        check_api_key(headers, state.api_keys)
        if b"anthropic-version" not in headers:
            raise invalid("anthropic-version: header is required")
        rest = path[len(PREFIX) :].strip("/")
        parts = rest.split("/") if rest else []
        if not parts:
            if method == b"POST":
                status, out = _create(state, body, _rules.betas(headers))
                return _json(proto, status, out, rid, close)
            if method == b"GET":
                return _json(proto, 200, _list(state, query), rid, close)
            raise RequestError(405, "invalid_request_error", f"Method Not Allowed: {method.decode()} {path}")
        batch = batches_of(state).by_id.get(parts[0])
        if batch is None or batch.deleted or len(parts) > 2:
            raise RequestError(404, "not_found_error", f"message_batch {parts[0]!r} not found")
        now = time.time()
        action = parts[1] if len(parts) == 2 else ""
        if action == "" and method == b"GET":
            return _json(proto, 200, orjson.dumps(batch.view(state.base_url, now)), rid, close)
        if action == "" and method == b"DELETE":
            if batch.status(now) != "ended":
                raise invalid(
                    f"Batch {batch.id} cannot be deleted while it is still processing; cancel it first"
                )
            batch.deleted = True
            del batches_of(state).by_id[batch.id]
            return _json(
                proto, 200, orjson.dumps({"id": batch.id, "type": "message_batch_deleted"}), rid, close
            )
        if action == "cancel" and method == b"POST":
            if batch.status(now) == "in_progress":
                batch.cancel_at = now
            return _json(proto, 200, orjson.dumps(batch.view(state.base_url, now)), rid, close)
        if action == "results" and method == b"GET":
            if batch.status(now) != "ended":
                raise RequestError(
                    404,
                    "not_found_error",
                    f"Batch {batch.id} has not finished processing: results are not available yet",
                )
            return _stream(proto, _results(state, batch), rid, close)
        raise RequestError(404, "not_found_error", f"Not Found: {method.decode()} {path}")
    except RequestError as exc:
        return _json(proto, exc.status, _error(exc.status, rid, exc.etype, exc.message), rid, close)


def _error(status: int, rid: str, etype: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}, "request_id": rid})


def _json(proto: Any, status: int, body: bytes, rid: str, close: bool, extra: bytes = b"") -> None:
    proto.state.count("batches", status)
    proto._send_json(status, body, rid, extra, close=close)


async def _stream(proto: Any, data: bytes, rid: str, close: bool) -> bool:
    """The results file in 256 KiB writes, waiting while the client's socket is full."""
    proto.state.count("batches", 200)
    t = proto.transport
    t.write(proto._head(200, b"application/x-jsonl", rid, len(data), b"", close))
    view = memoryview(data)
    step = 256 * 1024
    for start in range(0, len(data), step):
        if proto.closed:
            return False
        t.write(view[start : start + step])
        if proto._can_write is not None and not proto._can_write.done():
            await proto._can_write
        else:
            await asyncio.sleep(0)
    if close:
        proto._close()
    return not close and not proto.closed
