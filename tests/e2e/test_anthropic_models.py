"""The official ``anthropic`` Python SDK through the gateway to the sim, on each current model:
Messages (non-streamed and streamed), count_tokens, a tool round trip with thinking, thinking as
each model takes it (adaptive with each effort level where it has adaptive thinking, a budget
where it takes ``enabled``, "off" its own way), and the refusals the API answers for the shapes a
model does not take, passed through byte for byte. One gateway for the whole matrix.

The native route forwards bodies unchanged, so what this holds is the path end to end: the sim
enforcing each model's rules (registry ``[models.rules]``), the gateway serving and billing every
current model, streamed and not, and the API's error texts reaching the SDK unmodified.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import Gateway
from tests.e2e.sdkmatrix import ALL_EFFORTS, CURRENT, REGISTRY, WEATHER, rules, thinking_of


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as c:
        yield c


def record(gateway: Gateway, request_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{gateway.url}/v1/usage/{request_id}", headers={"x-api-key": gateway.key}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def refused(call: Any, text: str) -> None:
    """A 400 ``invalid_request_error`` whose message is the API's own text, unmodified."""
    with pytest.raises(anthropic.BadRequestError) as info:
        call()
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error", body
    assert body["error"]["message"] == text


@pytest.mark.parametrize("model", CURRENT)
def test_messages_stream_and_count(gateway: Gateway, client: anthropic.Anthropic, model: str) -> None:
    r = rules(model)
    hi = [{"role": "user", "content": "Hello there, how are you today?"}]
    raw = client.messages.with_raw_response.create(model=model, max_tokens=256, messages=hi)  # type: ignore[arg-type]
    message = raw.parse()
    assert message.model == model and message.stop_reason in ("end_turn", "max_tokens")
    kinds = [b.type for b in message.content]
    # thinking on by default where the model says so (display omitted: empty text, a signature)
    assert (kinds[0] == "thinking") == (r.thinking_default == "adaptive"), kinds
    assert "text" in kinds and message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    billed = record(gateway, raw.headers["request-id"])
    assert billed["model"] == model and billed["cost_micro"] > 0, billed
    assert not billed.get("provisional"), billed

    with client.messages.stream(model=model, max_tokens=256, messages=hi) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[-1].type == "text" and final.content[-1].text == text
    assert final.model == model and final.usage.output_tokens > 0

    counted = client.messages.count_tokens(model=model, messages=hi)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens

    # structured outputs: the answer is JSON the schema accepts
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    structured = client.messages.create(
        model=model,
        max_tokens=1024,
        messages=hi,  # type: ignore[arg-type]
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert structured.content[-1].type == "text" and json.loads(structured.content[-1].text).keys() == {
        "answer"
    }


@pytest.mark.parametrize("model", CURRENT)
def test_thinking_as_the_model_takes_it(client: anthropic.Anthropic, model: str) -> None:
    r = rules(model)
    ask = [{"role": "user", "content": "Think, then answer: what is 17 times 23?"}]

    def create(**kw: Any) -> Any:
        return client.messages.create(model=model, max_tokens=4096, messages=ask, **kw)  # type: ignore[arg-type]

    if "adaptive" in r.thinking_types:
        for effort in r.effort_levels:
            message = create(thinking={"type": "adaptive"}, output_config={"effort": effort})
            assert message.content[0].type == "thinking" and message.content[0].signature, (effort, message)
        for effort in sorted(set(ALL_EFFORTS) - set(r.effort_levels)):  # xhigh on the 4.6 models
            levels = ", ".join(f'"{e}"' for e in r.effort_levels)
            refused(
                lambda e=effort: create(thinking={"type": "adaptive"}, output_config={"effort": e}),
                REGISTRY.error_text("effort_level", effort=effort, levels=levels),
            )
        with client.messages.stream(
            model=model,
            max_tokens=4096,
            messages=ask,  # type: ignore[arg-type]
            thinking={"type": "adaptive", "display": "summarized"},
            output_config={"effort": r.effort_levels[-1]},
        ) as stream:
            final = stream.get_final_message()
        assert (
            final.content[0].type == "thinking" and final.content[0].thinking and final.content[0].signature
        )
    else:
        refused(lambda: create(thinking={"type": "adaptive"}), REGISTRY.error_text("thinking_adaptive"))
    if "enabled" in r.thinking_types:
        message = create(thinking={"type": "enabled", "budget_tokens": 1024})
        assert message.content[0].type == "thinking" and message.content[0].signature
        with client.messages.stream(
            model=model,
            max_tokens=4096,
            messages=ask,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 2048},
        ) as stream:
            final = stream.get_final_message()
        assert final.content[0].type == "thinking" and final.content[-1].type == "text"
    else:
        refused(
            lambda: create(thinking={"type": "enabled", "budget_tokens": 1024}),
            REGISTRY.error_text("thinking_enabled"),
        )
    if not r.effort_levels:
        refused(lambda: create(output_config={"effort": "low"}), REGISTRY.error_text("effort_unsupported"))

    # thinking off, each model its own way (or not at all)
    if r.thinking_off == "none":
        refused(lambda: create(thinking={"type": "disabled"}), REGISTRY.error_text("thinking_disabled"))
    else:
        off = create(thinking={"type": r.thinking_off})
        assert [b.type for b in off.content] == ["text"], off.content
        if r.thinking_off == "between_tools":
            refused(
                lambda: create(thinking={"type": "disabled"}),
                REGISTRY.error_text("thinking_disabled_between_tools"),
            )
        if r.thinking_off_max_effort is not None:
            over = r.effort_levels[r.effort_levels.index(r.thinking_off_max_effort) + 1]
            refused(
                lambda: create(thinking={"type": r.thinking_off}, output_config={"effort": over}),
                REGISTRY.error_text("thinking_off_effort", type=r.thinking_off, effort=over),
            )


