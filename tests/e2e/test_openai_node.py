"""Node's ``openai`` SDK through the gateway to the sim, on each current model, in one Node process
(``openai_models_node.mjs``) for every model, one gateway: Chat Completions and Responses with each
reasoning effort, ``temperature``/``top_p``, ``response_format``/``text.format`` json_schema and
json_object, tools with ``tool_choice`` auto, required and named, streamed replies, and a
multi-turn tool loop with thinking (reasoning sent back as it came).

Each case succeeds through the sim's enforced rules, saying in a response header what was
translated away, or fails with the documented 400 naming ``tool_choice`` where the model refuses
forcing (docs/openai-translation.md). The cases and their checks are built here from the model's
rules in the registry; the Node script runs them and reports each outcome.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.e2e.sdkmatrix import CURRENT, Case, Results, check_cases, rules, run_cases, succeeded
from tests.procs import REPO

SCRIPT = REPO / "tests" / "e2e" / "openai_models_node.mjs"
EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "none")
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
}  # type: ignore[index]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def answers(text: str) -> bool:
    """The reply is JSON its schema (SCHEMA) accepts: structured outputs reached the model."""
    value = json.loads(text)
    return isinstance(value, dict) and set(value) == {"answer"} and type(value["answer"]) is int


def forcing_refused(out: dict[str, Any], _: Results) -> None:
    """The documented 400 in OpenAI's shape: the model refuses forcing, ``param`` names it."""
    assert not out["ok"] and out["status"] == 400 and out["param"] == "tool_choice", out
    assert "forced tool choice" in out["message"], out


