"""The HTTP/1.1 front door: uvicorn's httptools protocol with limits a hostile client cannot pass.

httptools (llhttp) hands a header to the protocol only once it is complete, and the
wrapper buffers it until then: unpatched, a client can make a worker hold a 50 MB header,
10,000 header fields, or a socket that trickles one byte a second for ever. This
protocol enforces, per connection and before anything is buffered past the cap:

- the request head (request line + headers) at most ``max_header_bytes`` and
  ``max_header_fields`` fields: 431 and the connection is closed;
- the head must arrive within ``header_timeout`` of its first byte (or of the
  connection opening): 408 and close (slowloris on headers, half-open requests);
- a body that stalls for ``body_idle_timeout``, or averages under ``body_min_rate``
  bytes/s once it has run that long: 408 and close (slowloris on bodies). Time the
  application itself leaves the body unread (flow control paused) is not held against
  the client;
- an idle keep-alive connection is closed after ``keepalive_timeout`` (uvicorn's own timer);
- at most ``max_connections`` open connections per worker: the next one gets a 503
  with ``retry-after`` and is closed at once.

Refusals are written in Anthropic's error shape, the shape every client of the gateway parses.

The clocks cost nothing per request: a phase change only notes the time, and one sweep per
worker (``_Sweeper``, every tenth of the shortest timeout, at most once a second) checks
every open connection's deadline. A limit fires at most one sweep interval late.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass, fields
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ethereal.settings import Settings


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The client-connection settings of the same names (settings.py has their defaults)."""

    max_header_bytes: int
    max_header_fields: int
    header_timeout: float
    body_idle_timeout: float
    body_min_rate: int
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing at once."""


def _refusal(status: int, reason: bytes, err_type: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"type": "error", "error": {"type": err_type, "message": message}}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n" % (status, reason, len(body), extra)
    ) + body


class _Sweeper:
    """One timer per worker that checks every guarded connection's deadlines."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.connections: set[GuardedHttpToolsProtocol] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, conn: GuardedHttpToolsProtocol) -> None:
        self.connections.add(conn)
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._sweep)

    def discard(self, conn: GuardedHttpToolsProtocol) -> None:
        self.connections.discard(conn)

    def _sweep(self) -> None:
        self._handle = None
        now = self.loop.time()
        for conn in list(self.connections):
            conn._check(now)
        if self.connections:
            self._handle = self.loop.call_later(self.interval, self._sweep)


def _sweeper_of(protocol: GuardedHttpToolsProtocol) -> _Sweeper:
    """The sweeper of the server this connection belongs to (kept on uvicorn's shared server state)."""
    state = protocol.server_state
    sweeper: _Sweeper | None = getattr(state, "ethereal_sweeper", None)
    if sweeper is None or sweeper.loop is not protocol.loop:
        limits = protocol.limits
        interval = min(1.0, max(0.02, min(limits.header_timeout, limits.body_idle_timeout) / 10))
        sweeper = _Sweeper(protocol.loop, interval)
        state.ethereal_sweeper = sweeper  # type: ignore[attr-defined]
    return sweeper


