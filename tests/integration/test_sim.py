"""The simulated Anthropic API over real HTTP: official SDK, raw bytes, faults, framing, caching."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import ethereal.sim  # noqa: F401
except ImportError:  # running without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

import anthropic
import httpx
import orjson
from ethereal.sim._replay import BUNDLED, assemble
from ethereal.sim.testing import control, inject_fault, reset_sim, sim_stats, start_sim_process

from tests.procs import FIXTURES as SHARED_FIXTURES

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01", "content-type": "application/json"}
FIXTURES = sorted(p.stem for p in BUNDLED.glob("*.sse"))
USER_X = [{"role": "user", "content": "x"}]

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a place",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "units": {"type": "string", "enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "detailed": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["location", "units", "days"],
    },
}
TIME_TOOL = {
    "name": "get_time",
    "description": "Time in a zone",
    "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with start_sim_process(seed=1) as (_proc, url):
        yield url


@pytest.fixture
def http(sim: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim, headers=HEADERS, timeout=10) as c:
        yield c


@pytest.fixture
def client(sim: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim, api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def _clean(sim: str) -> None:
    reset_sim(sim)


def body(text: str = "Hello there", **kw: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
    }
    req.update(kw)
    return req


def parse_sse(raw: bytes) -> list[tuple[str, bytes]]:
    """(event name, raw data line) per frame, asserting the two-line frame shape."""
    assert raw.endswith(b"\n\n")
    out = []
    for frame in raw[:-2].split(b"\n\n"):
        lines = frame.split(b"\n")
        assert len(lines) == 2, frame
        assert lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), frame
        out.append((lines[0][7:].decode(), lines[1][6:]))
    return out


def check_framing(raw: bytes) -> list[dict[str, Any]]:
    frames = parse_sse(raw)
    events = []
    for name, data in frames:
        if name == "ping":
            assert data == b'{"type": "ping"}'
            events.append({"type": "ping"})
            continue
        assert data.endswith(b"}")
        stripped = data[:-1].rstrip(b" ")
        pad = len(data) - 1 - len(stripped)
        assert 0 <= pad <= 15
        obj = json.loads(data)
        assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() == stripped + b"}"
        assert obj["type"] == name
        events.append(obj)
    types = [e["type"] for e in events]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop" and types[-2] == "message_delta"
    assert types.count("message_delta") == 1
    assert types[1] == "content_block_start" and types[2] == "ping" and types.count("ping") == 1
    msg = events[0]["message"]
    assert msg["content"] == [] and msg["stop_reason"] is None and msg["stop_sequence"] is None
    assert list(msg) == ["model", "id", "type", "role", "content", "stop_reason", "stop_sequence", "usage"]
    assert list(msg["usage"]) == [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "output_tokens",
        "server_tool_use",
        "service_tier",
        "inference_geo",
        "speed",
    ]
    assert "cache_creation" not in events[-2]["usage"]
    assert list(events[-2]["usage"]) == [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
        "server_tool_use",
        "service_tier",
        "inference_geo",
        "speed",
    ]
    # blocks in order, never interleaved
    current = None
    nxt = 0
    for e in events:
        if e["type"] == "content_block_start":
            assert current is None and e["index"] == nxt
            current = e["index"]
            cb = e["content_block"]
            if cb["type"] == "tool_use":
                assert cb["input"] == {} and cb["id"].startswith("toolu_01")
        elif e["type"] == "content_block_delta":
            assert e["index"] == current
        elif e["type"] == "content_block_stop":
            assert e["index"] == current
            current = None
            nxt += 1
    return events


def stream_raw(http: httpx.Client, req: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    req = dict(req, stream=True)
    with http.stream("POST", "/v1/messages", json=req) as r:
        raw = b"".join(r.iter_bytes())
    return r, raw


# ------------------------------------------------------------------------------------------ SDK


def test_sdk_create_text(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=512, messages=[{"role": "user", "content": "Say something"}]
    )
    assert msg.model == "claude-sonnet-4-6"
    assert msg.id.startswith("msg_01")
    assert msg.stop_reason == "end_turn"
    assert len(msg.content) == 1 and msg.content[0].type == "text" and msg.content[0].text
    assert 20 <= msg.usage.output_tokens <= 61
    assert msg.usage.input_tokens >= 1
    assert msg.usage.service_tier == "standard"


def test_sdk_create_raw_headers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["request-id"].startswith("req_011C") and len(raw.headers["request-id"]) == 28
    assert raw.headers["anthropic-organization-id"]
    assert raw.headers["content-type"] == "application/json"
    assert int(raw.headers["content-length"]) == len(raw.http_response.content)


def test_sdk_stream_text(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=512,
        messages=[{"role": "user", "content": "stream please sim:tokens=50"}],
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.content[0].text == text
    assert final.usage.output_tokens == (len(text) + 3) // 4
    assert 46 <= final.usage.output_tokens <= 51
    assert final.stop_reason == "end_turn"


def test_sdk_stream_tool_use(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    tools = [b for b in final.content if b.type == "tool_use"]
    assert len(tools) == 1
    tu = tools[0]
    assert tu.name == "get_weather" and tu.id.startswith("toolu_01")
    assert set(tu.input) >= {"location", "units", "days"}
    assert tu.input["units"] in ("c", "f") and 1 <= tu.input["days"] <= 7
    assert isinstance(tu.input["location"], str)
    if len(final.content) == 2:
        assert final.content[0].type == "text"


def test_parallel_tools_and_disable(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=1024,
        tools=[WEATHER_TOOL, TIME_TOOL],
        messages=[{"role": "user", "content": "both please sim:tools=3"}],
    )
    assert msg.stop_reason == "tool_use"
    assert len([b for b in msg.content if b.type == "tool_use"]) == 3
    msg = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=1024,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "both please sim:tools=3"}],
    )
    assert [b.type for b in msg.content] == ["tool_use"]
    msg = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=1024,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "tool", "name": "get_time"},
        messages=[{"role": "user", "content": "x"}],
    )
    assert [(b.type, b.name) for b in msg.content] == [("tool_use", "get_time")]
    assert isinstance(msg.content[0].input["tz"], str)


def test_tool_result_turn_answers_text(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather?"}],
    )
    tu = next(b for b in first.content if b.type == "tool_use")
    second = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=1024,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tu.id, "content": "sunny"}]},
        ],
    )
    assert second.stop_reason == "end_turn"
    assert [b.type for b in second.content] == ["text"]


def test_sdk_stream_thinking(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "think"}],
    ) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    th = final.content[0]
    assert th.thinking and len(th.signature) > 100 and th.signature.startswith("E")
    expected = (len(th.thinking) + 3) // 4 + (len(final.content[1].text) + 3) // 4
    assert final.usage.output_tokens == expected
    nonstream = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=4096,
        thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": "think"}],
    )
    assert nonstream.content[0].type == "thinking" and nonstream.content[0].signature


def test_count_tokens_and_models(client: anthropic.Anthropic) -> None:
    text = "x" * 400
    res = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": text}]
    )
    assert res.input_tokens == 100
    msg = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": text}]
    )
    assert msg.usage.input_tokens == 100
    page = client.models.list(limit=3)
    assert len(page.data) == 3 and page.has_more
    all_ids = [m.id for m in client.models.list(limit=4)]  # auto-paginates
    assert "claude-sonnet-4-6" in all_ids and len(all_ids) == len(set(all_ids)) >= 10
    one = client.models.retrieve("claude-sonnet-4-6")
    assert one.id == "claude-sonnet-4-6" and one.type == "model"
    assert client.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5-20251001"  # an alias
    for gone in ("gpt-4o", "claude-sonnet-4-5"):  # unknown, retired
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve(gone)


# ------------------------------------------------------------------------------------------ replay


@pytest.mark.parametrize("name", FIXTURES)
def test_replay_byte_identical(http: httpx.Client, name: str) -> None:
    expected = (BUNDLED / f"{name}.sse").read_bytes()
    r, raw = stream_raw(http, body(f"sim:replay {name}"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["transfer-encoding"] == "chunked"
    assert raw == expected
    r = http.post("/v1/messages", json=body(f"sim:replay {name}"))
    assert r.status_code == 200
    assert r.json() == assemble(expected)


def test_replay_sdk_accumulates(client: anthropic.Anthropic) -> None:
    name = "sdkpy-555fb399-a54c-455b-9ac5-2c9673f18e12.0"
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": f"sim:replay {name}"}],
    ) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"location": "San Francisco, CA", "units": "f"}
    assert final.usage.output_tokens == 74


def test_replay_unknown_fixture(http: httpx.Client) -> None:
    r = http.post("/v1/messages", json=body("sim:replay nope-not-here"))
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------------ framing


@pytest.mark.parametrize(
    "req",
    [
        body("plain text"),
        body("long sim:tokens=300"),
        body("weather", tools=[WEATHER_TOOL, TIME_TOOL]),
        body("weather sim:tools=2", tools=[WEATHER_TOOL, TIME_TOOL]),
        body(
            "think",
            max_tokens=5000,
            thinking={"type": "enabled", "budget_tokens": 1500},
            tools=[WEATHER_TOOL],
        ),
        body("unicode é ✓"),
    ],
    ids=["text", "long", "tool", "tools2", "thinking", "unicode"],
)
def test_generated_stream_framing(http: httpx.Client, req: dict[str, Any]) -> None:
    r, raw = stream_raw(http, req)
    assert r.status_code == 200
    events = check_framing(raw)
    pads = set()
    for name, data in parse_sse(raw):
        if name != "ping":
            pads.add(len(data) - len(data[:-1].rstrip(b" ")) - 1)
    assert len(pads) > 1 or len(events) < 8  # padding varies
    for i, e in enumerate(events):
        if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use":
            d = events[i + 1] if events[i + 1]["type"] != "ping" else events[i + 2]
            assert d["delta"] == {"type": "input_json_delta", "partial_json": ""}
        if e["type"] == "content_block_start" and e["content_block"]["type"] == "thinking":
            assert e["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    sigs = [
        e for e in events if e["type"] == "content_block_delta" and e["delta"]["type"] == "signature_delta"
    ]
    if req.get("thinking"):
        assert len(sigs) == 1


def test_output_token_estimate_contract(http: httpx.Client) -> None:
    """≈4 chars per output token: an estimator using chars/4 lands within 15% of what was billed."""
    for i in range(40):
        r = http.post("/v1/messages", json=body(f"question number {i}", max_tokens=4096))
        msg = r.json()
        chars = sum(len(b["text"]) for b in msg["content"])
        billed = msg["usage"]["output_tokens"]
        assert abs(chars / 4 - billed) <= 0.15 * billed, (chars, billed)
    r, raw = stream_raw(http, body("q sim:tokens=200", tools=[WEATHER_TOOL], thinking={"type": "adaptive"}))
    events = check_framing(raw)
    chars = 0
    for e in events:
        if e["type"] == "content_block_delta":
            d = e["delta"]
            chars += len(d.get("text") or d.get("thinking") or d.get("partial_json") or "")
    billed = events[-2]["usage"]["output_tokens"]
    assert abs(chars / 4 - billed) <= 0.15 * billed


def test_deterministic(http: httpx.Client) -> None:
    a = http.post("/v1/messages", json=body("same request")).json()
    b = http.post("/v1/messages", json=body("same request")).json()
    assert a["content"] == b["content"] and a["id"] != b["id"]
    c = http.post("/v1/messages", json=body("other request")).json()
    assert c["content"] != a["content"]


def test_max_tokens_and_stop_sequences(http: httpx.Client) -> None:
    msg = http.post("/v1/messages", json=body("long sim:tokens=100", max_tokens=10)).json()
    assert msg["stop_reason"] == "max_tokens" and msg["usage"]["output_tokens"] <= 10
    msg = http.post("/v1/messages", json=body("x sim:stop", stop_sequences=["END"])).json()
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == "END"
    # a stop sequence the text is sure to contain: cut at its first occurrence
    msg = http.post("/v1/messages", json=body("natural stop", stop_sequences=["zzz", " "])).json()
    assert msg["stop_reason"] == "stop_sequence" and msg["stop_sequence"] == " "
    text = msg["content"][0]["text"]
    assert text and " " not in text and msg["usage"]["output_tokens"] == (len(text) + 3) // 4


# ------------------------------------------------------------------------------------------ caching


def test_cache_creation_then_read(http: httpx.Client) -> None:
    system = [
        {
            "type": "text",
            "text": "You are a careful assistant. " * 200,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    req = body("first question", system=system)
    u1 = http.post("/v1/messages", json=req).json()["usage"]
    assert u1["cache_creation_input_tokens"] > 1000 and u1["cache_read_input_tokens"] == 0
    assert u1["cache_creation"] == {
        "ephemeral_5m_input_tokens": u1["cache_creation_input_tokens"],
        "ephemeral_1h_input_tokens": 0,
    }
    req2 = body("a different question", system=system)
    _r, raw = stream_raw(http, req2)
    events = check_framing(raw)
    u2 = events[0]["message"]["usage"]
    assert u2["cache_read_input_tokens"] == u1["cache_creation_input_tokens"]
    assert u2["cache_creation_input_tokens"] == 0
    assert events[-2]["usage"]["cache_read_input_tokens"] == u2["cache_read_input_tokens"]
    count_req = {k: v for k, v in req2.items() if k != "max_tokens"}
    counted = http.post("/v1/messages/count_tokens", json=count_req)
    assert u2["input_tokens"] + u2["cache_read_input_tokens"] == counted.json()["input_tokens"]


def test_cache_ttl_split_and_extension(http: httpx.Client) -> None:
    # the tools alone are above Sonnet 4.6's minimum cacheable prompt (1,024 tokens)
    tools = [
        dict(
            WEATHER_TOOL,
            description="Current weather. " * 300,
            cache_control={"type": "ephemeral", "ttl": "1h"},
        )
    ]
    system = [{"type": "text", "text": "Rules. " * 300, "cache_control": {"type": "ephemeral"}}]
    u1 = http.post("/v1/messages", json=body("q", tools=tools, system=system)).json()["usage"]
    c = u1["cache_creation"]
    assert c["ephemeral_1h_input_tokens"] > 0 and c["ephemeral_5m_input_tokens"] > 0
    assert u1["cache_creation_input_tokens"] == (
        c["ephemeral_1h_input_tokens"] + c["ephemeral_5m_input_tokens"]
    )
    # same tools, new system: the 1h tools prefix is read, the system part is written
    system2 = [{"type": "text", "text": "Other rules. " * 300, "cache_control": {"type": "ephemeral"}}]
    u2 = http.post("/v1/messages", json=body("q", tools=tools, system=system2)).json()["usage"]
    assert u2["cache_read_input_tokens"] == c["ephemeral_1h_input_tokens"]
    assert u2["cache_creation"]["ephemeral_1h_input_tokens"] == 0
    assert u2["cache_creation"]["ephemeral_5m_input_tokens"] > 0
    # count_tokens reports the whole prompt and never touches the cache
    ct = {
        "model": "claude-sonnet-4-6",
        "tools": tools,
        "system": system2,
        "messages": [{"role": "user", "content": "q"}],
    }
    n = http.post("/v1/messages/count_tokens", json=ct).json()
    assert n["input_tokens"] == (
        u2["input_tokens"] + u2["cache_read_input_tokens"] + u2["cache_creation_input_tokens"]
    )


# ------------------------------------------------------------------------------------------ errors


def test_request_errors(http: httpx.Client, sim: str) -> None:
    r = httpx.post(sim + "/v1/messages", json=body(), headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401
    assert r.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": r.headers["request-id"],
    }
    assert r.headers["x-should-retry"] == "false"
    r = httpx.post(sim + "/v1/messages", json=body(), headers={"authorization": "Bearer abc"})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]
    r = http.post("/v1/messages", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    for missing in ("model", "max_tokens", "messages"):
        req = body()
        del req[missing]
        r = http.post("/v1/messages", json=req)
        assert r.status_code == 400 and r.json()["error"]["message"] == f"{missing}: Field required"
    r = http.post("/v1/messages", json=body(model="gpt-4o"))
    assert r.status_code == 404
    assert r.json()["error"] == {"type": "not_found_error", "message": "model: gpt-4o"}
    for gone in ("claude-future-9", "claude-sonnet-4-5", "claude-3-5-haiku-latest"):  # unknown, retired ids
        r = http.post("/v1/messages", json=body(model=gone))
        assert r.status_code == 404
        assert r.json()["error"] == {"type": "not_found_error", "message": f"model: {gone}"}
    r = http.post("/v1/messages?beta=true", json=body())
    assert r.status_code == 200
    r = http.post(
        "/v1/messages", json=body(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 4000})
    )
    assert r.status_code == 400


def test_body_too_large(sim: str) -> None:
    big = (
        b'{"model":"claude-sonnet-4-6","max_tokens":10,"messages":[{"role":"user","content":"'
        + b"a" * (33 * 1024 * 1024)
        + b'"}]}'
    )
    r = httpx.post(sim + "/v1/messages", content=big, headers=HEADERS, timeout=30)
    assert r.status_code == 413
    assert r.content == b'{"error":{"type":"request_too_large","message":"Request exceeds the maximum size"}}'

    def chunks() -> Iterator[bytes]:
        yield big[: 1 << 20]
        for i in range(1 << 20, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    r = httpx.post(sim + "/v1/messages", content=chunks(), headers=HEADERS, timeout=30)  # chunked upload
    assert r.status_code == 413


def test_chunked_request_body(sim: str) -> None:
    data = orjson.dumps(body("chunked upload"))

    def gen() -> Iterator[bytes]:
        for i in range(0, len(data), 7):
            yield data[i : i + 7]

    r = httpx.post(sim + "/v1/messages", content=gen(), headers=HEADERS)
    assert r.status_code == 200 and r.json()["content"][0]["type"] == "text"


def test_keepalive_pipelining(sim: str) -> None:
    host, port = sim.removeprefix("http://").rsplit(":", 1)
    payload = orjson.dumps(body("pipelined"))
    one = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload)
    ) + payload
    stream_payload = orjson.dumps(body("pipelined sim:tokens=5", stream=True))
    two = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n"
        b"content-length: %d\r\n\r\n" % len(stream_payload)
    ) + stream_payload
    three = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n\r\n"
    with socket.create_connection((host, int(port))) as s:
        s.sendall(one + two + three + one[:50])
        time.sleep(0.05)
        s.sendall(one[50:])
        s.settimeout(5)
        buf = b""
        while buf.count(b"HTTP/1.1 200 OK") < 4 or not buf.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk
            buf += chunk
    parts = buf.split(b"HTTP/1.1 200 OK")[1:]
    assert b"application/json" in parts[0] and b"text/event-stream" in parts[1] and b'"has_more"' in parts[2]
    assert parts[1].rstrip().endswith(b"0")  # terminating chunk before the next response


# ------------------------------------------------------------------------------------------ faults


def test_fault_statuses(http: httpx.Client, sim: str) -> None:
    inject_fault(sim, "429", count=1, retry_after=2)
    r = http.post("/v1/messages", json=body())
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2" and r.headers["x-should-retry"] == "true"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert r.json()["request_id"] == r.headers["request-id"]
    assert http.post("/v1/messages", json=body()).status_code == 200  # count exhausted
    control(sim, "/_sim/faults", {"faults": [{"fault": "529"}, {"fault": "500"}, {"fault": "401"}]})
    r = http.post("/v1/messages", json=body())
    assert r.status_code == 529 and r.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert r.headers["x-should-retry"] == "true"
    r = http.post("/v1/messages", json=body())
    assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
    assert r.headers["x-should-retry"] == "true"
    r = http.post("/v1/messages", json=body())
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    stats = sim_stats(sim)["requests"]["/v1/messages"]
    assert stats == {"429": 1, "200": 1, "529": 1, "500": 1, "401": 1}


def test_fault_sdk_retries(sim: str) -> None:
    inject_fault(sim, "429", count=2, retry_after=0.05)
    with anthropic.Anthropic(base_url=sim, api_key="k", max_retries=2) as c:
        msg = c.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=USER_X)
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert sim_stats(sim)["requests"]["/v1/messages"] == {"429": 2, "200": 1}
    inject_fault(sim, "529", count=5)
    with anthropic.Anthropic(base_url=sim, api_key="k", max_retries=0) as c:
        with pytest.raises(anthropic.APIStatusError) as ei:
            c.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=USER_X)
    assert ei.value.status_code == 529


def test_fault_paths(http: httpx.Client, sim: str) -> None:
    inject_fault(sim, "500", count=1)
    ct = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "x"}]}
    assert http.post("/v1/messages/count_tokens", json=ct).status_code == 200  # not for count_tokens
    assert http.post("/v1/messages", json=body()).status_code == 500
    inject_fault(sim, "529", count=1, paths=["/v1/messages/count_tokens"])
    assert http.post("/v1/messages", json=body()).status_code == 200
    assert http.post("/v1/messages/count_tokens", json=ct).status_code == 529
    control(sim, "/_sim/faults", {"fault": "500", "count": 5})
    assert len(control(sim, "/_sim/faults")["faults"]) == 1
    control(sim, "/_sim/faults", {"clear": True})
    assert control(sim, "/_sim/faults")["faults"] == []
    assert http.post("/v1/messages", json=body()).status_code == 200


def test_fault_reset_before_response(http: httpx.Client, sim: str) -> None:
    inject_fault(sim, "reset")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post("/v1/messages", json=body())
    r = http.post("/v1/messages", json=body("directive sim:fault=401"))
    assert r.status_code == 401
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post("/v1/messages", json=body("directive sim:fault=reset"))
    assert sim_stats(sim)["requests"]["/v1/messages"]["reset"] == 2


def test_fault_reset_mid_stream(sim: str) -> None:
    inject_fault(sim, "reset_mid", after_events=5)
    got = b""
    with httpx.Client(base_url=sim, headers=HEADERS) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with http.stream("POST", "/v1/messages", json=body("x sim:tokens=60", stream=True)) as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes():
                    got += chunk
    assert got.count(b"\n\n") == 5 and b"message_stop" not in got
    # directive form, through the SDK
    with anthropic.Anthropic(base_url=sim, api_key="k", max_retries=0) as c:
        # the SDK surfaces a mid-stream disconnect as its HTTP library's protocol/read error
        with pytest.raises(Exception) as ei:
            with c.messages.stream(
                model="claude-sonnet-4-6",
                max_tokens=100,
                messages=[{"role": "user", "content": "y sim:fault=reset_mid,after_events=3"}],
            ) as s:
                for _ in s:
                    pass
    assert type(ei.value).__name__ in ("RemoteProtocolError", "ReadError", "APIConnectionError")


def test_fault_error_event_mid_stream(http: httpx.Client, sim: str) -> None:
    inject_fault(sim, "error_mid", after_events=4)
    r, raw = stream_raw(http, body("x sim:tokens=60"))
    frames = parse_sse(raw)
    assert len(frames) == 5 and frames[-1][0] == "error"
    data = frames[-1][1]
    obj = json.loads(data)
    assert list(obj) == ["type", "error", "request_id"]
    assert obj["error"] == {"details": None, "type": "overloaded_error", "message": "Overloaded"}
    assert obj["request_id"] == r.headers["request-id"]
    stripped = data[:-1].rstrip(b" ")
    assert json.dumps(obj, separators=(",", ":")).encode() == stripped + b"}"
    with anthropic.Anthropic(base_url=sim, api_key="k", max_retries=0) as c:
        with pytest.raises(anthropic.APIStatusError) as ei:
            with c.messages.stream(
                model="claude-sonnet-4-6",
                max_tokens=100,
                messages=[{"role": "user", "content": "sim:fault=error_mid"}],
            ) as s:
                for _ in s:
                    pass
        assert "overloaded" in str(ei.value).lower()
    r = http.post("/v1/messages", json=body("sim:fault=error_mid"))  # non-streaming: a 529
    assert r.status_code == 529


def test_fault_slow_first_byte(http: httpx.Client, sim: str) -> None:
    inject_fault(sim, "slow", delay_ms=300)
    t0 = time.monotonic()
    r = http.post("/v1/messages", json=body())
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.29
    t0 = time.monotonic()
    r = http.post("/v1/messages", json=body("sim:fault=429,retry_after=7,delay_ms=200"))
    assert r.status_code == 429 and r.headers["retry-after"] == "7" and time.monotonic() - t0 >= 0.19


def test_timing_knobs(http: httpx.Client) -> None:
    t0 = time.monotonic()
    first = None
    req = body("x sim:ttft=200 sim:tps=400 sim:tokens=80", stream=True)
    with http.stream("POST", "/v1/messages", json=req) as r:
        for chunk in r.iter_bytes():
            if first is None and b"content_block_start" in chunk:
                first = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first is not None and first >= 0.19
    assert total >= 0.2 + 80 / 400 * 0.9
    # a non-streamed reply waits its own sim:latency (before its headers), not the configured one
    t0 = time.monotonic()
    assert http.post("/v1/messages", json=body("x sim:latency=300 sim:tokens=8")).status_code == 200
    assert time.monotonic() - t0 >= 0.29


def test_control_config_and_stats(sim: str, http: httpx.Client) -> None:
    cfg = control(sim, "/_sim/config", {"latency_ms": 150})
    assert cfg["latency_ms"] == 150
    try:
        t0 = time.monotonic()
        assert http.post("/v1/messages", json=body()).status_code == 200
        assert time.monotonic() - t0 >= 0.14
    finally:
        control(sim, "/_sim/config", {"latency_ms": 0})
    st = sim_stats(sim)
    assert st["requests"]["/v1/messages"]["200"] == 1
    assert len(control(sim, "/_sim/fixtures")["fixtures"]) >= 18


def test_api_keys_enforced() -> None:
    with start_sim_process(api_keys={"good-key"}) as (_p, url):
        ok = httpx.post(url + "/v1/messages", json=body(), headers=dict(HEADERS, **{"x-api-key": "good-key"}))
        assert ok.status_code == 200
        bad = httpx.post(url + "/v1/messages", json=body(), headers=HEADERS)
        assert bad.status_code == 401
        bearer = httpx.post(
            url + "/v1/messages",
            json=body(),
            headers={"authorization": "Bearer good-key", "anthropic-version": "2023-06-01"},
        )
        assert bearer.status_code == 200


SHARED = SHARED_FIXTURES  # the repository's fixtures/ corpus (ETHEREAL_FIXTURES overrides)


def test_fixtures_dir_env() -> None:
    src = SHARED / "anthropic" / "stream-fixtures-sdk-python" / "refusal_response.txt"
    with start_sim_process(env={"ETHEREAL_FIXTURES": str(SHARED)}) as (_p, url):
        with httpx.Client(base_url=url, headers=HEADERS) as http:
            _r, raw = stream_raw(http, body("sim:replay refusal_response"))
            assert raw == src.read_bytes()
            msg = http.post("/v1/messages", json=body("sim:replay refusal_response")).json()
            assert msg["stop_reason"] == "refusal"
