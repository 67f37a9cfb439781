"""``adapters.openai_responses``: a Responses request as the Messages body it becomes, and the
refusals (400 with ``param``) for what cannot be translated."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from ethereal.adapters import openai_responses as oa
from ethereal.errors import GatewayError


def translate(model: str = "claude-sonnet-4-5-20250929", **body: Any) -> oa.ResponsesRequest:
    return oa.to_anthropic(
        {"model": model, **body}, model=model, max_output=64000, response_id="resp_x", created_at=1
    )


def refused(**body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        translate(**body)
    assert info.value.status == 400
    return info.value


def test_codex_shaped_request() -> None:
    """What Codex sends: developer messages, environment context, tools, namespaces, web search
    (cached only), reasoning, store false, include, prompt_cache_key, client_metadata."""
    thinking = {"type": "thinking", "thinking": "Plan: list files.", "signature": "c2lnbmF0dXJl"}
    req = translate(
        input=[
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are Codex."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "<env>/tmp</env>"}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Plan"}],
                "encrypted_content": oa.encode_reasoning(thinking),
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "toolu_01",
                "name": "exec_command",
                "arguments": '{"cmd":"ls"}',
            },
            {"type": "function_call_output", "call_id": "toolu_01", "output": "a.txt"},
        ],
        tools=[
            {
                "type": "function",
                "name": "exec_command",
                "strict": False,
                "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
            },
            {
                "type": "namespace",
                "name": "agents",
                "description": "Sub-agents",
                "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        tool_choice="auto",
        parallel_tool_calls=True,
        reasoning={"effort": "medium", "summary": "auto"},
        store=False,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="sess-1",
        stream=True,
        client_metadata={"x": "y"},
    )
    body = req.body
    assert body["system"] == [
        {"type": "text", "text": "You are Codex.", "cache_control": {"type": "ephemeral"}}
    ]
    assert [t["name"] for t in body["tools"]] == ["exec_command", "agents__spawn"]  # no live web search
    assert body["tools"][1]["description"] == "Sub-agents"
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert req.namespaced == [("agents__spawn", "agents", "spawn")]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4096} and body["max_tokens"] == 64000
    assert body["tool_choice"] == {"type": "auto"} and body["stream"] is True and req.cache_key == "sess-1"
    user, assistant, result = body["messages"]
    assert [b["text"] for b in user["content"]] == ["<env>/tmp</env>", "list files"]
    assert user["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert assistant["content"] == [
        thinking,
        {"type": "tool_use", "id": "toolu_01", "name": "exec_command", "input": {"cmd": "ls"}},
    ]
    assert result["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "toolu_01",
            "content": "a.txt",
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert req.head["store"] is False and req.head["tools"][0]["name"] == "exec_command"


def test_adaptive_thinking_on_newer_models() -> None:
    # Opus 4.6 has no xhigh: the nearest level, ties going to the cheaper one (Rules.nearest_effort)
    body = translate(model="claude-opus-4-6", input="hi", reasoning={"effort": "xhigh"}).body
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "high"}
    body = translate(model="claude-sonnet-5", input="hi", reasoning={"effort": "xhigh"}).body
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "xhigh"}
    assert translate(model="claude-opus-4-5-20251101", input="hi", reasoning={"effort": "low"}).body[
        "thinking"
    ] == {"type": "enabled", "budget_tokens": 1024}
    assert "thinking" not in translate(input="hi", reasoning={"effort": "none"}).body


def test_thinking_off_when_the_tool_loop_cannot_be_restored() -> None:
    """A tool loop whose assistant turn has no thinking block to send back (history from another
    model): Claude would refuse it with thinking on, so thinking stays off for that request."""
    body = translate(
        reasoning={"effort": "low"},
        input=[
            {"role": "user", "content": "go"},
            {"type": "reasoning", "id": "rs", "summary": [], "encrypted_content": "gAAAA-from-openai"},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        ],
    ).body
    assert "thinking" not in body
    assert body["messages"][1]["content"][0]["type"] == "tool_use"


def test_forced_tool_turns_thinking_off_and_parallel_false() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    body = translate(
        input="x",
        tools=[tool],
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        reasoning={"effort": "high"},
    ).body
    assert body["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert "thinking" not in body
    assert translate(input="x", tools=[tool], tool_choice="required").body["tool_choice"] == {"type": "any"}
    assert translate(input="x", tools=[tool], tool_choice="none").body["tool_choice"] == {"type": "none"}


def test_custom_tool_and_its_call_round_trip() -> None:
    grammar = {"type": "grammar", "syntax": "lark", "definition": "start: WORD"}
    req = translate(
        tools=[{"type": "custom", "name": "apply_patch", "description": "Patch", "format": grammar}],
        input=[
            {"role": "user", "content": "x"},
            {"type": "custom_tool_call", "call_id": "toolu_9", "name": "apply_patch", "input": "*** Begin"},
            {"type": "custom_tool_call_output", "call_id": "toolu_9", "output": "ok"},
        ],
    )
    tool = req.body["tools"][0]
    assert req.custom_tools == ["apply_patch"] and "start: WORD" in tool["description"]
    assert tool["input_schema"]["required"] == ["input"]
    assert req.body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "toolu_9", "name": "apply_patch", "input": {"input": "*** Begin"}}
    ]


def test_images_files_and_web_search() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    req = translate(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": f"data:image/png;base64,{png}", "detail": "auto"},
                    {"type": "input_image", "image_url": "https://example.com/a.jpg"},
                    {
                        "type": "input_file",
                        "filename": "a.pdf",
                        "file_data": "data:application/pdf;base64,JVBERi0=",
                    },
                ],
            }
        ],
        tools=[
            {
                "type": "web_search",
                "filters": {"allowed_domains": ["example.com"]},
                "user_location": {"type": "approximate", "country": "FR"},
            }
        ],
    )
    content = req.body["messages"][0]["content"]
    assert content[0]["source"] == {"type": "base64", "media_type": "image/png", "data": png}
    assert content[1]["source"] == {"type": "url", "url": "https://example.com/a.jpg"}
    assert content[2]["type"] == "document" and content[2]["title"] == "a.pdf"
    assert req.body["tools"][0] == {
        "type": "web_search_20250305",
        "name": "web_search",
        "allowed_domains": ["example.com"],
        "user_location": {"type": "approximate", "country": "FR"},
        "cache_control": {"type": "ephemeral"},
    }


def test_text_format_becomes_a_forced_tool() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = translate(input="x", text={"format": {"type": "json_schema", "name": "out", "schema": schema}})
    assert req.json_tool == "json_response" and req.body["tool_choice"] == {
        "type": "tool",
        "name": "json_response",
    }
    assert req.body["tools"][0]["input_schema"] == schema


def test_sampling_user_and_head() -> None:
    req = translate(
        input="x",
        temperature=1.7,
        top_p=0.5,
        max_output_tokens=100,
        user="u-1",
        metadata={"k": "v"},
        instructions="Be brief.",
    )
    body = req.body
    assert body["temperature"] == 1 and "top_p" not in body and body["max_tokens"] == 100
    assert body["metadata"] == {"user_id": "u-1"}
    head = orjson.loads("{" + req.head_json() + "}")
    assert head["id"] == "resp_x" and head["metadata"] == {"k": "v"} and head["instructions"] == "Be brief."
    assert head["max_output_tokens"] == 100 and head["user"] == "u-1"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
        ({"input": "x", "tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": [{"type": "local_shell_call"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        (
            {
                "input": "x",
                "tool_choice": {"type": "function", "name": "missing"},
                "tools": [{"type": "function", "name": "f"}],
            },
            "tool_choice.name",
        ),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({}, "input"),
    ],
)
def test_refusals_name_the_parameter(body: dict[str, Any], param: str) -> None:
    assert refused(**body).param == param


def test_flat_names_stay_within_claudes_limit() -> None:
    long = oa.flat_name("n" * 40, "f" * 40)
    assert len(long) == 64 and long == oa.flat_name("n" * 40, "f" * 40)
    assert oa.flat_name("a.b", "c") == "a_b__c"


def test_to_response_non_streamed() -> None:
    req = translate(input="x", tools=[{"type": "custom", "name": "apply_patch"}])
    message: dict[str, Any] = {
        "id": "msg_1",
        "stop_reason": "max_tokens",
        "usage": {
            "input_tokens": 5,
            "cache_read_input_tokens": 10,
            "cache_creation_input_tokens": 2,
            "output_tokens": 7,
        },
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
            {"type": "text", "text": "Hi"},
            {"type": "text", "text": " there"},
            {"type": "tool_use", "id": "toolu_1", "name": "apply_patch", "input": {"input": "p"}},
        ],
    }
    resp = oa.to_response(message, req)
    assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
    kinds = [(i["type"], i["id"]) for i in resp["output"]]
    assert kinds == [("reasoning", "rs_x_0"), ("message", "msg_x_1"), ("custom_tool_call", "ctc_x_2")]
    assert [p["text"] for p in resp["output"][1]["content"]] == ["Hi", " there"]
    assert resp["output"][2]["input"] == "p"
    assert oa.restore_reasoning(resp["output"][0]) == [message["content"][0]]
    assert resp["usage"]["input_tokens"] == 17 and resp["usage"]["input_tokens_details"] == {
        "cached_tokens": 10,
        "cache_write_tokens": 2,
    }
