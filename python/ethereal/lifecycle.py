"""A worker's life around the app: health, draining, in-flight streams, event-loop lag.

The ASGI edge (``app.Ethereal``) runs every request through ``Lifecycle``. It answers ``GET /healthz``: 200
``{"status":"ok"}`` while serving, 503 ``{"status":"draining"}`` once a shutdown began, so a load
balancer (HAProxy's ``option httpchk``, a Kubernetes readiness probe) stops sending new requests
before the worker stops accepting them. ``/healthz?verbose=1`` adds this worker's pid, open
streams, event-loop lag (p50/p99/max over the last 10 seconds) and its cyclic collector
(objects frozen at startup, young threshold, collections per generation: app.tune_gc).

It also keeps the set of event streams in flight (responses whose content type is
``text/event-stream``) so that, when the grace period of a shutdown runs out, ``end_streams``
can close each one well-formed: the bytes of a partly sent SSE frame are never on the wire
(each stream's bytes reach the socket cut at frame boundaries; a partial frame waits for the
rest, which the client could not have used anyway), then an error frame in the route's dialect
(Anthropic ``event: error`` with ``overloaded_error``, OpenAI ``data: {"error":…}``, Responses
``response.failed``), then the end of the body. The stream's handler is cancelled, which
settles its reservation and records its usage as for any interrupted stream.

The serving side (``ethereal.serving``) calls ``begin_drain`` on SIGTERM and ``end_streams``
when the grace period is over. One ``Lifecycle`` per worker process: ``LIFECYCLE``.

``app.Ethereal`` runs every request through ``serve``, which also observes it when given
the worker's ring and metrics (``Ethereal.observed``): in flight, the response counter and
the request log line, in the one send wrapper a request passes, so a stream is counted
until its last byte and requests refused before any handler (404s, 401s) are logged too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from ethereal.errors import anthropic_sse_error, openai_error_body
from ethereal.ids import response_id
from ethereal.observability.http import RECORD, Parts, error_message_in, log_request
from ethereal.storage.records import UsageRecord

if TYPE_CHECKING:
    from ethereal.pipeline import Cleanup

log = logging.getLogger("ethereal")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]  # (scope, receive, send)

_OK = b'{"status":"ok"}'
_DRAINING = b'{"status":"draining"}'
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
SHUTDOWN_MESSAGE = "the gateway is shutting down; retry the request"
_LAG_INTERVAL = 0.05  # seconds between event-loop lag samples
_LAG_SAMPLES = 1200  # one minute of them at most
_ERROR_BODY_MAX = 16 * 1024  # bytes of an error answer read for its message (the log line's error_message)


class Stream:
    """One event stream in flight: the task serving it and what is needed to end it cleanly."""

    __slots__ = ("ended", "ending", "held", "path", "request_id", "send", "task")

    def __init__(self, task: asyncio.Task[Any] | None, send: Send, path: str, request_id: str) -> None:
        self.task = task
        self.send = send
        self.path = path
        self.request_id = request_id
        self.held = b""  # bytes after the last frame boundary, not yet sent
        self.ended = False
        self.ending = False

    def closing_frame(self) -> bytes:
        if self.path.startswith("/v1/chat/"):
            return b"data: " + openai_error_body("overloaded_error", SHUTDOWN_MESSAGE) + b"\n\n"
        if self.path.startswith("/v1/responses"):
            body = {
                "type": "response.failed",
                "response": {
                    "id": response_id(self.request_id),
                    "object": "response",
                    "status": "failed",
                    "error": {"code": "server_error", "message": SHUTDOWN_MESSAGE},
                },
            }
            return b"event: response.failed\ndata: " + orjson.dumps(body) + b"\n\n"
        return anthropic_sse_error("overloaded_error", SHUTDOWN_MESSAGE, self.request_id or None)


async def send_health(send: Send, scope: Scope, status: int, body: bytes) -> None:
    """``/healthz``'s answer (``Lifecycle.health_response``) on the wire."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


def frame_cut(data: bytes) -> int:
    """Index just past the last SSE frame boundary (a blank line) in ``data``; 0 when none."""
    best = 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = data.rfind(sep)
        if i >= 0 and i + len(sep) > best:
            best = i + len(sep)
    return best


