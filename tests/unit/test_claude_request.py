"""``adapters.claude_request``: every OpenAI-shaped request, on each current model, becomes a Claude
body that model accepts (its rules in models.toml), or a 400 naming the client's parameter.

``violations`` below is the API's per-model request rules (CLAUDE-API-2026-12.md §2.1) written
independently of the adapters, so an adapter that sends a refused shape fails here even before
the simulated upstream enforces the same rules.
"""

from __future__ import annotations

from typing import Any

import pytest
from ethereal.adapters import claude_request as cr
from ethereal.adapters import openai_chat, openai_responses
from ethereal.errors import GatewayError
from ethereal.models import Registry, Rules
from ethereal.models.learnt import corrected, learn, learnt_rules, refusal_key
from ethereal.models.registry import EFFORTS

REGISTRY = Registry()
CURRENT = [
    "claude-fable-5-2",
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
    "claude-opus-5",
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-sonnet-5",
    "claude-sonnet-4-6",
    "claude-haiku-4-5-20251001",
]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
RTOOL = {"type": "function", "name": "get_weather", "parameters": TOOL["function"]["parameters"]}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer", "minimum": 0}},
    "required": ["answer"],
}


def rules_of(model: str) -> Rules:
    found = REGISTRY.resolve(model)
    assert found is not None
    return found.rules


def violations(body: dict[str, Any], model: str) -> list[str]:
    """What the API would refuse in ``body`` for ``model`` (empty: accepted)."""
    found = REGISTRY.resolve(model)
    assert found is not None
    r = found.rules
    out = []
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    effort = (body.get("output_config") or {}).get("effort")
    if kind == "enabled" and "enabled" not in r.thinking_types:
        out.append("thinking.type.enabled")
    if kind == "adaptive" and "adaptive" not in r.thinking_types:
        out.append("thinking.type.adaptive")
    if kind in ("disabled", "between_tools"):
        if r.thinking_off != kind:
            out.append(f"thinking.type.{kind}")
        level = effort or r.effort_default or "high"
        if r.thinking_off_max_effort and EFFORTS.index(level) > EFFORTS.index(r.thinking_off_max_effort):
            out.append(f"thinking off at effort {level}")
    if kind == "enabled" and thinking["budget_tokens"] >= body["max_tokens"]:
        out.append("budget_tokens >= max_tokens")
    if effort is not None and effort not in r.effort_levels:
        out.append(f"effort {effort}")
    if isinstance(thinking, dict) and "display" in thinking and thinking["display"] not in r.display_values:
        out.append("display")
    if r.sampling == "default_only":
        out += [p for p in ("temperature", "top_p") if body.get(p, 1) != 1]
        if "top_k" in body:
            out.append("top_k")
    if r.sampling == "one_of" and "temperature" in body and "top_p" in body:
        out.append("temperature and top_p")
    if kind in ("enabled", "adaptive") and any(body.get(p, 1) != 1 for p in ("temperature", "top_p")):
        out.append("sampling with thinking")
    forced = (body.get("tool_choice") or {}).get("type") in ("any", "tool")
    thinking_on = kind in ("enabled", "adaptive") or (kind is None and r.thinking_default == "adaptive")
    if forced and not r.forced_tool_choice:
        out.append("forced tool_choice")
    elif forced and thinking_on and not r.forced_tool_with_thinking:
        out.append("forced tool_choice with thinking")
    if body["messages"][-1]["role"] == "assistant" and not r.prefill:
        out.append("prefill")
    if body["max_tokens"] > found.max_output:
        out.append("max_tokens")
    if "format" in (body.get("output_config") or {}) and not r.structured_outputs:
        out.append("output_config.format")
    breakpoints = sum(
        1 for b in [*body.get("tools", []), *body.get("system", [])] if "cache_control" in b
    ) + sum(1 for m in body["messages"] for b in m["content"] if "cache_control" in b)
    if breakpoints > 4:
        out.append("more than 4 cache breakpoints")
    return out


def chat(model: str, **kw: Any) -> openai_chat.ChatRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}
    return openai_chat.to_anthropic(
        body,
        model=model,
        max_output=REGISTRY.resolve(model).max_output,  # type: ignore[union-attr]
        rules=rules_of(model),
        default_max_tokens=REGISTRY.default_max_tokens,
    )


