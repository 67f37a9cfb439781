"""The official anthropic SDK, unchanged but for base URL and key, through the gateway to the sim."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from tests.conftest import Gateway
from tests.procs import RECORDED

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["location"],
    },
}


@pytest.fixture
def client(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as client:
        yield client


@pytest.fixture
def bearer_client(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    # the newest SDKs send only Authorization: Bearer
    with anthropic.Anthropic(base_url=gateway.url, auth_token=gateway.key, max_retries=0) as client:
        yield client


def test_create_x_api_key(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "Hello there"}]
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    # the alias resolved to the canonical id before reaching the upstream
    assert message.model == "claude-sonnet-4-6"
    assert raw.headers["request-id"].startswith("req_")
    assert raw.headers.get("upstream-request-id", "").startswith("req_")
    assert raw.headers["request-id"] != raw.headers["upstream-request-id"]


def test_create_bearer_and_new_version_header(gateway: Gateway) -> None:
    with anthropic.Anthropic(
        base_url=gateway.url,
        auth_token=gateway.key,
        max_retries=0,
        default_headers={"anthropic-version": "2026-10-21"},
    ) as client:
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=32, messages=[{"role": "user", "content": "Hi"}]
        )
    assert message.content[0].type == "text"


def test_stream_text(bearer_client: anthropic.Anthropic) -> None:
    with bearer_client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=128, messages=[{"role": "user", "content": "Tell me a story"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    messages: list[dict] = [{"role": "user", "content": "What is the weather in Paris?"}]
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=256, tools=[WEATHER_TOOL], messages=messages
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    tool_uses = [b for b in first.content if b.type == "tool_use"]
    assert tool_uses and tool_uses[0].name == "get_weather"
    assert isinstance(tool_uses[0].input, dict) and "location" in tool_uses[0].input
    messages.append(
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    )
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_uses[0].id, "content": "18C and sunny"}],
        }
    )
    second = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=256, tools=[WEATHER_TOOL], messages=messages
    )
    assert second.stop_reason == "end_turn"
    assert second.content[-1].type == "text"


def test_thinking_stream(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think, then answer"}],
    ) as stream:
        final = stream.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds[0] == "thinking" and "text" in kinds
    assert final.content[0].thinking and final.content[0].signature


def test_count_tokens(client: anthropic.Anthropic) -> None:
    result = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Count these tokens please"}]
    )
    assert result.input_tokens > 0


def test_models_list_and_get(client: anthropic.Anthropic) -> None:
    page = client.models.list(limit=3)
    assert len(page.data) == 3 and page.has_more
    ids = [m.id for m in client.models.list(limit=1000).data]
    assert (
        "claude-sonnet-5-5" in ids and "claude-sonnet-4-5-20250929" not in ids and len(ids) == len(set(ids))
    )
    everything = [m.id for m in client.models.list(limit=2)]  # auto-pagination over after_id
    assert everything == ids
    model = client.models.retrieve("sonnet")
    # short names and "-latest" aliases are today's models
    assert model.id == "claude-sonnet-5-5" and model.max_input_tokens == 1_000_000
    assert model.capabilities is not None and model.capabilities.thinking.types.adaptive.supported


async def test_async_client(gateway: Gateway) -> None:
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as client:
        message = await client.messages.create(
            model="opus-4", max_tokens=32, messages=[{"role": "user", "content": "Hello"}]
        )
        assert message.model == "claude-opus-4-8"
        async with client.messages.stream(
            model="anthropic/claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "Stream"}],
        ) as stream:
            final = await stream.get_final_message()
    assert final.model == "claude-sonnet-4-6" and final.content[0].text


@pytest.mark.parametrize("path", sorted(RECORDED.glob("*.sse")), ids=lambda p: p.stem)
def test_recorded_stream_arrives_byte_identical(gateway: Gateway, path) -> None:
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "stream": True,
        "messages": [{"role": "user", "content": f"sim:replay {path.stem}"}],
    }
    with httpx.stream(
        "POST",
        gateway.url + "/v1/messages?beta=true",
        json=body,
        timeout=30,
        headers={
            "x-api-key": gateway.key,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "prompt-caching-2024-07-31",
        },
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        received = b"".join(resp.iter_raw())
    assert received == path.read_bytes()
