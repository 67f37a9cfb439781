"""The HTTP client to upstream Anthropic-compatible APIs.

One pooled keep-alive session per credential (``pool_key``), so a credential whose
upstream is slow or dead cannot exhaust the connections of the others, and a deleted
credential's connections can be closed. Responses stream chunk by chunk as they arrive.

Timeouts: ``connect`` (TCP/TLS), ``first_byte`` (request sent → response headers, and for
event streams the first body chunk, see ``UpstreamResponse.prime``), ``idle`` (the longest
silence between two body chunks), each kept by a ``_Deadline`` in the request's own task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Self

import aiohttp

_NET_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError)


class UpstreamConnectError(Exception):
    """Nothing usable came back: connect failure, reset or timeout before the first byte."""

    def __init__(self, message: str, kind: str = "connect") -> None:
        super().__init__(message)
        self.kind = kind  # "connect" | "timeout"


class UpstreamStreamError(Exception):
    """The upstream failed after the response started (reset, idle timeout)."""


class _Deadline:
    """``with _Deadline(seconds): await ...`` raises TimeoutError when the await outlasts the
    deadline, as ``asyncio.timeout`` does, in the request's own task: one timer, no task per read
    (``asyncio.wait_for`` wraps each read in a task) and none of ``asyncio.timeout``'s state
    machine. Every upstream read of every request goes through one."""

    __slots__ = ("_cancelling", "_handle", "_task", "expired")

    def __init__(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("_Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self._handle = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._handle.cancel()
        # our own cancel, and no one else asked for one meanwhile: the await timed out
        if self.expired and exc_type is asyncio.CancelledError and self._task.uncancel() <= self._cancelling:
            raise TimeoutError from exc


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class Timeouts:
    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 300.0


class UpstreamResponse:
    __slots__ = ("_body", "_first", "_idle", "_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, idle: float) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers  # case-insensitive multidict
        self._idle = idle
        self._first: bytes | None = None
        self._body: bytes | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def prime(self, timeout: float) -> None:
        """Wait for the first body chunk (kept for ``iter_chunks``).

        Lets the caller fail over when an upstream sends 200 headers and then dies or stalls
        before any event: until this returns, the client has been sent nothing.
        """
        try:
            with _Deadline(timeout):
                chunk = await self._resp.content.readany()
        except TimeoutError as exc:
            self._resp.close()
            raise UpstreamConnectError(f"no first byte within {timeout:g}s", "timeout") from exc
        except _NET_ERRORS as exc:
            self._resp.close()
            raise UpstreamConnectError(_describe(exc)) from exc
        if not chunk:
            self._resp.close()
            raise UpstreamConnectError("upstream closed the stream before the first event")
        self._first = chunk

    async def buffer(self) -> None:
        """Read a (non-streamed) body now, so a cut while reading it can still fail over."""
        try:
            with _Deadline(self._idle):
                self._body = await self._resp.read()
        except _NET_ERRORS as exc:
            self._resp.close()
            raise UpstreamConnectError(f"body cut: {_describe(exc)}") from exc
        finally:
            self._resp.release()

    async def read(self) -> bytes:
        if self._body is not None:
            return self._body
        try:
            with _Deadline(self._idle):
                return await self._resp.read()
        except _NET_ERRORS as exc:
            raise UpstreamStreamError(_describe(exc)) from exc
        finally:
            self._resp.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Chunks as the socket delivers them; raises UpstreamStreamError on a cut."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        content = self._resp.content
        try:
            while True:
                with _Deadline(self._idle):
                    chunk = await content.readany()
                if not chunk:
                    if not content.is_eof():
                        continue
                    return
                yield chunk
        except TimeoutError as exc:
            raise UpstreamStreamError(f"no data from upstream for {self._idle:g}s") from exc
        except _NET_ERRORS as exc:
            raise UpstreamStreamError(_describe(exc)) from exc

    def close(self) -> None:
        """Drop the connection (used when the client went away mid-stream)."""
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


# a body larger than this goes out in slices of SEND_SLICE, each written once the socket has room
# for it: never copied whole into the transport's buffer (a 250 MB batch would be, in one go,
# holding the event loop for the copy)
STREAM_BODY_BYTES = 1 << 20
SEND_SLICE = 256 * 1024


async def _slices(body: bytes) -> AsyncIterator[memoryview]:
    with memoryview(body) as view:
        for start in range(0, len(body), SEND_SLICE):
            yield view[start : start + SEND_SLICE]


class UpstreamClient:
    def __init__(self, timeouts: Timeouts | None = None, limit: int = 1000) -> None:
        self.timeouts = timeouts or Timeouts()
        self._limit = limit
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _get_session(self, pool_key: str) -> aiohttp.ClientSession:
        session = self._sessions.get(pool_key)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                ttl_dns_cache=300,
                keepalive_timeout=60,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect),
                read_bufsize=2**16,
            )
            self._sessions[pool_key] = session
        return session

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, *, pool_key: str = "default"
    ) -> UpstreamResponse:
        session = self._get_session(pool_key)
        data: bytes | AsyncIterator[memoryview] | None = body
        if body is not None and len(body) > STREAM_BODY_BYTES:
            data = _slices(body)
            headers = {**headers, "content-length": str(len(body))}  # not chunked: its length is known
        try:
            with _Deadline(self.timeouts.first_byte):
                resp = await session.request(
                    method, url, headers=headers, data=data, allow_redirects=False, compress=None
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamConnectError(f"connect timeout ({self.timeouts.connect:g}s)", "timeout") from exc
        except TimeoutError as exc:
            raise UpstreamConnectError(
                f"no response within {self.timeouts.first_byte:g}s", "timeout"
            ) from exc
        except _NET_ERRORS as exc:
            raise UpstreamConnectError(_describe(exc)) from exc
        return UpstreamResponse(resp, self.timeouts.idle)

    async def drop(self, pool_key: str) -> None:
        """Close one credential's connections (it was deleted or its URL changed)."""
        session = self._sessions.pop(pool_key, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
