"""The per-model SDK matrices: the current models, their rules as the registry states them, and
the runner of the matrices driven by one Node process each (tests/e2e/test_anthropic_node.py,
tests/e2e/test_openai_node.py): cases built in Python from the rules, each with the check its
outcome must pass; a Node script runs them all and prints {case id: outcome}."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ethereal.models import Registry, Rules

from tests.procs import REPO

# the models Anthropic serves today (CLAUDE-API-2026-12.md §1), each run by every adapter and SDK
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
ALL_EFFORTS = ("low", "medium", "high", "xhigh", "max")
REGISTRY = Registry()
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


def rules(model: str) -> Rules:
    found = REGISTRY.get(model)
    assert found is not None, model
    return found.rules


def thinking_of(model: str) -> dict[str, Any]:
    """Thinking on, as the model takes it: adaptive at its lowest effort, else a budget."""
    r = rules(model)
    if "adaptive" in r.thinking_types:
        return {"thinking": {"type": "adaptive"}, "output_config": {"effort": r.effort_levels[0]}}
    return {"thinking": {"type": "enabled", "budget_tokens": 1024}}


Results = dict[str, dict[str, Any]]
Check = Callable[[dict[str, Any], Results], None]
Case = tuple[dict[str, Any], Check]


def succeeded(check: Callable[[dict[str, Any]], Any]) -> Check:
    """A success whose outcome passes ``check`` (truthy)."""

    def wrapped(out: dict[str, Any], _: Results) -> None:
        assert out["ok"], out
        assert check(out), out

    return wrapped


def run_cases(script: Path, url: str, key: str, cases: list[dict[str, Any]], workdir: Path) -> Results:
    """Every case, run by one Node process (the SDKs installed by `make clients`, resolved from
    clients/); prints how long it took."""
    path = workdir / "cases.json"
    path.write_text(json.dumps(cases))
    started = time.monotonic()
    done = subprocess.run(
        ["node", str(script), url, key, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO / "clients",
    )
    assert done.returncode == 0, done.stderr
    print(f"{script.name}: {len(cases)} cases in {time.monotonic() - started:.1f} s")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def check_cases(cases: list[Case], results: Results) -> None:
    """Every case's check; all failures named in one message."""
    failures = []
    for case, check in cases:
        out = results.get(case["id"])
        try:
            assert out is not None, "no outcome reported"
            check(out, results)
        except AssertionError as exc:
            failures.append(f"{case['id']} ({case['op']} {json.dumps(case['params'])[:300]}):\n    {exc}")
    assert not failures, "\n".join(failures)
