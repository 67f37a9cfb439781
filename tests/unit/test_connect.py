"""``ethereal connect TOOL``: the snippets of ``ethereal.connect``, filled in, one per tool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ethereal import connect
from ethereal.cli import main

KEY = "sk-ant-api03-" + "x" * 40
BASE = "https://gateway.example.com"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("ETHEREAL_PUBLIC_URL", "ETHEREAL_HOST", "ETHEREAL_PORT", "ETHEREAL_BASE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ETHEREAL_DATA_DIR", str(tmp_path))


@pytest.mark.parametrize("tool", list(connect.BY_ID))
def test_each_tool_prints_its_snippet(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", tool, "--key", KEY, "--base-url", BASE + "/"]) == 0
    out = capsys.readouterr().out
    setup = connect.get(tool)
    assert out == setup.render(KEY, BASE)
    assert out.startswith(f"# {setup.name}: {setup.route}")
    assert "<key>" not in out and "<base_url>" not in out and "<model>" not in out
    if tool != "windsurf":  # the one tool that takes no base URL
        assert BASE in out and KEY in out
        assert BASE + "//" not in out


def test_snippet_contents() -> None:
    claude = connect.get("claude-code").render(KEY, BASE)
    settings = json.loads(claude.split("\n", 2)[2].split("\nclaude\n")[0])
    assert settings == {"env": {"ANTHROPIC_BASE_URL": BASE, "ANTHROPIC_AUTH_TOKEN": KEY}}
    codex = connect.get("codex").render(KEY, BASE)
    assert f'base_url = "{BASE}/v1"' in codex and 'wire_api = "responses"' in codex
    assert f'export ETHEREAL_API_KEY="{KEY}"' in codex
    assert f'cline auth -p openai -k "{KEY}" -m {connect.DEFAULT_MODEL} -b {BASE}/v1' in connect.get(
        "cline"
    ).render(KEY, BASE)
    assert 'export OPENAI_BASE_URL="https://gateway.example.com/v1"' in connect.get("qwen-code").render(
        KEY, BASE
    )
    assert "must be reachable from the internet" in connect.get("cursor").render(KEY, BASE)
    assert "(untested)" in connect.get("zed").render(KEY, BASE)


def test_placeholders_stay_without_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "aider", "--base-url", BASE]) == 0
    out = capsys.readouterr().out
    assert 'export ANTHROPIC_API_KEY="<key>"' in out and f'export ANTHROPIC_API_BASE="{BASE}"' in out


def test_base_url_defaults(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ETHEREAL_PORT", "9123")
    assert main(["connect", "anthropic-sdk", "--key", KEY]) == 0
    assert 'export ANTHROPIC_BASE_URL="http://127.0.0.1:9123"\n' in capsys.readouterr().out
    monkeypatch.setenv("ETHEREAL_PUBLIC_URL", "https://llm.example.org/")
    assert main(["connect", "openai-sdk", "--key", KEY]) == 0
    assert 'export OPENAI_BASE_URL="https://llm.example.org/v1"\n' in capsys.readouterr().out
    assert connect.default_base_url(None, "0.0.0.0", 8080, "/gw") == "http://127.0.0.1:8080/gw"
    assert connect.default_base_url(None, "::1", 8080) == "http://[::1]:8080"


def test_list_json_and_unknown_tool(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(connect.BY_ID)
    assert main(["connect", "opencode", "--json", "--key", KEY, "--base-url", BASE]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (
        body["id"] == "opencode" and body["route"].startswith("POST /v1/messages") and KEY in body["snippet"]
    )
    with pytest.raises(SystemExit):
        main(["connect", "no-such-tool"])


def test_files_written_where_the_snippet_says(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    written = connect.get("opencode").write_files(home, project, KEY, BASE)
    assert written == [home / ".config" / "opencode" / "opencode.json"]
    config = json.loads(written[0].read_text())
    assert config["provider"]["anthropic"]["options"]["baseURL"] == BASE + "/v1"
    assert connect.get("opencode").environment(KEY, BASE) == {"ETHEREAL_API_KEY": KEY}
