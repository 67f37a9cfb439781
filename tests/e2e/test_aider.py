"""Aider (PyPI ``aider-chat``, pinned in the Makefile) through the gateway in both its modes:
Anthropic (``ANTHROPIC_API_BASE``, /v1/messages) and OpenAI-compatible (``OPENAI_API_BASE``,
/v1/chat/completions), configured from the snippets in ``ethereal.connect``.

Aider has no function tools: it edits files by the edit format of the model's reply. The sim
replays ``aider-edit.sse`` (tests/e2e/coding_tools.py), a reply in the "whole" format that
rewrites notes.txt; the test checks Aider applied it and every request was metered.

Aider pins its own dependency set, so it lives in its own environment (``make aider`` builds
``.venv-aider``); this file runs in the main one, driving that environment's ``aider``
executable, by ``make test-aider`` (part of ``make test``), which sets ``ETHEREAL_AIDER``. The
main pytest run does not collect it (tests/conftest.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.coding_tools import AIDER_FILE, AIDER_TEXT, MODEL, Run, ToolGateway, tool_gateway
from tests.procs import REPO

pytestmark = pytest.mark.timeout(240)

AIDER = Path(os.environ.get("ETHEREAL_AIDER", REPO / ".venv-aider" / "bin" / "aider")).absolute()


@pytest.fixture(scope="module")
def aider_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolGateway]:
    if not AIDER.exists():
        pytest.fail(f"Aider is not installed at {AIDER}: run `make aider`")
    with tool_gateway(tmp_path_factory.mktemp("aider")) as gw:
        yield gw


@pytest.mark.parametrize("tool", ["aider", "aider-openai"])
def test_edit_round_trip(aider_gateway: ToolGateway, tmp_path: Path, tool: str) -> None:
    run = Run.prepare(aider_gateway, tool, tmp_path)
    notes = run.project / AIDER_FILE
    notes.write_text("the first line\n")
    provider = "anthropic" if tool == "aider" else "openai"
    env = run.env(LITELLM_LOCAL_MODEL_COST_MAP="True")  # litellm would download its price list (offline here)
    done = run.run(
        [
            str(AIDER),
            "--model",
            f"{provider}/{MODEL}",
            "--edit-format",
            "whole",
            "--yes-always",
            "--no-git",
            "--no-check-update",
            "--no-analytics",
            "--no-show-model-warnings",
            "--no-pretty",
            "--no-show-release-notes",
            "--message",
            "rewrite the notes sim:replay aider-edit",
            AIDER_FILE,
        ],
        env=env,
    )
    assert notes.read_text().rstrip("\n") == AIDER_TEXT, done.stdout[-3000:] + done.stderr[-3000:]
    lines = aider_gateway.assert_metered(run.key, run.key_id, at_least=1)
    assert [line["status"] for line in lines] == ["200"] * len(lines), lines
    assert {line["path"].split("?")[0] for line in lines} == {run.setup.route.split()[1]}
