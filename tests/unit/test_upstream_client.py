"""The upstream client's timeouts against a real socket that stalls (loopback, no mock).

Every upstream read runs under a ``_Deadline`` in the request's own task: response headers
within ``first_byte``, an event stream's first chunk within the priming timeout, then no
silence longer than ``idle`` between chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from ethereal.upstream.client import (
    Timeouts,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamStreamError,
    _Deadline,
)

pytestmark = pytest.mark.asyncio

_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def _server(script: Script) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await script(writer)
            await asyncio.sleep(30)  # then stall: the client's clock must end it
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/messages"


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(Timeouts(connect=2.0, first_byte=0.4, idle=0.4))
    try:
        yield c
    finally:
        await c.close()


async def test_headers_that_never_come_time_out_as_a_connect_failure(client: UpstreamClient) -> None:
    async def nothing(writer: asyncio.StreamWriter) -> None:
        return None

    server, url = await _server(nothing)
    async with server:
        t0 = time.monotonic()
        with pytest.raises(UpstreamConnectError) as err:
            await client.request("POST", url, {}, b"{}")
        assert err.value.kind == "timeout"
        assert 0.35 < time.monotonic() - t0 < 2.0


async def test_a_stream_whose_first_event_never_comes_fails_before_the_first_byte(
    client: UpstreamClient,
) -> None:
    async def head_only(writer: asyncio.StreamWriter) -> None:
        writer.write(_STREAM_HEAD)

    server, url = await _server(head_only)
    async with server:
        resp = await client.request("POST", url, {}, b"{}")
        with pytest.raises(UpstreamConnectError) as err:
            await resp.prime(0.3)
        assert err.value.kind == "timeout"
        assert "no first byte within 0.3s" in str(err.value)


async def test_a_stream_that_goes_silent_is_cut_after_the_idle_timeout(client: UpstreamClient) -> None:
    async def two_then_silence(writer: asyncio.StreamWriter) -> None:
        writer.write(_STREAM_HEAD + _chunk(b"event: ping\ndata: {}\n\n"))
        await writer.drain()
        await asyncio.sleep(0.2)  # shorter than idle: not a stall
        writer.write(_chunk(b"event: ping\ndata: {}\n\n"))

    server, url = await _server(two_then_silence)
    async with server:
        resp = await client.request("POST", url, {}, b"{}")
        await resp.prime(1.0)
        chunks: list[bytes] = []
        t0 = time.monotonic()
        with pytest.raises(UpstreamStreamError, match=r"no data from upstream for 0\.4s"):
            async for chunk in resp.iter_chunks():
                chunks.append(chunk)
        resp.close()
        assert len(chunks) == 2
        assert 0.55 < time.monotonic() - t0 < 2.5
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the deadline's own cancel was taken back


async def test_a_deadline_that_is_not_reached_changes_nothing() -> None:
    with _Deadline(5.0) as deadline:
        await asyncio.sleep(0.01)
    assert not deadline.expired
    await asyncio.sleep(0.02)  # its timer was cancelled: nothing fires into this task later


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    """The request's task cancelled while a read waits (the client went away, a shutdown):
    that is not turned into a timeout."""
    started = asyncio.Event()

    async def reader() -> None:
        with _Deadline(5.0):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.get_running_loop().create_task(reader())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
