"""The HTTP/1.1 server: an asyncio Protocol over httptools, routing, faults, stats."""

from __future__ import annotations

import asyncio
import email.utils
import time
import traceback
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import httptools
import orjson

from . import _batches, _gen, _rules
from ._gen import RequestError, check_api_key, invalid, json_object, page_limit
from ._models import SimModels
from ._openai_compat import chat_action, check_model
from ._replay import Library

TOO_LARGE = b'{"error":{"type":"request_too_large","message":"Request exceeds the maximum size"}}'
SSE_TYPE = b"text/event-stream; charset=utf-8"
NO_CACHE = b"cache-control: no-cache\r\n"
THINKING_BUDGET_MSG = _rules.THINKING_BUDGET_MSG

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    529: b"Site Overloaded",
}
_STATUS_LINE = {k: b"HTTP/1.1 %d %s\r\n" % (k, v) for k, v in _REASONS.items()}
_RETRYABLE = {408, 409, 429, 500, 502, 503, 504, 529}

_ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Permission denied"),
    404: ("not_found_error", "Not Found"),
    413: ("request_too_large", "Request exceeds the maximum size"),
    429: (
        "rate_limit_error",
        (
            "This request would exceed the rate limit for your organization of 50 requests per minute. "
            "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response "
            "headers for current usage. Please reduce the prompt length or the maximum tokens requested, or "
            "try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss "
            "your options for a rate limit increase."
        ),
    ),
    500: ("api_error", "Internal server error"),
    503: ("overloaded_error", "Overloaded"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}

# fault kinds and their aliases
FAULT_KINDS = {
    "429": "429",
    "rate_limit": "429",
    "rate_limit_error": "429",
    "529": "529",
    "overloaded": "529",
    "overloaded_error": "529",
    "500": "500",
    "api_error": "500",
    "internal": "500",
    "503": "503",
    "504": "504",
    "403": "403",
    "400": "400",
    "404": "404",
    "413": "413",
    "401": "401",
    "auth": "401",
    "authentication_error": "401",
    "reset": "reset",
    "reset_before": "reset",
    "connection_reset": "reset",
    "reset_mid": "reset_mid",
    "mid_stream_reset": "reset_mid",
    "error_mid": "error_mid",
    "mid_stream_error": "error_mid",
    "stream_error": "error_mid",
    "slow": "slow",
    "slow_first_byte": "slow",
    "delay": "slow",
}
_DEFAULT_FAULT_PATHS = ("/v1/messages",)
REPLY_LOG = 1024  # generated replies whose usage `GET /_sim/requests` keeps
SEEN_LOG = 1024  # requests whose path and model `GET /_sim/seen` keeps


