"""The HTTP client to upstream Anthropic-compatible APIs.

One pooled keep-alive session per process; connections are reused per host.
Responses are streamed chunk by chunk as they arrive from the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


class UpstreamConnectError(Exception):
    """Nothing usable came back: connect failure, reset or timeout before the headers."""


class UpstreamStreamError(Exception):
    """The upstream failed after the response started (reset, idle timeout)."""


@dataclass(slots=True)
class Timeouts:
    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 300.0


class UpstreamResponse:
    __slots__ = ("_resp", "status", "headers", "_idle")

    def __init__(self, resp: aiohttp.ClientResponse, idle: float) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers  # case-insensitive multidict
        self._idle = idle

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise UpstreamStreamError(str(exc) or type(exc).__name__) from exc
        finally:
            self._resp.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Chunks as the socket delivers them; raises UpstreamStreamError on a cut."""
        content = self._resp.content
        try:
            while True:
                chunk = await asyncio.wait_for(content.readany(), self._idle)
                if not chunk:
                    if not self._resp.content.is_eof():
                        continue
                    return
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise UpstreamStreamError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        """Drop the connection (used when the client went away mid-stream)."""
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class UpstreamClient:
    def __init__(self, timeouts: Timeouts | None = None, limit: int = 1000) -> None:
        self.timeouts = timeouts or Timeouts()
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect),
                read_bufsize=2**16,
            )
        return self._session

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> UpstreamResponse:
        session = self._get_session()
        try:
            resp = await asyncio.wait_for(
                session.request(method, url, headers=headers, data=body, allow_redirects=False, compress=None),
                self.timeouts.first_byte,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as exc:
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from exc
        return UpstreamResponse(resp, self.timeouts.idle)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