def cases_for(model: str) -> list[Case]:
    r = rules(model)
    default_only = r.sampling == "default_only"
    hi = [{"role": "user", "content": "Hello there"}]
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    out: list[Case] = []

    def case(name: str, op: str, params: dict[str, Any], check: Any) -> None:
        out.append(
            ({"id": f"{model}/{name}", "model": model, "op": op, "params": {"model": model, **params}}, check)
        )

    # --- Chat Completions
    for effort in EFFORTS:

        def effort_ok(o: dict[str, Any], effort: str = effort) -> bool:
            if effort == "none" and r.thinking_off == "none":  # it cannot be off: said so
                return bool(o["content"]) and o["headers"]["ethereal-thinking"].startswith(
                    "on; reason=cannot-be-off"
                )
            return bool(o["content"]) and o["reasoning"] == (effort != "none")

        case(
            f"chat-effort-{effort}",
            "chat",
            {"messages": hi, "max_tokens": 64, "reasoning_effort": effort},
            succeeded(effort_ok),
        )
    case(
        "chat-stream-effort",
        "chat_stream",
        {"messages": hi, "max_tokens": 256, "reasoning_effort": "high"},
        succeeded(
            lambda o: (
                o["content"]
                and o["reasoning"]
                and o["finish_reason"] in ("stop", "length")
                and o["usage"]["completion_tokens"] > 0
            )
        ),
    )
    case(
        "chat-temperature-top_p",
        "chat",
        {"messages": hi, "max_tokens": 64, "temperature": 0.3, "top_p": 0.5},
        succeeded(
            lambda o: (
                o["content"]
                and o["headers"].get("ethereal-dropped-params")
                == ("temperature,top_p" if default_only else "top_p")
            )
        ),
    )
    case(
        "chat-top_p",
        "chat",
        {"messages": hi, "max_tokens": 64, "top_p": 0.5},
        succeeded(lambda o: o["content"] and ("ethereal-dropped-params" in o["headers"]) == default_only),
    )
    case(
        "chat-temperature",
        "chat",
        {"messages": hi, "max_tokens": 64, "temperature": 0.3},
        succeeded(lambda o: o["content"] and ("ethereal-dropped-params" in o["headers"]) == default_only),
    )
    for name, fmt in (
        (
            "json_schema",
            {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
        ),
        ("json_object", {"type": "json_object"}),
    ):
        case(
            f"chat-{name}",
            "chat",
            {"messages": hi, "max_tokens": 64, "response_format": fmt},
            succeeded(
                lambda o, name=name: (
                    o["content"]
                    and not o["tool_calls"]
                    and (
                        o["finish_reason"] == "stop" and answers(o["content"])
                        if name == "json_schema"
                        else o["finish_reason"] in ("stop", "length")
                    )
                )
            ),
        )
    case(
        "chat-tools-auto",
        "chat",
        {"messages": ask, "tools": [WEATHER], "tool_choice": "auto", "max_tokens": 1024},
        succeeded(
            lambda o: o["finish_reason"] == "tool_calls" and o["tool_calls"][0]["name"] == "get_weather"
        ),
    )
    case(
        "chat-tools-stream",
        "chat_stream",
        {"messages": ask, "tools": [WEATHER], "max_tokens": 1024},
        succeeded(lambda o: o["finish_reason"] == "tool_calls" and o["tool_calls"] >= 1),
    )
    for name, choice in (
        ("required", "required"),
        ("named", {"type": "function", "function": {"name": "get_weather"}}),
    ):
        case(
            f"chat-tools-{name}",
            "chat",
            {"messages": ask, "tools": [WEATHER], "tool_choice": choice, "max_tokens": 1024},
            forcing_refused
            if not r.forced_tool_choice
            else succeeded(lambda o: o["tool_calls"] and o["tool_calls"][0]["name"] == "get_weather"),
        )
    # forcing with thinking asked for: thinking goes off where the model allows, and the header says so
    case(
        "chat-tools-required-thinking",
        "chat",
        {
            "messages": ask,
            "tools": [WEATHER],
            "tool_choice": "required",
            "reasoning_effort": "high",
            "max_tokens": 1024,
        },
        forcing_refused
        if not r.forced_tool_choice
        else succeeded(
            lambda o: (
                o["tool_calls"]
                and (
                    r.thinking_off == "none"
                    or r.forced_tool_with_thinking
                    or o["headers"]["ethereal-thinking"].startswith("off; reason=forced-tool-choice")
                )
            )
        ),
    )
    # a trailing assistant message: a prefill where the model takes one, else folded into the user turn
    case(
        "chat-prefill",
        "chat",
        {"messages": [*hi, {"role": "assistant", "content": "Well, "}], "max_tokens": 64},
        succeeded(lambda o: o["content"] and ("ethereal-prefill" in o["headers"]) != r.prefill),
    )
    # a client's max_tokens above the model's cap is capped, not refused
    case(
        "chat-max-tokens-over-cap",
        "chat",
        {"messages": hi, "max_completion_tokens": 10_000_000},
        succeeded(lambda o: o["content"] and o["finish_reason"] == "stop"),
    )
    case(
        "chat-tool-loop",
        "chat_loop",
        {
            "messages": [{"role": "user", "content": "What is the weather in Paris? sim:tools=1"}],
            "tools": [WEATHER],
            "reasoning_effort": "medium",
            "max_tokens": 2048,
        },
        succeeded(
            lambda o: (
                o["first"]["finish_reason"] == "tool_calls"
                and o["first"]["signed"]
                and o["finish_reason"] == "stop"
                and o["content"]
                and "ethereal-thinking" not in o["headers"]
            )
        ),
    )

    case(
        "chat-stream-tool-loop",
        "chat_stream_loop",
        {
            "messages": [{"role": "user", "content": "What is the weather in Paris? sim:tools=1"}],
            "tools": [WEATHER],
            "reasoning_effort": "low",
            "max_tokens": 2048,
        },
        succeeded(
            lambda o: (
                o["first"]["finish_reason"] == "tool_calls"
                and o["first"]["signed"]
                and json.loads(o["first"]["calls"][0]["function"]["arguments"]).get("location")
                and o["finish_reason"] == "stop"
                and o["content"]
                and "ethereal-thinking" not in o["headers"]
            )
        ),
    )

    # --- Responses
    for effort in EFFORTS:

        def reasoned(o: dict[str, Any], effort: str = effort) -> bool:
            if o["status"] not in ("completed", "incomplete") or "message" not in o["types"]:
                return False
            if effort == "none" and r.thinking_off == "none":  # it cannot be off: said so
                return o["headers"]["ethereal-thinking"].startswith("on; reason=cannot-be-off")
            # a reasoning summary asked for is shown, also where the model omits thinking by default
            return (o["types"][0] == "reasoning") == (effort != "none") and o["summarized"]

        case(
            f"responses-effort-{effort}",
            "responses",
            {"input": "Hello", "max_output_tokens": 64, "reasoning": {"effort": effort, "summary": "auto"}},
            succeeded(reasoned),
        )
    case(
        "responses-stream",
        "responses_stream",
        {"input": "Hello", "max_output_tokens": 256, "reasoning": {"effort": "medium", "summary": "auto"}},
        succeeded(
            lambda o: (
                o["status"] == "completed"
                and o["types"][0] == "reasoning"
                and o["streamed_text"] == o["output_text"]
                and o["output_text"]
            )
        ),
    )
    case(
        "responses-temperature",
        "responses",
        {"input": "Hello", "max_output_tokens": 64, "temperature": 0.2},
        succeeded(lambda o: o["output_text"] and ("ethereal-dropped-params" in o["headers"]) == default_only),
    )
    case(
        "responses-top_p",
        "responses",
        {"input": "Hello", "max_output_tokens": 64, "top_p": 0.5},
        succeeded(lambda o: o["output_text"] and ("ethereal-dropped-params" in o["headers"]) == default_only),
    )
    for name, fmt in (
        ("json_schema", {"type": "json_schema", "name": "a", "schema": SCHEMA, "strict": True}),
        ("json_object", {"type": "json_object"}),
    ):
        case(
            f"responses-{name}",
            "responses",
            {"input": "Answer in JSON", "max_output_tokens": 64, "text": {"format": fmt}},
            succeeded(
                lambda o, name=name: (
                    o["output_text"]
                    and "function_call" not in o["types"]
                    and o["sdk_output_text"] == o["output_text"]
                    and (name != "json_schema" or answers(o["output_text"]))
                )
            ),
        )
    case(
        "responses-tools-auto",
        "responses",
        {"input": "Weather in Paris?", "tools": [RWEATHER], "tool_choice": "auto", "max_output_tokens": 1024},
        succeeded(lambda o: "function_call" in o["types"]),
    )
    case(
        "responses-tools-required",
        "responses",
        {"input": "Weather?", "tools": [RWEATHER], "tool_choice": "required", "max_output_tokens": 1024},
        forcing_refused if not r.forced_tool_choice else succeeded(lambda o: "function_call" in o["types"]),
    )
    case(
        "responses-tools-named",
        "responses",
        {
            "input": "Weather?",
            "tools": [RWEATHER],
            "max_output_tokens": 1024,
            "tool_choice": {"type": "function", "name": "get_weather"},
        },
        forcing_refused
        if not r.forced_tool_choice
        else succeeded(lambda o: o["calls"][0]["name"] == "get_weather"),
    )
    case(
        "responses-max-tokens-over-cap",
        "responses",
        {"input": "Hello", "max_output_tokens": 10_000_000},
        succeeded(lambda o: o["status"] == "completed" and o["output_text"]),
    )
    case(
        "responses-tool-loop",
        "responses_loop",
        {
            "input": [{"role": "user", "content": "Weather in Paris? sim:tools=1"}],
            "tools": [RWEATHER],
            "reasoning": {"effort": "low", "summary": "auto"},
            "include": ["reasoning.encrypted_content"],
            "max_output_tokens": 2048,
        },
        succeeded(
            lambda o: (
                o["first"]["types"][0] == "reasoning"
                and o["first"]["encrypted"]
                and o["first"]["calls"]
                and o["status"] == "completed"
                and o["output_text"]
            )
        ),
    )
    return out


CASES = {model: cases_for(model) for model in CURRENT}


@pytest.fixture(scope="module")
def results(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every model's cases, run by one Node process."""
    workdir: Path = tmp_path_factory.mktemp("openai-node")
    return run_cases(
        SCRIPT, gateway.url, gateway.key, [c for cases in CASES.values() for c, _ in cases], workdir
    )


@pytest.mark.parametrize("model", CURRENT)
def test_openai_node_sdk(results: Results, model: str) -> None:
    check_cases(CASES[model], results)