class Lifecycle:
    """Per-process state shared by the ASGI wrapper and the server's signal handling."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_started: float | None = None
        self.streams: set[Stream] = set()
        self.lag: deque[tuple[float, float]] = deque(maxlen=_LAG_SAMPLES)  # (when, lag) in seconds
        self._lag_task: asyncio.Task[None] | None = None
        self.streams_ended = 0
        # what the started gateway adds to /healthz?verbose=1 (name -> a cheap callable): the model
        # registry's version and alerts (observing.register)
        self.details: dict[str, Callable[[], Any]] = {}

    # -------------------------------------------------------------- called by ethereal.serving
    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()

    async def end_streams(self, wait: float = 5.0) -> int:
        """Close every stream still in flight with an error frame; returns how many."""
        streams = [s for s in self.streams if not s.ended]
        for s in streams:
            s.ending = True
            if s.task is not None and not s.task.done():
                s.task.cancel()
        if streams:
            deadline = time.monotonic() + wait
            while any(not s.ended for s in streams) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self.streams_ended += len(streams)
        return len(streams)

    # -------------------------------------------------------------- event-loop lag
    async def _sample_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(_LAG_INTERVAL)
            now = loop.time()
            self.lag.append((now, max(0.0, now - t - _LAG_INTERVAL)))

    def lag_ms(self, window: float = 10.0) -> dict[str, float]:
        """Event-loop lag over the last ``window`` seconds (sampled every 50 ms)."""
        since = time.monotonic() - window  # uvloop's loop.time() is the monotonic clock too
        ordered = sorted(lag for when, lag in self.lag if when >= since)
        if not ordered:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "samples": 0}
        n = len(ordered)
        return {
            "p50": round(ordered[n // 2] * 1000, 3),
            "p99": round(ordered[min(n - 1, int(n * 0.99))] * 1000, 3),
            "max": round(ordered[-1] * 1000, 3),
            "samples": n,
        }

    def health(self, verbose: bool) -> tuple[int, bytes]:
        if not verbose:
            return (503, _DRAINING) if self.draining else (200, _OK)
        body: dict[str, Any] = {
            "status": "draining" if self.draining else "ok",
            "pid": os.getpid(),
            "streams": len(self.streams),
            "loop_lag_ms": self.lag_ms(),
            "gc": {
                "frozen": gc.get_freeze_count(),
                "young_threshold": gc.get_threshold()[0],
                "collections": [g["collections"] for g in gc.get_stats()],
            },
        }
        for name, detail in self.details.items():
            try:
                body[name] = detail()
            except Exception as exc:  # noqa: BLE001 - a detail never fails the health check
                body[name] = {"error": type(exc).__name__}
        return (503 if self.draining else 200), orjson.dumps(body)

    # -------------------------------------------------------------- ASGI
    def lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and self._lag_task is None:
                self._lag_task = asyncio.get_running_loop().create_task(
                    self._sample_lag(), name="ethereal-lag"
                )
            elif kind.startswith("lifespan.shutdown") and self._lag_task is not None:
                self._lag_task.cancel()
                self._lag_task = None
            await send(message)

        return wrapped

    def health_response(self, scope: Scope) -> tuple[int, bytes] | None:
        """``GET``/``HEAD /healthz``'s answer, or None for any other request."""
        if scope["path"] == "/healthz" and scope["method"] in ("GET", "HEAD"):
            return self.health(b"verbose" in (scope.get("query_string") or b""))
        return None

    async def serve(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        observe: Parts | None,
        cleanups: list[Cleanup] | None = None,
    ) -> None:
        """One request through one send wrapper: stream tracking (event streams answering a POST),
        the drain's ``connection: close``, and, with ``observe``, the in-flight count, the status
        counter and the request log line (observability/http.py). ``cleanups`` (the request's
        pending work, see pipeline.CLEANUP_SCOPE_KEY) run once the response is over."""
        stream: Stream | None = None
        streams = self.streams
        trackable = scope["method"] == "POST"
        status = 0
        request_id: str | None = None
        error_body = b""  # the start of an error answer's body: its message goes on the log line
        ring, metrics = observe() if observe is not None else (None, None)
        if observe is not None:
            slot: list[UsageRecord | None] = [None]
            token = RECORD.set(slot)
            t0 = time.perf_counter()
            if ring is not None:
                ring.enter()

        async def respond(message: Message) -> None:
            nonlocal stream, status, request_id, error_body
            if message["type"] != "http.response.start":
                if stream is None:
                    if status >= 400 and len(error_body) < _ERROR_BODY_MAX:
                        error_body += message.get("body", b"")[:_ERROR_BODY_MAX]
                    await send(message)  # a plain body, or the server's own messages
                    return
                body = message.get("body", b"")
                if message.get("more_body", False):
                    if not stream.held and body.endswith(b"\n\n"):
                        await send(message)  # the common case: whole frames, nothing held back
                        return
                    data = stream.held + body if stream.held else body
                    # most chunks end at a frame boundary: skip the search then
                    cut = len(data) if data.endswith(b"\n\n") else frame_cut(data)
                    if cut != len(data):
                        stream.held = data[cut:]
                        if not cut:
                            return
                        data = data[:cut]
                    else:
                        stream.held = b""
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    return
                if stream.held:
                    body = stream.held + body
                    stream.held = b""
                stream.ended = True
                streams.discard(stream)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            status = message["status"]
            headers = message.get("headers") or ()
            found = dict(headers)  # one pass in C; what is read below is never repeated in practice
            rid = found.get(b"request-id") or found.get(b"x-request-id")
            if rid is not None:
                request_id = rid.decode("latin-1")[:64]
            if trackable and found.get(b"content-type", b"").startswith(b"text/event-stream"):
                stream = Stream(asyncio.current_task(), send, scope["path"], request_id or "")
                streams.add(stream)
            if self.draining:
                # a keep-alive client should open its next request elsewhere
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await app(scope, receive, respond)
        except asyncio.CancelledError:
            if stream is None or not stream.ending or stream.ended:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # our own cancel: end the response well-formed instead
            stream.ended = True
            streams.discard(stream)
            await send({"type": "http.response.body", "body": stream.closing_frame(), "more_body": False})
        finally:
            if stream is not None and not stream.ended:
                stream.ended = True
                streams.discard(stream)
            if cleanups:
                for cleanup in cleanups:
                    try:
                        work = cleanup()
                        if work is not None:
                            await asyncio.shield(work)
                    except Exception:
                        log.exception("request cleanup failed")
                # the list hangs off the scope and its cleanups reach back to the scope (a stream
                # relay holds the server's receive): emptied, the request's objects are freed by
                # reference counting when it ends, not left for the cyclic collector
                cleanups.clear()
            if observe is not None:
                RECORD.reset(token)
                if ring is not None:
                    ring.leave()
                if metrics is not None:
                    metrics.response(status or 499)
                rec = slot[0]
                said = None
                if error_body and (rec is None or rec.error_message is None):
                    said = error_message_in(error_body[:_ERROR_BODY_MAX])
                log_request(scope, status or 499, (time.perf_counter() - t0) * 1000.0, request_id, rec, said)


LIFECYCLE = Lifecycle()
