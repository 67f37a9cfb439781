"""The real Codex CLI (npm ``@openai/codex``, installed project-local by ``make clients``) through
the gateway to the sim, configured as a user would: a custom provider whose ``base_url`` is
the gateway's ``/v1`` (``wire_api = "responses"``), a key minted by the gateway, reasoning on.

Codex speaks only the Responses API, sends its whole history every turn (``store: false``),
echoes reasoning items back with their ``encrypted_content``, and runs its own tools. Retries
are off, so any malformed event, missing ``response.completed`` or refused request fails the
run instead of being retried away.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.procs import REPO

CODEX = REPO / "clients" / "node_modules" / ".bin" / "codex"


@pytest.fixture
def codex_home(tmp_path: Path, gateway: Gateway) -> Path:
    if not CODEX.exists():
        pytest.fail(f"Codex CLI not installed at {CODEX}: run `make clients`")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "claude-sonnet-4-6"\n'
        'model_provider = "ethereal"\n'
        'model_reasoning_effort = "medium"\n'
        "[model_providers.ethereal]\n"
        'name = "ethereal"\n'
        f'base_url = "{gateway.url}/v1"\n'
        'env_key = "ETHEREAL_CODEX_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    return home


def codex_exec(home: Path, workdir: Path, key: str, prompt: str, *extra: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_", "ANTHROPIC_"))}
    env.update({"CODEX_HOME": str(home), "ETHEREAL_CODEX_KEY": key, "NO_COLOR": "1"})
    proc = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--json", "-C", str(workdir), *extra, prompt],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, (
        f"codex exited {proc.returncode}\n{proc.stdout.decode()}\n{proc.stderr.decode()}"
    )
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]


def items(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == kind]


def test_plain_turn(codex_home: Path, tmp_path: Path, gateway: Gateway) -> None:
    events = codex_exec(codex_home, tmp_path, gateway.key, "Say hello. sim:tools=0 sim:tokens=12")
    reasoning = items(events, "reasoning")
    messages = items(events, "agent_message")
    assert len(reasoning) == 1 and reasoning[0]["text"]  # thinking shown as the reasoning summary
    assert len(messages) == 1 and messages[0]["text"]
    done = [e for e in events if e["type"] == "turn.completed"]
    assert len(done) == 1
    usage = done[0]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0 and usage["reasoning_output_tokens"] > 0
    assert not [e for e in events if e["type"] in ("turn.failed", "error")]


def test_tool_round_trip_with_reasoning(codex_home: Path, tmp_path: Path, gateway: Gateway) -> None:
    """The sim asks Codex to run a shell command in a temporary directory; Codex runs it, sends
    ``function_call_output`` with the reasoning item echoed back, and the sim answers.

    The sim refuses a tool loop with thinking on whose assistant turn does not start with the
    thinking block (as the API does), and the gateway would only turn thinking off if the block
    could not be restored: a reasoning item on the second turn shows it was restored."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    call = base64.urlsafe_b64encode(json.dumps({"cmd": "printf ethereal > codex-ran.txt"}).encode())
    prompt = f"Write the marker file. sim:tool=exec_command sim:input={call.decode().rstrip('=')}"
    events = codex_exec(codex_home, workdir, gateway.key, prompt, "-s", "workspace-write")
    commands = items(events, "command_execution")
    assert len(commands) == 1 and "printf ethereal > codex-ran.txt" in commands[0]["command"]
    assert commands[0]["exit_code"] == 0 and commands[0]["status"] == "completed"
    assert (workdir / "codex-ran.txt").read_text() == "ethereal"
    # one reasoning item per request: the tool call's turn and the answer after the tool output
    assert len(items(events, "reasoning")) == 2
    # (the sim may say a sentence before its call: that is a message of its own)
    completed = [e["item"] for e in events if e["type"] == "item.completed"]
    assert completed[-1]["type"] == "agent_message" and completed[-1]["text"]
    usage = next(e for e in events if e["type"] == "turn.completed")["usage"]
    # the second request reads the first one's prefix from the prompt cache (breakpoints added)
    assert usage["cached_input_tokens"] > 0


def test_tool_round_trip_on_opus_5_5(codex_home: Path, tmp_path: Path, gateway: Gateway) -> None:
    """``-m claude-opus-5-5``: a model that thinks adaptively only, whose thinking cannot be off,
    refuses forced tools and non-default sampling, and binds its thinking to the conversation.
    Codex's reasoning effort becomes adaptive thinking at that effort with a summarized display
    (the model omits thinking text by default), the reasoning item goes back with the tool's
    output, and the turn completes."""
    import time

    key, record = gateway.mint(name="codex-opus-5-5")  # its own key: its log lines are told apart
    time.sleep(0.6)  # the gateway's key cache
    log = gateway_log(gateway)
    offset = log.stat().st_size
    workdir = tmp_path / "work"
    workdir.mkdir()
    call = base64.urlsafe_b64encode(json.dumps({"cmd": "printf opus > codex-opus.txt"}).encode())
    prompt = f"Write the marker file. sim:tool=exec_command sim:input={call.decode().rstrip('=')}"
    events = codex_exec(codex_home, workdir, key, prompt, "-m", "claude-opus-5-5", "-s", "workspace-write")
    commands = items(events, "command_execution")
    assert len(commands) == 1 and commands[0]["exit_code"] == 0 and commands[0]["status"] == "completed"
    assert (workdir / "codex-opus.txt").read_text() == "opus"
    reasoning = items(events, "reasoning")
    assert len(reasoning) == 2 and all(r["text"] for r in reasoning)  # the summary is shown, not omitted
    completed = [e["item"] for e in events if e["type"] == "item.completed"]
    assert completed[-1]["type"] == "agent_message" and completed[-1]["text"]
    assert not [e for e in events if e["type"] in ("turn.failed", "error")]
    usage = next(e for e in events if e["type"] == "turn.completed")["usage"]
    assert usage["reasoning_output_tokens"] > 0 and usage["cached_input_tokens"] > 0

    def ours(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            line for line in lines if line.get("key_id") == record.id and line.get("path") == "/v1/responses"
        ]

    served = ours(access_lines(log, offset, until=lambda lines: len(ours(lines)) >= 2))
    assert [(str(line["status"]), line["model"]) for line in served] == [("200", "claude-opus-5-5")] * 2, (
        served
    )


