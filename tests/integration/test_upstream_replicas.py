"""Credential management across replicas, the secret key at start-up, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ethereal.sim.testing import control, inject_fault, start_sim_process

from tests.conftest import mint_into
from tests.procs import REPO, free_port, gateway_process
from tests.upstreams import ADMIN, SECRET, Admin, seed_credentials, served, wait_for

MODEL = "claude-sonnet-4-6"
CANONICAL = "claude-sonnet-4-6"
BODY = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def two_sims() -> Iterator[tuple[str, str]]:
    with start_sim_process() as (_, a), start_sim_process() as (_, b):
        yield a, b


def post(base: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/messages",
        json=BODY,
        timeout=10,
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )


def test_changes_through_the_api_reach_every_replica(two_sims, tmp_path: Path) -> None:
    a, b = two_sims
    for url in two_sims:
        control(url, "/_sim/reset", {})
    seed_credentials(tmp_path, [{"name": "a", "base_url": a}])
    key, _ = mint_into(tmp_path, name="replicas")
    env = {"ETHEREAL_SECRET_KEY": SECRET, "ETHEREAL_ADMIN_KEY": ADMIN}  # default 2 s reload
    with gateway_process(tmp_path, None, env=env) as g1, gateway_process(tmp_path, None, env=env) as g2:
        assert post(g2, key).status_code == 200 and served(a) == 1
        admin = Admin(g1)
        try:
            r = admin.http.post("", json={"name": "b", "base_url": b, "api_key": "sim-key-b"})
            assert r.status_code == 201
            admin.disable("a")
            t0 = time.monotonic()
            # replica 2 never saw the API calls: it follows the store within its reload interval
            wait_for(lambda: post(g2, key).status_code == 503 or served(b) > 0, timeout=5, interval=0.1)
            wait_for(lambda: post(g2, key).status_code == 200 and served(b) > 0, timeout=5, interval=0.1)
            assert time.monotonic() - t0 < 4.5
            n_a = served(a)
            for _ in range(3):
                assert post(g2, key).status_code == 200
            assert served(a) == n_a
            assert [i["name"] for i in Admin(g2).list()] == ["a", "b"]
        finally:
            admin.close()


def test_health_is_shared_through_redis(two_sims, tmp_path: Path, redis_url: str) -> None:
    a, b = two_sims
    for url in two_sims:
        control(url, "/_sim/reset", {})
    seed_credentials(tmp_path, [{"name": "a", "base_url": a, "weight": 10.0}, {"name": "b", "base_url": b}])
    key, _ = mint_into(tmp_path, name="redis")
    env = {
        "ETHEREAL_SECRET_KEY": SECRET,
        "ETHEREAL_ADMIN_KEY": ADMIN,
        "ETHEREAL_REDIS_URL": redis_url,
        "ETHEREAL_UPSTREAM_RELOAD_INTERVAL": "30",
    }  # changes must travel through Redis, not the reload
    with gateway_process(tmp_path, None, env=env) as g1, gateway_process(tmp_path, None, env=env) as g2:
        assert post(g1, key).status_code == 200 and post(g2, key).status_code == 200 and served(a) == 2
        inject_fault(a, "429", retry_after=3)
        assert post(g1, key).status_code == 200 and served(a, "429") == 1 and served(b) == 1
        # replica 2 learns of a's cooldown at its next health poll (every ~0.5 s; later on a busy machine)
        wait_for(lambda: Admin(g2).get("a")["health"]["rate_limited_groups"], timeout=2.5)
        for _ in range(3):
            assert post(g2, key).status_code == 200
        assert served(a) == 2 and served(b) == 4  # replica 2 kept away from a's cooldown
        h = Admin(g2).get("a")["health"]
        assert h["rate_limited_groups"] and h["shared_health"] is True  # the 429's group, on both replicas

        # a credential whose own probe is refused (after a request's 401) on replica 1 is disabled on
        # replica 2; an enable on 2 reaches 1
        admin1, admin2 = Admin(g1), Admin(g2)
        admin1.enable("a")
        inject_fault(a, "401")
        inject_fault(a, "401", paths=["/v1/models"])
        assert post(g1, key).status_code == 200
        wait_for(lambda: admin2.get("a")["enabled"] is False, timeout=3)
        admin2.enable("a")
        wait_for(lambda: admin1.get("a")["health"]["state"] == "healthy", timeout=3)
        before = served(a)
        assert post(g1, key).status_code == 200 and served(a) == before + 1
        admin1.close()
        admin2.close()


def _serve(data_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    child = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    child.update({"ETHEREAL_DATA_DIR": str(data_dir), **env})
    return subprocess.run(
        [sys.executable, "-m", "ethereal", "serve", "--port", str(free_port())],
        env=child,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_stored_credentials_need_the_secret_key(tmp_path: Path, two_sims) -> None:
    seed_credentials(tmp_path, [{"name": "a", "base_url": two_sims[0]}])
    missing = _serve(tmp_path, {})
    assert missing.returncode == 2
    assert "ETHEREAL_SECRET_KEY is not set" in missing.stderr and "1 upstream credential" in missing.stderr
    wrong = _serve(tmp_path, {"ETHEREAL_SECRET_KEY": "not-the-right-key"})
    assert wrong.returncode == 2 and "cannot be decrypted" in wrong.stderr
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_env_credential_needs_no_secret_key_but_adding_one_does(tmp_path: Path, two_sims) -> None:
    key, _ = mint_into(tmp_path, name="env")
    with gateway_process(tmp_path, two_sims[0], env={"ETHEREAL_ADMIN_KEY": ADMIN}) as g:
        assert post(g, key).status_code == 200
        admin = Admin(g)
        try:
            (item,) = admin.list()
            assert item["name"] == "default" and item["source"] == "env" and item["api_key_hint"] == "…-key"
            r = admin.http.post("", json={"name": "x", "base_url": two_sims[1], "api_key": "k"})
            assert r.status_code == 400 and "ETHEREAL_SECRET_KEY is not set" in r.json()["error"]["message"]
            assert admin.http.patch("/default", json={"weight": 2}).status_code == 409
            assert admin.disable("default")["health"]["state"] == "disabled"
            r = post(g, key)
            assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"
            assert "retry-after" in r.headers
            admin.enable("default")
            assert post(g, key).status_code == 200
        finally:
            admin.close()


def _cli(
    data_dir: Path, *args: str, stdin: str | None = None, secret: bool = True
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    env["ETHEREAL_DATA_DIR"] = str(data_dir)
    if secret:
        env["ETHEREAL_SECRET_KEY"] = SECRET
    env["MY_UPSTREAM_KEY"] = "sk-ant-from-env-abcd1234"
    return subprocess.run(
        [sys.executable, "-m", "ethereal", "upstream", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        input=stdin,
        cwd=REPO,
        check=False,
    )


def test_cli(tmp_path: Path) -> None:
    import json

    r = _cli(
        tmp_path,
        "add",
        "one",
        "--url",
        "http://127.0.0.1:9/",
        "--key-stdin",
        "--weight",
        "2",
        "--models",
        "sonnet-4.6,claude-opus-*",
        "--rpm",
        "50",
        "--spend-cap-usd",
        "12.5",
        "--json",
        stdin="sk-ant-secret-value-9876\n",
    )
    assert r.returncode == 0, r.stderr
    item = json.loads(r.stdout)
    assert item["weight"] == 2 and item["models"] == ["claude-opus-*", CANONICAL] and item["rpm"] == 50
    assert item["spend_cap_micro"] == 12_500_000 and "sk-ant-secret" not in r.stdout
    assert (
        _cli(tmp_path, "add", "two", "--url", "http://127.0.0.1:9", "--key-env", "MY_UPSTREAM_KEY").returncode
        == 0
    )
    assert _cli(tmp_path, "add", "two", "--url", "http://x", "--key", "k").returncode == 1  # exists
    r = _cli(tmp_path, "add", "three", "--url", "http://x", "--key", "k", secret=False)
    assert r.returncode == 1 and "ETHEREAL_SECRET_KEY is not set" in r.stderr

    r = _cli(tmp_path, "list")
    lines = r.stdout.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["one", "two"] and "sk-ant" not in r.stdout
    r = _cli(tmp_path, "update", "one", "--weight", "5", "--no-rpm", "--json")
    assert json.loads(r.stdout)["weight"] == 5 and json.loads(r.stdout)["rpm"] is None
    r = _cli(tmp_path, "disable", "two", "--reason", "rotating", "--json")
    assert json.loads(r.stdout)["enabled"] is False and json.loads(r.stdout)["disabled_reason"] == "rotating"
    assert "disabled" in _cli(tmp_path, "list").stdout.splitlines()[1]
    assert json.loads(_cli(tmp_path, "enable", "two", "--json").stdout)["enabled"] is True
    assert _cli(tmp_path, "delete", "two").returncode == 0
    assert _cli(tmp_path, "delete", "two").returncode == 1
    assert [ln.split("\t")[0] for ln in _cli(tmp_path, "list").stdout.strip().splitlines()] == ["one"]
