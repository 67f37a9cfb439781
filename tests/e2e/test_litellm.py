"""LiteLLM's client library, pointed at ethereal as an OpenAI-compatible provider.

litellm pins ``openai<3``, so it cannot share the main test environment (the other tests use the
current openai SDK). ``make test-litellm`` (part of ``make test``) runs this file in ``.venv-litellm``,
which layers litellm over the main environment; the main run does not collect it (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
import litellm

from tests.conftest import Gateway

# litellm's own import-time and pydantic warnings are not this project's to fix
pytestmark = pytest.mark.filterwarnings("ignore")

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


def complete(gateway: Gateway, **kw: Any) -> Any:
    litellm.telemetry = False
    return litellm.completion(
        model="openai/claude-sonnet-4-6",
        api_base=gateway.url + "/v1",
        api_key=gateway.key,
        num_retries=0,
        **kw,
    )


def test_chat_and_stream(gateway: Gateway) -> None:
    response = complete(gateway, messages=[{"role": "user", "content": "Hello"}], max_tokens=64)
    assert response.choices[0].message.content and response.usage.total_tokens > 0
    chunks = list(
        complete(
            gateway,
            messages=[{"role": "user", "content": "Stream it"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    rebuilt = litellm.stream_chunk_builder(chunks)
    assert rebuilt.choices[0].message.content
    assert rebuilt.choices[0].message.content == "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices
    )


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_conversation(gateway: Gateway, stream: bool) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris and in Oslo? sim:tools=2"}
    ]
    if stream:
        chunks = list(complete(gateway, messages=messages, tools=[WEATHER], max_tokens=512, stream=True))
        first = litellm.stream_chunk_builder(chunks, messages=messages)
    else:
        first = complete(gateway, messages=messages, tools=[WEATHER], max_tokens=512)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == 2 and len({c.id for c in calls}) == 2
    assert all("location" in json.loads(c.function.arguments) for c in calls)
    messages.append(choice.message.model_dump(exclude_none=True))
    for call in calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C"})
    second = complete(gateway, messages=messages, tools=[WEATHER], max_tokens=256)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
