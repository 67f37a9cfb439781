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
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ethereal.settings import Settings


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024
    max_header_fields: int = 200
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    body_min_rate: int = 1024
    keepalive_timeout: float = 5.0
    max_connections: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes, max_header_fields=settings.max_header_fields,
            header_timeout=settings.header_timeout, body_idle_timeout=settings.body_idle_timeout,
            body_min_rate=settings.body_min_rate, keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections,
        )


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing at once."""


def _refusal(status: int, reason: bytes, err_type: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"type": "error", "error": {"type": err_type, "message": message}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (status, reason, len(body), extra)) + body


_HEAD = 0  # reading a request line and headers
_BODY = 1  # reading a body the application waits for
_DONE = 2  # the whole request is read: the application's time, not the client's


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits above (one instance per connection)."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or ConnectionLimits()
        self._phase = _HEAD
        self._head_bytes = 0
        self._fields = 0
        self._phase_started = 0.0
        self._last_data = 0.0
        self._body_bytes = 0
        self._paused_for = 0.0  # body time the application left unread (flow control)
        self._paused_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(_refusal(503, b"Service Unavailable", "overloaded_error",
                                  "too many open connections to this gateway worker; retry shortly",
                                  b"retry-after: 1\r\n"))
            return
        self._enter(_HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _refuse(self, response: bytes) -> None:
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    # ------------------------------------------------------------------ reading
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        now = self.loop.time()
        self._last_data = now
        if self._phase != _BODY:
            if self._phase == _HEAD and self._timer is None:  # a request's first byte after a keep-alive wait
                self._enter(_HEAD)
            # bytes that come while a response is still being written are the next request's head
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                # feed only what the cap allows: if the head is not complete within it, refuse
                head, data = data[:max(room, 0)], data[max(room, 0):]
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
            self._feed(data)

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._too_large(str(exc.__context__))
                return False
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    def _too_large(self, message: str) -> None:
        self._refuse(_refusal(431, b"Request Header Fields Too Large", "invalid_request_error", message))

    # ------------------------------------------------------------------ parser callbacks
    def on_url(self, url: bytes) -> None:
        self._fields = 0
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limits.max_header_fields:
            raise _HeadTooLarge(f"too many request header fields (at most {self.limits.max_header_fields})")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._fields = 0
        super().on_headers_complete()
        # a request without a body is complete here too; on_message_complete follows in the same feed
        self._enter(_BODY)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # until the response ends the time is the application's; then uvicorn's keep-alive timer runs
        self._enter(_DONE)
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase != _BODY:
            # the next bytes are the next request's head; its timer starts with its first byte,
            # or now when part of it came while the response was being written
            self._phase = _HEAD
            self._cancel_timer()
            if self._head_bytes:
                self._phase_started = self.loop.time()
                self._arm(self.limits.header_timeout)

    # ------------------------------------------------------------------ timers
    def _enter(self, phase: int) -> None:
        self._phase = phase
        self._cancel_timer()
        now = self.loop.time()
        self._phase_started = now
        self._last_data = now
        if phase == _HEAD:
            self._head_bytes = 0
            self._arm(self.limits.header_timeout)
        elif phase == _BODY:
            self._body_bytes = 0
            self._paused_for = 0.0
            self._paused_at = None
            self._arm(self.limits.body_idle_timeout)

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(max(delay, 0.001), self._check)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase == _HEAD:
            if self.cycle is not None and not self.cycle.response_complete:
                # a pipelined head behind a response still being written: not the client's stall
                self._arm(self.limits.header_timeout)
                return
            left = self._phase_started + self.limits.header_timeout - now
            if left > 0:
                self._arm(left)
                return
            self._timed_out("request headers not received in time")
        elif self._phase == _BODY:
            if self.flow.read_paused:  # the application is not reading: its time, not the client's
                if self._paused_at is None:
                    self._paused_at = now
                self._arm(self.limits.body_idle_timeout)
                return
            if self._paused_at is not None:
                self._paused_for += now - self._paused_at
                self._paused_at = None
            idle_left = self._last_data + self.limits.body_idle_timeout - now
            if idle_left <= 0:
                self._timed_out("request body stalled")
                return
            elapsed = now - self._phase_started - self._paused_for
            if (elapsed >= self.limits.body_idle_timeout and self.limits.body_min_rate
                    and self._body_bytes < self.limits.body_min_rate * elapsed):
                self._timed_out(f"request body slower than {self.limits.body_min_rate} bytes/s")
                return
            self._arm(min(idle_left, self.limits.body_idle_timeout))

    def _timed_out(self, message: str) -> None:
        if self.cycle is not None and self._phase == _BODY and self.cycle.response_started:
            # the application already answered (e.g. a 401 before reading the body): just close
            self._cancel_timer()
            self.transport.close()
            return
        self._refuse(_refusal(408, b"Request Timeout", "invalid_request_error", message))


def protocol_class(limits: ConnectionLimits) -> Any:
    """The protocol factory handed to uvicorn's ``http=`` (picklable, so workers get it too)."""
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)
