"""One pipelined Redis connection per worker for the limiter's hot path (EVALSHA).

Why not redis.asyncio's pool for these two calls: each pooled command costs ~60-80 µs
of Python CPU (connection checkout, timeouts, packing, observability hooks) and takes a
connection of its own, so hundreds of requests in flight mean hundreds of connections
and one write syscall per command. Here every command of an event-loop iteration goes
out in one write on one connection, replies are matched in order (Redis answers a
connection's commands in the order sent), and parsing is hiredis. Ordering is also what
lets ``settle`` return without waiting for its reply: any later command of this worker
(the next admit of the same key) is executed after it. redis.asyncio still does
everything else (SCRIPT LOAD, pub/sub, publish).

A connection that fails, or whose oldest reply is overdue, is dropped and every
pending command fails with ``redis.exceptions.ConnectionError``; the next command
reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


def encode_args(args: tuple[Any, ...] | list[Any]) -> bytes:
    """RESP bulk strings, without the array header."""
    parts = []
    for arg in args:
        if type(arg) is int:
            data = b"%d" % arg
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def encode_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    return b"*%d\r\n%s" % (len(args), encode_args(args))


def _reply_error(reply: Exception) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.pipe._waiters
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.pipe._drop(RedisConnectionError(f"bad reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not waiters:  # a reply nobody asked for: the stream is out of step
                self.pipe._drop(RedisConnectionError("unexpected reply from Redis"))
                return
            fut, _, callback = waiters.popleft()
            if callback is not None:  # fire-and-forget: no future, the callback sees the reply
                if isinstance(reply, hiredis.ReplyError):
                    callback(_reply_error(reply))
                continue
            if fut.done():  # type: ignore[union-attr]
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(_reply_error(reply))  # type: ignore[union-attr]
            else:
                fut.set_result(reply)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._drop(RedisConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))


class Pipe:
    """A lazily connected, auto-pipelined Redis connection."""

    def __init__(self, url: str, *, timeout: float = 2.0, connect_timeout: float = 1.0,
                 defer_s: float = 0.002) -> None:
        self.params = parse_url(url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        # one entry per command on the wire: (future or None, reply deadline, error callback or None)
        self._waiters: deque[tuple[asyncio.Future[Any] | None, float, Callable[[Exception], Any] | None]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._deferred: asyncio.TimerHandle | None = None
        self.defer_s = defer_s
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set on connect

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        params = self.params
        cls = params.get("connection_class")
        if cls is UnixDomainSocketConnection:
            conn = loop.create_unix_connection(lambda: _Protocol(self), params["path"])
        else:
            ctx = ssl.create_default_context() if cls is SSLConnection else None
            conn = loop.create_connection(lambda: _Protocol(self), params.get("host", "localhost"),
                                          params.get("port", 6379), ssl=ctx)
        try:
            _, proto = await asyncio.wait_for(conn, self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}") from None
        self._loop = loop
        self._proto = proto
        setup = []
        if params.get("password"):
            setup.append(("AUTH", params["username"], params["password"]) if params.get("username")
                         else ("AUTH", params["password"]))
        if params.get("db"):
            setup.append(("SELECT", params["db"]))
        self._arm_watchdog()
        try:
            for command in setup:
                await self.send(encode_command(command))
        except Exception as exc:
            self._drop(RedisConnectionError(f"Redis connection setup failed: {exc}"))
            raise RedisConnectionError(f"Redis connection setup failed: {exc}") from None
        return proto  # type: ignore[no-any-return]

    async def connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None:
            return proto
        if self._closed:
            raise RedisConnectionError("the limiter is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    def send(self, payload: bytes, *, defer: bool = False) -> asyncio.Future[Any]:
        """Queue one encoded command; its reply resolves the returned future.

        Commands go out at the end of the event-loop iteration, all in one write. A deferred
        command (a settle: nobody waits for it) may wait up to ``defer_s`` for company: it
        leaves with the next ordinary command, still ahead of it, so one request costs one
        write and one reply wake-up instead of two.
        """
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.append((fut, time.monotonic() + self.timeout, None))
        self._queue(payload, defer)
        return fut

    def send_nowait(self, payload: bytes, on_error: Callable[[Exception], Any], *, defer: bool = False) -> None:
        """Queue a command nobody awaits (no future): ``on_error`` is called if it fails."""
        self._waiters.append((None, time.monotonic() + self.timeout, on_error))
        self._queue(payload, defer)

    def _queue(self, payload: bytes, defer: bool) -> None:
        self._out.append(payload)
        if defer and self.defer_s > 0:
            if not self._flush_scheduled and self._deferred is None:
                self._deferred = self._loop.call_later(self.defer_s, self._flush)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    @property
    def connected(self) -> bool:
        return self._proto is not None

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        out, self._out = self._out, []
        proto = self._proto
        if out and proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(b"".join(out) if len(out) > 1 else out[0])

    async def execute(self, *args: Any) -> Any:
        await self.connection()
        return await self.send(encode_command(args))

    async def execute_raw(self, payload: bytes) -> Any:
        """An already encoded command; waits for its reply."""
        await self.connection()
        return await self.send(payload)

    async def submit(self, payload: bytes, *, defer: bool = False) -> asyncio.Future[Any]:
        """Send an encoded command; the caller may await the future or not."""
        await self.connection()
        return self.send(payload, defer=defer)

    def _arm_watchdog(self) -> None:
        if self._watchdog is None and not self._closed:
            self._watchdog = asyncio.get_running_loop().call_later(0.25, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if self._waiters and self._waiters[0][1] < time.monotonic():
            self._drop(RedisConnectionError(f"Redis did not answer within {self.timeout:g}s"))
        if self._proto is not None:
            self._arm_watchdog()

    def _drop(self, exc: Exception) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        self._out = []
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        waiters, self._waiters = self._waiters, deque()
        for fut, _, callback in waiters:
            if callback is not None:
                callback(exc)
            elif fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: an abandoned waiter must not log "never retrieved"

    async def drain(self, timeout: float = 2.0) -> None:
        """Send what is deferred and wait (bounded) for every reply still expected."""
        if self._out:
            self._flush()
        if not self._waiters:
            return
        # a marker behind every command on the wire: its reply comes last (replies are in order)
        pending = [self.send(encode_command(("PING",)))] if self._proto is not None else []
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self) -> None:
        try:
            await self.drain()
        finally:
            self._closed = True
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            self._drop(RedisConnectionError("the limiter is closed"))
