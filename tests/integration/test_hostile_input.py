"""Hostile request bodies and queries: each gets a 400 in the right shape, never a 500, and
nothing a client sends is kept or logged at full length."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ethereal import ids

from tests.conftest import Gateway, mint_into
from tests.integration.test_bad_input import assert_error, headers
from tests.procs import free_port, gateway_process, wait_http

ADMIN_KEY = "hostile-input-admin-key-0123456789"
GOOD = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gw(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """A gateway with an admin key; yields it and a governed key (a budget, so it is estimated)."""
    data_dir = tmp_path_factory.mktemp("hostile")
    key, _ = mint_into(data_dir, name="plain")
    governed, _ = mint_into(data_dir, name="governed", budget_tokens=10_000_000)
    with gateway_process(data_dir, sim_url, env={"ETHEREAL_ADMIN_KEY": ADMIN_KEY}) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url), governed


def nested(depth: int) -> bytes:
    """A Messages body whose tool_use input makes it ``depth`` levels deep in total."""
    inner = "[" * (depth - 6) + "1" + "]" * (depth - 6)
    return (
        '{"model":"claude-sonnet-4-6","max_tokens":16,"messages":[{"role":"user","content":'
        '[{"type":"tool_use","id":"t","name":"n","input":{"x":' + inner + "}}]}]}"
    ).encode()


def test_long_model_name_is_400_before_any_lookup(gw: tuple[Gateway, str]) -> None:
    gateway, _ = gw
    log = max(gateway.data_dir.glob("gateway-*.log"), key=lambda p: p.stat().st_mtime)
    log_before = log.stat().st_size
    name = "claude-" + "x" * (5 * 1024 * 1024)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        for _ in range(10):
            resp = httpx.post(
                gateway.url + path, json={**GOOD, "model": name}, headers=headers(gateway.key), timeout=30
            )
            error = assert_error(resp, 400, "invalid_request_error")
            assert "256" in error["error"]["message"] and len(error["error"]["message"]) < 300
    resp = httpx.post(
        gateway.url + "/v1/chat/completions",
        timeout=30,
        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {gateway.key}"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    # 256 is still accepted (an unknown name the upstream judges)
    ok = httpx.post(
        gateway.url + "/v1/messages/count_tokens",
        json={**GOOD, "model": "m" * 256},
        headers=headers(gateway.key),
        timeout=30,
    )
    assert ok.status_code != 400 or "256" not in ok.text
    assert log.stat().st_size - log_before < 64 * 1024  # nothing logged at full length


def test_duplicate_top_level_keys_are_400(gw: tuple[Gateway, str]) -> None:
    gateway, _ = gw
    body = (
        b'{"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}],'
        b'"model":"claude-opus-4-1"}'
    )
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        resp = httpx.post(gateway.url + path, content=body, headers=headers(gateway.key), timeout=10)
        error = assert_error(resp, 400, "invalid_request_error")
        assert "model" in error["error"]["message"]
    # the same key spelled with an escape is the same key
    escaped = body.replace(b'"model":"claude-opus', b'"mod\\u0065l":"claude-opus')
    resp = httpx.post(gateway.url + "/v1/messages", content=escaped, headers=headers(gateway.key), timeout=10)
    assert_error(resp, 400, "invalid_request_error")
    chat = b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"hi"}],"model":"x"}'
    resp = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=chat,
        timeout=10,
        headers={"authorization": f"Bearer {gateway.key}", "content-type": "application/json"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    # nested objects may repeat keys of the top level
    ok = httpx.post(
        gateway.url + "/v1/messages",
        headers=headers(gateway.key),
        timeout=10,
        json={
            **GOOD,
            "metadata": {"user_id": "u"},
            "tools": [
                {
                    "name": "model",
                    "input_schema": {"type": "object", "properties": {"model": {"type": "string"}}},
                }
            ],
        },
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("depth", [129, 500, 1024])
def test_deep_json_on_a_governed_key_is_served_or_400_never_500(gw: tuple[Gateway, str], depth: int) -> None:
    gateway, governed = gw
    for key in (governed, gateway.key):
        resp = httpx.post(
            gateway.url + "/v1/messages", content=nested(depth), headers=headers(key), timeout=30
        )
        assert resp.status_code < 500, resp.text
        if resp.status_code >= 400:
            assert_error(resp, resp.status_code, resp.json()["error"]["type"])
    # past orjson's limit: a clean 400
    resp = httpx.post(
        gateway.url + "/v1/messages", content=nested(1100), headers=headers(governed), timeout=30
    )
    assert_error(resp, 400, "invalid_request_error")


@pytest.mark.parametrize("since", ["nan", "NaN", "1e400", "-1e20", "inf", "-1", "1e15", "9999-99-99"])
def test_admin_usage_bad_times_are_400(gw: tuple[Gateway, str], since: str) -> None:
    gateway, _ = gw
    for param in ("since", "until"):
        resp = httpx.get(
            gateway.url + "/admin/api/usage",
            params={param: since},
            headers={"x-api-key": ADMIN_KEY},
            timeout=10,
        )
        error = assert_error(resp, 400, "invalid_request_error")
        assert param in error["error"]["message"]
    ok = httpx.get(
        gateway.url + "/admin/api/usage",
        params={"since": "0", "until": "2026-12-31"},
        headers={"x-api-key": ADMIN_KEY},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text


def test_admin_metadata_nested_500_deep_is_400(gw: tuple[Gateway, str]) -> None:
    gateway, _ = gw
    deep = '{"a":' * 500 + "{}" + "}" * 500
    for method, path in (("POST", "/admin/api/keys"),):
        resp = httpx.request(
            method,
            gateway.url + path,
            content='{"name":"x","metadata":' + deep + "}",
            headers={"x-api-key": ADMIN_KEY, "content-type": "application/json"},
            timeout=10,
        )
        error = assert_error(resp, 400, "invalid_request_error")
        assert "metadata" in error["error"]["message"]
    ok = httpx.post(
        gateway.url + "/admin/api/keys",
        json={"name": "y", "metadata": {"team": {"a": 1}}},
        headers={"x-api-key": ADMIN_KEY},
        timeout=10,
    )
    assert ok.status_code == 201, ok.text


def test_usage_of_an_id_not_ones_own_is_404_at_once(gw: tuple[Gateway, str]) -> None:
    gateway, other = gw
    made = httpx.post(gateway.url + "/v1/messages", json=GOOD, headers=headers(other), timeout=10)
    assert made.status_code == 200
    theirs = made.headers["request-id"]
    assert ids.issued_to(theirs, __import__("hashlib").sha256(other.encode()).hexdigest())
    with httpx.Client(base_url=gateway.url, headers=headers(gateway.key), timeout=10) as client:
        for usage_id in (theirs, ids.request_id(), "req_" + "A" * 24):
            started = time.monotonic()
            resp = client.get(f"/v1/usage/{usage_id}")
            elapsed = time.monotonic() - started
            assert_error(resp, 404, "not_found_error")
            assert elapsed < 0.5, f"{usage_id}: 404 after {elapsed:.2f} s"
    # the key's own request is still found, at once
    own = httpx.get(gateway.url + f"/v1/usage/{theirs}", headers=headers(other), timeout=10)
    assert own.status_code == 200 and own.json()["request_id"] == theirs


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGKILL, 1), (signal.SIGTERM, 1), (signal.SIGKILL, 2)])
def test_serve_leaves_no_orphan(tmp_path: Path, sig: int, workers: int) -> None:
    """`ethereal serve` with no upstream starts the simulated one: it (and the workers) go with it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    env["ETHEREAL_DATA_DIR"] = str(tmp_path)
    env["ETHEREAL_LIMITS_PER_WORKER"] = "true"  # several workers on the embedded limiter, knowingly
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ethereal",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        children = _children(proc.pid)
        assert len(children) >= 1 + (workers if workers > 1 else 0) - 0
        proc.send_signal(sig)
        proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)], "children outlived `ethereal serve`"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
