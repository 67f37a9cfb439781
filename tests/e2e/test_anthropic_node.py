"""Node's ``@anthropic-ai/sdk`` through the gateway to the sim, on each current model: the matrix of
tests/e2e/test_anthropic_models.py (Messages streamed and not, count_tokens, thinking as each
model takes it, a tool round trip with thinking, forced tools, sampling and prefill), in one Node
process (``anthropic_models_node.mjs``) for every model, one gateway.

The cases and what each must give are built here from the model's rules in the registry; the
Node script only runs them and reports each outcome as JSON, and one test per model asserts its
own cases (every failing case named in one message).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway
from tests.e2e.sdkmatrix import (
    ALL_EFFORTS,
    CURRENT,
    REGISTRY,
    WEATHER,
    Case,
    Check,
    Results,
    check_cases,
    rules,
    run_cases,
    succeeded,
    thinking_of,
)
from tests.procs import REPO

SCRIPT = REPO / "tests" / "e2e" / "anthropic_models_node.mjs"


def refusal(text: str) -> Check:
    def check(out: dict[str, Any], _: Results) -> None:
        assert not out["ok"] and out["status"] == 400 and out["type"] == "invalid_request_error", out
        assert out["message"] == text, out

    return check


def cases_for(model: str) -> list[Case]:
    r = rules(model)
    hi = [{"role": "user", "content": "Hello there, how are you today?"}]
    ask = [{"role": "user", "content": "Think, then answer: what is 17 times 23?"}]
    weather = [{"role": "user", "content": "Weather in Paris?"}]
    out: list[Case] = []

    def case(name: str, op: str, params: dict[str, Any], check: Check) -> None:
        out.append(
            ({"id": f"{model}/{name}", "model": model, "op": op, "params": {"model": model, **params}}, check)
        )

    def thinks(o: dict[str, Any]) -> bool:
        return o["kinds"][0] == "thinking" and all(t["signed"] for t in o["thinking"])

    case(
        "create",
        "create",
        {"max_tokens": 256, "messages": hi},
        succeeded(
            lambda o: (
                o["model"] == model
                and (o["kinds"][0] == "thinking") == (r.thinking_default == "adaptive")
                and o["text"]
                and o["usage"]["output_tokens"] > 0
                and o["request_id"]
            )
        ),
    )
    case(
        "stream",
        "stream",
        {"max_tokens": 256, "messages": hi},
        succeeded(lambda o: o["model"] == model and o["text"] and o["streamed_text"] == o["text"]),
    )

    def counted(o: dict[str, Any], results: Results) -> None:
        assert o["ok"], o
        assert o["input_tokens"] == results[f"{model}/create"]["usage"]["input_tokens"], o

    case("count", "count", {"messages": hi}, counted)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    case(
        "structured",
        "create",
        {
            "max_tokens": 1024,
            "messages": hi,
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
        },
        succeeded(lambda o: json.loads(o["text"]).keys() == {"answer"}),
    )

    if "adaptive" in r.thinking_types:
        for effort in r.effort_levels:
            case(
                f"adaptive-{effort}",
                "create",
                {
                    "max_tokens": 4096,
                    "messages": ask,
                    "thinking": {"type": "adaptive"},
                    "output_config": {"effort": effort},
                },
                succeeded(thinks),
            )
        levels = ", ".join(f'"{e}"' for e in r.effort_levels)
        for effort in sorted(set(ALL_EFFORTS) - set(r.effort_levels)):
            case(
                f"adaptive-{effort}",
                "create",
                {
                    "max_tokens": 4096,
                    "messages": ask,
                    "thinking": {"type": "adaptive"},
                    "output_config": {"effort": effort},
                },
                refusal(REGISTRY.error_text("effort_level", effort=effort, levels=levels)),
            )
        case(
            "adaptive-summarized",
            "stream",
            {
                "max_tokens": 4096,
                "messages": ask,
                "thinking": {"type": "adaptive", "display": "summarized"},
                "output_config": {"effort": r.effort_levels[-1]},
            },
            succeeded(lambda o: thinks(o) and o["thinking"][0]["text"] and o["streamed_text"]),
        )
    else:
        case(
            "adaptive",
            "create",
            {"max_tokens": 4096, "messages": ask, "thinking": {"type": "adaptive"}},
            refusal(REGISTRY.error_text("thinking_adaptive")),
        )
    if "enabled" in r.thinking_types:
        case(
            "budget",
            "create",
            {"max_tokens": 4096, "messages": ask, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            succeeded(thinks),
        )
        case(
            "budget-stream",
            "stream",
            {"max_tokens": 4096, "messages": ask, "thinking": {"type": "enabled", "budget_tokens": 2048}},
            succeeded(lambda o: thinks(o) and o["kinds"][-1] == "text"),
        )
    else:
        case(
            "budget",
            "create",
            {"max_tokens": 4096, "messages": ask, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            refusal(REGISTRY.error_text("thinking_enabled")),
        )
    if not r.effort_levels:
        case(
            "effort",
            "create",
            {"max_tokens": 64, "messages": hi, "output_config": {"effort": "low"}},
            refusal(REGISTRY.error_text("effort_unsupported")),
        )
    if r.thinking_off == "none":
        case(
            "off",
            "create",
            {"max_tokens": 64, "messages": hi, "thinking": {"type": "disabled"}},
            refusal(REGISTRY.error_text("thinking_disabled")),
        )
    else:
        case(
            "off",
            "create",
            {"max_tokens": 64, "messages": hi, "thinking": {"type": r.thinking_off}},
            succeeded(lambda o: o["kinds"] == ["text"]),
        )
        if r.thinking_off_max_effort is not None:
            over = r.effort_levels[r.effort_levels.index(r.thinking_off_max_effort) + 1]
            case(
                "off-over-effort",
                "create",
                {
                    "max_tokens": 64,
                    "messages": hi,
                    "thinking": {"type": r.thinking_off},
                    "output_config": {"effort": over},
                },
                refusal(REGISTRY.error_text("thinking_off_effort", type=r.thinking_off, effort=over)),
            )

    def looped(o: dict[str, Any]) -> bool:
        first = o["first"]
        return (
            first["stop_reason"] == "tool_use"
            and first["kinds"][0] == "thinking"
            and [c["name"] for c in first["tool_calls"]] == ["get_weather"]
            and "location" in first["tool_calls"][0]["input"]
            and o["stop_reason"] == "end_turn"
            and o["kinds"][-1] == "text"
            and bool(o["text"])
        )

    case(
        "tool-loop",
        "tool_loop",
        {
            "max_tokens": 4096,
            "tools": [WEATHER],
            "messages": [{"role": "user", "content": "What is the weather in Paris? sim:tools=1"}],
            **thinking_of(model),
        },
        succeeded(looped),
    )
    forced = {"max_tokens": 1024, "tools": [WEATHER], "messages": weather, "tool_choice": {"type": "any"}}
    if not r.forced_tool_choice:
        case("forced", "create", forced, refusal(REGISTRY.error_text("forced_tool_choice")))
        case(
            "forced-count",
            "count",
            {"messages": weather, "tools": [WEATHER], "tool_choice": {"type": "any"}},
            refusal(REGISTRY.error_text("forced_tool_choice")),
        )
    else:
        if r.thinking_off != "none" and not r.forced_tool_with_thinking:
            case(
                "forced-thinking",
                "create",
                {**forced, **thinking_of(model)},
                refusal(REGISTRY.error_text("forced_tool_with_thinking")),
            )
        off = {"thinking": {"type": "disabled"}} if r.thinking_default == "adaptive" else {}
        case(
            "forced",
            "create",
            {**forced, **off},
            succeeded(lambda o: o["stop_reason"] == "tool_use" and o["kinds"] == ["tool_use"]),
        )

    case(
        "temperature-1",
        "create",
        {"max_tokens": 64, "messages": hi, "temperature": 1},
        succeeded(lambda o: o["text"]),
    )
    if r.sampling == "default_only":
        for param, value in (("temperature", 0.3), ("top_p", 0.5)):
            case(
                param,
                "create",
                {"max_tokens": 64, "messages": hi, param: value},
                refusal(REGISTRY.error_text("sampling_deprecated", param=param)),
            )
    else:
        for param, value in (("temperature", 0.3), ("top_p", 0.5)):
            case(
                param,
                "create",
                {"max_tokens": 64, "messages": hi, param: value},
                succeeded(lambda o: o["text"]),
            )
        if r.sampling == "one_of":
            case(
                "temperature-top_p",
                "create",
                {"max_tokens": 64, "messages": hi, "temperature": 0.3, "top_p": 0.5},
                refusal(REGISTRY.error_text("sampling_one_of")),
            )
    prefill = [*hi, {"role": "assistant", "content": "Well,"}]
    case(
        "prefill",
        "create",
        {"max_tokens": 64, "messages": prefill},
        succeeded(lambda o: o["text"]) if r.prefill else refusal(REGISTRY.error_text("prefill")),
    )
    return out


CASES = {model: cases_for(model) for model in CURRENT}


@pytest.fixture(scope="module")
def results(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every model's cases, run by one Node process."""
    workdir: Path = tmp_path_factory.mktemp("anthropic-node")
    return run_cases(
        SCRIPT, gateway.url, gateway.key, [c for cases in CASES.values() for c, _ in cases], workdir
    )


@pytest.mark.parametrize("model", CURRENT)
def test_anthropic_node_sdk(gateway: Gateway, results: Results, model: str) -> None:
    check_cases(CASES[model], results)
    # the non-streamed reply is billed at its own model's card
    rid = results[f"{model}/create"]["request_id"]
    billed = httpx.get(f"{gateway.url}/v1/usage/{rid}", headers={"x-api-key": gateway.key}, timeout=10).json()
    assert billed["model"] == model and billed["cost_micro"] > 0 and not billed.get("provisional"), billed