def responses(model: str, **kw: Any) -> openai_responses.ResponsesRequest:
    body = {"model": model, "input": "hi", **kw}
    return openai_responses.to_anthropic(
        body,
        model=model,
        max_output=REGISTRY.resolve(model).max_output,  # type: ignore[union-attr]
        response_id="resp_x",
        created_at=1,
        rules=rules_of(model),
        default_max_tokens=REGISTRY.default_max_tokens,
    )


THINKING_LOOP = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "Look it up.",
        "reasoning_signature": "c2ln",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
]

# (name, chat request members, responses request members)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    *[(f"effort-{e}", {"reasoning_effort": e}, {"reasoning": {"effort": e}}) for e in cr.OPENAI_EFFORTS],
    ("summary", {"reasoning_effort": "medium"}, {"reasoning": {"effort": "medium", "summary": "auto"}}),
    ("temperature", {"temperature": 0.2}, {"temperature": 0.2}),
    ("top_p", {"top_p": 0.5}, {"top_p": 0.5}),
    ("temperature+top_p", {"temperature": 0.2, "top_p": 0.5}, {"temperature": 0.2, "top_p": 0.5}),
    (
        "temperature+effort",
        {"temperature": 0.2, "reasoning_effort": "high"},
        {"temperature": 0.2, "reasoning": {"effort": "high"}},
    ),
    (
        "json_schema",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
        {"text": {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}}},
    ),
    (
        "json_object",
        {"response_format": {"type": "json_object"}},
        {"text": {"format": {"type": "json_object"}}},
    ),
    ("tools-auto", {"tools": [TOOL], "tool_choice": "auto"}, {"tools": [RTOOL], "tool_choice": "auto"}),
    (
        "tools-required",
        {"tools": [TOOL], "tool_choice": "required"},
        {"tools": [RTOOL], "tool_choice": "required"},
    ),
    (
        "tools-named",
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"tools": [RTOOL], "tool_choice": {"type": "function", "name": "get_weather"}},
    ),
    (
        "required+effort",
        {"tools": [TOOL], "tool_choice": "required", "reasoning_effort": "high"},
        {"tools": [RTOOL], "tool_choice": "required", "reasoning": {"effort": "high"}},
    ),
    (
        "prefill",
        {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi"}]},
        {"input": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi"}]},
    ),
    ("max_tokens", {"max_tokens": 10**6}, {"max_output_tokens": 10**6}),
]


@pytest.mark.parametrize("model", CURRENT)
@pytest.mark.parametrize(("case", "chat_kw", "resp_kw"), CASES, ids=[c[0] for c in CASES])
def test_every_request_is_accepted_or_refused_by_name(
    model: str, case: str, chat_kw: dict[str, Any], resp_kw: dict[str, Any]
) -> None:
    for translate, kw in ((chat, chat_kw), (responses, resp_kw)):
        try:
            body = translate(model, **kw).body
        except GatewayError as exc:
            # the only refusal left: a forced tool on a model that refuses forcing (or forcing with thinking)
            assert exc.status == 400 and exc.param == "tool_choice", exc.message
            assert case.startswith(("tools-required", "tools-named", "required+")), case
            r = rules_of(model)
            assert not r.forced_tool_choice or r.thinking_off == "none"
            continue
        assert violations(body, model) == [], (case, body)


def test_multi_turn_tool_loop_with_thinking() -> None:
    for model in CURRENT:
        r = rules_of(model)
        req = chat(model, messages=THINKING_LOOP, tools=[TOOL], reasoning_effort="medium")
        assert violations(req.body, model) == []
        assistant = req.body["messages"][1]["content"]
        assert assistant[0] == {"type": "thinking", "thinking": "Look it up.", "signature": "c2ln"}
        thinking = req.body["thinking"]
        assert thinking["type"] == ("adaptive" if r.adaptive else "enabled")
        # without the thinking block sent back: off where the model allows it, never a refused shape
        bare = [
            THINKING_LOOP[0],
            {k: v for k, v in THINKING_LOOP[1].items() if not k.startswith("reasoning")},
            THINKING_LOOP[2],
        ]
        req = chat(model, messages=bare, tools=[TOOL], reasoning_effort="medium")
        assert violations(req.body, model) == []
        if r.thinking_off != "none":
            assert req.body.get("thinking", {}).get("type") in (None, "disabled", "between_tools")
            assert req.notes[cr.THINKING_NOTE] == "off; reason=tool-loop-without-thinking"


@pytest.mark.parametrize(
    ("model", "effort", "expected"),
    [
        ("claude-opus-5-5", "xhigh", "xhigh"),
        ("claude-opus-4-7", "xhigh", "xhigh"),
        ("claude-sonnet-4-6", "xhigh", "high"),
        ("claude-fable-5-2", "minimal", "low"),
        ("claude-haiku-5-5", "medium", "medium"),
        ("claude-sonnet-5", "low", "low"),
    ],
)
def test_adaptive_effort_is_the_nearest_level(model: str, effort: str, expected: str) -> None:
    body = chat(model, reasoning_effort=effort).body
    assert body["thinking"]["type"] == "adaptive" and body["output_config"]["effort"] == expected
    assert "budget_tokens" not in body["thinking"]


def test_budget_only_models_get_budget_tokens() -> None:
    body = chat("claude-haiku-4-5-20251001", reasoning_effort="high", max_tokens=1000).body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16384} and body["max_tokens"] == 17384
    assert "output_config" not in body  # Haiku 4.5 has no effort levels
    body = responses("claude-opus-4-5-20251101", reasoning={"effort": "minimal"}).body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and body["output_config"] == {
        "effort": "low"
    }


