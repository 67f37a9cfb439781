"""The Responses API over WebSocket on ``/v1/responses`` (Codex CLI's first choice).

Codex CLI with its built-in provider (``openai_base_url`` in its ``config.toml``) opens a
WebSocket to ``/v1/responses`` before trying HTTP. The protocol, as the client speaks it:

- **Upgrade**: ``GET /v1/responses`` with ``Authorization: Bearer <key>`` (and
  ``OpenAI-Beta: responses_websockets=…``, session headers). The key is checked here, before
  the upgrade: a refusal is a plain HTTP answer (401, 429 with ``retry-after`` when the key
  already holds ``ws_max_sockets_per_key`` sockets on this worker, 503 while draining) in
  OpenAI's error shape, which the client reads as it would an HTTP error.
- **Requests**: text messages ``{"type": "response.create", …}`` whose other members are a
  Responses request body (``stream`` is implied). ``generate: false`` is a warm-up: the
  client sends its instructions and tools ahead of the turn and waits for
  ``response.completed``; nothing goes upstream (``response.created`` then
  ``response.completed`` with no output and no usage), one usage record is still written.
  ``previous_response_id`` names the last response completed on this socket: its ``input`` is
  then only what follows that response's input and output items (Codex's incremental mode),
  and the gateway rebuilds the whole conversation from what it kept for the socket (the last
  request's input and the output items it sent); any other id is a 400
  ``previous_response_not_found``, after which Codex sends the whole conversation.
  ``response.processed`` acknowledgements are ignored. One response at a time: a client that
  queues more than one ``response.create`` behind the one in flight is closed (1008).
- **Events**: each Responses stream event the HTTP route would send as an SSE frame is one
  text message here, the same JSON (``type``, ``sequence_number``, …), ending with
  ``response.completed`` / ``response.incomplete`` / ``response.failed``. A refusal or an
  upstream error before the first event is one message ``{"type": "error", "status": N,
  "error": {type, code, message, param}, "headers": {retry-after, …}}``: Codex maps it to the
  HTTP error it stands for (its retry rules then apply as over HTTP). The socket stays open
  after either.
- **Each** ``response.create`` runs through the request pipeline like an HTTP request:
  key (checked again: a revoked key stops at the next request), model, limits and budget
  (admission), credential choice and failover before the first event, one usage record,
  settlement; a client that goes away mid-stream is recorded as 499 and its upstream request
  closed at once. Each has its own request id (in its events' response id and the error
  message's ``x-request-id``) and its own request log line (method ``WS``).
- **Bounds** (assume hostile clients): a message over ``ws_max_message_bytes`` closes the
  socket (1009, the server's own check, before it is buffered whole); a rebuilt conversation
  over ``max_body_bytes`` is a 413, as an HTTP body would be; binary messages close it (1003);
  a socket with nothing in flight for ``ws_idle_timeout`` seconds is closed (1000); pings
  every ``ws_ping_interval`` drop a peer that stopped answering. During a drain a socket is
  closed (1001) once its response in flight is over.

Every other path answers a WebSocket upgrade with ``426 Upgrade Required`` at once (Codex then
falls back to HTTP without retrying), logged like any request (``app.Ethereal``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
from blacksheep import Request

from ethereal import ids
from ethereal.adapters import openai_responses
from ethereal.api.responses import Responses, response_id
from ethereal.auth import key_hash_of
from ethereal.errors import GatewayError, openai_error_body, upstream_error
from ethereal.guards import check_body_shape, check_model_name
from ethereal.lifecycle import LIFECYCLE
from ethereal.observability.http import RECORD, Parts, log_request
from ethereal.pipeline import Call, Pipeline, StreamRelay
from ethereal.storage.records import UsageRecord, error_message_of
from ethereal.upstream.client import UpstreamStreamError
from ethereal.usage import Usage

log = logging.getLogger("ethereal.api.responses_ws")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATH = "/v1/responses"
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
MAX_QUEUED = 1  # response.create messages a client may queue behind the one in flight
_GONE = object()  # the client went away: the end of the inbox
_DRAIN = object()  # the worker is shutting down: close a socket with nothing in flight
LIVE: set[_Socket] = set()  # this worker's open sockets (drain_sockets)


def drain_sockets() -> int:
    """Shutdown (serving.GatewayServer): close every socket with nothing in flight now (1001);
    one answering a response closes once that response is over. Returns the sockets still busy."""
    busy = 0
    for socket in list(LIVE):
        if socket.current is None:
            socket.inbox.put_nowait(_DRAIN)
        else:
            busy += 1
    return busy


class _Scoped:
    """What an adapter reads of a request (its headers, through ``scope``) for a socket message."""

    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope


@dataclass(slots=True)
class _Last:
    """The last response completed on a socket: what ``previous_response_id`` continues."""

    id: str
    input: list[Any]
    output: list[Any]
    size: int  # bytes of JSON the conversation holds so far (bounded like an HTTP body)


class _Refused(GatewayError):
    """A refusal with OpenAI's ``code`` of its own (``previous_response_not_found``)."""

    __slots__ = ("code",)

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(status, message, param=param)
        self.code = code


