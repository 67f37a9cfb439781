"""The official ``openai`` SDK, unchanged but for base URL and key, through the gateway to the sim.

Sync, async and streaming: plain chat, a multi-turn tool round trip with two parallel
calls, vision with a data URL, JSON mode, reasoning (kept across a tool turn), models,
errors in OpenAI's shape (with ``param`` and ``retry-after``) and metering.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, mint_into
from tests.procs import RECORDED, gateway_process

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def make_client(gateway: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key or gateway.key, max_retries=0)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with make_client(gateway) as client:
        yield client


@pytest.fixture
def fault_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own per fault test: an injected upstream fault cools its credential down."""
    data_dir = tmp_path_factory.mktemp("openai-faults")
    key, _ = mint_into(data_dir, name="faults")
    with gateway_process(data_dir, sim_url) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)


def usage_record(gateway: Gateway, request_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{gateway.url}/v1/usage/{request_id}", headers={"x-api-key": gateway.key}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_plain_chat(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        max_tokens=64,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "claude-sonnet-4-6"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    request_id = raw.headers["x-request-id"]
    assert request_id == raw.headers["request-id"] and completion.id == "chatcmpl-" + request_id[4:]
    record = usage_record(gateway, request_id)
    assert record["route"] == "chat.completions" and record["model"] == "claude-sonnet-4-6"
    assert (
        record["input_tokens"] == usage.prompt_tokens and record["output_tokens"] == usage.completion_tokens
    )
    assert record["exact"] and record["cost_micro"] > 0 and not record["stream"]


def test_stream_with_usage(client: openai.OpenAI, gateway: Gateway) -> None:
    with client.chat.completions.stream(
        model="anthropic/claude-sonnet-4-6",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_completion_tokens=128,
        stream_options={"include_usage": True},
    ) as stream:
        pieces = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert pieces and final.choices[0].message.content == "".join(pieces)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.model == "claude-sonnet-4-6"
    assert final.usage is not None and final.usage.completion_tokens > 0
    record = usage_record(gateway, "req_" + final.id.removeprefix("chatcmpl-"))
    assert record["stream"] and record["exact"] and record["output_tokens"] == final.usage.completion_tokens


def test_raw_stream_frames(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk
    assert len({c.id for c in chunks}) == 1


async def test_async_client(gateway: Gateway) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="opus-4", messages=[{"role": "user", "content": "Hello"}], max_tokens=32
        )
        assert completion.model == "claude-opus-4-8" and completion.choices[0].message.content
        stream = await client.chat.completions.create(
            model="claude-sonnet-4-6",
            messages=[{"role": "user", "content": "Stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
    assert text and usage is not None and usage.total_tokens > 0


@pytest.mark.parametrize("stream", [True, False])
def test_parallel_tool_round_trip(client: openai.OpenAI, stream: bool) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris and in Oslo? sim:tools=2"}
    ]
    if stream:
        with client.chat.completions.stream(
            model="claude-sonnet-4-6", messages=messages, tools=[WEATHER], max_tokens=512
        ) as s:
            first = s.get_final_completion()
    else:
        first = client.chat.completions.create(
            model="claude-sonnet-4-6", messages=messages, tools=[WEATHER], max_tokens=512
        )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 2
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("toolu_") for c in calls)
    for call in calls:
        assert call.type == "function" and call.function.name == "get_weather"
        assert "location" in json.loads(call.function.arguments)
    messages.append(choice.message.model_dump(exclude_none=True))
    for i, call in enumerate(calls):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": f"{18 + i}C and sunny"})
    second = client.chat.completions.create(
        model="claude-sonnet-4-6", messages=messages, tools=[WEATHER], max_tokens=256, stream=False
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="claude-sonnet-4-6",
        messages=[{"role": "user", "content": "Paris and Oslo weather sim:tools=2"}],
        tools=[WEATHER],
        parallel_tool_calls=False,
        max_tokens=256,
    )
    assert len(completion.choices[0].message.tool_calls or []) == 1


def test_vision_data_url(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content
    assert (
        completion.usage is not None and completion.usage.prompt_tokens > 1000
    )  # the image was counted upstream


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema(client: openai.OpenAI, stream: bool) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Largest city of Norway?"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    }
    if stream:
        with client.chat.completions.stream(**kwargs) as s:
            completion = s.get_final_completion()
    else:
        completion = client.chat.completions.create(**kwargs)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    data = json.loads(choice.message.content or "")
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_json_object_and_parse_helper(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="claude-haiku-4-5",
        max_tokens=128,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Reply with a JSON object"}],
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
    import pydantic

    class Answer(pydantic.BaseModel):
        value: int
        unit: str

    parsed = client.chat.completions.parse(
        model="claude-sonnet-4-6",
        max_tokens=128,
        response_format=Answer,
        messages=[{"role": "user", "content": "How many legs has a cat?"}],
    )
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Answer)


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_kept_across_a_tool_turn(client: openai.OpenAI, stream: bool) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris? Think first."}]
    kwargs: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "tools": [WEATHER],
        "reasoning_effort": "low",
        "max_completion_tokens": 4096,
    }
    if stream:
        with client.chat.completions.stream(messages=messages, **kwargs) as s:
            deltas = [e.chunk.choices[0].delta for e in s if e.type == "chunk" and e.chunk.choices]
            first = s.get_final_completion()
        streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        assert streamed == first.choices[0].message.model_dump()["reasoning_content"]
    else:
        first = client.chat.completions.create(messages=messages, **kwargs)
    message = first.choices[0].message.model_dump(exclude_none=True)
    reasoning = message.get("reasoning_content")
    assert reasoning and message.get("reasoning_signature")
    assert first.choices[0].finish_reason == "tool_calls"
    messages.append(message)  # reasoning_content + reasoning_signature go back as they came
    messages.append({"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "18C"})
    second = client.chat.completions.create(messages=messages, **kwargs)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content


def test_models(client: openai.OpenAI, gateway: Gateway) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "claude-sonnet-5-5" in ids and len(ids) == len(set(ids))
    assert all(
        m.object == "model" and m.owned_by == "anthropic" and m.created > 1_600_000_000 for m in models.data
    )
    assert client.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5-20251001"
    # the same route answers Anthropic's shape to an Anthropic client
    native = httpx.get(
        gateway.url + "/v1/models",
        headers={"authorization": f"Bearer {gateway.key}", "anthropic-version": "2023-06-01"},
    ).json()
    assert "has_more" in native and native["data"][0]["type"] == "model"


# ---- errors ---------------------------------------------------------------------------------


def test_unsupported_parameter_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert info.value.param == "n" and info.value.type == "invalid_request_error"
    assert info.value.response.headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}], logprobs=True
        )
    assert info.value.param == "logprobs"


def test_auth_and_not_found_errors(gateway: Gateway) -> None:
    with (
        make_client(gateway, "sk-ant-api03-wrong") as wrong,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        wrong.chat.completions.create(model="claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "invalid_api_key"
    # a model the upstream does not serve: its own 404, in OpenAI's shape
    with make_client(gateway) as client, pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "gpt-4o" in str(missing.value)


def test_limits_answer_in_openai_shape(gateway: Gateway) -> None:
    key, _ = gateway.mint(name="rpm-1", rpm=1)
    with make_client(gateway, key) as client:
        ok = client.chat.completions.with_raw_response.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "one"}], max_tokens=8
        )
        assert ok.headers.get("x-ratelimit-limit-requests") == "1"
        assert ok.headers.get("x-ratelimit-remaining-requests") == "0"
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="claude-haiku-4-5", messages=[{"role": "user", "content": "two"}]
            )
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.code == "rate_limit_exceeded"
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}

    broke, _ = gateway.mint(name="broke", budget_tokens=1)
    with make_client(gateway, broke) as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hello"}]
        )
    assert info.value.status_code == 402 and info.value.code == "insufficient_quota"

    narrow, _ = gateway.mint(name="haiku-only", allowed_models=["haiku-4"])
    with make_client(gateway, narrow) as client, pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="claude-opus-4-6", messages=[{"role": "user", "content": "hello"}]
        )


