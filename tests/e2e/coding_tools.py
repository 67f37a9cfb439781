"""What the coding-tool tests share (tests/e2e/test_coding_tools.py, tests/e2e/test_aider.py).

Each tool is configured from its snippet in ``ethereal.connect`` (what the console and
``ethereal connect`` hand users) in a temporary HOME and project directory, with a key minted
for it alone, and run non-interactively with a prompt whose ``sim:`` directives make the sim
call one of the tool's own file tools. After the run, every request the gateway logged for that
key must have its usage record (``GET /v1/usage/{id}``) and the admin usage API must count them
all (``GET /admin/api/usage?group_by=key_id``).

The gateway here is its own, with an admin key, in front of its own sim whose fixtures
directory holds ``aider-edit.sse``: a reply in Aider's "whole" edit format (Aider has no
function tools; its edit format is how it changes files).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from ethereal import connect
from ethereal.sim.testing import start_sim_process

from tests.procs import REPO, gateway_process

ADMIN_KEY = "coding-tools-admin-" + "k" * 24
NODE_BIN = REPO / "clients" / "node_modules" / ".bin"
MODEL = connect.DEFAULT_MODEL
TIMEOUT = 150  # seconds one tool run may take
API_PATHS = ("/v1/messages", "/v1/chat/completions", "/v1/responses")
AIDER_FILE = "notes.txt"
AIDER_TEXT = "edited by aider through the gateway"


@dataclass
class ToolGateway:
    url: str
    sim_url: str
    data_dir: Path

    def log(self) -> Path:
        return next(self.data_dir.glob("gateway-*.log"))

    def mint(self, name: str) -> tuple[str, str]:
        """A key for one tool run: (plaintext, key id)."""
        resp = httpx.post(
            self.url + "/admin/api/keys", json={"name": name}, headers={"x-api-key": ADMIN_KEY}, timeout=10
        )
        resp.raise_for_status()
        body = resp.json()
        return body["key"], body["id"]

    def access_lines(self, key_id: str) -> list[dict[str, str]]:
        lines = []
        for line in self.log().read_text(errors="replace").splitlines():
            if " ethereal.access: request " not in line:
                continue
            fields = line.split(" ethereal.access: request ", 1)[1].split(" error_message=", 1)[0]
            entry = dict(part.split("=", 1) for part in fields.split(" ") if "=" in part)
            if entry.get("key_id") == key_id:
                lines.append(entry)
        return lines

    def usage_requests(self, key_id: str) -> int:
        resp = httpx.get(
            self.url + "/admin/api/usage",
            params={"group_by": "key_id"},
            headers={"x-api-key": ADMIN_KEY},
            timeout=10,
        )
        resp.raise_for_status()
        return sum(int(row["requests"]) for row in resp.json()["data"] if row["key_id"] == key_id)

    def assert_metered(self, key: str, key_id: str, *, at_least: int = 2) -> list[dict[str, str]]:
        """Every API request the gateway logged for the key has a usage record, and the admin usage
        API counts exactly those; returns the log lines (path, status, request_id, ...)."""
        deadline = time.monotonic() + 15
        while True:
            lines = [
                line for line in self.access_lines(key_id) if line.get("path", "").split("?")[0] in API_PATHS
            ]
            counted = self.usage_requests(key_id)
            if (len(lines) >= at_least and counted == len(lines)) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert len(lines) >= at_least, (
            f"{len(lines)} requests logged for the key, expected {at_least} or more"
        )
        assert counted == len(lines), (
            f"admin usage counts {counted} requests, the gateway logged {len(lines)}"
        )
        for line in lines:
            resp = httpx.get(
                f"{self.url}/v1/usage/{line['request_id']}", headers={"x-api-key": key}, timeout=10
            )
            assert resp.status_code == 200, (line, resp.text)
            record = resp.json()
            assert record["key_id"] == key_id and record["request_id"] == line["request_id"], record
        return lines


def scripted(tool: str, arguments: dict[str, Any]) -> str:
    """``sim:`` directives that make the sim's first reply call ``tool`` with ``arguments``; they
    come first in the prompt (OpenCode quotes the whole prompt: a directive at its end would take
    the closing quote into its value)."""
    b64 = base64.urlsafe_b64encode(json.dumps(arguments).encode()).decode().rstrip("=")
    return f"sim:tool={tool} sim:input={b64}"


def aider_fixture() -> bytes:
    """A recorded-shape stream whose text is an edit of ``notes.txt`` in Aider's whole format."""
    text = f"{AIDER_FILE}\n```\n{AIDER_TEXT}\n```\n"
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "model": "claude-sonnet-4-5-20250929",
                    "id": "msg_01AiderEditFixture0000001",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 700,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    for piece in (text[:12], text[12:]):
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 14},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(
        f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n" for name, data in events
    ).encode()


@contextlib.contextmanager
def tool_gateway(root: Path) -> Iterator[ToolGateway]:
    fixtures = root / "fixtures"
    fixtures.mkdir(parents=True)
    (fixtures / "aider-edit.sse").write_bytes(aider_fixture())
    data_dir = root / "gateway"
    with (
        start_sim_process(fixtures_dir=str(fixtures)) as (_proc, sim_url),
        gateway_process(data_dir, sim_url, env={"ETHEREAL_ADMIN_KEY": ADMIN_KEY}) as url,
    ):
        yield ToolGateway(url=url, sim_url=sim_url, data_dir=data_dir)


@dataclass
class Run:
    """One tool run, configured from its snippet: its home, project directory, environment."""

    setup: connect.Setup
    home: Path
    project: Path
    key: str
    key_id: str
    base_url: str

    @classmethod
    def prepare(cls, gateway: ToolGateway, tool: str, tmp_path: Path) -> Run:
        setup = connect.get(tool)
        home, project = tmp_path / "home", tmp_path / "project"
        home.mkdir()
        project.mkdir()
        key, key_id = gateway.mint(tool)
        run = cls(setup, home, project, key, key_id, gateway.url)
        setup.write_files(home, project, key, gateway.url)
        return run

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: none of the machine's provider variables, the snippet's own."""
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            {
                "HOME": str(self.home),
                "NO_COLOR": "1",
                "CI": "1",
                "XDG_CONFIG_HOME": str(self.home / ".config"),
                "XDG_DATA_HOME": str(self.home / ".local/share"),
                "XDG_CACHE_HOME": str(self.home / ".cache"),
                "XDG_STATE_HOME": str(self.home / ".local/state"),
            }
        )
        env.update(self.setup.environment(self.key, self.base_url))
        env.update(extra)
        return env

    def run(
        self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            argv,
            cwd=self.project,
            env=env or self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, (
            f"{argv[0]} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
            f"\n--- stderr\n{done.stderr[-4000:]}"
        )
        return done

    def setup_commands(self) -> None:
        """The snippet's one-time set-up commands (e.g. ``cline auth ...``), the tool taken from NODE_BIN."""
        import shlex

        for cmd in self.setup.commands:
            argv = shlex.split(connect.fill(cmd, self.key, self.base_url))
            argv[0] = str(NODE_BIN / argv[0])
            self.run(argv, timeout=60)
