"""The Responses API over WebSocket on ``/v1/responses`` against a real gateway over loopback
(api/responses_ws.py): the events equal the SSE route's for the same request, refusals before
the upgrade, the bounds (message size, idle time, sockets per key), a second
``response.create`` on the same socket continuing the first by ``previous_response_id``
(Codex's incremental mode, after a ``generate: false`` warm-up), a client that closes
mid-stream (499, its concurrency slot and reservation settled), and the 426 every other path
answers an upgrade with."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.conftest import mint_into
from tests.procs import gateway_process

pytestmark = pytest.mark.timeout(120)

IDLE = 1.5
MAX_MESSAGE = 64 * 1024
PER_KEY = 2
TOOLS = [
    {
        "type": "function",
        "name": "exec_command",
        "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
    }
]


@pytest.fixture(scope="module")
def gw(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("ws-gateway")
    key, record = mint_into(data_dir, name="ws")
    env = {
        "ETHEREAL_WS_IDLE_TIMEOUT": str(IDLE),
        "ETHEREAL_WS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
        "ETHEREAL_WS_MAX_SOCKETS_PER_KEY": str(PER_KEY),
        "ETHEREAL_LOG_FORMAT": "json",
    }
    with gateway_process(data_dir, sim_url, env=env) as url:
        yield {
            "url": url,
            "ws": "ws" + url[4:] + "/v1/responses",
            "key": key,
            "record": record,
            "data_dir": data_dir,
        }


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}],
        "tools": TOOLS,
        "reasoning": {"effort": "low", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
        **extra,
    }


def scripted_call(cmd: str) -> str:
    raw = base64.urlsafe_b64encode(json.dumps({"cmd": cmd}).encode()).decode().rstrip("=")
    return f"sim:tool=exec_command sim:input={raw}"


async def events_until_done(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 30)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        event = json.loads(msg.data)
        out.append(event)
        if event["type"] in ("response.completed", "response.incomplete", "response.failed", "error"):
            return out


_VOLATILE = {"id", "item_id", "call_id", "created_at", "encrypted_content", "prompt_cache_key"}


def normalized(value: Any) -> Any:
    """Events with what differs between two runs of the same request (ids, times) blanked."""
    if isinstance(value, dict):
        return {k: (None if k in _VOLATILE else normalized(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def sse_events(url: str, key: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    resp = httpx.post(f"{url}/v1/responses", json={**payload, "stream": True}, headers=auth(key), timeout=30)
    assert resp.status_code == 200, resp.text
    return [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]


def usage_of(url: str, key: str, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = httpx.get(f"{url}/v1/usage/{request_id}", headers=auth(key))
        if got.status_code == 200 or time.monotonic() > deadline:
            assert got.status_code == 200, got.text
            return got.json()  # type: ignore[no-any-return]
        time.sleep(0.05)


def request_id_of(event: dict[str, Any]) -> str:
    return "req_" + event["response"]["id"].removeprefix("resp_")


async def test_events_equal_the_sse_route(gw: dict[str, Any]) -> None:
    """A tool call with reasoning: every event, in order, as the SSE route sends it."""
    payload = body(f"Run it. {scripted_call('ls')}")
    sse = await asyncio.to_thread(sse_events, gw["url"], gw["key"], payload)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw["ws"], headers=auth(gw["key"])) as ws:
            await ws.send_str(json.dumps({"type": "response.create", **payload}))
            got = await events_until_done(ws)
    assert [e["type"] for e in got] == [e["type"] for e in sse]
    # the second of the two identical requests reads the first one's prompt cache: usage differs there
    for events in (got, sse):
        events[-1]["response"].pop("usage")
    assert normalized(got) == normalized(sse)
    assert got[-1]["type"] == "response.completed"
    kinds = [i["type"] for i in got[-1]["response"]["output"]]
    assert "reasoning" in kinds and "function_call" in kinds
    rec = usage_of(gw["url"], gw["key"], request_id_of(got[-1]))
    assert rec["status"] == 200 and rec["route"] == "responses" and rec["stream"] is True
    assert rec["output_tokens"] > 0


async def test_warm_up_then_two_responses_on_one_socket(gw: dict[str, Any]) -> None:
    """Codex's sequence: ``generate: false`` with the instructions, then the turn continuing it by
    ``previous_response_id`` (input: only the new items), then the tool output continuing that."""
    first = body(f"Run it. {scripted_call('printf hi')}")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw["ws"], headers=auth(gw["key"])) as ws:
            warm = {**first, "input": first["input"][:0], "instructions": "You are terse.", "generate": False}
            await ws.send_str(json.dumps({"type": "response.create", **warm}))
            events = await events_until_done(ws)
            assert [e["type"] for e in events] == ["response.created", "response.completed"]
            warm_id = events[-1]["response"]["id"]
            assert events[-1]["response"]["output"] == []

            turn = {**first, "instructions": "You are terse.", "previous_response_id": warm_id}
            await ws.send_str(json.dumps({"type": "response.create", **turn}))
            events = await events_until_done(ws)
            assert events[-1]["type"] == "response.completed", events[-1]
            call = next(
                e["item"]
                for e in events
                if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
            )
            first_id = events[-1]["response"]["id"]

            output = {"type": "function_call_output", "call_id": call["call_id"], "output": "hi"}
            follow = {
                **first,
                "instructions": "You are terse.",
                "input": [output],
                "previous_response_id": first_id,
            }
            await ws.send_str(json.dumps({"type": "response.create", **follow}))
            events = await events_until_done(ws)
            # the sim answers in text only after a tool_result turn, and refuses a thinking tool loop whose
            # assistant turn lost its thinking block: the whole conversation was rebuilt
            assert events[-1]["type"] == "response.completed", events[-1]
            kinds = [i["type"] for i in events[-1]["response"]["output"]]
            assert "message" in kinds and "function_call" not in kinds

            # an id that is not the last response on this socket: OpenAI's previous_response_not_found
            await ws.send_str(json.dumps({"type": "response.create", **follow}))
            events = await events_until_done(ws)
            assert events == [events[0]] and events[0]["type"] == "error" and events[0]["status"] == 400
            assert events[0]["error"]["code"] == "previous_response_not_found"
            assert events[0]["error"]["param"] == "previous_response_id"
    warm_rec = usage_of(gw["url"], gw["key"], request_id_of({"response": {"id": warm_id}}))
    assert warm_rec["status"] == 200 and warm_rec["input_tokens"] == 0 and warm_rec["cost_micro"] == 0
    turn_rec = usage_of(gw["url"], gw["key"], request_id_of({"response": {"id": first_id}}))
    assert turn_rec["status"] == 200 and turn_rec["output_tokens"] > 0


async def test_refused_before_the_upgrade(gw: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with session.ws_connect(gw["ws"], headers=auth("sk-ant-api03-not-a-key")):
                pass
        assert err.value.status == 401
    # the same answer as a plain HTTP reply: OpenAI's error shape, a request id, logged
    upgrade = {
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": base64.b64encode(b"0123456789abcdef").decode(),
    }
    resp = await asyncio.to_thread(
        httpx.get, f"{gw['url']}/v1/responses", headers={**upgrade, **auth("sk-ant-api03-nope")}
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert resp.headers["request-id"].startswith("req_")


async def test_per_key_socket_limit(gw: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        held = [await session.ws_connect(gw["ws"], headers=auth(gw["key"])) for _ in range(PER_KEY)]
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await session.ws_connect(gw["ws"], headers=auth(gw["key"]))
            assert err.value.status == 429
            assert err.value.headers is not None and err.value.headers["retry-after"] == "5"
        finally:
            for ws in held:
                await ws.close()
        await asyncio.sleep(0.2)
        async with session.ws_connect(gw["ws"], headers=auth(gw["key"])) as ws:  # a slot is free again
            assert not ws.closed


async def test_oversized_message_closes_the_socket(gw: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw["ws"], headers=auth(gw["key"])) as ws:
            big = body("x" * (MAX_MESSAGE + 10))
            await ws.send_str(json.dumps({"type": "response.create", **big}))
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert ws.close_code == 1009


async def test_idle_socket_is_closed(gw: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw["ws"], headers=auth(gw["key"]), autoclose=True) as ws:
            t0 = time.monotonic()
            msg = await asyncio.wait_for(ws.receive(), IDLE + 5)
            waited = time.monotonic() - t0
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1000
            assert IDLE - 0.2 <= waited <= IDLE + 2


async def test_client_closing_mid_stream_is_recorded_and_settled(gw: dict[str, Any]) -> None:
    """A client that goes away mid-stream: 499 for that response, billed from what was streamed,
    and its key's only concurrency slot given back (the next request is served, not a 429)."""
    key, _ = await asyncio.to_thread(
        mint_into, gw["data_dir"], name="ws-one-at-a-time", max_concurrency=1, budget_micro_usd=10_000_000
    )
    await asyncio.sleep(0.6)  # the gateway's key cache
    payload = body(
        "Tell me a long story. sim:tokens=3000 sim:tps=200 sim:tools=0", reasoning={"effort": "none"}
    )
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(gw["ws"], headers=auth(key))
        await ws.send_str(json.dumps({"type": "response.create", **payload}))
        created = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        assert created["type"] == "response.created"
        deltas = 0
        while deltas < 20:
            event = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            deltas += event["type"] == "response.output_text.delta"
        await ws.close()
    rec = usage_of(gw["url"], key, request_id_of(created))
    assert rec["status"] == 499 and rec["error_type"] == "client_disconnected"
    assert rec["exact"] is False and 0 < rec["output_tokens"] < 3000
    again = await asyncio.to_thread(
        httpx.post,
        f"{gw['url']}/v1/responses",
        headers=auth(key),
        timeout=30,
        json=body("hi sim:tools=0 sim:tokens=5", reasoning={"effort": "none"}),
    )
    assert again.status_code == 200, again.text


