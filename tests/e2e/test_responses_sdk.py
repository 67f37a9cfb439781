"""The official ``openai`` SDK's ``client.responses.*``, unchanged but for base URL and key,
through the gateway to the sim.

Create and stream (the SDK's accumulator rebuilds the final response), a multi-turn tool
round trip with parallel calls, custom and namespaced tools, reasoning items sent back,
images, JSON schema output, errors in OpenAI's shape (``param``, ``retry-after``) and metering.
Every streamed event is validated against the spec's schema for its type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, mint_into
from tests.procs import gateway_process
from tests.unit.test_responses_translator import check_schema

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
    "strict": False,
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as client:
        yield client


def usage_record(gateway: Gateway, request_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{gateway.url}/v1/usage/{request_id}", headers={"x-api-key": gateway.key}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def request_id_of(response_id: str) -> str:
    return "req_" + response_id.removeprefix("resp_")


def test_create(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.responses.with_raw_response.create(
        model="claude-sonnet-4-6", instructions="Be brief.", input="Hello there", max_output_tokens=64
    )
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.model == "claude-sonnet-4-6" and response.instructions == "Be brief."
    assert response.output_text and response.output[0].type == "message"
    assert raw.headers["x-request-id"] == request_id_of(response.id)
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    record = usage_record(gateway, request_id_of(response.id))
    assert record["route"] == "responses" and not record["stream"] and record["exact"]
    assert record["output_tokens"] == usage.output_tokens
    assert (
        record["input_tokens"] + record["cache_read_input_tokens"] + record["cache_creation_input_tokens"]
        == usage.input_tokens
    )


def test_stream_accumulates_to_the_final_response(client: openai.OpenAI, gateway: Gateway) -> None:
    with client.responses.stream(model="claude-haiku-4-5", input="Tell me a story sim:tokens=60") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas) and deltas
    record = usage_record(gateway, request_id_of(final.id))
    assert record["stream"] and record["exact"] and final.usage is not None
    assert record["output_tokens"] == final.usage.output_tokens


def test_every_streamed_event_matches_the_spec(gateway: Gateway) -> None:
    """The raw SSE of a reasoning + parallel tool call turn: each event validates against the
    spec's schema for its type, its JSON ``type`` is its SSE event name, sequence numbers count up."""
    body = {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "input": "Weather? sim:tools=2",
        "tools": [WEATHER, {**WEATHER, "name": "get_time"}],
        "reasoning": {"effort": "low"},
        "metadata": {"team": "a"},
        "user": "u1",
    }
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {gateway.key}"},
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(resp.iter_bytes())
    seen = []
    for seq, frame in enumerate(raw.strip().split(b"\n\n")):
        name, _, data = frame.partition(b"\ndata: ")
        event = json.loads(data)
        assert name == b"event: " + event["type"].encode() and event["sequence_number"] == seq
        check_schema(event)
        seen.append(event["type"])
    assert seen[:2] == ["response.created", "response.in_progress"] and seen[-1] == "response.completed"
    assert (
        "response.reasoning_summary_text.delta" in seen and "response.function_call_arguments.delta" in seen
    )


def test_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="claude-haiku-4-5", input="Go on sim:tokens=200", max_output_tokens=16
    )
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    events = list(
        client.responses.create(
            model="claude-haiku-4-5", input="Go on sim:tokens=200", max_output_tokens=16, stream=True
        )
    )
    assert events[-1].type == "response.incomplete"


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_round_trip(client: openai.OpenAI, stream: bool) -> None:
    other: Any = {**WEATHER, "name": "get_time", "description": "The time in a city"}
    history: list[Any] = [{"role": "user", "content": "Weather and time in Paris? sim:tools=2"}]
    first: Any
    if stream:
        with client.responses.stream(model="claude-sonnet-4-6", input=history, tools=[WEATHER, other]) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model="claude-sonnet-4-6", input=history, tools=[WEATHER, other])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 2 and {c.name for c in calls} == {"get_weather", "get_time"}
    assert len({c.call_id for c in calls}) == 2 and all(c.call_id.startswith("toolu_") for c in calls)
    for c in calls:
        assert isinstance(json.loads(c.arguments), dict)
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history += [{"type": "function_call_output", "call_id": c.call_id, "output": "sunny, 21C"} for c in calls]
    second = client.responses.create(model="claude-sonnet-4-6", input=history, tools=[WEATHER, other])
    assert second.status == "completed" and second.output_text
    assert not [item for item in second.output if item.type == "function_call"]