@pytest.mark.parametrize("model", CURRENT)
def test_tool_round_trip_with_thinking(client: anthropic.Anthropic, model: str) -> None:
    r = rules(model)
    on = thinking_of(model)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris? sim:tools=1"}]
    with client.messages.stream(
        model=model,
        max_tokens=4096,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=messages,
        **on,
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use" and first.content[0].type == "thinking"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and "location" in calls[0].input  # type: ignore[operator]
    # the assistant turn goes back whole, its thinking block first, as the API requires
    messages.append(
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    )
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "18C and sunny"}],
        }
    )
    second = client.messages.create(
        model=model,
        max_tokens=4096,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=messages,
        **on,
    )
    assert second.stop_reason == "end_turn" and second.content[-1].type == "text" and second.content[-1].text

    # forced tool_choice: refused outright, or refused with thinking on, or taken with thinking off
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    forced: dict[str, Any] = {
        "model": model,
        "max_tokens": 1024,
        "tools": [WEATHER],
        "messages": ask,
        "tool_choice": {"type": "any"},
    }
    if not r.forced_tool_choice:
        refused(lambda: client.messages.create(**forced), REGISTRY.error_text("forced_tool_choice"))
        refused(
            lambda: client.messages.count_tokens(
                model=model,
                messages=ask,
                tools=[WEATHER],  # type: ignore
                tool_choice={"type": "any"},
            ),
            REGISTRY.error_text("forced_tool_choice"),
        )
        return
    if r.thinking_off != "none" and not r.forced_tool_with_thinking:
        refused(
            lambda: client.messages.create(**forced, **on), REGISTRY.error_text("forced_tool_with_thinking")
        )
    off = (
        {"thinking": {"type": "disabled"}}
        if r.thinking_default == "adaptive" and r.thinking_off == "disabled"
        else {}
    )
    message = client.messages.create(**forced, **off)
    assert message.stop_reason == "tool_use" and [b.type for b in message.content] == ["tool_use"]


@pytest.mark.parametrize("model", CURRENT)
def test_sampling_and_prefill_rules(client: anthropic.Anthropic, model: str) -> None:
    r = rules(model)
    hi = [{"role": "user", "content": "Hello"}]

    def create(messages: Any = hi, **sampling: Any) -> Any:
        # today's SDK has no sampling parameters of its own (the current models take only the
        # defaults): older callers' values go as extra body fields
        return client.messages.create(model=model, max_tokens=64, messages=messages, extra_body=sampling)

    assert create(temperature=1.0).content  # the default is always accepted
    if r.sampling == "default_only":
        refused(
            lambda: create(temperature=0.3), REGISTRY.error_text("sampling_deprecated", param="temperature")
        )
        refused(lambda: create(top_p=0.5), REGISTRY.error_text("sampling_deprecated", param="top_p"))
    else:
        assert create(temperature=0.3).content and create(top_p=0.5).content
        if r.sampling == "one_of":
            refused(lambda: create(temperature=0.3, top_p=0.5), REGISTRY.error_text("sampling_one_of"))
    prefill = [*hi, {"role": "assistant", "content": "Well,"}]
    if r.prefill:
        assert create(prefill).content
    else:
        refused(lambda: create(prefill), REGISTRY.error_text("prefill"))