_HEAD = 0  # reading a request line and headers
_BODY = 1  # reading a body the application waits for
_DONE = 2  # the whole request is read: the application's time, not the client's


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits above (one instance per connection)."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or ConnectionLimits.from_settings(Settings())
        self._phase = _HEAD
        self._head_bytes = 0
        self._phase_started = 0.0
        self._last_data = 0.0
        self._body_bytes = 0
        self._paused_for = 0.0  # body time the application left unread (flow control)
        self._paused_at: float | None = None
        self._clock = False  # the current phase is on the clock (head or body being read)
        self._sweeper: _Sweeper | None = None

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                _refusal(
                    503,
                    b"Service Unavailable",
                    "overloaded_error",
                    "too many open connections to this gateway worker; retry shortly",
                    b"retry-after: 1\r\n",
                )
            )
            return
        self._sweeper = _sweeper_of(self)
        self._sweeper.add(self)
        self._enter(_HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._clock = False
        if self._sweeper is not None:
            self._sweeper.discard(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # the connection is the WebSocket protocol's from here on (it still counts toward
        # max_connections): this one's clocks must never write a 408 into it
        self._clock = False
        if self._sweeper is not None:
            self._sweeper.discard(self)
        super().handle_websocket_upgrade()

    def _refuse(self, response: bytes) -> None:
        self._clock = False
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    # ------------------------------------------------------------------ reading
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        now = self.loop.time()
        self._last_data = now
        if self._phase != _BODY:
            if self._phase == _HEAD and not self._clock:  # a request's first byte after a keep-alive wait
                self._enter(_HEAD)
            # bytes that come while a response is still being written are the next request's head
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                # feed only what the cap allows: if the head is not complete within it, refuse
                head, data = data[: max(room, 0)], data[max(room, 0) :]
                self._head_bytes += len(head)
                if head and not self._feed(head):
                    return
                if self._phase != _BODY:
                    self._too_large(f"request headers exceed {self.limits.max_header_bytes} bytes")
                    return
            else:
                self._head_bytes += len(data)
        elif self._phase == _BODY:
            self._body_bytes += len(data)
        if data:
            try:  # _feed inlined: this is every request's path
                self.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                self._parse_failed(exc)

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)
            return False
        return not self.transport.is_closing()

    def _parse_failed(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(exc.__context__, _HeadTooLarge):
            self._too_large(str(exc.__context__))
            return
        self.logger.warning("Invalid HTTP request received.")
        self.send_400_response("Invalid HTTP request received.")

    def _too_large(self, message: str) -> None:
        self._refuse(_refusal(431, b"Request Header Fields Too Large", "invalid_request_error", message))

    # ------------------------------------------------------------------ parser callbacks
    def on_headers_complete(self) -> None:
        # the field count is checked once the head is in: the byte cap above already bounds
        # what a head with many fields can hold (no per-field callback on the hot path)
        if len(self.headers) > self.limits.max_header_fields:
            raise _HeadTooLarge(f"too many request header fields (at most {self.limits.max_header_fields})")
        super().on_headers_complete()
        # a request without a body is complete here too; on_message_complete follows in the same feed
        self._enter(_BODY)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # until the response ends the time is the application's; then uvicorn's keep-alive timer runs
        self._phase = _DONE
        self._clock = False
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase != _BODY:
            # the next bytes are the next request's head; its clock starts with its first byte,
            # or now when part of it came while the response was being written
            self._phase = _HEAD
            self._clock = bool(self._head_bytes)
            if self._clock:
                self._phase_started = self.loop.time()

    # ------------------------------------------------------------------ clocks
    def _enter(self, phase: int) -> None:
        self._phase = phase
        now = self.loop.time()
        self._phase_started = now
        self._last_data = now
        self._clock = phase != _DONE
        if phase == _HEAD:
            self._head_bytes = 0
        elif phase == _BODY:
            self._body_bytes = 0
            self._paused_for = 0.0
            self._paused_at = None

    def _check(self, now: float) -> None:
        """Called by the sweep: refuse the connection if the phase on the clock is over time."""
        if not self._clock or self.transport is None or self.transport.is_closing():
            return
        if self._phase == _HEAD:
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a pipelined head behind a response still being written: not the client's stall
            if now - self._phase_started >= self.limits.header_timeout:
                self._timed_out("request headers not received in time")
        elif self._phase == _BODY:
            if self.flow.read_paused:  # the application is not reading: its time, not the client's
                if self._paused_at is None:
                    self._paused_at = now
                return
            if self._paused_at is not None:
                self._paused_for += now - self._paused_at
                self._last_data = max(self._last_data, self._paused_at)
                self._paused_at = None
            if now - self._last_data >= self.limits.body_idle_timeout:
                self._timed_out("request body stalled")
                return
            elapsed = now - self._phase_started - self._paused_for
            if (
                elapsed >= self.limits.body_idle_timeout
                and self.limits.body_min_rate
                and self._body_bytes < self.limits.body_min_rate * elapsed
            ):
                self._timed_out(f"request body slower than {self.limits.body_min_rate} bytes/s")

    def _timed_out(self, message: str) -> None:
        if self.cycle is not None and self._phase == _BODY and self.cycle.response_started:
            # the application already answered (e.g. a 401 before reading the body): just close
            self._clock = False
            self.transport.close()
            return
        self._refuse(_refusal(408, b"Request Timeout", "invalid_request_error", message))


def protocol_class(limits: ConnectionLimits) -> Any:
    """The protocol factory handed to uvicorn's ``http=`` (picklable, so workers get it too)."""
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)
