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

``Single`` and ``Cluster`` route the limiter's commands: ``Single`` to the one ``Pipe``,
``Cluster`` to the ``Pipe`` of the master that owns the command's hash slot (slot map
from CLUSTER SLOTS, refreshed on MOVED and on connection failures; ASK answered with
ASKING + the command on the target node; a bounded number of redirects per command).
The ordering above holds across redirects too: a cast that has to be sent again (MOVED,
ASK, a lost connection) or cannot be written yet is queued for its slot, and the slot's
later commands wait for that queue (only while it is not empty: the common path is
untouched).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

log = logging.getLogger("ethereal.limits")
_pack = hiredis.pack_command


class Redirect(ResponseError):
    """MOVED or ASK from a Redis Cluster node: the slot lives (or is moving) elsewhere."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        kind, slot, addr = message.split(" ", 2)
        host, _, port = addr.rpartition(":")
        self.ask = kind == "ASK"
        self.slot = int(slot)
        self.addr = (host, int(port))


class Unavailable(ResponseError):
    """The server cannot answer for now (CLUSTERDOWN, TRYAGAIN, LOADING, MASTERDOWN): an outage, not a bug."""


def encode_args(args: tuple[Any, ...] | list[Any]) -> bytes:
    """RESP bulk strings, without the array header."""
    if not args:
        return b""
    try:
        # hiredis packs str, int, float and bytes in C (every request encodes a few of these)
        packed = _pack(args if type(args) is tuple else tuple(args))
    except TypeError:  # another type (a bool, None): written as its str(), as before
        return b"".join(_bulk(arg) for arg in args)
    return packed[packed.find(b"\n") + 1 :]


def _bulk(arg: Any) -> bytes:
    if type(arg) is int:
        data = b"%d" % arg
    elif isinstance(arg, bytes):
        data = arg
    elif isinstance(arg, str):
        data = arg.encode()
    else:
        data = str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    try:
        return _pack(args if type(args) is tuple else tuple(args))
    except TypeError:  # as encode_args
        return b"*%d\r\n%s" % (len(args), b"".join(_bulk(arg) for arg in args))


def _reply_error(reply: Exception) -> ResponseError:
    message = str(reply)
    if message.startswith(("NOSCRIPT", "ERR Function not found")):  # scripts or functions gone: load again
        return NoScriptError(message)
    if message.startswith(("MOVED ", "ASK ")):
        return Redirect(message)
    if message.startswith(("CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN")):
        return Unavailable(message)
    return ResponseError(message)


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

    def __init__(
        self,
        url: str | None,
        *,
        timeout: float = 2.0,
        connect_timeout: float = 1.0,
        defer_s: float = 0.002,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.params = params if params is not None else parse_url(url or "")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        # one entry per command on the wire: (future or None, reply deadline, error callback or None)
        self._waiters: deque[tuple[asyncio.Future[Any] | None, float, Callable[[Exception], Any] | None]] = (
            deque()
        )
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
            conn = loop.create_connection(
                lambda: _Protocol(self), params.get("host", "localhost"), params.get("port", 6379), ssl=ctx
            )
        try:
            _, proto = await asyncio.wait_for(conn, self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}") from None
        self._loop = loop
        self._proto = proto
        setup = []
        if params.get("password"):
            setup.append(
                ("AUTH", params["username"], params["password"])
                if params.get("username")
                else ("AUTH", params["password"])
            )
        if params.get("db"):
            setup.append(("SELECT", params["db"]))
        self._arm_watchdog()
        try:
            for command in setup:
                await self.send(encode_command(command))
        except Exception as exc:  # noqa: BLE001 - any setup failure is a connection failure to the caller
            self._drop(RedisConnectionError(f"Redis connection setup failed: {exc}"))
            raise RedisConnectionError(f"Redis connection setup failed: {exc}") from None
        return proto

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

    def send_nowait(
        self, payload: bytes, on_error: Callable[[Exception], Any], *, defer: bool = False
    ) -> None:
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


ASKING = encode_command(("ASKING",))
_MAX_REDIRECTS = 5


class Single:
    """Every command to one Redis server."""

    cluster = False

    def __init__(self, url: str, *, timeout: float, connect_timeout: float) -> None:
        self.pipe = Pipe(url, timeout=timeout, connect_timeout=connect_timeout)

    async def call(self, payload: bytes, slot: int) -> Any:
        """Send an encoded command and wait for its reply."""
        pipe = self.pipe
        if not pipe.connected:
            await pipe.connection()
        return await pipe.send(payload)

    async def cast(self, payload: bytes, slot: int, on_error: Callable[[Exception], Any]) -> None:
        """Send an encoded command without waiting for its reply (deferred: it leaves with the next one)."""
        pipe = self.pipe
        if not pipe.connected:
            await pipe.connection()
        pipe.send_nowait(payload, on_error, defer=True)

    async def everywhere(self, *args: Any) -> list[Any]:
        """A command for every master (loading the limiter's functions)."""
        return [await self.pipe.execute(*args)]

    async def close(self) -> None:
        await self.pipe.close()


class Cluster:
    """Commands routed by hash slot to the masters of a Redis Cluster, one ``Pipe`` per master."""

    cluster = True

    def __init__(
        self, nodes: list[tuple[str, int]], params: dict[str, Any], *, timeout: float, connect_timeout: float
    ) -> None:
        self.seeds = list(nodes)
        self.params = params  # username, password, connection_class of the URL
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.pipes: dict[tuple[str, int], Pipe] = {}
        self.slots: list[tuple[str, int] | None] = [None] * 16384
        self.masters: list[tuple[str, int]] = []
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queued: dict[int, asyncio.Task[None]] = {}  # slot -> its last cast waiting to be sent again

    def pipe_at(self, addr: tuple[str, int]) -> Pipe:
        pipe = self.pipes.get(addr)
        if pipe is None:
            params = {**self.params, "host": addr[0], "port": addr[1]}
            pipe = self.pipes[addr] = Pipe(
                None, timeout=self.timeout, connect_timeout=self.connect_timeout, params=params
            )
        return pipe

    async def refresh(self, *, force: bool = False) -> None:
        """Read the slot map (CLUSTER SLOTS) from the first node that answers; concurrent callers share one read."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        if not force and any(self.slots) and time.monotonic() - self._refreshed_at < 0.25:
            return None
        self._refreshing = asyncio.ensure_future(self._refresh())
        try:
            return await asyncio.shield(self._refreshing)
        finally:
            self._refreshing = None

    async def _refresh(self) -> None:
        last: Exception | None = None
        candidates = list(dict.fromkeys([*self.masters, *self.seeds, *self.pipes]))
        # nodes with a live connection first: a failed master would only cost a connect timeout
        candidates.sort(key=lambda a: not (a in self.pipes and self.pipes[a].connected))
        for addr in candidates:
            try:
                reply = await self.pipe_at(addr).execute("CLUSTER", "SLOTS")
            except RedisError as exc:
                last = exc
                continue
            slots: list[tuple[str, int] | None] = [None] * 16384
            masters: dict[tuple[str, int], None] = {}
            for start, end, master, *_replicas in reply:
                host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
                node = (host or addr[0], int(master[1]))  # an empty host means "the node you asked"
                masters[node] = None
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = node
            self.slots, self.masters = slots, list(masters)
            self._refreshed_at = time.monotonic()
            for gone in [a for a in self.pipes if a not in masters and a not in self.seeds]:
                await self.pipes.pop(gone).close()
            return
        raise RedisConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS: {last}")

    async def call(self, payload: bytes, slot: int) -> Any:
        return await self._route(payload, slot, ordered=True)

    async def _route(self, payload: bytes, slot: int, *, ordered: bool) -> Any:
        """``ordered``: after this worker's queued casts of the slot (a queued cast is ordered by its queue)."""
        last: Exception | None = None
        for attempt in range(_MAX_REDIRECTS):
            if ordered and slot in self._queued:  # (checked again after a redirect: casts may be queued now)
                await self._after_queued(slot)
            addr = self.slots[slot]
            if addr is None:
                await self.refresh(force=True)
                addr = self.slots[slot]
                if addr is None:
                    raise Unavailable(f"CLUSTERDOWN no master serves hash slot {slot}")
            pipe = self.pipe_at(addr)
            try:
                if not pipe.connected:
                    await pipe.connection()
                return await pipe.send(payload)
            except Redirect as redirect:
                last = redirect
                if redirect.ask:  # the slot is migrating: this key is on the target already
                    if ordered and slot in self._queued:
                        await self._after_queued(slot)
                    target = self.pipe_at(redirect.addr)
                    await target.connection()
                    target.send_nowait(ASKING, _ignore)  # queued in the same write, just ahead of the command
                    try:
                        return await target.send(payload)
                    except Redirect as again:
                        last = again
                        continue
                self.slots[redirect.slot] = redirect.addr  # MOVED: the slot's new owner; re-read the map too
                self._spawn(self.refresh())
            except RedisConnectionError as exc:
                last = exc
                if attempt >= 1:
                    raise
                await self.refresh(force=True)  # a master failed over, or is gone
        raise last if last is not None else RedisConnectionError("too many Redis Cluster redirects")

    async def cast(self, payload: bytes, slot: int, on_error: Callable[[Exception], Any]) -> None:
        addr = self.slots[slot]
        pipe = self.pipe_at(addr) if addr is not None else None
        if pipe is None or not pipe.connected or slot in self._queued:
            self._send_in_order(payload, slot, on_error)
            return

        def failed(exc: Exception) -> None:
            if isinstance(exc, Redirect | RedisConnectionError):  # resend through call(): redirects, new map
                self._send_in_order(payload, slot, on_error)
            else:
                on_error(exc)

        pipe.send_nowait(payload, failed, defer=True)

    async def _after_queued(self, slot: int) -> None:
        """Once this worker's queued casts of the slot have been sent (at once when there are none)."""
        queued = self._queued.get(slot)
        if queued is not None:
            await asyncio.wait((queued,))

    def _send_in_order(self, payload: bytes, slot: int, on_error: Callable[[Exception], Any]) -> None:
        """Send a cast through ``call`` (redirects, a new map, a connection) after the slot's queued ones.
        Replies on one connection come in order, so casts that fail together are queued in the order sent."""
        previous = self._queued.get(slot)
        task = asyncio.get_running_loop().create_task(self._send_queued(previous, payload, slot, on_error))
        self._queued[slot] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._dequeued(slot, done))

    async def _send_queued(
        self,
        previous: asyncio.Task[None] | None,
        payload: bytes,
        slot: int,
        on_error: Callable[[Exception], Any],
    ) -> None:
        if previous is not None:
            await asyncio.wait((previous,))
        try:
            await self._route(payload, slot, ordered=False)
        except (RedisError, OSError) as exc:
            on_error(exc)

    def _dequeued(self, slot: int, task: asyncio.Task[None]) -> None:
        if self._queued.get(slot) is task:
            del self._queued[slot]
        self._done(task)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("Redis Cluster background call failed: %s", task.exception())

    async def everywhere(self, *args: Any) -> list[Any]:
        await self.refresh(force=True)
        return [await self.pipe_at(addr).execute(*args) for addr in self.masters]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pipe in list(self.pipes.values()):
            await pipe.close()


def _ignore(exc: Exception) -> None:
    return None