def _norm_path(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    if path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/models") or path.startswith("/_sim/"):
        return path
    return "other"


class Fault:
    __slots__ = (
        "after_events",
        "count",
        "delay_ms",
        "kind",
        "message",
        "paths",
        "retry_after",
        "retry_after_ms",
        "should_retry",
    )

    def __init__(self, spec: dict[str, Any]) -> None:
        raw = str(spec.get("fault", spec.get("kind", ""))).strip().lower()
        kind = FAULT_KINDS.get(raw)
        if kind is None:
            raise ValueError(f"unknown fault {raw!r}; one of {sorted(set(FAULT_KINDS))}")
        self.kind = kind
        self.count = int(spec.get("count", 1))
        ra = spec.get("retry_after")
        self.retry_after = None if ra is None else ra
        ae = spec.get("after_events")
        self.after_events = 3 if ae is None else max(0, int(ae))
        default_delay = 1000 if kind == "slow" and "delay_ms" not in spec else 0
        self.delay_ms = float(spec.get("delay_ms") or default_delay)
        paths = spec.get("paths")
        if paths in (None, []):
            self.paths: tuple[str, ...] | None = _DEFAULT_FAULT_PATHS
        elif paths == "*" or paths == ["*"]:
            self.paths = None
        else:
            self.paths = tuple(str(p).split("?", 1)[0] for p in paths)
        self.message = spec.get("message")
        self._hints(spec)

    def _hints(self, spec: dict[str, Any]) -> None:
        """``retry_after_ms`` (sent beside ``retry-after``) and ``should_retry`` (``x-should-retry``
        as given instead of the status's default): the retry hints clients read first."""
        ms = spec.get("retry_after_ms")
        self.retry_after_ms = None if ms is None else str(ms)
        sr = spec.get("should_retry")
        self.should_retry = None if sr is None else ("true" if sr in (True, "true", "1", 1) else "false")

    def hint_headers(self) -> bytes:
        out = b""
        if self.retry_after_ms is not None:
            out += b"retry-after-ms: %s\r\n" % self.retry_after_ms.encode()
        if self.should_retry is not None:
            out += b"x-should-retry: %s\r\n" % self.should_retry.encode()
        return out

    def matches(self, path: str) -> bool:
        if self.paths is None:
            return path.startswith("/v1/")
        return path in self.paths

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.kind,
            "count": self.count,
            "retry_after": self.retry_after,
            "retry_after_ms": self.retry_after_ms,
            "should_retry": self.should_retry,
            "after_events": self.after_events,
            "delay_ms": self.delay_ms,
            "paths": list(self.paths) if self.paths is not None else ["*"],
        }

    @classmethod
    def from_directive(cls, value: str) -> Fault:
        # sim:fault=KIND[,key=value...]
        parts = value.split(",")
        spec: dict[str, Any] = {"fault": parts[0]}
        for p in parts[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                spec[k.strip()] = v.strip()
        spec["paths"] = "*"
        return cls(spec)


class SimState:
    """Everything shared across connections: config, prompt cache, faults, stats, fixtures."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.cache = _gen.PromptCache(config.cache_min_tokens)
        self.models = SimModels()  # the registry, plus ids added through POST /_sim/models
        self.library = Library(config.fixtures_dir)
        self.faults: list[Fault] = []
        self.stats: dict[str, dict[str, int]] = {}
        self.total = 0
        self.received = 0  # API requests read (counted on arrival, before any answer or fault)
        self.replies: OrderedDict[str, dict[str, Any]] = OrderedDict()  # request-id → the usage it reported
        self.seen: deque[dict[str, Any]] = deque(
            maxlen=SEEN_LOG
        )  # `GET /_sim/seen`: model each request named
        self.connections = 0
        self.open_connections = 0
        self.seed_crc = zlib.crc32(str(config.seed).encode())
        _gen.seed_ids(config.seed ^ int(time.time() * 1e6))
        self.api_keys: set[bytes] | None = (
            None if config.api_keys is None else {k.encode() for k in config.api_keys}
        )
        org = config.organization_id or str(
            uuid.UUID(int=zlib.crc32(b"org%d" % config.seed) * 2**96 + 0x4000)
        )
        self.org_line = b"anthropic-organization-id: " + org.encode() + b"\r\n"
        self._date = b""
        self._date_t = -1

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_t:
            self._date_t = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return self._date

    def count(self, path: str, status: int | str) -> None:
        self.total += 1
        per = self.stats.get(path)
        if per is None:
            per = self.stats[path] = {}
        key = str(status)
        per[key] = per.get(key, 0) + 1

    def note_reply(self, rid: str, path: str, stream: bool, p: _gen.Plan) -> None:
        """Keeps the usage a generated reply reports (the last ``REPLY_LOG`` of them, ``GET /_sim/requests``)."""
        self.replies[rid] = {
            "path": path,
            "stream": stream,
            "usage": {
                "input_tokens": p.input_tokens,
                "output_tokens": p.output_tokens,
                "cache_creation_5m": p.cc5,
                "cache_creation_1h": p.cc1,
                "cache_read": p.cache_read,
            },
        }
        if len(self.replies) > REPLY_LOG:
            self.replies.popitem(last=False)

    def take_fault(self, path: str) -> Fault | None:
        for i, f in enumerate(self.faults):
            if f.matches(path):
                f.count -= 1
                if f.count <= 0:
                    del self.faults[i]
                return f
        return None

    def reset(self) -> None:
        self.faults.clear()
        self.stats.clear()
        self.total = 0
        self.received = 0
        self.replies.clear()
        self.seen.clear()
        self.cache.clear()


def _error_body(status: int, rid: str, etype: str | None = None, message: str | None = None) -> bytes:
    dt, dm = _ERROR_TYPES.get(status, ("api_error", "Internal server error"))
    return orjson.dumps(
        {"type": "error", "error": {"type": etype or dt, "message": message or dm}, "request_id": rid}
    )


_WANTED = {b"x-api-key", b"authorization", b"anthropic-version", b"anthropic-beta", b"expect"}


class SimProtocol(asyncio.Protocol):
    __slots__ = (
        "_can_write",
        "_paused_reading",
        "body",
        "body_len",
        "busy",
        "closed",
        "headers",
        "parser",
        "pending",
        "state",
        "task",
        "too_large",
        "transport",
        "url",
    )

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_len = 0
        self.too_large = False
        self.pending: deque = deque()
        self.busy = False
        self.closed = False
        self.task: asyncio.Task | None = None
        self._can_write: asyncio.Future | None = None
        self._paused_reading = False

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.state.connections += 1
        self.state.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.open_connections -= 1
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    def pause_writing(self) -> None:
        if self._can_write is None or self._can_write.done():
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._plain(400, b'{"error":"upgrade not supported"}', close=True)
        except httptools.HttpParserError:
            rid = _gen.request_id()
            self._send_json(400, _error_body(400, rid, message="malformed HTTP request"), rid, close=True)

    # ---------------------------------------------------------------- httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_len = 0
        self.too_large = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _WANTED:
            if name == b"anthropic-beta" and name in self.headers:  # repeated: the betas add up
                value = self.headers[name] + b"," + value
            self.headers[name] = value

    def on_headers_complete(self) -> None:
        if self.headers.get(b"expect", b"").lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.body_len += len(body)
        limit = self.state.config.max_body_bytes
        if self.url.startswith(b"/v1/messages/batches"):
            limit = _batches.MAX_BODY_BYTES  # a batch may carry 256 MB
        if self.body_len > limit:
            self.too_large = True
            self.body = []
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        body = b"".join(self.body) if self.body else b""
        self.pending.append((method, self.url, self.headers, body, keep, self.too_large))
        self.body = []
        if len(self.pending) > 64 and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()
        if not self.busy:
            self._drain()

    # ---------------------------------------------------------------- request queue
    def _drain(self) -> None:
        while self.pending and not self.busy and not self.closed:
            req = self.pending.popleft()
            try:
                coro = self._handle(*req)
            except Exception:  # noqa: BLE001 - a bug: say so loudly, answer like the API would, keep serving
                traceback.print_exc()
                rid = _gen.request_id()
                self._send_json(500, _error_body(500, rid), rid, close=True)
                return
            if coro is not None:
                self.busy = True
                self.task = asyncio.ensure_future(coro)
                self.task.add_done_callback(self._async_done)
                return
            if not req[4]:  # not keep-alive
                self._close()
                return
        if self._paused_reading and len(self.pending) < 8 and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()

    def _async_done(self, task: asyncio.Task) -> None:
        self.busy = False
        self.task = None
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            traceback.print_exception(exc)
            self.transport.abort()
            self.closed = True
            return
        keep = task.result() if not task.cancelled() else False
        if not keep:
            self._close()
            return
        self._drain()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    # ---------------------------------------------------------------- writing
    def _head(
        self, status: int, ctype: bytes, rid: str, length: int | None, extra: bytes = b"", close: bool = False
    ) -> bytes:
        st = self.state
        parts = [
            _STATUS_LINE.get(status) or b"HTTP/1.1 %d Error\r\n" % status,
            b"date: ",
            st.date(),
            b"\r\ncontent-type: ",
            ctype,
            b"\r\n",
            b"content-length: %d\r\n" % length if length is not None else b"transfer-encoding: chunked\r\n",
            b"connection: close\r\n" if close else b"connection: keep-alive\r\n",
            b"request-id: ",
            rid.encode(),
            b"\r\n",
            st.org_line,
        ]
        if status >= 400 and b"x-should-retry:" not in extra:  # a fault may set its own
            parts.append(
                b"x-should-retry: true\r\n" if status in _RETRYABLE else b"x-should-retry: false\r\n"
            )
        if extra:
            parts.append(extra)
        parts.append(b"\r\n")
        return b"".join(parts)

    def _send_json(self, status: int, body: bytes, rid: str, extra: bytes = b"", close: bool = False) -> None:
        self.transport.write(self._head(status, b"application/json", rid, len(body), extra, close) + body)
        if close:
            self._close()

    def _plain(self, status: int, body: bytes, close: bool = False) -> None:
        self._send_json(status, body, _gen.request_id(), close=close)

    # ---------------------------------------------------------------- routing
    def _handle(
        self, method: bytes, url: bytes, headers: dict[bytes, bytes], body: bytes, keep: bool, too_large: bool
    ) -> Any:
        st = self.state
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("latin-1")
        close = not keep
        rid = _gen.request_id()
        npath = _norm_path(path)

        if path.startswith("/_sim/"):  # not counted in the stats
            return self._control(method, path, body, rid, close)
        st.received += 1

        if too_large:
            st.count(npath, 413)
            self._send_json(413, TOO_LARGE, rid, close=close)
            return None

        if path in ("/", "") and method in (b"GET", b"HEAD"):
            st.count(npath, 200)
            if method == b"HEAD":
                self.transport.write(self._head(200, b"application/json", rid, 11, close=close))
                if close:
                    self._close()
            else:
                self._send_json(200, b'{"ok":true}', rid, close=close)
            return None

        if path.startswith(_batches.PREFIX):
            return _batches.handle(self, method, path, query, headers, body, rid, close)

        is_messages = path == "/v1/messages"
        is_count = path == "/v1/messages/count_tokens"
        is_models = path == "/v1/models" or path.startswith("/v1/models/")
        is_chat = path == "/v1/chat/completions"
        if not (is_messages or is_count or is_models or is_chat):
            st.count(npath, 404)
            self._send_json(404, _error_body(404, rid), rid, close=close)
            return None
        want = b"GET" if is_models else b"POST"
        if method != want:
            st.count(npath, 405)
            msg = f"Method Not Allowed: {method.decode()} {path}"
            self._send_json(405, _error_body(405, rid, "invalid_request_error", msg), rid, close=close)
            return None

        fault = st.take_fault(path)

        try:
            check_api_key(headers, st.api_keys)
            if is_chat:
                return self._chat(body, rid, close, fault, npath)
            if b"anthropic-version" not in headers:
                raise invalid("anthropic-version: header is required")

            if is_models:
                return self._finish(self._models(path, query), rid, close, fault, npath)

            req = json_object(body)
            model = req.get("model")
            if model is None:
                raise invalid("model: Field required")
            if not isinstance(model, str):
                raise invalid("model: Input should be a valid string")
            messages = req.get("messages")
            if messages is None:
                raise invalid("messages: Field required")
            if not isinstance(messages, list):
                raise invalid("messages: Input should be a valid list")
            beta = _rules.betas(headers)
            st.seen.append({"path": path, "model": model, "request_id": rid})
            _rules.check_roles(messages, beta)
            models = st.models
            found = models.resolve(model)
            if found is None:
                raise RequestError(404, "not_found_error", models.not_found(model))
            model_id = found.id
            rules = found.rules
            has_cc = b'"cache_control"' in body

            if is_count:
                _rules.check(req, found, models.registry, beta)
                itok = _gen.input_tokens(req, rules.tokenizer)
                return self._finish(
                    ("json", 200, orjson.dumps({"input_tokens": itok}), b""), rid, close, fault, npath
                )

            max_tokens = req.get("max_tokens")
            if max_tokens is None:
                raise invalid("max_tokens: Field required")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise invalid("max_tokens: Input should be a valid integer")
            if max_tokens < 1:
                raise invalid("max_tokens: Input should be greater than or equal to 1")
            _rules.check_max_tokens(max_tokens, found, models.registry)
            if not messages:
                raise invalid("messages: at least one message is required")
            stream = req.get("stream", False)
            if not isinstance(stream, bool):
                raise invalid("stream: Input should be a valid boolean")
            shape = _rules.check(req, found, models.registry, beta)
            _rules.check_budget(req, max_tokens)
            thinking = req.get("thinking")

            text, has_tr = _gen.last_user_text(messages)
            if has_tr and isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
                _check_thinking_leads(messages)
            directives = _gen.parse_directives(text)
            if "fault" in directives:
                try:
                    fault = Fault.from_directive(directives["fault"])
                except ValueError as exc:
                    raise invalid(f"sim: {exc}") from None

            if "replay" in directives:
                rec = st.library.get(directives["replay"])
                if rec is None:
                    raise invalid(f"sim: unknown replay fixture {directives['replay']!r}")
                action: tuple[Any, ...]
                if stream:
                    action = ("sse", rec.frames, None, self._timing(directives))
                else:
                    action = ("json", 200, rec.message(), b"")
                return self._finish(action, rid, close, fault, npath)

            seed = zlib.crc32(body, st.seed_crc)
            usage = st.cache.account(
                req, model_id, has_cc, tokenizer=rules.tokenizer, min_tokens=rules.min_cache_tokens
            )
            plan = _gen.plan_response(req, model_id, seed, directives, has_tr, usage, shape)
            st.note_reply(rid, npath, stream, plan)
            msg_id = _gen.message_id()
            timing = self._timing(directives)
            if stream:
                frames, costs = _gen.render_frames(plan, msg_id)
                action = ("sse", frames, costs, timing)
            else:
                action = (
                    "json",
                    200,
                    _gen.render_message(plan, msg_id),
                    b"",
                    _gen.reply_delay(timing, plan.output_tokens),
                )
            return self._finish(action, rid, close, fault, npath)
        except RequestError as exc:
            # a scheduled status/reset fault still wins over the request error (_finish swaps the action):
            # it happens "in front of" the API, like a real overload or rate limit
            err = _error_body(exc.status, rid, exc.etype, exc.message)
            return self._finish(("json", exc.status, err, b""), rid, close, fault, npath)

    def _chat(self, body: bytes, rid: str, close: bool, fault: Fault | None, npath: str) -> Any:
        """The OpenAI SDK compatibility endpoint (``_openai_compat``); faults apply as to messages."""
        req = json_object(body)
        check_model(req.get("model"))
        models = self.state.models
        found = models.resolve(req["model"])
        if found is None:
            raise RequestError(404, "not_found_error", models.not_found(req["model"]))
        seed = zlib.crc32(body, self.state.seed_crc)
        action = chat_action(req, found.id, seed, self._timing({}))
        return self._finish(action, rid, close, fault, npath)

    def _timing(self, directives: dict[str, str]) -> tuple[float, float, float]:
        cfg = self.state.config
        lat = _gen.directive_int(directives, "latency")
        ttft = _gen.directive_int(directives, "ttft")
        tps = _gen.directive_int(directives, "tps")
        return (
            (cfg.latency_ms if lat is None else lat) / 1000.0,
            (cfg.ttft_ms if ttft is None else ttft) / 1000.0,
            float(cfg.tokens_per_second if tps is None else tps),
        )

    def _models(self, path: str, query: bytes) -> tuple:
        if path.startswith("/v1/models/"):
            mid = path[len("/v1/models/") :]
            info = self.state.models.info(mid)
            if info is None:
                raise RequestError(404, "not_found_error", self.state.models.not_found(mid))
            return ("json", 200, orjson.dumps(info), b"")
        params: dict[str, str] = {}
        if query:
            from urllib.parse import parse_qsl

            params = dict(parse_qsl(query.decode("latin-1")))
        limit = page_limit(params)
        data = [m.to_anthropic() for m in self.state.models.listed()]
        ids = [m["id"] for m in data]
        if params.get("after_id"):
            a = params["after_id"]
            start = ids.index(a) + 1 if a in ids else len(ids)
            page = data[start : start + limit]
            has_more = start + limit < len(data)
        elif params.get("before_id"):
            b = params["before_id"]
            end = ids.index(b) if b in ids else 0
            page = data[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            page = data[:limit]
            has_more = limit < len(data)
        return (
            "json",
            200,
            orjson.dumps(
                {
                    "data": page,
                    "has_more": has_more,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None,
                }
            ),
            b"",
        )

    # ---------------------------------------------------------------- executing an action
    def _finish(self, action: tuple[Any, ...], rid: str, close: bool, fault: Fault | None, npath: str) -> Any:
        """Runs the action now when nothing needs waiting, else returns a coroutine."""
        delay = 0.0
        kind = action[0]
        if kind == "sse":
            delay = action[3][0]
            needs_async = action[3][1] > 0 or action[3][2] > 0
        else:
            # a reply's own timing (its sim: directives over the config), else the configured latency
            delay = action[4] if len(action) >= 5 else self.state.config.latency_ms / 1000.0
            needs_async = False
        if fault is not None:
            delay += fault.delay_ms / 1000.0
            k = fault.kind
            if k in ("reset", "reset_mid", "error_mid", "slow"):
                if k == "reset":
                    action = ("reset",)
                elif kind == "json" and action[1] == 200:
                    if k == "error_mid":
                        action = ("json", 529, _error_body(529, rid), b"")
                    elif k == "reset_mid":
                        action = ("json_reset", *action[1:])
            else:
                status = int(k)
                extra = b""
                if status == 429 or fault.retry_after is not None:
                    extra = (
                        b"retry-after: %s\r\n"
                        % str(fault.retry_after if fault.retry_after is not None else 1).encode()
                    )
                action = (
                    "json",
                    status,
                    _error_body(status, rid, message=fault.message),
                    extra + fault.hint_headers(),
                )
        if delay > 0 or needs_async:
            return self._run_async(delay, action, rid, close, fault, npath)
        self._execute(action, rid, close, fault, npath)
        return None

    def _execute(self, action: tuple, rid: str, close: bool, fault: Fault | None, npath: str) -> None:
        kind = action[0]
        st = self.state
        if kind == "json":
            st.count(npath, action[1])
            self._send_json(action[1], action[2], rid, action[3], close=False)
        elif kind == "reset":
            st.count(npath, "reset")
            self.closed = True
            self.transport.abort()
        elif kind == "json_reset":
            st.count(npath, "reset")
            body = action[2]
            head = self._head(action[1], b"application/json", rid, len(body))
            self.transport.write(head + body[: len(body) // 2])
            self.closed = True
            self.transport.abort()
        else:  # sse, nothing to wait for
            frames = action[1]
            epw = max(1, st.config.events_per_write)
            t = self.transport
            cut = self._open_stream(rid, fault, frames)
            n = len(frames) if cut is None else cut
            for i in range(0, n, epw):
                chunk = b"".join(frames[i : min(i + epw, n)])
                t.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            self._end_stream(cut, fault, rid, npath)

    def _open_stream(self, rid: str, fault: Fault | None, frames: list[bytes]) -> int | None:
        """Send a stream's head; returns how many frames a mid-stream fault lets through (None: all)."""
        self.transport.write(self._head(200, SSE_TYPE, rid, None, NO_CACHE))
        if fault is not None and fault.kind in ("reset_mid", "error_mid"):
            return min(fault.after_events, len(frames))
        return None

    def _end_stream(self, cut: int | None, fault: Fault | None, rid: str, npath: str) -> bool:
        """End a stream after its frames: cut off at a reset fault (False), else with an error event
        at an error fault and the last chunk."""
        st = self.state
        t = self.transport
        if cut is not None and fault is not None and fault.kind == "reset_mid":
            st.count(npath, "reset")
            self.closed = True
            t.abort()
            return False
        if cut is not None:
            ef = _gen.error_frame(rid, pad=len(rid))
            t.write(b"%x\r\n" % len(ef) + ef + b"\r\n")
        st.count(npath, 200)
        t.write(b"0\r\n\r\n")
        return True

    async def _run_async(
        self, delay: float, action: tuple, rid: str, close: bool, fault: Fault | None, npath: str
    ) -> bool:
        if delay > 0:
            await asyncio.sleep(delay)
        if self.closed:
            return False
        if action[0] != "sse" or (action[3][1] <= 0 and action[3][2] <= 0):
            self._execute(action, rid, close, fault, npath)
            return not close and not self.closed
        # paced stream
        st = self.state
        frames, costs, (_lat, ttft, tps) = action[1], action[2], action[3]
        epw = max(1, st.config.events_per_write)
        t = self.transport
        cut = self._open_stream(rid, fault, frames)
        n = len(frames) if cut is None else cut
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        target = 0.0
        buf: list[bytes] = []

        def flush() -> None:
            if buf:
                chunk = b"".join(buf)
                t.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                buf.clear()

        for i in range(n):
            d = 0.0
            if i == 1:
                d += ttft
            if tps > 0:
                if costs is not None:
                    d += costs[i] / tps
                elif frames[i].startswith(b"event: content_block_delta"):
                    d += 1.0 / tps  # replay: one token-time per delta
            if d > 0:
                flush()
                target += d
                wait = t0 + target - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.closed:
                    return False
                if self._can_write is not None and not self._can_write.done():
                    await self._can_write
                    if self.closed:
                        return False
            buf.append(frames[i])
            if len(buf) >= epw:
                flush()
        flush()
        return self._end_stream(cut, fault, rid, npath) and not close

    # ---------------------------------------------------------------- control API
    def _control(self, method: bytes, path: str, body: bytes, rid: str, close: bool) -> Any:
        st = self.state
        try:
            out: dict[str, Any]
            if path == "/_sim/faults" and method == b"POST":
                spec = orjson.loads(body) if body else {}
                if spec.get("clear"):
                    st.faults.clear()
                listed = spec.get("faults")
                specs: list[Any] = (
                    listed
                    if isinstance(listed, list)
                    else ([spec] if ("fault" in spec or "kind" in spec) else [])
                )
                for s in specs:
                    st.faults.append(Fault(s))
                out = {"faults": [f.to_json() for f in st.faults]}
            elif path == "/_sim/faults" and method == b"GET":
                out = {"faults": [f.to_json() for f in st.faults]}
            elif path == "/_sim/stats":
                out = {
                    "total": st.total,
                    "requests": st.stats,
                    "connections": st.connections,
                    "open_connections": st.open_connections,
                    "faults_pending": len(st.faults),
                }
            elif path == "/_sim/requests":
                out = {"received": st.received, "replies": st.replies}
            elif path == "/_sim/reset" and method == b"POST":
                st.reset()
                out = {"ok": True}
            elif path == "/_sim/config":
                cfg = st.config
                if method == b"POST" and body:
                    for k, v in orjson.loads(body).items():
                        if k in ("latency_ms", "ttft_ms", "tokens_per_second", "batch_processing_ms"):
                            setattr(cfg, k, float(v))
                        elif k == "events_per_write":
                            cfg.events_per_write = max(1, int(v))
                        else:
                            raise ValueError(f"unknown or read-only setting {k!r}")
                out = {
                    "latency_ms": cfg.latency_ms,
                    "ttft_ms": cfg.ttft_ms,
                    "tokens_per_second": cfg.tokens_per_second,
                    "events_per_write": cfg.events_per_write,
                    "batch_processing_ms": cfg.batch_processing_ms,
                    "seed": cfg.seed,
                }
            elif path == "/_sim/seen":
                out = {"requests": list(st.seen)}
            elif path == "/_sim/fixtures":
                out = {"fixtures": st.library.names()}
            elif path == "/_sim/models":
                out = self._control_models(method, body)
            else:
                self._send_json(404, _error_body(404, rid), rid, close=close)
                return
        except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
            self._send_json(400, _error_body(400, rid, message=str(exc)), rid, close=close)
            return
        self._send_json(200, orjson.dumps(out), rid, close=close)
        return

    def _control_models(self, method: bytes, body: bytes) -> dict[str, Any]:
        """``POST /_sim/models``: ``{"id": …}`` (or ``{"models": [{…}, …]}``, or ``{"add": [id or {…}, …]}``)
        serves and lists an id
        the registry does not describe (optional ``like``, ``display_name``, ``max_tokens``,
        ``max_input_tokens``); ``{"remove": id}``, ``{"clear": true}``. ``GET`` lists the added ones."""
        models = self.state.models
        if method == b"POST" and body:
            spec = orjson.loads(body)
            if not isinstance(spec, dict):
                raise ValueError("expected a JSON object")
            if spec.get("clear"):
                models.added.clear()
            if spec.get("remove") is not None:
                models.remove(str(spec["remove"]))
            listed = spec.get("models")
            items = listed if isinstance(listed, list) else ([spec] if "id" in spec else [])
            added = spec.get("add")  # {"add": ["claude-nova-6", {"id": …}]}: the same, several at once
            if isinstance(added, list):
                items = [*items, *({"id": a} if isinstance(a, str) else a for a in added)]
            for item in items:
                if not isinstance(item, dict):
                    raise TypeError("models: expected objects")
                models.add(item)
        return _models_added(self.state)


def _models_added(state: SimState) -> dict[str, Any]:
    return {"added": [m.to_anthropic() for m in state.models.added.values()]}


def make_protocol_factory(state: SimState) -> Callable[[], SimProtocol]:
    return lambda: SimProtocol(state)


def _check_thinking_leads(messages: list[Any]) -> None:
    """The API's rule for a tool loop with thinking on: the assistant turn holding the tool calls
    starts with its thinking block, sent back as it came (clients that drop it get this 400)."""
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            content = msg.get("content")
            first = content[0] if isinstance(content, list) and content else None
            kind = first.get("type") if isinstance(first, dict) else "text"
            if kind not in ("thinking", "redacted_thinking"):
                raise invalid(
                    f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{kind}`. When `thinking` is enabled, a final `assistant` message must start with a "
                    "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). "
                    "We recommend you include thinking blocks from previous turns. To avoid this "
                    "requirement, disable `thinking`."
                )
            return
