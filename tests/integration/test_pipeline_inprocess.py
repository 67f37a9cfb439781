"""The pipeline in-process (the real app object, the real sim over loopback, no server in between).

A server may fail to send a response's start (the client is gone) or never iterate a streamed
body; the pipeline's invariants must hold anyway: the credential's in-flight count, the key's
limiter reservation and exactly one usage record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ethereal.app import Ethereal
from ethereal.keys import mint
from ethereal.limits.local import LocalLimiter
from ethereal.settings import Settings

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def app(tmp_path: Path, sim_url: str) -> AsyncIterator[Ethereal]:
    settings = Settings(data_dir=tmp_path, upstream_url=sim_url, upstream_key="sim-key")
    entry = Ethereal(settings)
    await entry.start()
    try:
        yield entry
    finally:
        await entry.stop()


async def _minted(app: Ethereal, **limits: Any) -> tuple[str, str]:
    plaintext, record = mint("sk-ant-api03-", **limits)
    await app.gateway.store.insert_keys([record])
    return plaintext, record.id


def _scope(path: str, key: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), (b"x-api-key", key.encode()), (b"content-type", b"application/json"),
                    (b"anthropic-version", b"2023-06-01"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080),
    }


def _receive(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


class ClientGone(Exception):
    pass


def _body(stream: bool) -> bytes:
    return orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
                         "messages": [{"role": "user", "content": "hello there"}]})


def _in_flight(app: Ethereal) -> int:
    return sum(c.in_flight for c in app.gateway.pool.credentials)


def _held(app: Ethereal, key_id: str) -> int:
    limiter = app.gateway.limiter
    assert isinstance(limiter, LocalLimiter)
    return len(limiter.state(key_id).reservations)


@pytest.mark.parametrize("fail_on", ["http.response.start", "http.response.body"])
async def test_stream_cleanup_when_the_send_fails(app: Ethereal, fail_on: str) -> None:
    """The send of the response start (or of the first body chunk) raises: the body is never
    (fully) iterated, yet the credential, the reservation and the record are all settled."""
    key, key_id = await _minted(app, budget_tokens=1_000_000, max_concurrency=4)
    body = _body(stream=True)
    meter = app.gateway.meter
    before = meter.recorded
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == fail_on:
            raise ClientGone

    with pytest.raises(ClientGone):
        await app(_scope("/v1/messages", key, body), _receive(body), send)
    assert _in_flight(app) == 0
    assert _held(app, key_id) == 0
    assert meter.recorded == before + 1
    assert sent[0] == "http.response.start"


async def test_non_streamed_records_a_real_time_to_first_byte(app: Ethereal) -> None:
    key, _ = await _minted(app)
    body = _body(stream=False)
    out: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(_scope("/v1/messages", key, body), _receive(body), send)
    assert out[0]["status"] == 200
    rec = app.gateway.meter.recent_records()[-1]
    assert rec.ttfb_ms is not None and rec.ttfb_ms > 0