# --- the built-in provider: what most users configure (``openai_base_url``) -------------------------------


@pytest.fixture
def builtin_home(tmp_path: Path, gateway: Gateway) -> Path:
    """Codex's built-in ``openai`` provider pointed at the gateway by ``openai_base_url`` (Codex
    ignores the ``OPENAI_BASE_URL`` variable); the key from ``CODEX_API_KEY``, sent as Bearer.
    With this provider Codex opens a WebSocket to ``/v1/responses`` first, warms it up with a
    ``generate: false`` request and continues on the same socket by ``previous_response_id``."""
    if not CODEX.exists():
        pytest.fail(f"Codex CLI not installed at {CODEX}: run `make clients`")
    home = tmp_path / "codex-builtin-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "claude-sonnet-4-6"\n'
        'model_reasoning_effort = "medium"\n'
        f'openai_base_url = "{gateway.url}/v1"\n'
    )
    return home


def gateway_log(gateway: Gateway) -> Path:
    return next(gateway.data_dir.glob("gateway-*.log"))


def access_lines(
    path: Path, offset: int, *, until: Any = None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The JSON request log lines written after ``offset`` (waiting for the writer to flush until
    ``until(lines)`` holds)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        lines = []
        for line in text.splitlines():
            if line.startswith("{") and '"ethereal.access"' in line:
                lines.append(json.loads(line))
            elif " ethereal.access: request " in line:  # the text format
                fields = line.split(" ethereal.access: request ", 1)[1]
                lines.append(dict(part.split("=", 1) for part in fields.split(" ") if "=" in part))
        if until is None or until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def codex_builtin(
    home: Path, workdir: Path, key: str, prompt: str, *extra: str
) -> tuple[list[dict[str, Any]], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_", "ANTHROPIC_"))}
    env.update({"CODEX_HOME": str(home), "CODEX_API_KEY": key, "NO_COLOR": "1"})
    proc = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--json", "-C", str(workdir), *extra, prompt],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=180,
        check=False,
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, f"codex exited {proc.returncode}\n{out}\n{err}"
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], out + err


def test_builtin_provider_over_one_websocket(builtin_home: Path, tmp_path: Path, gateway: Gateway) -> None:
    """A shell-tool round trip with the built-in provider: one WebSocket, every request on it,
    no retry, no fallback to HTTP, no "high demand" notice."""
    import time

    key, record = gateway.mint(name="codex-builtin")  # its own key: its log lines are told apart
    time.sleep(0.6)  # the gateway's key cache
    log = gateway_log(gateway)
    offset = log.stat().st_size
    workdir = tmp_path / "work"
    workdir.mkdir()
    call = base64.urlsafe_b64encode(json.dumps({"cmd": "printf ethereal > codex-ws.txt"}).encode())
    prompt = f"Write the marker file. sim:tool=exec_command sim:input={call.decode().rstrip('=')}"
    events, output = codex_builtin(builtin_home, workdir, key, prompt, "-s", "workspace-write")
    commands = items(events, "command_execution")
    assert len(commands) == 1 and commands[0]["exit_code"] == 0
    assert (workdir / "codex-ws.txt").read_text() == "ethereal"
    completed = [e["item"] for e in events if e["type"] == "item.completed"]
    assert completed[-1]["type"] == "agent_message" and completed[-1]["text"]
    assert not [e for e in events if e["type"] in ("turn.failed", "error")]
    assert "high demand" not in output.lower() and "reconnecting" not in output.lower()

    def ours(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # the log writer flushes lazily: lines of the test before may follow the offset; from the
        # first line of this key on, every line is this run's (the tests run one at a time)
        first = next((i for i, line in enumerate(lines) if line.get("key_id") == record.id), len(lines))
        return lines[first:]

    def socket_closed(lines: list[dict[str, Any]]) -> bool:
        return any(str(line.get("status")) == "101" for line in ours(lines))

    lines = ours(access_lines(log, offset, until=socket_closed))
    responses = [line for line in lines if line.get("path") == "/v1/responses"]
    sockets = [line for line in responses if str(line.get("status")) == "101"]
    creates = [line for line in responses if line.get("method") == "WS"]
    assert len(sockets) == 1, responses  # one WebSocket for the whole run
    assert not [line for line in responses if line.get("method") == "POST"], responses  # no fallback to HTTP
    # the warm-up, the turn that calls the tool, the turn after its output: each answered once
    assert [str(line["status"]) for line in creates] == ["200"] * len(creates) and len(creates) == 3, creates