def error_event(exc: GatewayError, request_id: str) -> str:
    """A refusal before the first event, as Codex reads it: the HTTP error it stands for."""
    openai_body = getattr(exc, "openai_body", None)  # a spent spend limit: Codex's usage-limit body
    body = (
        openai_body()
        if openai_body is not None
        else orjson.loads(openai_error_body(exc.type, exc.message, exc.param))
    )
    if isinstance(exc, _Refused):
        body["error"]["code"] = exc.code
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in exc.response_headers()}
    headers["x-request-id"] = request_id
    return orjson.dumps(
        {"type": "error", "status": exc.status, "error": body["error"], "headers": headers}
    ).decode()


def _events(chunk: bytes) -> list[tuple[bytes, bytes]]:
    """(event name, data) of each whole SSE frame the translator wrote (``event: T\\ndata: J\\n\\n``)."""
    out: list[tuple[bytes, bytes]] = []
    for frame in chunk.split(b"\n\n"):
        if not frame:
            continue
        name = b""
        data = b""
        for line in frame.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
            elif line.startswith(b"event: "):
                name = line[7:]
        if data:
            out.append((name, data))
    return out


def _as_items(value: Any) -> list[Any]:
    """A request's ``input`` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if isinstance(value, list):
        return value
    raise GatewayError(400, "input: must be a string or an array of items", param="input")


class ResponsesSockets:
    """The sockets of one worker: per-key counts, and the service each socket runs against."""

    def __init__(self, pipeline: Pipeline, observe: Parts | None) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.observe = observe
        self.adapter = Responses()
        self.adapter.gw = pipeline.gw
        self.per_key: dict[str, int] = {}

    @property
    def open_sockets(self) -> int:
        return sum(self.per_key.values())

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One upgrade request on ``/v1/responses``: refused, or a socket served to its end."""
        t0 = time.perf_counter()
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        headers = dict(scope["headers"])
        call = Call(request_id="", route=self.adapter.route)
        try:
            if LIFECYCLE.draining:
                raise GatewayError(
                    503,
                    "the gateway is shutting down; connect again",
                    type="overloaded_error",
                    retry_after=1.0,
                )
            await self.pipeline.authenticate(headers, call)
        except GatewayError as exc:
            request_id = ids.request_id(key_hash_of(headers))
            await refuse(scope, send, exc, request_id, t0, openai=True)
            return
        key = call.key
        assert key is not None
        held = self.per_key.get(key.id, 0)
        if held >= self.settings.ws_max_sockets_per_key:
            refusal = GatewayError(
                429,
                f"this API key already holds {held} open WebSocket connections to this"
                f" gateway worker (at most {self.settings.ws_max_sockets_per_key}); close one"
                " or use HTTP",
                retry_after=5.0,
            )
            await refuse(scope, send, refusal, ids.request_id(key.key_hash), t0, openai=True)
            return
        self.per_key[key.id] = held + 1
        try:
            await send({"type": "websocket.accept"})
            socket = _Socket(self, scope, receive, send, headers)
            await socket.run()
        except OSError:  # the client went away while being answered (uvicorn's ClientDisconnected)
            pass
        finally:
            left = self.per_key.get(key.id, 1) - 1
            if left > 0:
                self.per_key[key.id] = left
            else:
                self.per_key.pop(key.id, None)
            log_request(
                {"method": "GET", "path": scope.get("path", PATH)},
                101,
                (time.perf_counter() - t0) * 1000.0,
                None,
                None,
            )


