"""`ethereal keys mint|list|show|update|revoke|delete` against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def cli_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETHEREAL_")}
    env["ETHEREAL_DATA_DIR"] = str(tmp_path)
    if request.param == "postgres":
        env["ETHEREAL_DATABASE_URL"] = request.getfixturevalue("pg_url")
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ethereal", "keys", *args],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )


def test_key_lifecycle(cli_env: dict[str, str]) -> None:
    minted = run(
        cli_env,
        "mint",
        "--count",
        "3",
        "--owner",
        "ops",
        "--plan",
        "Max 5x",
        "--budget-usd",
        "2",
        "--rpm",
        "30",
        "--models",
        "sonnet-4,claude-haiku-4-5",
        "--json",
    )
    assert minted.returncode == 0, minted.stderr
    keys = [json.loads(line) for line in minted.stdout.splitlines()]
    assert len(keys) == 3 and all(k["key"].startswith("sk-ant-api03-") for k in keys)
    assert keys[0]["plan"] == "max5x" and keys[0]["budget_micro_usd"] == 2_000_000
    key_id = keys[0]["id"]

    listed = run(cli_env, "list", "--owner", "ops", "--plan", "max-5x", "--json")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3
    assert all("key" not in json.loads(line) for line in listed.stdout.splitlines())

    updated = run(
        cli_env,
        "update",
        key_id,
        "--rpm",
        "none",
        "--tpm",
        "5000",
        "--models",
        "all",
        "--metadata",
        '{"team": "ops"}',
        "--expires-at",
        "2030-01-01T00:00:00Z",
    )
    assert updated.returncode == 0, updated.stderr
    shown = json.loads(run(cli_env, "show", key_id).stdout)
    assert (shown["rpm"], shown["tpm"], shown["allowed_models"], shown["metadata"]) == (
        None,
        5000,
        None,
        {"team": "ops"},
    )
    assert shown["expires_at"] == 1893456000.0 and shown["spend"]["requests"] == 0

    bad = run(cli_env, "update", key_id, "--plan", "gold")
    assert bad.returncode == 2 and "plan:" in bad.stderr
    bad = run(cli_env, "mint", "--max-concurrency", "0")
    assert bad.returncode == 2 and "max_concurrency:" in bad.stderr

    assert run(cli_env, "revoke", key_id).returncode == 0
    assert json.loads(run(cli_env, "show", key_id).stdout)["state"] == "revoked"
    assert run(cli_env, "delete", key_id).returncode == 0
    missing = run(cli_env, "show", key_id)
    assert missing.returncode == 1 and "no key" in missing.stderr
    assert len(run(cli_env, "list", "--owner", "ops").stdout.splitlines()) == 2
