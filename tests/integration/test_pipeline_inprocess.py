"""The pipeline in-process (the real app object, the real sim over loopback, no server in between).

A server may fail to send a response's start (the client is gone) or never iterate a streamed
body; the pipeline's invariants must hold anyway: the credential's in-flight count, the key's
limiter reservation and exactly one usage record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ethereal.app import Ethereal
from ethereal.errors import GatewayError
from ethereal.keys import mint
from ethereal.limits.local import LocalLimiter
from ethereal.settings import Settings

from tests.asgi import http_scope, receive_body

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


class ClientGone(Exception):
    pass


def _body(stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": "hello there"}],
        }
    )


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
        await app(http_scope("/v1/messages", key, body), receive_body(body), send)
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

    await app(http_scope("/v1/messages", key, body), receive_body(body), send)
    assert out[0]["status"] == 200
    rec = app.gateway.meter.recent_records()[-1]
    assert rec.ttfb_ms is not None and rec.ttfb_ms > 0


async def _call(app: Ethereal, path: str, key: str, body: bytes) -> tuple[int, bytes]:
    out: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(http_scope(path, key, body), receive_body(body), send)
    return out[0]["status"], b"".join(m.get("body", b"") for m in out[1:])


async def test_count_tokens_counts_against_rpm_but_not_budgets(app: Ethereal) -> None:
    """count_tokens is free: a spent budget does not refuse it, the key's requests per minute do."""
    key, key_id = await _minted(app, rpm=2, budget_tokens=1)
    limiter = app.gateway.limiter
    assert isinstance(limiter, LocalLimiter)
    limiter.state(key_id).seeded, limiter.state(key_id).spent_tokens = True, 5  # the budget is spent
    body = orjson.dumps({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]})
    statuses = [(await _call(app, "/v1/messages/count_tokens", key, body))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    status, _ = await _call(app, "/v1/messages", key, _body(stream=False))
    assert status == 402  # a Messages request does meet the spent budget
    assert _held(app, key_id) == 0


async def test_a_stream_longer_than_the_reservation_ttl_keeps_its_reservation(
    tmp_path: Path, sim_url: str
) -> None:
    """The relay refreshes the reservation while the stream lives (ttl 1 s, stream ~2.5 s)."""
    settings = Settings(
        data_dir=tmp_path, upstream_url=sim_url, upstream_key="sim-key", limits_reservation_ttl=1.0
    )
    entry = Ethereal(settings)
    await entry.start()
    try:
        key, key_id = await _minted(entry, budget_tokens=1_000_000, max_concurrency=1)
        body = orjson.dumps(
            {
                "model": "claude-sonnet-4-6",
                "max_tokens": 64,
                "stream": True,
                "messages": [{"role": "user", "content": "count sim:tokens=50 sim:tps=20"}],
            }
        )
        held_late: list[int] = []
        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            if message["type"] == "http.response.body" and message.get("more_body"):
                limiter = entry.gateway.limiter
                assert isinstance(limiter, LocalLimiter)
                if time.monotonic() - started > 1.5 and not held_late:  # past the ttl: still held
                    record = await entry.gateway.store.get_key(key_id)
                    assert record is not None
                    with pytest.raises(GatewayError) as refused:  # the one concurrency slot is this stream's
                        await limiter.admit(
                            record,
                            model="claude-sonnet-4-6",
                            input_tokens=10,
                            max_tokens=10,
                            price_in=0.0,
                            price_out=0.0,
                        )
                    held_late.append(refused.value.status)

        started = time.monotonic()
        await entry(http_scope("/v1/messages", key, body), receive_body(body, client_stays=True), send)
        assert statuses == [200]
        assert time.monotonic() - started > 1.5 and held_late == [429]
        assert _held(entry, key_id) == 0  # settled at the end
    finally:
        await entry.stop()


class _ServerCycle:
    """What a server keeps per request (uvicorn's RequestResponseCycle): the scope, and a
    ``receive`` bound to the object that holds it, so whatever the app keeps reachable from the
    scope and holds ``receive`` closes a loop through the server's objects."""

    def __init__(self, scope: dict[str, Any], body: bytes) -> None:
        self.scope = scope
        self.body: bytes | None = body
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/messages", _body(stream=True)),
        ("/v1/messages", _body(stream=False)),
        (
            "/v1/chat/completions",
            orjson.dumps(
                {
                    "model": "claude-sonnet-4-6",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ),
        ),
        ("/v1/responses", orjson.dumps({"model": "claude-sonnet-4-6", "stream": True, "input": "hi"})),
    ],
)
async def test_a_request_leaves_no_reference_cycle(app: Ethereal, path: str, payload: bytes) -> None:
    """A finished request's objects are freed by reference counting. Left in a cycle (the scope's
    cleanup list held a stream relay that held the server's receive), every request handed ~40
    objects to the cyclic collector, which then ran ten times as often."""
    import gc

    key, _ = await _minted(app)
    warm = _ServerCycle(http_scope(path, key, payload), payload)  # first-use caches are not garbage
    await app(warm.scope, warm.receive, warm.send)
    del warm
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            cycle = _ServerCycle(http_scope(path, key, payload), payload)
            await app(cycle.scope, cycle.receive, cycle.send)
            assert cycle.sent[0]["status"] == 200
            del cycle
        gc.collect()
        left = [
            type(o).__qualname__
            for o in gc.garbage
            if type(o).__module__.startswith(("ethereal", "uvicorn", "aiohttp", "blacksheep"))
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
async def test_an_aborted_upload_is_recorded_as_a_client_disconnect(
    app: Ethereal, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client sends part of its body and closes: one record, 499 ``client_disconnected``, no
    error logged (it is not the gateway's failure), nothing held."""
    key, key_id = await _minted(app, budget_tokens=1_000_000, max_concurrency=4)
    body = _body(stream=False)
    chunks = [{"type": "http.request", "body": body[:20], "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    meter = app.gateway.meter
    before = meter.recorded
    await app(http_scope(path, key, body), receive, send)
    assert meter.recorded == before + 1
    rec = meter.recent_records()[-1]
    assert (rec.status, rec.error_type) == (499, "client_disconnected")
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert _held(app, key_id) == 0