@pytest.mark.parametrize(
    ("model", "thinking", "effort", "note"),
    [
        ("claude-opus-4-8", None, None, None),  # off by default: nothing to send
        ("claude-opus-5", {"type": "disabled"}, None, None),
        ("claude-haiku-5-5", {"type": "disabled"}, None, None),
        ("claude-sonnet-5-5", {"type": "between_tools"}, None, None),
        ("claude-opus-5-5", {"type": "adaptive"}, "low", "on; reason=cannot-be-off; effort=low"),
        ("claude-fable-5-2", {"type": "adaptive"}, "low", "on; reason=cannot-be-off; effort=low"),
    ],
)
def test_thinking_off(
    model: str, thinking: dict[str, Any] | None, effort: str | None, note: str | None
) -> None:
    for req in (chat(model, reasoning_effort="none"), responses(model, reasoning={"effort": "none"})):
        assert req.body.get("thinking") == thinking
        assert (req.body.get("output_config") or {}).get("effort") == effort
        assert req.notes.get(cr.THINKING_NOTE) == note


def test_sampling_rules_and_header() -> None:
    req = chat("claude-opus-5-5", temperature=0.2, top_p=0.5)
    assert "temperature" not in req.body and "top_p" not in req.body
    assert req.notes[cr.DROPPED_PARAMS] == "temperature,top_p"
    req = chat("claude-opus-5-5", temperature=1)  # the default: nothing lost, nothing said
    assert "temperature" not in req.body and cr.DROPPED_PARAMS not in req.notes
    req = chat("claude-sonnet-4-6", temperature=0.2, top_p=0.5)  # one_of: temperature kept
    assert (
        req.body["temperature"] == 0.2 and "top_p" not in req.body and req.notes[cr.DROPPED_PARAMS] == "top_p"
    )
    req = chat("claude-sonnet-4-6", top_p=0.5)
    assert req.body["top_p"] == 0.5 and not req.notes
    req = chat("claude-sonnet-4-6", temperature=0.2, reasoning_effort="low")  # thinking wants the defaults
    assert "temperature" not in req.body and req.notes[cr.DROPPED_PARAMS] == "temperature"
    req = responses("claude-haiku-5-5", temperature=0.7)
    assert "temperature" not in req.body and req.notes[cr.DROPPED_PARAMS] == "temperature"