async def refuse(
    scope: Scope, send: Send, exc: GatewayError, request_id: str, t0: float, *, openai: bool
) -> None:
    """Refuse an upgrade with a plain HTTP answer (the ASGI ``websocket.http.response``
    extension; without it, a close before accepting: the server answers 403) and log it."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        if openai:
            body = openai_error_body(exc.type, exc.message, exc.param)
        else:
            from ethereal.errors import anthropic_error_body

            body = anthropic_error_body(exc.type, exc.message, request_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"request-id", request_id.encode()),
            (b"x-request-id", request_id.encode()),
            *exc.response_headers(),
        ]
        await send({"type": "websocket.http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        log.warning(
            "WebSocket upgrade to %s refused with a close (status %d not sendable: the server lacks"
            " the websocket.http.response extension)",
            str(scope.get("path", ""))[:200],
            exc.status,
        )
        await send({"type": "websocket.close", "code": CLOSE_POLICY})
    log_request(
        {"method": "GET", "path": scope.get("path", "")},
        exc.status,
        (time.perf_counter() - t0) * 1000.0,
        request_id,
        None,
        error_message_of(exc.message),
    )


class _Socket:
    """One accepted socket: a reader task fills the inbox, the serving loop answers it in order."""

    def __init__(
        self,
        service: ResponsesSockets,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
    ) -> None:
        self.service = service
        self.pipeline = service.pipeline
        self.settings = service.settings
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = headers
        self.request = cast(Request, _Scoped(scope))
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.current: asyncio.Task[None] | None = None  # the response.create being answered
        self.gone = False
        self.closed = False
        self.last: _Last | None = None

    async def run(self) -> None:
        reader = asyncio.get_running_loop().create_task(self._read())
        LIVE.add(self)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(self.inbox.get(), self.settings.ws_idle_timeout)
                except TimeoutError:
                    await self._close(CLOSE_NORMAL, "idle timeout")
                    return
                if item is _GONE or self.gone:
                    return
                if item is _DRAIN:
                    await self._close(CLOSE_GOING_AWAY, "the gateway is shutting down")
                    return
                task = asyncio.get_running_loop().create_task(self._create(item))
                self.current = task
                try:
                    await asyncio.wait({task})
                finally:
                    self.current = None
                if not task.cancelled() and task.exception() is not None:
                    raise cast(BaseException, task.exception())
                if self.gone:
                    return
                if LIFECYCLE.draining:
                    await self._close(CLOSE_GOING_AWAY, "the gateway is shutting down")
                    return
        finally:
            LIVE.discard(self)
            current = self.current
            if current is not None and not current.done():
                current.cancel()
                await asyncio.wait({current})
            reader.cancel()
            await asyncio.wait({reader})

    async def _close(self, code: int, reason: str) -> None:
        if not self.closed and not self.gone:
            self.closed = True
            try:
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
            except OSError:
                pass

    async def _read(self) -> None:
        """Every client message, as it comes: requests to the inbox, a disconnect to the
        response in flight (cancelled: recorded as 499, its upstream request closed)."""
        try:
            while True:
                message = await self.receive()
                kind = message.get("type")
                if kind == "websocket.disconnect":
                    break
                if kind != "websocket.receive":
                    continue
                text = message.get("text")
                if text is None:
                    await self._close(CLOSE_UNSUPPORTED, "binary messages are not accepted: send JSON text")
                    break
                try:
                    parsed: Any = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    parsed = GatewayError(400, f"message is not valid JSON: {exc}")
                if isinstance(parsed, dict) and parsed.get("type") == "response.processed":
                    continue  # the client's acknowledgement of a response: nothing to do
                pending = self.inbox.qsize() + (self.current is not None)
                if pending > MAX_QUEUED:
                    await self._close(CLOSE_POLICY, "one response at a time: wait for response.completed")
                    break
                self.inbox.put_nowait((text, parsed))
        except OSError:
            pass
        self.gone = True
        task = self.current
        if task is not None and not task.done():
            task.cancel()
        self.inbox.put_nowait(_GONE)

    # ------------------------------------------------------------------ one response.create
    async def _create(self, item: tuple[str, Any]) -> None:
        text, parsed = item
        t0 = time.perf_counter()
        service = self.service
        ring, metrics = service.observe() if service.observe is not None else (None, None)
        slot: list[UsageRecord | None] = [None]
        token = RECORD.set(slot)
        if ring is not None:
            ring.enter()
        call = Call(request_id="", route=service.adapter.route, stream=True)
        status = 0
        said: str | None = None
        try:
            status, said = await self._answer(call, text, parsed)
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            RECORD.reset(token)
            if ring is not None:
                ring.leave()
            rec = slot[0] or call.record
            if rec is not None and status != 499:
                status = rec.status
            if metrics is not None:
                metrics.response(status or 499)
            log_request(
                {"method": "WS", "path": self.scope.get("path", PATH)},
                status or 499,
                (time.perf_counter() - t0) * 1000.0,
                call.request_id or None,
                rec,
                said,
            )

    async def _answer(self, call: Call, text: str, parsed: Any) -> tuple[int, str | None]:
        """Answer one message; returns the status its log line shows and the error the client was
        told (a refusal before any record, such as a key revoked since the upgrade)."""
        pipeline = self.pipeline
        try:
            try:
                await pipeline.authenticate(self.headers, call)
            finally:
                key = call.key
                call.request_id = ids.request_id(
                    key.key_hash if key is not None else key_hash_of(self.headers)
                )
            async with pipeline.recording(call):
                return await self._serve(call, text, parsed), None
        except GatewayError as exc:
            self.last = None
            await self.send({"type": "websocket.send", "text": error_event(exc, call.request_id)})
            return exc.status, error_message_of(exc.message)
        except (asyncio.CancelledError, OSError):
            raise
        except Exception:
            log.exception("unhandled error in a WebSocket response.create")
            self.last = None
            internal = GatewayError(500, "internal error in the gateway")
            await self.send({"type": "websocket.send", "text": error_event(internal, call.request_id)})
            return 500, internal.message

    async def _serve(self, call: Call, text: str, data: Any) -> int:
        pipeline, settings, adapter = self.pipeline, self.settings, self.service.adapter
        if isinstance(data, GatewayError):
            raise data
        if not isinstance(data, dict):
            raise GatewayError(400, "message must be a JSON object")
        kind = data.pop("type", None)
        if kind != "response.create":
            raise GatewayError(
                400, f"unknown message type {str(kind)[:64]!r}: expected response.create", param="type"
            )
        # a repeated top-level key, or nesting past what the translation can write back: 400, as over HTTP
        check_body_shape(text.encode(), adapter.max_depth, data)
        generate = data.pop("generate", None)
        if generate is not None and not isinstance(generate, bool):
            raise GatewayError(400, "generate: must be a boolean", param="generate")
        size = len(text)
        previous = data.pop("previous_response_id", None)
        items = _as_items(data.get("input"))
        if previous not in (None, ""):
            last = self.last
            if last is None or previous != last.id:
                raise _Refused(
                    400,
                    f"Previous response with id {str(previous)[:80]!r} not found: a WebSocket"
                    " continues only the last response completed on the same connection",
                    code="previous_response_not_found",
                    param="previous_response_id",
                )
            items = [*last.input, *last.output, *items]
            size += last.size
            data["input"] = items
        if size > settings.max_body_bytes:
            raise GatewayError(
                413, f"the conversation exceeds the maximum request size of {settings.max_body_bytes} bytes"
            )
        data["stream"] = True
        self.last = None
        if generate is False:
            return await self._warm_up(call, data, items, size)
        out = pipeline.prepare(adapter, call, b"", data, self.request)
        await pipeline.admit(call, out, metered=adapter.metered)
        resp = await pipeline.open_upstream(call, out)
        if not (resp.is_event_stream and resp.status == 200):
            try:
                payload = await resp.read()
            except UpstreamStreamError as exc:
                raise GatewayError(502, "the upstream connection was interrupted") from exc
            if resp.status >= 400:
                raise upstream_error(resp.status, payload, resp.headers)
            resp.close()
            raise GatewayError(502, "the upstream answered a stream request without an event stream")
        native, _ = adapter.stream_relay(call, out)
        relay = StreamRelay(pipeline, call, resp, native, translate=True)
        body = cast(AsyncGenerator[bytes, None], relay.body())
        output: list[Any] = []
        final = b""
        try:
            async for chunk in body:
                for name, event in _events(chunk):
                    if name == b"response.output_item.done":
                        item = orjson.loads(event).get("item")
                        output.append(item)
                        size += len(event)
                    elif name in (b"response.completed", b"response.incomplete", b"response.failed"):
                        final = name
                    await self.send({"type": "websocket.send", "text": event.decode()})
        finally:
            await body.aclose()  # a send that failed, or a cancel: the relay records what it saw (499)
        if final in (b"response.completed", b"response.incomplete"):
            self.last = _Last(response_id(call), items, output, size)
        rec = call.record
        return rec.status if rec is not None else 200

    async def _warm_up(self, call: Call, data: dict[str, Any], items: list[Any], size: int) -> int:
        """``generate: false``: the model is checked (and the key's models) and the request kept
        for the next one; nothing goes upstream. Its input may hold only instructions (Codex
        sends its developer message), so it is translated only when continued."""
        pipeline, adapter = self.pipeline, self.service.adapter
        pipeline.resolve_model(call, check_model_name(adapter.validate(data)))
        head = openai_responses.response_head(
            data, response_id=response_id(call), created_at=int(call.started), model=call.model_name or ""
        )
        call.first_byte()
        created = {
            **head,
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "output": [],
            "usage": None,
        }
        done = {
            **created,
            "status": "completed",
            "usage": {
                "input_tokens": 0,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 0,
            },
        }
        for seq, (kind, response) in enumerate((("response.created", created), ("response.completed", done))):
            await self.send(
                {
                    "type": "websocket.send",
                    "text": orjson.dumps(
                        {"type": kind, "sequence_number": seq, "response": response}
                    ).decode(),
                }
            )
        await pipeline.finish(call, 200, Usage())
        self.last = _Last(response_id(call), items, [], size)
        return 200
