"""The official ``openai`` SDK through the gateway to the sim, on each current model: Chat Completions
and Responses with reasoning efforts, sampling parameters, JSON output, tools (auto and forced) and a
multi-turn tool loop with thinking. One gateway for the whole matrix.

What the gateway sends upstream for each of these is held to the models' rules by
tests/unit/test_claude_request.py; here the same requests go end to end: the answer is a success
in OpenAI's shape, or the documented 400 naming the parameter (a forced tool on a model that
refuses forcing), and the response headers say what was translated away.

Also here: automatic prompt caching for chat clients that cannot send ``cache_control`` (a
Qwen-Code-like conversation reads its prefix from the cache from its second turn on, and costs far
less than the same conversation on a key that opted out).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.e2e.sdkmatrix import CURRENT

REFUSE_FORCING = {"claude-fable-5-2", "claude-opus-5-5", "claude-sonnet-5-5"}  # forced_tool_choice = false
DEFAULT_ONLY = {
    "claude-fable-5-2",
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
    "claude-opus-5",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-sonnet-5",
}  # sampling = "default_only"
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
RWEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather",
    "parameters": WEATHER["function"]["parameters"],
}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as c:
        yield c


def usage(gateway: Gateway, request_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{gateway.url}/v1/usage/{request_id}", headers={"x-api-key": gateway.key}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", CURRENT)
def test_chat_matrix(client: openai.OpenAI, model: str) -> None:
    hi = [{"role": "user", "content": "Hello there"}]
    for effort in ("minimal", "low", "medium", "high", "xhigh", "none"):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=hi, max_tokens=64, reasoning_effort=effort
        )  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content
        if effort == "none" and model in ("claude-opus-5-5", "claude-fable-5-2"):
            assert raw.headers["ethereal-thinking"].startswith("on; reason=cannot-be-off")
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=hi, max_tokens=64, temperature=0.3, top_p=0.5
    )
    assert raw.parse().choices[0].message.content
    dropped = raw.headers.get("ethereal-dropped-params")
    assert dropped == ("temperature,top_p" if model in DEFAULT_ONLY else "top_p")
    raw = client.chat.completions.with_raw_response.create(model=model, messages=hi, max_tokens=64, top_p=0.5)
    assert ("ethereal-dropped-params" in raw.headers) == (model in DEFAULT_ONLY)
    for fmt in (
        {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
        {"type": "json_object"},
    ):
        completion = client.chat.completions.create(
            model=model, messages=hi, max_tokens=64, response_format=fmt
        )  # type: ignore[arg-type]
        assert (
            completion.choices[0].finish_reason in ("stop", "length")
            and completion.choices[0].message.content
        )
        assert not completion.choices[0].message.tool_calls
        if fmt["type"] == "json_schema":  # structured outputs reached the model: its reply is the JSON
            assert json.loads(completion.choices[0].message.content).keys() == {"answer"}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    auto = client.chat.completions.create(
        model=model, messages=ask, tools=[WEATHER], tool_choice="auto", max_tokens=1024
    )  # type: ignore[list-item]
    assert auto.choices[0].finish_reason == "tool_calls"
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        if model in REFUSE_FORCING:
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(
                    model=model, messages=ask, tools=[WEATHER], tool_choice=choice, max_tokens=1024
                )  # type: ignore[arg-type,list-item]
            assert info.value.param == "tool_choice" and "forced tool choice" in info.value.message
        else:
            forced = client.chat.completions.create(
                model=model, messages=ask, tools=[WEATHER], tool_choice=choice, max_tokens=1024
            )  # type: ignore[arg-type,list-item]
            assert forced.choices[0].message.tool_calls


@pytest.mark.parametrize("model", CURRENT)
def test_chat_tool_loop_with_thinking(client: openai.OpenAI, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris? sim:tools=1"}]
    first = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        reasoning_effort="medium",
        max_tokens=2048,
    )
    message = first.choices[0].message.model_dump(exclude_none=True)
    assert first.choices[0].finish_reason == "tool_calls" and message.get("reasoning_signature")
    messages.append(message)  # reasoning_content + reasoning_signature go back as they came
    messages.append({"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "18C, sunny"})
    second = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        reasoning_effort="medium",
        max_tokens=2048,
    )
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content


@pytest.mark.parametrize("model", CURRENT)
def test_responses_matrix(client: openai.OpenAI, model: str) -> None:
    for effort in ("minimal", "low", "medium", "high", "xhigh", "none"):
        resp = client.responses.create(
            model=model, input="Hello", max_output_tokens=64, reasoning={"effort": effort, "summary": "auto"}
        )  # type: ignore[typeddict-item]
        assert resp.status in ("completed", "incomplete") and resp.output
    raw = client.responses.with_raw_response.create(
        model=model, input="Hello", max_output_tokens=64, temperature=0.2
    )
    assert raw.parse().output_text
    assert ("ethereal-dropped-params" in raw.headers) == (model in DEFAULT_ONLY)
    for fmt in (
        {"type": "json_schema", "name": "a", "schema": SCHEMA, "strict": True},
        {"type": "json_object"},
    ):
        resp = client.responses.create(
            model=model, input="Answer in JSON", max_output_tokens=64, text={"format": fmt}
        )  # type: ignore[typeddict-item]
        assert resp.output_text and all(item.type != "function_call" for item in resp.output)
        if fmt["type"] == "json_schema":
            assert json.loads(resp.output_text).keys() == {"answer"}
    auto = client.responses.create(
        model=model, input="Weather in Paris?", tools=[RWEATHER], tool_choice="auto", max_output_tokens=1024
    )  # type: ignore[list-item]
    assert any(item.type == "function_call" for item in auto.output)
    if model in REFUSE_FORCING:
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(
                model=model,
                input="Weather?",
                tools=[RWEATHER],
                tool_choice="required",
                max_output_tokens=1024,
            )  # type: ignore[list-item]
        assert info.value.param == "tool_choice"
    else:
        forced = client.responses.create(
            model=model, input="Weather?", tools=[RWEATHER], tool_choice="required", max_output_tokens=1024
        )  # type: ignore[list-item]
        assert any(item.type == "function_call" for item in forced.output)
    # a multi-turn tool loop with thinking: reasoning items sent back as they came
    first = client.responses.create(
        model=model,
        input="Weather in Paris? sim:tools=1",
        tools=[RWEATHER],  # type: ignore[list-item]
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        max_output_tokens=2048,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and first.output[0].type == "reasoning"
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C"},
    ]
    second = client.responses.create(
        model=model,
        input=history,
        tools=[RWEATHER],  # type: ignore[list-item,arg-type]
        reasoning={"effort": "low"},
        max_output_tokens=2048,
    )
    assert second.status == "completed" and second.output_text


def test_automatic_caching_for_chat_clients(gateway: Gateway) -> None:
    """A Qwen-Code-like session: a large system prompt and tools, resent whole each of 10 turns. With
    automatic caching (the default) the prefix is read from the cache from the second turn on, and
    the session costs at least 60 % less than the same session on a key that opted out."""
    system = "You are Qwen Code, an interactive CLI agent. " + " ".join(
        f"Rule {i}: keep edits minimal, explain briefly, run the tests after each change." for i in range(900)
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": f"Tool {i} of the agent: " + "reads, edits and runs files. " * 20,
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                    "required": ["path"],
                },
            },
        }
        for i in range(12)
    ]
    off_key, _ = gateway.mint(name="no-auto-cache", metadata={"auto_cache": False})

    def session(key: str) -> tuple[int, list[int]]:
        cost, cached = 0, []
        messages: list[Any] = [{"role": "system", "content": system}]
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as c:
            for turn in range(10):
                messages.append(
                    {"role": "user", "content": f"Step {turn}: continue the refactor. sim:tools=0"}
                )
                raw = c.chat.completions.with_raw_response.create(
                    model="claude-sonnet-5-5", messages=messages, tools=tools, max_tokens=128
                )  # type: ignore[arg-type]
                completion = raw.parse()
                assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
                cached.append(completion.usage.prompt_tokens_details.cached_tokens or 0)
                record = httpx.get(
                    f"{gateway.url}/v1/usage/{raw.headers['x-request-id']}",
                    headers={"x-api-key": key},
                    timeout=10,
                ).json()
                cost += record["cost_micro"]
                messages.append({"role": "assistant", "content": completion.choices[0].message.content})
        return cost, cached

    cost_on, cached_on = session(gateway.key)
    cost_off, cached_off = session(off_key)
    assert cached_on[0] == 0 and all(c > 10_000 for c in cached_on[1:]), cached_on
    assert not any(cached_off)
    assert cost_on <= 0.4 * cost_off, (cost_on, cost_off)
    print(
        json.dumps(
            {
                "cost_micro_auto_cache": cost_on,
                "cost_micro_opted_out": cost_off,
                "saving": round(1 - cost_on / cost_off, 3),
            }
        )
    )


def test_provisional_model_learns_from_a_documented_refusal(gateway: Gateway, client: openai.OpenAI) -> None:
    """A model the registry does not describe is translated with its stand-in's rules (a Haiku is
    billed like Haiku 4.5, which thinks with budget_tokens). The upstream refuses that with the
    API's documented text: the translated route corrects the shape, retries once, and says so; the
    native route passes the same refusal through unmodified."""
    from ethereal.models import Registry
    from ethereal.sim.testing import control

    refusal = Registry().error_text("thinking_enabled")
    model = "claude-haiku-9-0"
    # the upstream serves it (the sim answers 404 for a name it does not serve), with a newer
    # Haiku's rules: budget thinking refused with the documented text
    control(gateway.sim_url, "/_sim/models", {"id": model, "like": "claude-haiku-5-5"})
    control(gateway.sim_url, "/_sim/faults", {"fault": "400", "count": 1, "message": refusal})
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], reasoning_effort="high", max_tokens=64
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["ethereal-reshaped"] == "thinking_enabled"
    raw = client.chat.completions.with_raw_response.create(  # remembered: no refusal, no retry
        model=model, messages=[{"role": "user", "content": "Again"}], reasoning_effort="high", max_tokens=64
    )
    assert "ethereal-reshaped" not in raw.headers and raw.parse().choices[0].message.content
    control(gateway.sim_url, "/_sim/faults", {"fault": "400", "count": 1, "message": refusal})
    native = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01"},
        json={
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hi"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
        timeout=10,
    )
    assert native.status_code == 400 and native.json()["error"]["message"] == refusal
    control(gateway.sim_url, "/_sim/models", {"remove": model})
