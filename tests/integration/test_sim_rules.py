"""The sim tells the truth: each current model's request rules, with the API's own 400 texts.

Every rule is checked on every current model, the refused shape against the exact text the
real API answers and the accepted shape against a 200. The expectations are written out per
model from Anthropic's per-model table (../shared/CLAUDE-API-2026-12.md §2.1), not read from
the registry, so a wrong registry entry fails here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from ethereal.sim.testing import control, reset_sim, start_sim_process

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
ALL_EFFORTS = ("low", "medium", "high", "xhigh", "max")
NO_XHIGH = ("low", "medium", "high", "max")

# the texts the real API answers with
ENABLED = (
    '"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" and '
    '"output_config.effort" to control thinking behavior.'
)
ADAPTIVE = '"thinking.type.adaptive" is not supported for this model. Use "thinking.type.enabled" with "budget_tokens".'
DISABLED = (
    '"thinking.type.disabled" is not supported for this model. Use "thinking.type.adaptive" and '
    '"output_config.effort" to control thinking behavior.'
)
DISABLED_BT = (
    '"thinking.type.disabled" is not supported for this model. Use "thinking.type.between_tools" to '
    "turn thinking off."
)
BETWEEN = '"thinking.type.between_tools" is not supported for this model.'
FORCED = 'tool_choice: type "tool" and "any" are not supported for this model.'
FORCED_THINKING = "Thinking may not be enabled when tool_choice forces tool use."
PREFILL = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)
FAST = '"speed": "fast" is not supported for this model.'
GEO = '"inference_geo" is not supported for this model.'
ONE_OF = "`temperature` and `top_p` cannot both be specified for this model. Please use only one."


def off_effort(kind: str, effort: str) -> str:
    return (
        f'"thinking.type.{kind}" is not supported with "output_config.effort": "{effort}" for this model. '
        'Use an effort of "high" or lower to turn thinking off.'
    )


def M(**kw: Any) -> dict[str, Any]:  # a row of the table
    row = {
        "enabled": False,
        "adaptive": True,
        "disabled": None,
        "between": False,
        "off_max": None,
        "efforts": ALL_EFFORTS,
        "sampling": "default_only",
        "forced": True,
        "prefill": False,
        "fast": None,
        "geo": True,
        "tokenizer": 2,
        "min_cache": 512,
        "thinks": True,
        "display": "omitted",
        "max_out": 128_000,
        "id": None,
    }
    row.update(kw)
    return row


# disabled: None = accepted, else the refusal text; fast: None = refused, "ga", or the beta it needs
CURRENT: dict[str, dict[str, Any]] = {
    "claude-fable-5-2": M(disabled=DISABLED, forced=False, fast="ga"),
    "claude-opus-5-5": M(disabled=DISABLED, forced=False, fast="ga"),
    "claude-sonnet-5-5": M(disabled=DISABLED_BT, between=True, off_max="high", forced=False),
    "claude-haiku-5-5": M(),
    "claude-opus-5": M(off_max="high", fast="fast-mode-2026-02-01"),
    "claude-opus-4-8": M(thinks=False, min_cache=1024),
    "claude-opus-4-7": M(thinks=False, min_cache=2048, display="summarized"),
    "claude-sonnet-5": M(min_cache=1024),
    "claude-sonnet-4-6": M(
        enabled=True,
        efforts=NO_XHIGH,
        sampling="one_of",
        tokenizer=1,
        min_cache=1024,
        thinks=False,
        display="summarized",
    ),
    "claude-haiku-4-5": M(
        enabled=True,
        adaptive=False,
        efforts=(),
        sampling="one_of",
        prefill=True,
        geo=False,
        tokenizer=1,
        min_cache=4096,
        thinks=False,
        display="summarized",
        max_out=64_000,
        id="claude-haiku-4-5-20251001",
    ),
}
MODELS = list(CURRENT)
RETIRED = [
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-1",
    "claude-opus-4-20250514",
    "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest",
    "claude-3-haiku-20240307",
]
TOOL = {
    "name": "lookup",
    "description": "Look a word up",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with start_sim_process(seed=3) as (_proc, url):
        yield url


@pytest.fixture(scope="module")
def http(sim: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim, headers=HEADERS, timeout=10) as c:
        yield c


def req(model: str, text: str = "hello", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": text}],
    }
    out.update(kw)
    return out


def post(
    http: httpx.Client, body: dict[str, Any], path: str = "/v1/messages", **headers: str
) -> httpx.Response:
    return http.post(
        path, content=orjson.dumps(body), headers={"content-type": "application/json", **headers}
    )


def refused(r: httpx.Response, text: str) -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"type": "invalid_request_error", "message": text}


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------ models


def test_models_list_is_the_registry(http: httpx.Client) -> None:
    from ethereal.models import load_registry

    data = ok(http.get("/v1/models", params={"limit": 1000}))
    ids = [m["id"] for m in data["data"]]
    assert ids == [m.id for m in load_registry().listed()]
    assert {CURRENT[m]["id"] or m for m in MODELS} <= set(ids)
    assert not set(ids) & {"claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805"}
    for item in data["data"]:
        assert {
            "id",
            "type",
            "display_name",
            "created_at",
            "max_input_tokens",
            "max_tokens",
            "capabilities",
        } <= set(item)
        assert set(item["capabilities"]["effort"]) >= set(ALL_EFFORTS)
    page = ok(http.get("/v1/models", params={"limit": 2}))
    assert len(page["data"]) == 2 and page["has_more"]
    nxt = ok(http.get("/v1/models", params={"limit": 2, "after_id": page["last_id"]}))
    assert nxt["data"][0]["id"] == ids[2]


@pytest.mark.parametrize("model", RETIRED)
def test_retired_ids_404(http: httpx.Client, model: str) -> None:
    want = {"type": "not_found_error", "message": f"model: {model}"}
    r = post(http, req(model))
    assert r.status_code == 404 and r.json()["error"] == want
    r = post(
        http, {"model": model, "messages": [{"role": "user", "content": "x"}]}, "/v1/messages/count_tokens"
    )
    assert r.status_code == 404 and r.json()["error"] == want
    assert http.get(f"/v1/models/{model}").status_code == 404


def test_unknown_id_404_until_the_upstream_lists_it(http: httpx.Client, sim: str) -> None:
    r = post(http, req("claude-nova-6"))
    assert r.status_code == 404 and r.json()["error"]["message"] == "model: claude-nova-6"
    added = control(sim, "/_sim/models", {"id": "claude-nova-6", "display_name": "Claude Nova 6"})
    assert [m["id"] for m in added["added"]] == ["claude-nova-6"]
    try:
        msg = ok(post(http, req("claude-nova-6")))
        assert msg["model"] == "claude-nova-6" and msg["usage"]["output_tokens"] > 0
        listed = ok(http.get("/v1/models", params={"limit": 1000}))["data"]
        assert listed[0]["id"] == "claude-nova-6" and listed[0]["display_name"] == "Claude Nova 6"
        assert ok(http.get("/v1/models/claude-nova-6"))["max_tokens"] > 0
        assert (
            ok(
                post(
                    http,
                    {"model": "claude-nova-6", "messages": [{"role": "user", "content": "x" * 40}]},
                    "/v1/messages/count_tokens",
                )
            )["input_tokens"]
            > 0
        )
        # one that takes a served model's rules and limits
        control(
            sim, "/_sim/models", {"id": "claude-nova-6-mini", "like": "claude-haiku-4-5", "max_tokens": 1000}
        )
        refused(
            post(http, req("claude-nova-6-mini", max_tokens=1001)),
            "max_tokens: 1001 > 1000, which is the maximum allowed number of output tokens for "
            "claude-nova-6-mini",
        )
        ok(post(http, req("claude-nova-6-mini", temperature=0.2, max_tokens=1000)))
    finally:
        assert control(sim, "/_sim/models", {"clear": True}) == {"added": []}
    assert post(http, req("claude-nova-6")).status_code == 404


def test_batch_items_follow_the_rules(http: httpx.Client, sim: str) -> None:
    items = [
        {"custom_id": "fine", "params": req("claude-opus-5-5", "x sim:batch_ms=0", max_tokens=200)},
        {"custom_id": "gone", "params": req("claude-sonnet-4-5", max_tokens=10)},
        {"custom_id": "sampling", "params": req("claude-opus-5-5", temperature=0.3, max_tokens=10)},
    ]
    batch = ok(post(http, {"requests": items}, "/v1/messages/batches"))
    lines = [
        orjson.loads(x) for x in http.get(f"/v1/messages/batches/{batch['id']}/results").content.splitlines()
    ]
    got = {x["custom_id"]: x["result"] for x in lines}
    assert got["gone"]["error"]["error"] == {"type": "not_found_error", "message": "model: claude-sonnet-4-5"}
    assert got["sampling"]["error"]["error"]["message"] == "`temperature` is deprecated for this model."
    message = got["fine"]["message"]
    assert message["usage"]["service_tier"] == "batch"
    assert message["content"][0]["type"] == "thinking"


# ------------------------------------------------------------------------------------------ thinking


@pytest.mark.parametrize("model", MODELS)
def test_thinking_types(http: httpx.Client, model: str) -> None:
    row = CURRENT[model]
    r = post(http, req(model, thinking={"type": "enabled", "budget_tokens": 2048}))
    ok(r) if row["enabled"] else refused(r, ENABLED)
    r = post(http, req(model, thinking={"type": "adaptive"}))
    ok(r) if row["adaptive"] else refused(r, ADAPTIVE)
    r = post(http, req(model, thinking={"type": "disabled"}))
    if row["disabled"] is None:
        assert [b["type"] for b in ok(r)["content"]] == ["text"]
    else:
        refused(r, row["disabled"])
    r = post(http, req(model, thinking={"type": "between_tools"}))
    if row["between"]:
        assert [b["type"] for b in ok(r)["content"]] == ["text"]
    else:
        refused(r, BETWEEN)


@pytest.mark.parametrize("model", MODELS)
def test_thinking_off_only_up_to_an_effort(http: httpx.Client, model: str) -> None:
    row = CURRENT[model]
    kind = "between_tools" if row["between"] else "disabled"
    for effort in row["efforts"]:
        r = post(http, req(model, thinking={"type": kind}, output_config={"effort": effort}))
        if not row["between"] and row["disabled"] is not None:
            refused(r, row["disabled"])  # thinking cannot be turned off here, at any effort
        elif row["off_max"] is not None and ALL_EFFORTS.index(effort) > ALL_EFFORTS.index(row["off_max"]):
            refused(r, off_effort(kind, effort))
        else:
            ok(r)


@pytest.mark.parametrize("model", MODELS)
def test_effort_levels(http: httpx.Client, model: str) -> None:
    row = CURRENT[model]
    levels = ", ".join(f'"{e}"' for e in row["efforts"])
    for effort in ALL_EFFORTS:
        r = post(http, req(model, output_config={"effort": effort}))
        if not row["efforts"]:
            refused(r, '"output_config.effort" is not supported for this model.')
        elif effort in row["efforts"]:
            ok(r)
        else:
            refused(
                r,
                f'"output_config.effort": "{effort}" is not supported for this model. '
                f"Supported values: {levels}.",
            )


@pytest.mark.parametrize("model", MODELS)
def test_thinking_default_and_display(http: httpx.Client, model: str) -> None:
    row = CURRENT[model]
    msg = ok(post(http, req(model, "think sim:thinking=30 sim:tokens=10")))
    kinds = [b["type"] for b in msg["content"]]
    if row["thinks"]:
        assert kinds == ["thinking", "text"]
        th = msg["content"][0]
        assert len(th["signature"]) > 100
        assert (th["thinking"] == "") == (row["display"] == "omitted")
        # omitted thinking is billed all the same
        assert msg["usage"]["output_tokens"] == 30 + math.ceil(len(msg["content"][1]["text"]) / 4)
    else:
        assert kinds == ["text"]
    on = {"type": "enabled", "budget_tokens": 2048} if row["enabled"] else {"type": "adaptive"}
    shown = ok(post(http, req(model, "think", thinking={**on, "display": "summarized"})))
    assert shown["content"][0]["type"] == "thinking" and shown["content"][0]["thinking"]
    hidden = ok(post(http, req(model, "think", thinking={**on, "display": "omitted"})))
    assert hidden["content"][0] == {
        "type": "thinking",
        "thinking": "",
        "signature": hidden["content"][0]["signature"],
    }
    refused(
        post(http, req(model, thinking={**on, "display": "verbose"})),
        '"thinking.display": "verbose" is not supported for this model.',
    )


# ------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("model", MODELS)
def test_sampling_parameters(http: httpx.Client, model: str) -> None:
    row = CURRENT[model]
    if row["sampling"] == "default_only":
        for name, value in (("temperature", 0.5), ("top_p", 0.9), ("top_k", 5), ("top_k", 1)):
            refused(post(http, req(model, **{name: value})), f"`{name}` is deprecated for this model.")
        ok(post(http, req(model, temperature=1)))  # the default is no change
        ok(post(http, req(model, temperature=1.0, top_p=1)))
    else:
        ok(post(http, req(model, temperature=0.2)))
        ok(post(http, req(model, top_p=0.9)))
        ok(post(http, req(model, top_k=20)))
        refused(post(http, req(model, temperature=0.2, top_p=0.9)), ONE_OF)


# ------------------------------------------------------------------------------------------ tools, prefill


@pytest.mark.parametrize("model", MODELS)
def test_forced_tool_choice(http: httpx.Client, model: str) -> None:
    row = CURRENT[model]
    for choice in ({"type": "any"}, {"type": "tool", "name": "lookup"}):
        r = post(http, req(model, tools=[TOOL], tool_choice=choice))
        count = post(
            http,
            {
                "model": model,
                "tools": [TOOL],
                "tool_choice": choice,
                "messages": [{"role": "user", "content": "x"}],
            },
            "/v1/messages/count_tokens",
        )
        if not row["forced"]:
            refused(r, FORCED)
            refused(count, FORCED)
            continue
        if row["thinks"]:  # thinking left out is on here, and a forced tool refuses it
            refused(r, FORCED_THINKING)
            refused(count, FORCED_THINKING)
        else:
            assert ok(r)["stop_reason"] == "tool_use"
            assert ok(count)["input_tokens"] > 0
        off = post(http, req(model, tools=[TOOL], tool_choice=choice, thinking={"type": "disabled"}))
        assert ok(off)["content"][0]["type"] == "tool_use"
        on = {"type": "enabled", "budget_tokens": 2048} if row["enabled"] else {"type": "adaptive"}
        refused(post(http, req(model, tools=[TOOL], tool_choice=choice, thinking=on)), FORCED_THINKING)
    # auto is always fine
    ok(post(http, req(model, tools=[TOOL], tool_choice={"type": "auto"})))


@pytest.mark.parametrize("model", MODELS)
def test_prefill(http: httpx.Client, model: str) -> None:
    body = req(model)
    body["messages"].append({"role": "assistant", "content": "Sure,"})
    r = post(http, body)
    ok(r) if CURRENT[model]["prefill"] else refused(r, PREFILL)


# ------------------------------------------------------------------------------------------ limits, modes


@pytest.mark.parametrize("model", MODELS)
def test_max_tokens_cap(http: httpx.Client, model: str) -> None:
    row = CURRENT[model]
    cap = row["max_out"]
    refused(
        post(http, req(model, max_tokens=cap + 1)),
        f"max_tokens: {cap + 1} > {cap}, which is the maximum allowed number of output tokens for "
        f"{row['id'] or model}",
    )
    ok(post(http, req(model, "x sim:tokens=5", max_tokens=cap)))


@pytest.mark.parametrize("model", MODELS)
def test_fast_mode(http: httpx.Client, model: str) -> None:
    fast = CURRENT[model]["fast"]
    r = post(http, req(model, speed="fast"))
    if fast is None:
        refused(r, FAST)
        return
    if fast != "ga":
        refused(r, FAST)
        r = post(http, req(model, speed="fast"), **{"anthropic-beta": f"other-beta,{fast}"})
    assert ok(r)["usage"]["speed"] == "fast"
    assert ok(post(http, req(model, speed="standard")))["usage"]["speed"] == "standard"


@pytest.mark.parametrize("model", MODELS)
def test_inference_geo(http: httpx.Client, model: str) -> None:
    r = post(http, req(model, inference_geo="us"))
    if CURRENT[model]["geo"]:
        assert ok(r)["usage"]["inference_geo"] == "us"
    else:
        refused(r, GEO)
    assert ok(post(http, req(model)))["usage"]["inference_geo"] == "global"


# ------------------------------------------------------------------------------------------ counting, caching


@pytest.mark.parametrize("model", MODELS)
def test_count_tokens_by_tokenizer(http: httpx.Client, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "y" * 4000}]}
    want = 1300 if CURRENT[model]["tokenizer"] == 2 else 1000
    assert ok(post(http, body, "/v1/messages/count_tokens"))["input_tokens"] == want
    assert ok(post(http, dict(body, max_tokens=50)))["usage"]["input_tokens"] == want


@pytest.mark.parametrize("model", MODELS)
def test_minimum_cacheable_prompt(http: httpx.Client, sim: str, model: str) -> None:
    reset_sim(sim)
    row = CURRENT[model]

    def chars_for(tokens: int) -> int:  # the fewest characters that make this many prefix tokens
        return 4 * tokens if row["tokenizer"] == 1 else math.ceil(40 * tokens / 13)

    for tokens, cached in ((row["min_cache"] - 1, False), (row["min_cache"], True)):
        system = [{"type": "text", "text": "z" * chars_for(tokens), "cache_control": {"type": "ephemeral"}}]
        u = ok(post(http, req(model, f"q{tokens}", system=system, max_tokens=50)))["usage"]
        assert u["cache_creation_input_tokens"] == (tokens if cached else 0), u
        assert u["cache_read_input_tokens"] == 0


# ------------------------------------------------------------------------------------------ usage


@pytest.mark.parametrize("model", MODELS)
def test_usage_fields_streamed_and_not(http: httpx.Client, model: str) -> None:
    tools = [
        {"type": "web_search_20260209", "name": "web_search"},
        {"type": "web_fetch_20250910", "name": "web_fetch"},
    ]
    body = req(model, "find it sim:web_search=2 sim:web_fetch=1", tools=tools)
    if CURRENT[model]["geo"]:
        body["inference_geo"] = "us"
    want = {"web_search_requests": 2, "web_fetch_requests": 1}
    msg = ok(post(http, body))
    u = msg["usage"]
    assert u["server_tool_use"] == want and u["speed"] == "standard" and u["service_tier"] == "standard"
    assert u["inference_geo"] == ("us" if CURRENT[model]["geo"] else "global")
    assert set(u["cache_creation"]) == {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}
    with http.stream(
        "POST",
        "/v1/messages",
        content=orjson.dumps(dict(body, stream=True)),
        headers={"content-type": "application/json"},
    ) as r:
        raw = b"".join(r.iter_bytes())
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    start = events[0]["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    for usage in (start, delta):
        assert usage["server_tool_use"] == want and usage["speed"] == "standard"
        assert usage["inference_geo"] == u["inference_geo"]
    assert "iterations" not in u and "iterations" not in delta


def test_advisor_iterations(http: httpx.Client) -> None:
    tools = [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-5-5"}]
    body = req("claude-sonnet-5-5", "plan it", tools=tools)
    msg = ok(post(http, body, **{"anthropic-beta": "advisor-tool-2026-03-01"}))
    u = msg["usage"]
    its = u["iterations"]
    assert [i["type"] for i in its] == ["message", "advisor_message"]
    assert its[0]["input_tokens"] == u["input_tokens"] and its[0]["output_tokens"] == u["output_tokens"]
    assert its[1]["model"] == "claude-opus-5-5" and its[1]["output_tokens"] > 0
    with http.stream(
        "POST",
        "/v1/messages",
        content=orjson.dumps(dict(body, stream=True)),
        headers={"content-type": "application/json"},
    ) as r:
        raw = b"".join(r.iter_bytes())
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert [i["type"] for i in delta["iterations"]] == ["message", "advisor_message"]
    assert delta["iterations"][0]["output_tokens"] == delta["output_tokens"]


# ------------------------------------------------------------------------------------------ Claude Code's beta


@pytest.mark.parametrize("model", ["claude-opus-5-5", "claude-sonnet-5-5"])
def test_system_message_needs_per_turn_control_beta(http: httpx.Client, model: str) -> None:
    body = req(model)
    body["messages"] = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": "Be brief from here on."},
        {"role": "user", "content": "second"},
    ]
    refused(post(http, body), "messages.2.role: Input should be 'user' or 'assistant'")
    msg = ok(post(http, body, **{"anthropic-beta": "claude-code-20250219,per-turn-control-2026-07-01"}))
    assert msg["content"][-1]["type"] == "text"
    count = {k: v for k, v in body.items() if k != "max_tokens"}
    refused(
        post(http, count, "/v1/messages/count_tokens"),
        "messages.2.role: Input should be 'user' or 'assistant'",
    )
    with_system = ok(
        post(http, count, "/v1/messages/count_tokens", **{"anthropic-beta": "per-turn-control-2026-07-01"})
    )
    count["messages"] = [m for m in count["messages"] if m["role"] != "system"]
    assert with_system["input_tokens"] > ok(post(http, count, "/v1/messages/count_tokens"))["input_tokens"]


def test_display_updates_needs_its_beta(http: httpx.Client) -> None:
    body = req("claude-sonnet-5-5", "think", thinking={"type": "adaptive", "display": "updates"})
    refused(post(http, body), '"thinking.display": "updates" is not supported for this model.')
    beta = {"anthropic-beta": "thinking-display-updates-2026-08-18"}
    assert ok(post(http, body, **beta))["content"][0]["thinking"]
    # Claude Code sends it to Opus 5.5 too (its default model): accepted there under the beta
    assert ok(post(http, dict(body, model="claude-opus-5-5"), **beta))["content"][0]["type"] == "thinking"
    refused(
        post(http, dict(body, model="claude-opus-5-5")),
        '"thinking.display": "updates" is not supported for this model.',
    )
    refused(
        post(http, dict(body, model="claude-haiku-5-5"), **beta),
        '"thinking.display": "updates" is not supported for this model.',
    )


@pytest.mark.parametrize("model", ["claude-opus-5-5", "claude-sonnet-4-6"])
def test_structured_outputs_answer_json_the_schema_accepts(http: httpx.Client, model: str) -> None:
    """``output_config.format`` json_schema: the answer's text is JSON its schema accepts (with
    thinking on or off), streamed alike; without it, prose."""
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "integer"},
            "why": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["answer", "why", "tags"],
        "additionalProperties": False,
    }
    body = req(
        model, "What is 6 times 7?", output_config={"format": {"type": "json_schema", "schema": schema}}
    )
    msg = ok(post(http, body))
    text = msg["content"][-1]["text"]
    value = orjson.loads(text)
    assert set(value) == {"answer", "why", "tags"} and type(value["answer"]) is int
    assert isinstance(value["why"], str) and all(isinstance(t, str) for t in value["tags"])
    assert msg["stop_reason"] == "end_turn"
    with http.stream(
        "POST",
        "/v1/messages",
        content=orjson.dumps(dict(body, stream=True)),
        headers={"content-type": "application/json"},
    ) as r:
        raw = b"".join(r.iter_bytes())
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    streamed = "".join(
        e["delta"]["text"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"
    )
    assert set(orjson.loads(streamed)) == set(value)
    prose = ok(post(http, req(model, "What is 6 times 7?")))["content"][-1]["text"]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(prose)