def test_reasoning_items_round_trip_through_a_tool_loop(client: openai.OpenAI) -> None:
    """Thinking comes back as reasoning items; sent back as they came (``input += output``), the
    next turn is accepted by an upstream that insists the tool loop starts with its thinking."""
    history: list[Any] = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first: Any = client.responses.create(
        model="claude-sonnet-4-6",
        input=history,
        tools=[WEATHER],
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
    )
    kinds = [item.type for item in first.output]
    assert kinds[0] == "reasoning" and "function_call" in kinds
    reasoning = first.output[0]
    assert reasoning.summary and reasoning.summary[0].text and reasoning.encrypted_content
    assert first.usage is not None and first.usage.output_tokens_details.reasoning_tokens > 0
    call = next(item for item in first.output if item.type == "function_call")
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "rain"})
    second: Any = client.responses.create(
        model="claude-sonnet-4-6", input=history, tools=[WEATHER], reasoning={"effort": "low"}
    )
    assert second.status == "completed" and second.output[0].type == "reasoning" and second.output_text


def test_custom_and_namespaced_tools(client: openai.OpenAI) -> None:
    patch: Any = {
        "type": "custom",
        "name": "apply_patch",
        "description": "Apply a patch",
        "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
    }
    script = "sim:tool=apply_patch sim:input=" + _b64({"input": "*** Begin Patch\n*** End Patch\n"})
    response = client.responses.create(model="claude-sonnet-4-6", input=f"Patch it {script}", tools=[patch])
    call = next(item for item in response.output if item.type == "custom_tool_call")
    assert call.name == "apply_patch" and call.input == "*** Begin Patch\n*** End Patch\n"
    turns: Any = [
        {"role": "user", "content": "Patch it"},
        call.model_dump(exclude_none=True),
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done"},
    ]
    followup = client.responses.create(model="claude-sonnet-4-6", tools=[patch], input=turns)
    assert followup.output_text

    namespace: Any = {
        "type": "namespace",
        "name": "files",
        "description": "File tools",
        "tools": [
            {
                "type": "function",
                "name": "read",
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                    "required": ["path"],
                },
            }
        ],
    }
    raw = httpx.post(
        f"{client.base_url}responses",
        headers={"authorization": f"Bearer {client.api_key}"},
        json={"model": "claude-sonnet-4-6", "input": "Read it sim:tool=files__read", "tools": [namespace]},
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    item = next(i for i in raw.json()["output"] if i["type"] == "function_call")
    assert item["namespace"] == "files" and item["name"] == "read"


def test_image_input(client: openai.OpenAI) -> None:
    content: Any = [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
    ]
    response = client.responses.create(
        model="claude-sonnet-4-6", input=[{"role": "user", "content": content}]
    )
    assert response.output_text
    assert response.usage is not None and response.usage.input_tokens > 1500  # the image is counted


def test_json_schema_output(client: openai.OpenAI) -> None:
    schema: Any = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    fmt: Any = {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}
    response = client.responses.create(model="claude-sonnet-4-6", input="Largest city in Japan?", text=fmt)
    value = json.loads(response.output_text)
    assert set(value) == {"city", "population"} and isinstance(value["population"], int)
    with client.responses.stream(model="claude-sonnet-4-6", input="Largest city in Japan?", text=fmt) as s:
        streamed = s.get_final_response()
    assert set(json.loads(streamed.output_text)) == {"city", "population"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_unsupported_parameters_are_400_naming_them(
    client: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="claude-sonnet-4-6", **({"input": "hi"} | body))
    assert info.value.status_code == 400
    assert body_of(info.value)["param"] == param and body_of(info.value)["type"] == "invalid_request_error"


@pytest.fixture
def fault_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own: an injected upstream fault cools its credential down."""
    data_dir = tmp_path_factory.mktemp("responses-faults")
    key, _ = mint_into(data_dir, name="faults")
    with gateway_process(data_dir, sim_url) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)


@pytest.mark.parametrize("status", [429, 529])
def test_upstream_refusal_carries_retry_after(fault_gateway: Gateway, status: int) -> None:
    with (
        openai.OpenAI(base_url=fault_gateway.url + "/v1", api_key=fault_gateway.key, max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as info,
    ):
        client.responses.create(model="claude-sonnet-4-6", input=f"hi sim:fault={status},retry_after=3")
    assert info.value.status_code == status
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert body_of(info.value)["type"] in ("rate_limit_exceeded", "server_error")


def test_error_mid_stream_is_response_failed(fault_gateway: Gateway) -> None:
    with openai.OpenAI(
        base_url=fault_gateway.url + "/v1", api_key=fault_gateway.key, max_retries=0
    ) as client:
        events = list(
            client.responses.create(
                model="claude-sonnet-4-6", input="hi sim:fault=error_mid,after_events=4", stream=True
            )
        )
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None and events[-1].response.error.code == "server_error"


def test_bad_key_is_401_in_openai_shape(gateway: Gateway) -> None:
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-ant-api03-nope", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        client.responses.create(model="claude-sonnet-4-6", input="hi")
    assert body_of(info.value)["code"] == "invalid_api_key"


def _b64(value: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def body_of(exc: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict)
    return exc.body