def test_other_paths_answer_426(gw: dict[str, Any]) -> None:
    upgrade = {
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": base64.b64encode(b"0123456789abcdef").decode(),
    }
    for path in ("/v1/messages", "/v1/chat/completions", "/"):
        resp = httpx.get(f"{gw['url']}{path}", headers={**upgrade, **auth(gw["key"])}, timeout=5)
        assert resp.status_code == 426, (path, resp.status_code, resp.text)
        err = resp.json()
        message = err["error"]["message"]
        assert "use HTTP" in message
    deadline = time.monotonic() + 10  # the log writer flushes in the background
    while True:
        lines = [
            json.loads(line)
            for f in Path(gw["data_dir"]).glob("gateway-*.log")
            for line in f.read_text().splitlines()
            if line.startswith("{")
        ]
        refused = [line for line in lines if line.get("status") == 426]
        if {line["path"] for line in refused} >= {"/v1/messages", "/v1/chat/completions", "/"}:
            break
        assert time.monotonic() < deadline, refused
        time.sleep(0.1)
    assert all(line["request_id"].startswith("req_") for line in refused)


async def test_shutdown_closes_idle_sockets_and_lets_a_response_finish(sim_url: str, tmp_path: Path) -> None:
    """SIGTERM: an idle socket is closed at once (1001) when the listener closes; a socket answering
    a response gets that response to its end, then the same close."""
    import os
    import signal
    import subprocess
    import sys

    from tests.procs import free_port, stop, wait_http

    key, _ = await asyncio.to_thread(mint_into, tmp_path, name="drain")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    env.update(
        ETHEREAL_DATA_DIR=str(tmp_path),
        ETHEREAL_UPSTREAM_URL=sim_url,
        ETHEREAL_UPSTREAM_KEY="k",
        ETHEREAL_DRAIN_DELAY="0.5",
        ETHEREAL_SHUTDOWN_GRACE="20",
        PYTHONUNBUFFERED="1",
    )

    def start() -> subprocess.Popen[bytes]:
        with open(tmp_path / "gateway.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "ethereal", "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    proc = await asyncio.to_thread(start)
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz", proc)
        url = f"ws://127.0.0.1:{port}/v1/responses"
        async with aiohttp.ClientSession() as session:
            idle = await session.ws_connect(url, headers=auth(key))
            busy = await session.ws_connect(url, headers=auth(key))
            payload = body("A story. sim:tokens=300 sim:tps=150 sim:tools=0", reasoning={"effort": "none"})
            await busy.send_str(json.dumps({"type": "response.create", **payload}))
            first = json.loads((await asyncio.wait_for(busy.receive(), 10)).data)
            assert first["type"] == "response.created"
            proc.send_signal(signal.SIGTERM)
            msg = await asyncio.wait_for(idle.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and idle.close_code == 1001
            events = await events_until_done(busy)
            assert events[-1]["type"] == "response.completed"  # the whole response, ~2 s after the signal
            msg = await asyncio.wait_for(busy.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and busy.close_code == 1001
            await idle.close()
            await busy.close()
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        stop(proc)
