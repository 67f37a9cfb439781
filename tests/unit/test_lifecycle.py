"""The worker lifecycle around the ASGI app: health while draining, frames never cut, clean stream ends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from ethereal.lifecycle import Lifecycle, Stream, frame_cut, send_health

FRAMES = [f'event: content_block_delta\ndata: {{"i":{i},"text":"{"x" * i}"}}\n\n'.encode() for i in range(12)]
STREAM = b"".join(FRAMES)


def sse_app(chunks: list[bytes], gate: asyncio.Event | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"request-id", b"req_abc"),
                ],
            }
        )
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if gate is not None:
            await gate.wait()  # an upstream that is still writing
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def run(
    lc: Lifecycle, app: Any, path: str = "/v1/messages", method: str = "POST", query: bytes = b""
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {}

    scope = {"type": "http", "path": path, "method": method, "query_string": query, "headers": []}
    health = lc.health_response(scope)  # what app.Ethereal does at its edge
    if health is not None:
        await send_health(send, scope, *health)
    else:
        await lc.serve(app, scope, receive, send, None)
    return sent


def body_of(sent: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 31, 64, 1000])
async def test_chunks_reach_the_client_cut_at_frame_boundaries(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    sent = await run(Lifecycle(), sse_app(chunks))
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert b"".join(bodies) == STREAM
    for body in bodies:
        assert body == b"" or body.endswith(b"\n\n"), body
    assert sent[-1].get("more_body") is False


async def test_cancelled_stream_ends_with_a_whole_error_frame() -> None:
    lc = Lifecycle()
    gate = asyncio.Event()
    half = STREAM[: len(STREAM) // 2 + 5]  # ends inside a frame
    task = asyncio.ensure_future(run(lc, sse_app([half], gate)))
    while not lc.streams:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert await lc.end_streams(wait=2.0) == 1
    sent = await task
    body = body_of(sent).decode()
    frames = body.split("\n\n")
    assert frames[-1] == ""
    *data_frames, last = frames[:-1]
    for frame in data_frames:
        json.loads(frame.split("data: ", 1)[1])  # every frame whole
    assert last.startswith("event: error\ndata: ")
    err = json.loads(last.split("data: ", 1)[1])
    assert err["error"]["type"] == "overloaded_error" and err["request_id"] == "req_abc"
    assert sent[-1]["more_body"] is False and not lc.streams


async def test_openai_route_gets_an_openai_error_frame() -> None:
    lc = Lifecycle()
    gate = asyncio.Event()
    task = asyncio.ensure_future(
        run(lc, sse_app([b'data: {"id":"x"}\n\n'], gate), path="/v1/chat/completions")
    )
    while not lc.streams:
        await asyncio.sleep(0)
    await lc.end_streams(wait=2.0)
    last = body_of(await task).decode().split("\n\n")[-2]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "overloaded"


async def test_health_turns_503_when_draining_and_responses_say_close() -> None:
    lc = Lifecycle()
    ok = await run(lc, None, path="/healthz", method="GET")
    assert ok[0]["status"] == 200 and json.loads(ok[1]["body"]) == {"status": "ok"}
    lc.begin_drain()
    draining = await run(lc, None, path="/healthz", method="GET", query=b"verbose=1")
    assert draining[0]["status"] == 503
    detail = json.loads(draining[1]["body"])
    assert detail["status"] == "draining" and set(detail["loop_lag_ms"]) >= {"p50", "p99", "max"}
    sent = await run(lc, sse_app([FRAMES[0]]))
    assert (b"connection", b"close") in sent[0]["headers"]


def test_frame_cut() -> None:
    assert frame_cut(b"") == 0
    assert frame_cut(b"data: 1\n\ndata: 2") == len(b"data: 1\n\n")
    assert frame_cut(b"data: 1\r\n\r\ndata") == len(b"data: 1\r\n\r\n")
    assert frame_cut(b"data: 1\r\rx") == len(b"data: 1\r\r")


def test_responses_closing_frame_names_the_response_the_stream_announced() -> None:
    """The shutdown frame of a /v1/responses stream names the id the stream's response.created gave."""
    from ethereal.api.responses import response_id
    from ethereal.pipeline import Call

    async def send(message: dict[str, Any]) -> None:
        del message

    request_id = "req_0VcPGD8r1jPZSvmxa5SEheJS"
    frame = Stream(None, send, "/v1/responses", request_id).closing_frame()
    event, data = frame.split(b"\n")[:2]
    assert event == b"event: response.failed"
    body = json.loads(data.removeprefix(b"data: "))
    assert body["response"]["id"] == response_id(Call(request_id=request_id, route="responses"))
    assert body["response"]["id"] == "resp_0VcPGD8r1jPZSvmxa5SEheJS"
