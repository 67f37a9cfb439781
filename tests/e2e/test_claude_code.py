"""Claude Code (``claude -p``, installed by ``make clients``) through the gateway: both auth
styles, a tool round trip the sim scripts (reading a file in the working directory), thinking.

Claude Code refuses ``--dangerously-skip-permissions`` as root, so tools are allowed by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.e2e import faultmatrix as fm

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    why = fm.available()
    if why is not None:
        pytest.fail(why)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_api_key_and_a_tool_round_trip(gateway: Gateway, dirs: tuple[Path, Path]) -> None:
    home, work = dirs
    notes = work / "notes.txt"
    notes.write_text("the gateway relayed this file's contents\n")
    prompt = f'read the notes sim:tool=Read sim:tool_input={{"file_path":"{notes}"}}'
    done, _ = fm.claude(
        work,
        home,
        gateway.url,
        gateway.key,
        prompt,
        "--allowedTools",
        "Read",
        "--output-format",
        "stream-json",
        "--verbose",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    seen = events(done.stdout)
    calls = [
        b
        for e in seen
        if e.get("type") == "assistant"
        for b in e["message"]["content"]
        if b.get("type") == "tool_use"
    ]
    assert calls and calls[0]["name"] == "Read" and calls[0]["input"] == {"file_path": str(notes)}
    results = [
        b
        for e in seen
        if e.get("type") == "user"
        for b in e["message"]["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]
    assert results and "the gateway relayed this file's contents" in json.dumps(results[0]["content"])
    final = seen[-1]
    assert final["type"] == "result" and final["subtype"] == "success" and final["result"]


def test_auth_token_and_thinking(gateway: Gateway, dirs: tuple[Path, Path]) -> None:
    home, work = dirs
    done, _ = fm.claude(
        work,
        home,
        gateway.url,
        gateway.key,
        "think first, then say hi sim:tool=none",
        "--output-format",
        "stream-json",
        "--verbose",
        bearer=True,
        env={"MAX_THINKING_TOKENS": "2048"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    blocks = [b for e in events(done.stdout) if e.get("type") == "assistant" for b in e["message"]["content"]]
    thinking = [b for b in blocks if b.get("type") == "thinking"]
    # Claude Code's default model (Opus 5.5) shows no thinking text unless asked: its display
    # defaults to "omitted", and the "updates" display Claude Code tries first is not Opus 5.5's
    # (it falls back to the default): the block arrives empty, with its signature
    assert thinking and thinking[0]["signature"] and isinstance(thinking[0]["thinking"], str)
    assert any(b.get("type") == "text" and b["text"] for b in blocks)


def test_short_model_name_goes_upstream_as_todays_model(gateway: Gateway, dirs: tuple[Path, Path]) -> None:
    """``claude --model opus``: Claude Code sends the short name, the upstream gets today's Opus."""
    from ethereal.models import Registry
    from ethereal.sim.testing import control

    home, work = dirs
    before = {r["request_id"] for r in control(gateway.sim_url, "/_sim/seen")["requests"]}
    done, _ = fm.claude(
        work,
        home,
        gateway.url,
        gateway.key,
        "say hi sim:tool=none",
        "--model",
        "opus",
        "--output-format",
        "stream-json",
        "--verbose",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    final = events(done.stdout)[-1]
    assert final["type"] == "result" and final["subtype"] == "success" and final["result"]
    seen = [
        r["model"]
        for r in control(gateway.sim_url, "/_sim/seen")["requests"]
        if r["request_id"] not in before and r["path"] == "/v1/messages"
    ]
    assert Registry().short_names["opus"] == "claude-opus-5-5"
    assert "claude-opus-5-5" in seen and "opus" not in seen, seen