def test_error_mid_stream_raises(fault_gateway: Gateway) -> None:
    gateway = fault_gateway
    received: list[Any] = []
    with make_client(gateway) as client, pytest.raises(openai.APIError, match="Overloaded") as info:
        stream = client.chat.completions.create(
            model="claude-sonnet-4-6",
            stream=True,
            messages=[{"role": "user", "content": "hi sim:fault=error_mid,after_events=4"}],
        )
        received.extend(stream)
    assert received  # the stream had started
    request_id = "req_" + received[0].id.removeprefix("chatcmpl-")
    record = usage_record(gateway, request_id)
    assert record["error_type"] == "overloaded_error" and record["route"] == "chat.completions"
    assert info.value.body is not None


def test_recorded_stream_replay_through_gateway(client: openai.OpenAI) -> None:
    name = "test_anthropic_model_web_search_tool_stream.0"
    assert (RECORDED / f"{name}.sse").exists()
    with client.chat.completions.stream(
        model="claude-sonnet-4-6",
        messages=[{"role": "user", "content": f"sim:replay {name}"}],
        stream_options={"include_usage": True},
    ) as s:
        final = s.get_final_completion()
    assert "San Francisco" in (final.choices[0].message.content or "")
    assert final.usage is not None and final.usage.prompt_tokens == 22397


def test_upstream_429_passes_retry_after(fault_gateway: Gateway) -> None:
    with make_client(fault_gateway) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="claude-sonnet-4-6",
            messages=[{"role": "user", "content": "hi sim:fault=429,retry_after=2"}],
        )
    assert int(info.value.response.headers["retry-after"]) >= 2


def test_client_disconnect_mid_stream_is_billed(gateway: Gateway) -> None:
    """A client that leaves mid-stream cancels the upstream request; the translator's estimate is billed."""
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 4000,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story. sim:tokens=3000 sim:tps=200"}],
    }
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {gateway.key}"}
        ) as resp:
            assert resp.status_code == 200
            request_id = resp.headers["x-request-id"]
            received = ""
            t0 = time.monotonic()
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    received += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if time.monotonic() - t0 > 1.0:
                    break
        deadline = time.monotonic() + 10
        while True:
            got = http.get(f"/v1/usage/{request_id}", headers={"x-api-key": gateway.key})
            if got.status_code == 200 or time.monotonic() > deadline:
                break
    record = got.json()
    assert record["status"] == 499 and record["error_type"] == "client_disconnected"
    assert not record["exact"] and record["route"] == "chat.completions"
    sent = len(received) / 4  # the sim's tokens average 4 characters
    assert sent > 50 and abs(record["output_tokens"] - sent) <= 0.2 * sent + 5, (
        record["output_tokens"],
        sent,
    )