def test_structured_outputs_instead_of_a_forced_tool() -> None:
    for model in CURRENT:
        for req in (
            chat(
                model, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
            ),
            responses(model, text={"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}}),
        ):
            fmt = req.body["output_config"]["format"]
            assert fmt["type"] == "json_schema" and req.json_tool is None and "tools" not in req.body
            schema = fmt["schema"]
            assert schema["additionalProperties"] is False and "minimum" not in schema["properties"]["answer"]
            assert "minimum" in schema["properties"]["answer"]["description"]
    # the reply's text is the JSON: no tool to unwrap
    message = {
        "content": [{"type": "text", "text": '{"answer": 4}'}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    completion = openai_chat.to_chat_completion(message, completion_id="c", created=1, model="m")
    assert completion["choices"][0]["message"]["content"] == '{"answer": 4}'


def test_forced_tool_refusal_names_tool_choice() -> None:
    for model in ("claude-opus-5-5", "claude-sonnet-5-5", "claude-fable-5-2"):
        with pytest.raises(GatewayError) as info:
            chat(model, tools=[TOOL], tool_choice="required")
        assert info.value.param == "tool_choice" and "forced tool choice" in info.value.message
        with pytest.raises(GatewayError) as info:
            responses(model, tools=[RTOOL], tool_choice={"type": "function", "name": "get_weather"})
        assert info.value.param == "tool_choice"
    # a model that forces but thinks by default: thinking turned off for the forced call
    for model in ("claude-opus-5", "claude-sonnet-5", "claude-haiku-5-5"):
        req = chat(model, tools=[TOOL], tool_choice="required", reasoning_effort="high")
        assert req.body["tool_choice"] == {"type": "any"} and req.body["thinking"] == {"type": "disabled"}
        assert req.notes[cr.THINKING_NOTE] == "off; reason=forced-tool-choice"
    req = chat("claude-opus-4-8", tools=[TOOL], tool_choice="required", reasoning_effort="high")
    assert "thinking" not in req.body and req.body["tool_choice"] == {"type": "any"}


def test_prefill_folded_where_refused() -> None:
    msgs = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi "}]
    req = chat("claude-opus-5-5", messages=msgs)
    assert [m["role"] for m in req.body["messages"]] == ["user"]
    assert "Hi" in req.body["messages"][0]["content"][-1]["text"] and req.notes[cr.PREFILL_NOTE]
    req = chat("claude-haiku-4-5-20251001", messages=msgs)  # prefill accepted: kept (trimmed)
    assert req.body["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}


def test_display_summarized_when_reasoning_is_read() -> None:
    body = responses("claude-opus-5-5", reasoning={"effort": "medium", "summary": "auto"}).body
    assert body["thinking"] == {"type": "adaptive", "display": "summarized"}
    body = responses("claude-opus-5-5", reasoning={"effort": "medium"}).body
    assert body["thinking"] == {"type": "adaptive"}
    body = chat(
        "claude-sonnet-5-5", reasoning_effort="low"
    ).body  # a chat client asking for reasoning reads it
    assert body["thinking"] == {"type": "adaptive", "display": "summarized"}
    body = chat("claude-sonnet-4-6", reasoning_effort="low").body  # summarized already by default
    assert body["thinking"] == {"type": "adaptive"}


def test_max_tokens_from_the_registry() -> None:
    for model in CURRENT:
        found = REGISTRY.resolve(model)
        assert found is not None
        assert chat(model).body["max_tokens"] == found.max_output
        assert chat(model, max_tokens=10**7).body["max_tokens"] == found.max_output
    unknown = openai_chat.to_anthropic(
        {"model": "claude-nova-6", "messages": [{"role": "user", "content": "x"}]},
        model="claude-nova-6",
        max_output=None,
        rules=Rules(),
        default_max_tokens=REGISTRY.default_max_tokens,
    )
    assert unknown.body["max_tokens"] == REGISTRY.default_max_tokens


# ---- automatic caching -----------------------------------------------------------------------------


def test_cache_policy_and_breakpoints() -> None:
    assert "cache_control" not in str(chat("claude-opus-5-5").body)  # a one-shot prompt: none
    convo = [
        {"role": "system", "content": "You are a coder."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    body = chat("claude-opus-5-5", messages=convo, tools=[TOOL]).body
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [b.get("cache_control") for m in body["messages"] for b in m["content"]] == [
        {"type": "ephemeral"},
        None,
        {"type": "ephemeral"},
    ]
    # the client's own breakpoints are kept, and only what fits in four is added
    own = [
        {
            "role": "system",
            "content": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": [{"type": "text", "text": "u1", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "b"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "u2", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        },
    ]
    body = chat("claude-opus-5-5", messages=own, tools=[TOOL]).body
    assert violations(body, "claude-opus-5-5") == []
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    # opted out (a key's metadata or the setting): the client's own only
    req = openai_chat.to_anthropic(
        {"model": "m", "messages": convo, "tools": [TOOL]},
        model="claude-opus-5-5",
        max_output=1000,
        rules=rules_of("claude-opus-5-5"),
        auto_cache=False,
    )
    assert "cache_control" not in str(req.body)


# ---- rules learnt from the upstream's refusals ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fields", "check"),
    [
        ("thinking_enabled", {}, lambda r: "enabled" not in r.thinking_types and r.adaptive),
        ("sampling_deprecated", {"param": "temperature"}, lambda r: r.sampling == "default_only"),
        ("forced_tool_choice", {}, lambda r: not r.forced_tool_choice),
        ("prefill", {}, lambda r: not r.prefill),
        ("thinking_disabled", {}, lambda r: r.thinking_off == "none"),
        (
            "effort_level",
            {"effort": "xhigh", "levels": "low, medium, high, max"},
            lambda r: r.effort_levels == ("low", "medium", "high", "max"),
        ),
    ],
)
def test_documented_refusals_are_recognised(key: str, fields: dict[str, str], check: Any) -> None:
    message = REGISTRY.error_text(key, **fields)
    found = refusal_key(REGISTRY, message)
    assert found is not None and found[0] == key
    assert check(corrected(Rules(), key, found[1]))


def test_learnt_rules_are_remembered_per_model() -> None:
    registry = Registry()
    base = Rules()  # budget thinking, any sampling: what an old-style guess would be
    assert learn(registry, "claude-nova-6", base, "something else went wrong") is None
    found = learn(registry, "claude-nova-6", base, REGISTRY.error_text("thinking_enabled"))
    assert found is not None and found[0] == "thinking_enabled"
    rules = learnt_rules(registry, "claude-nova-6", base)
    assert rules.adaptive and not rules.budget_thinking
    body = openai_chat.to_anthropic(
        {
            "model": "claude-nova-6",
            "messages": [{"role": "user", "content": "x"}],
            "reasoning_effort": "high",
        },
        model="claude-nova-6",
        max_output=None,
        rules=rules,
    ).body
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "high"}
    # the same refusal again changes nothing: no second retry
    assert learn(registry, "claude-nova-6", base, REGISTRY.error_text("thinking_enabled")) is None
    assert learnt_rules(registry, "claude-other", base) is base


def test_thinking_accounts_are_bounded_and_newest_first() -> None:
    from ethereal.upstream.binding import ThinkingAccounts, replayed_tokens

    accounts = ThinkingAccounts(limit=2)
    accounts.record(["s1"], "org-a")
    accounts.record(["s2"], "org-b")
    assert accounts.account_of(["s1", "s2"]) == "org-b"  # the newest replayed block decides
    accounts.record(["s3"], "org-c")
    assert len(accounts) == 2 and accounts.account_of(["s1"]) is None  # the oldest forgotten
    accounts.record(["s4"], None)  # a credential whose account is not known yet: nothing learnt
    assert accounts.account_of(["s4"]) is None
    body = chat("claude-sonnet-5-5", messages=THINKING_LOOP, tools=[TOOL], reasoning_effort="low").body
    assert replayed_tokens(body["messages"]) == ["c2ln"]
    dropped = openai_chat.to_anthropic(
        {"model": "m", "messages": THINKING_LOOP, "tools": [TOOL], "reasoning_effort": "low"},
        model="claude-sonnet-5-5",
        max_output=1000,
        rules=rules_of("claude-sonnet-5-5"),
        drop_thinking=True,
    )
    assert replayed_tokens(dropped.body["messages"]) == []
    assert dropped.notes[cr.DROPPED_THINKING] == "1; reason=account-unavailable"
    # the tool loop has no thinking left to replay: thinking off as the model allows (between_tools)
    assert (
        dropped.body["thinking"] == {"type": "between_tools"}
        and violations(dropped.body, "claude-sonnet-5-5") == []
    )
