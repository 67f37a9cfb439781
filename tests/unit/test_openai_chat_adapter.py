"""Chat Completions → Messages request translation and Messages → chat.completion, without HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from ethereal.adapters.openai_chat import (
    JSON_TOOL,
    model_name,
    restore_reasoning,
    to_anthropic,
    to_chat_completion,
)
from ethereal.errors import GatewayError

USER = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def body(**kw: Any) -> dict[str, Any]:
    """A request for Sonnet 4.5's rules (budget thinking, one of temperature/top_p, prefill,
    forced tools), without the automatic cache breakpoints (tests/unit/test_claude_request.py)."""
    return to_anthropic(
        {"model": "claude-sonnet-4-5", "messages": USER, **kw},
        model="claude-sonnet-4-5-20250929",
        max_output=64_000,
        auto_cache=False,
    ).body


def error(**kw: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        to_anthropic(
            {"model": "claude-sonnet-4-5", **({"messages": USER} | kw)}, model="m", max_output=64_000
        )
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


# ---- request --------------------------------------------------------------------------------


def test_minimal() -> None:
    assert body() == {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64_000,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_model_prefix_and_missing() -> None:
    assert model_name({"model": "anthropic/claude-sonnet-4-5"}) == "claude-sonnet-4-5"
    assert model_name({"model": "claude-opus-4-6"}) == "claude-opus-4-6"
    with pytest.raises(GatewayError) as info:
        model_name({})
    assert info.value.param == "model"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, 64_000),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200, "max_tokens": 100}, 200),
        ({"max_tokens": 10**6}, 64_000),
    ],
)
def test_max_tokens(given: dict[str, Any], expected: int) -> None:
    assert body(**given)["max_tokens"] == expected


def test_max_tokens_default_for_unknown_model() -> None:
    out = to_anthropic({"model": "x", "messages": USER}, model="claude-new", max_output=None).body
    assert out["max_tokens"] == 8192  # the registry's default_max_tokens
    out = to_anthropic(
        {"model": "x", "messages": USER}, model="claude-new", max_output=None, default_max_tokens=1000
    ).body
    assert out["max_tokens"] == 1000


def test_system_and_developer_are_hoisted_in_order() -> None:
    out = body(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Use French.", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Late rule."},
            {"role": "user", "content": "again"},
        ]
    )
    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use French.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Late rule."},
    ]
    # the two user turns merge (Claude alternates roles)
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}
    ]


def test_images() -> None:
    out = body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    assert out["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("data:image/bmp;base64,AAAA", "unsupported image type"),
        ("data:image/png,notbase64", "base64"),
        ("ftp://x/y.png", "http(s)"),
    ],
)
def test_bad_images(url: str, fragment: str) -> None:
    exc = error(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert fragment in exc.message and exc.param == "messages[0].content[0].image_url.url"


def test_pdf_file_part() -> None:
    out = body(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                    }
                ],
            }
        ]
    )
    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "title": "a.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


def test_tools_and_choices() -> None:
    out = body(tools=[TOOL])
    assert out["tools"] == [
        {"name": "get_weather", "description": "Weather", "input_schema": TOOL["function"]["parameters"]}
    ]
    assert "tool_choice" not in out  # Claude's default is auto
    assert body(tools=[TOOL], tool_choice="auto")["tool_choice"] == {"type": "auto"}
    assert body(tools=[TOOL], tool_choice="none")["tool_choice"] == {"type": "none"}
    assert body(tools=[TOOL], tool_choice="required")["tool_choice"] == {"type": "any"}
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert body(tools=[TOOL], tool_choice=named)["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body(tools=[TOOL], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert body(tools=[TOOL], tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert "tool_choice" not in body(tool_choice="auto")  # no tools, nothing to choose


def test_tool_without_parameters_and_allowed_tools() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    out = body(
        tools=[TOOL, bare],
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "now"}}],
            },
        },
    )
    assert out["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "any"}


def test_legacy_functions() -> None:
    req = to_anthropic(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
                {"role": "function", "name": "get_weather", "content": "cold"},
            ],
            "functions": [TOOL["function"]],
            "function_call": {"name": "get_weather"},
        },
        model="m",
        max_output=1000,
        auto_cache=False,
    )
    assert req.legacy_functions
    out = req.body
    assert out["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    call = out["messages"][1]["content"][0]
    assert call["type"] == "tool_use" and call["input"] == {"city": "Oslo"}
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": call["id"], "content": "cold"}
    ]


def test_tool_round_trip_messages() -> None:
    out = body(
        tools=[TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_01A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call.weird/id",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "18C"},
            {"role": "tool", "tool_call_id": "call.weird/id", "content": [{"type": "text", "text": "5C"}]},
            {"role": "user", "content": "Thanks, and London?"},
        ],
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_weird_id", "name": "get_weather", "input": {}},
        ],
    }
    # both results and the follow-up question in one user turn, results first
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C"},
            {
                "type": "tool_result",
                "tool_use_id": "call_weird_id",
                "content": [{"type": "text", "text": "5C"}],
            },
            {"type": "text", "text": "Thanks, and London?"},
        ],
    }
    assert len(out["messages"]) == 3


def test_trailing_assistant_prefill_is_trimmed() -> None:
    out = body(messages=[{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi "}])
    assert out["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}


def test_sampling() -> None:
    assert body(temperature=0.3)["temperature"] == 0.3
    assert body(temperature=1.7)["temperature"] == 1  # clamped, not scaled
    assert body(top_p=0.9)["top_p"] == 0.9
    both = body(temperature=0.2, top_p=0.5)
    assert both["temperature"] == 0.2 and "top_p" not in both
    assert body(stop="END")["stop_sequences"] == ["END"]
    assert body(stop=["a", "b", ""])["stop_sequences"] == ["a", "b"]
    assert body(user="u-42")["metadata"] == {"user_id": "u-42"}
    assert body(top_k=5)["top_k"] == 5
    assert body(stream=True)["stream"] is True
    # accepted and ignored
    plain = body()
    assert (
        body(
            presence_penalty=0.5,
            frequency_penalty=0.1,
            seed=3,
            store=False,
            n=1,
            logprobs=False,
            service_tier="auto",
            metadata={"a": "b"},
        )
        == plain
    )


def test_include_usage() -> None:
    req = to_anthropic(
        {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
        model="m",
        max_output=None,
    )
    assert req.stream and req.include_usage
    req = to_anthropic(
        {"model": "m", "messages": USER, "stream_options": {"include_usage": True}},
        model="m",
        max_output=None,
    )
    assert not req.include_usage  # only meaningful when streaming


@pytest.mark.parametrize(("effort", "budget"), [("low", 1024), ("medium", 4096), ("high", 16384)])
def test_reasoning_effort(effort: str, budget: int) -> None:
    out = body(reasoning_effort=effort, temperature=0.2, top_p=0.9)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] > budget
    assert "temperature" not in out and "top_p" not in out  # Claude requires the defaults with thinking


def test_reasoning_budget_fits_max_tokens() -> None:
    out = body(reasoning_effort="high", max_completion_tokens=1000)
    assert out["thinking"]["budget_tokens"] == 16384 and out["max_tokens"] == 17384
    out = to_anthropic(
        {"model": "m", "messages": USER, "reasoning_effort": "high", "max_tokens": 500},
        model="m",
        max_output=8192,
    ).body
    assert out["max_tokens"] == 8192 and out["thinking"]["budget_tokens"] == 8191
    assert "thinking" not in body(reasoning_effort="none")
    # a forcing tool_choice wins: Claude refuses thinking with it
    assert "thinking" not in body(reasoning_effort="high", tools=[TOOL], tool_choice="required")


def test_response_format_json_schema_is_a_forced_tool() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    req = to_anthropic(
        {
            "model": "m",
            "messages": USER,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "math", "schema": schema, "strict": True},
            },
        },
        model="m",
        max_output=None,
    )
    assert req.json_tool == JSON_TOOL
    assert req.body["tools"][0]["name"] == JSON_TOOL and req.body["tools"][0]["input_schema"] == schema
    assert req.body["tool_choice"] == {"type": "tool", "name": JSON_TOOL}


def test_response_format_json_object_and_fallbacks() -> None:
    req = to_anthropic(
        {"model": "m", "messages": USER, "response_format": {"type": "json_object"}},
        model="m",
        max_output=None,
    )
    assert req.json_tool == JSON_TOOL and req.body["tools"][0]["input_schema"]["type"] == "object"
    # with the client's own tools, or thinking: a system instruction instead
    for extra in ({"tools": [TOOL]}, {"reasoning_effort": "low"}):
        req = to_anthropic(
            {"model": "m", "messages": USER, "response_format": {"type": "json_object"}, **extra},
            model="m",
            max_output=None,
        )
        assert req.json_tool is None and "JSON" in req.body["system"][-1]["text"]
    assert "tools" not in body(response_format={"type": "text"})


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 5}, "stop"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"response_format": {"type": "grammar"}}, "response_format.type"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{bad"}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_refusals_name_the_parameter(kw: dict[str, Any], param: str) -> None:
    assert error(**kw).param == param


# ---- reasoning round trip -------------------------------------------------------------------


def test_restore_reasoning_forms() -> None:
    assert restore_reasoning({"reasoning_content": "hmm", "reasoning_signature": "c2ln"}) == [
        {"type": "thinking", "thinking": "hmm", "signature": "c2ln"}
    ]
    assert restore_reasoning(
        {"reasoning_content": "abcdé", "reasoning_signature": "eth1~r:ZGF0~t3:czE=~t2:czI="}
    ) == [
        {"type": "redacted_thinking", "data": "ZGF0"},
        {"type": "thinking", "thinking": "abc", "signature": "czE="},
        {"type": "thinking", "thinking": "dé", "signature": "czI="},
    ]
    # altered text cannot be restored: dropped rather than sent with a signature that no longer matches
    assert (
        restore_reasoning({"reasoning_content": "abcdéX", "reasoning_signature": "eth1~t3:czE=~t2:czI="})
        == []
    )
    assert restore_reasoning({"reasoning_content": "no signature"}) == []
    assert restore_reasoning(
        {"thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}]}
    ) == [{"type": "thinking", "thinking": "t", "signature": "s"}]


def test_assistant_reasoning_becomes_thinking_block() -> None:
    out = body(
        tools=[TOOL],
        reasoning_effort="low",
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "Need the tool.",
                "reasoning_signature": "c2ln",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        ],
    )
    assert out["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "Need the tool.",
        "signature": "c2ln",
    }
    assert out["messages"][1]["content"][1]["type"] == "tool_use"


# ---- response -------------------------------------------------------------------------------


def completion(
    content: list[dict[str, Any]], stop: str = "end_turn", usage: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": content,
        "stop_reason": stop,
        "usage": usage or {"input_tokens": 10, "output_tokens": 5},
    }
    return to_chat_completion(message, completion_id="chatcmpl-1", created=5, model="claude-x", **kw)


def test_text_response() -> None:
    out = completion(
        [{"type": "text", "text": "Hello"}],
        usage={
            "input_tokens": 10,
            "cache_creation_input_tokens": 20,
            "cache_read_input_tokens": 30,
            "output_tokens": 5,
        },
    )
    assert out == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 5,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 60,
            "completion_tokens": 5,
            "total_tokens": 65,
            "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 20},
        },
    }


@pytest.mark.parametrize(
    ("stop", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("tool_use", "tool_calls"),
    ],
)
def test_finish_reasons(stop: str, reason: str) -> None:
    content = [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}] if stop == "tool_use" else []
    assert completion(content, stop)["choices"][0]["finish_reason"] == reason


def test_tool_calls_and_thinking_response() -> None:
    out = completion(
        [
            {"type": "thinking", "thinking": "Two cities.", "signature": "c2ln"},
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "tool_use",
    )
    message = out["choices"][0]["message"]
    assert message["content"] == "Checking both."
    assert [c["id"] for c in message["tool_calls"]] == ["toolu_a", "toolu_b"]
    assert message["tool_calls"][1]["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert message["reasoning_content"] == "Two cities." and message["reasoning_signature"] == "c2ln"
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_json_tool_response_is_content() -> None:
    out = completion(
        [{"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"answer": 4}}],
        "tool_use",
        json_tool=JSON_TOOL,
    )
    assert out["choices"][0]["message"]["content"] == '{"answer":4}'
    assert out["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in out["choices"][0]["message"]


def test_tool_only_response_has_null_content() -> None:
    out = completion([{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}], "tool_use")
    assert out["choices"][0]["message"]["content"] is None
