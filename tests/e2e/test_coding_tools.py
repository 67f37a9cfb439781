"""Every coding CLI that installs from npm (``make clients``, versions pinned in
clients/package.json) through the gateway: one tool round trip each, configured from the snippet
users are given (``ethereal.connect``), every request metered. See tests/e2e/coding_tools.py.

In each run the sim's first reply calls the tool's own file-writing tool on a file in the
project directory; the tool writes it, sends the result back, and the sim answers in text. The
test checks the file on disk (the tool ran), the tool's exit status, and the metering.

``make clients-matrix`` re-runs these (and tests/e2e/test_aider.py) and writes the table in
docs/clients.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.coding_tools import NODE_BIN, Run, ToolGateway, scripted, tool_gateway

pytestmark = pytest.mark.timeout(240)

TEXT = "written through the gateway"


@pytest.fixture(scope="module")
def tools_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolGateway]:
    if not (NODE_BIN / "claude").exists():
        pytest.fail(f"the clients are not installed in {NODE_BIN.parent}: run `make clients`")
    with tool_gateway(tmp_path_factory.mktemp("coding-tools")) as gw:
        yield gw


@dataclass(frozen=True)
class Case:
    argv: Callable[[str], list[str]]  # the prompt → the command line (the binary from NODE_BIN)
    tool: str  # the tool's file-writing tool, as it names it
    arguments: Callable[[Path], dict[str, Any]]  # its arguments for writing TEXT to the path
    env: tuple[tuple[str, str], ...] = ()  # test-only hygiene on an offline machine, not set-up


OPENCODE = Case(
    lambda p: ["opencode", "run", "--format", "json", p],
    "write",
    lambda f: {"filePath": str(f), "content": TEXT},
    (("OPENCODE_DISABLE_MODELS_FETCH", "1"),),
)  # no models.dev download attempt (offline)
CONTINUE = Case(
    lambda p: ["cn", "-p", "--auto", "--config", "~/.continue/config.yaml", p],
    "Write",
    lambda f: {"filepath": str(f), "content": TEXT},
    (("CONTINUE_CLI_ENABLE_TELEMETRY", "0"),),
)

CASES: dict[str, Case] = {
    # Claude Code refuses --dangerously-skip-permissions as root (CI): the tool is allowed by name
    "claude-code": Case(
        lambda p: ["claude", "-p", p, "--allowedTools", "Write", "--output-format", "json"],
        "Write",
        lambda f: {"file_path": str(f), "content": TEXT},
        (("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"), ("DISABLE_AUTOUPDATER", "1")),
    ),
    "codex": Case(
        lambda p: ["codex", "exec", "--skip-git-repo-check", "--json", "-s", "workspace-write", p],
        "exec_command",
        lambda f: {"cmd": f"printf '{TEXT}' > {f.name}"},
    ),
    "opencode": OPENCODE,
    "opencode-openai": OPENCODE,
    "opencode-compatible": OPENCODE,
    "continue": CONTINUE,
    "continue-openai": CONTINUE,
    "qwen-code": Case(
        lambda p: ["qwen", "--auth-type", "openai", "--approval-mode", "yolo", "-o", "json", "-p", p],
        "write_file",
        lambda f: {"file_path": str(f), "content": TEXT},
        (("QWEN_CODE_SUPPRESS_YOLO_WARNING", "1"),),
    ),
    "kilo-code": Case(
        lambda p: ["kilo", "run", "--format", "json", p],
        "write",
        lambda f: {"filePath": str(f), "content": TEXT},
    ),
    "cline": Case(lambda p: ["cline", "--json", p], "editor", lambda f: {"path": str(f), "new_text": TEXT}),
}


@pytest.mark.parametrize("tool", list(CASES))
def test_tool_round_trip(tools_gateway: ToolGateway, tmp_path: Path, tool: str) -> None:
    case = CASES[tool]
    run = Run.prepare(tools_gateway, tool, tmp_path)
    run.setup_commands()
    target = run.project / "written.txt"
    prompt = f"{scripted(case.tool, case.arguments(target))} write the file"
    argv = case.argv(prompt)
    argv = [str(NODE_BIN / argv[0])] + [
        a.replace("~/", f"{run.home}/", 1) if a.startswith("~/") else a for a in argv[1:]
    ]
    done = run.run(argv, env=run.env(**dict(case.env)))
    assert target.exists(), f"{tool} did not write the file\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert target.read_text().rstrip("\n") == TEXT
    lines = tools_gateway.assert_metered(run.key, run.key_id)
    # the call and the answer after the tool's result at least (a tool may retry a refused side request:
    # Claude Code resends its first request without the system turn the sim refuses)
    answered = [line for line in lines if line["status"] == "200"]
    assert len(answered) >= 2, [(line["path"], line["status"]) for line in lines]
    routes = {line["path"].split("?")[0] for line in lines}
    assert routes == {run.setup.route.split()[1]}, (routes, run.setup.route)
    if tool == "claude-code":  # the result is a success, not a refusal the tool reports with exit 0
        assert json.loads(done.stdout.strip().splitlines()[-1])["subtype"] == "success"
