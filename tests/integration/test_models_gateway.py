"""The model world through a real gateway process and the simulated upstream: what
``GET /v1/models`` lists (the registry merged with what the upstream's own list names), short
names going upstream as today's models on every route, a model only the upstream knows served
and billed provisionally, and an upstream 429 cooling only its rate-limit group, for at most the
configured cap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from ethereal.models import Registry
from ethereal.sim.testing import control

from tests.conftest import Gateway, mint_into
from tests.procs import gateway_process
from tests.upstreams import wait_for

HELLO = [{"role": "user", "content": "hello"}]
NOVA = "claude-nova-6"  # listed and served by the upstream, not described by the registry
CAP = 1.5  # ETHEREAL_UPSTREAM_429_COOLDOWN_CAP for this module's gateway
ADMIN = "models-admin-key-0123456789abcdef"
REGISTRY = Registry()


@pytest.fixture(scope="module")
def gw(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    control(sim_url, "/_sim/models", {"add": [{"id": NOVA, "display_name": "Claude Nova 6"}]})
    data_dir = tmp_path_factory.mktemp("models")
    key, _ = mint_into(data_dir, name="models")
    try:
        with gateway_process(
            data_dir,
            sim_url,
            env={"ETHEREAL_UPSTREAM_429_COOLDOWN_CAP": str(CAP), "ETHEREAL_ADMIN_KEY": ADMIN},
        ) as url:
            yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)
    finally:
        control(sim_url, "/_sim/models", {"clear": True})


def auth(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


def seen_model(sim_url: str, request_id: str | None = None) -> str:
    """The model the sim received in its last Messages request (or the one with ``request_id``)."""
    log = control(sim_url, "/_sim/seen")["requests"]
    if request_id is not None:
        log = [r for r in log if r["request_id"] == request_id]
    return str(log[-1]["model"])


def listed_ids(gw: Gateway) -> list[str]:
    r = httpx.get(gw.url + "/v1/models?limit=1000", headers=auth(gw.key))
    assert r.status_code == 200
    return [m["id"] for m in r.json()["data"]]


def message(gw: Gateway, model: str, key: str | None = None, text: str = "hello") -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/messages",
        headers=auth(key or gw.key),
        timeout=30,
        json={"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": text}]},
    )


# ---------------------------------------------------------------------- GET /v1/models
def test_models_list_is_the_registry_merged_with_the_upstreams_list(gw: Gateway) -> None:
    ids = wait_for(lambda: (got := listed_ids(gw)) and NOVA in got and got, timeout=10)
    active = [m.id for m in REGISTRY.models if not m.retired]
    retired = [m.id for m in REGISTRY.models if m.retired]
    assert set(active) <= set(ids) and not set(retired) & set(ids)
    assert len(ids) == len(set(ids))

    # Anthropic's current shape; the provisional flag is the console's, not the wire's
    r = httpx.get(gw.url + "/v1/models?limit=1000", headers=auth(gw.key)).json()
    by_id = {m["id"]: m for m in r["data"]}
    opus = by_id["claude-opus-5-5"]
    assert opus["type"] == "model" and opus["max_input_tokens"] == 1_000_000 and opus["max_tokens"] > 0
    assert opus["capabilities"]["thinking"]["types"]["adaptive"]["supported"] is True
    assert set(opus["capabilities"]["effort"]) >= {"supported", "low", "medium", "high", "xhigh", "max"}
    assert "provisional" not in by_id[NOVA] and "capabilities" in by_id[NOVA]

    # pagination as before: limit, after_id, before_id, has_more, first_id, last_id
    first = httpx.get(gw.url + "/v1/models?limit=3", headers=auth(gw.key)).json()
    assert [m["id"] for m in first["data"]] == ids[:3] and first["has_more"] is True
    assert first["first_id"] == ids[0] and first["last_id"] == ids[2]
    nxt = httpx.get(gw.url + f"/v1/models?limit=3&after_id={ids[2]}", headers=auth(gw.key)).json()
    assert [m["id"] for m in nxt["data"]] == ids[3:6]
    back = httpx.get(gw.url + f"/v1/models?limit=2&before_id={ids[3]}", headers=auth(gw.key)).json()
    assert [m["id"] for m in back["data"]] == ids[1:3] and back["has_more"] is True
    tail = httpx.get(gw.url + f"/v1/models?limit=1000&after_id={ids[-2]}", headers=auth(gw.key)).json()
    assert [m["id"] for m in tail["data"]] == ids[-1:] and tail["has_more"] is False

    # OpenAI-shaped callers keep OpenAI's shape
    oa = httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {gw.key}"}).json()
    assert oa["object"] == "list" and {m["object"] for m in oa["data"]} == {"model"}
    assert NOVA in {m["id"] for m in oa["data"]}


def test_get_model_by_id_and_404_for_unknown_or_retired(gw: Gateway) -> None:
    wait_for(lambda: NOVA in listed_ids(gw), timeout=10)
    one = httpx.get(gw.url + "/v1/models/claude-sonnet-5-5", headers=auth(gw.key))
    assert one.status_code == 200 and one.json()["id"] == "claude-sonnet-5-5" and one.json()["capabilities"]
    assert httpx.get(gw.url + f"/v1/models/{NOVA}", headers=auth(gw.key)).json()["id"] == NOVA
    retired = next(m.id for m in REGISTRY.models if m.retired)
    for missing in (retired, "claude-nothing-9"):
        r = httpx.get(gw.url + f"/v1/models/{missing}", headers=auth(gw.key))
        assert r.status_code == 404, missing
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
        assert body["error"]["message"] == f"model: {missing}" and body["request_id"]


def test_the_anthropic_sdk_reads_capabilities_through_the_gateway(gw: Gateway) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0) as client:
        models = list(client.models.list(limit=5))
        assert len(models) > 5  # the SDK followed the pages
        by_id = {m.id: m for m in models}
        opus = by_id["claude-opus-5-5"]
        assert opus.capabilities.thinking.types.adaptive.supported is True
        assert opus.capabilities.effort.max.supported is True and opus.max_input_tokens == 1_000_000
        assert client.models.retrieve("opus").id == "claude-opus-5-5"
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve("claude-nothing-9")


def test_the_node_sdk_reads_capabilities_through_the_gateway(gw: Gateway, tmp_path: Any) -> None:
    import json
    import shutil
    import subprocess

    from tests.e2e import faultmatrix as fm

    # the Node SDK is part of the project's clients (make clients): missing, the test fails
    assert fm.available() is None and shutil.which("node") is not None, (
        fm.available() or "node is not installed"
    )
    script = tmp_path / "models.cjs"
    script.write_text(
        "const Anthropic = require('@anthropic-ai/sdk').default ?? require('@anthropic-ai/sdk');\n"
        "(async () => {\n"
        "  const client = new Anthropic({baseURL: process.env.BASE, apiKey: process.env.KEY, maxRetries: 0});\n"
        "  const out = [];\n"
        "  for await (const m of client.models.list({limit: 4})) out.push(m);\n"
        "  const one = await client.models.retrieve('claude-opus-5-5');\n"
        "  console.log(JSON.stringify({ids: out.map(m => m.id),\n"
        "    adaptive: one.capabilities.thinking.types.adaptive.supported, max_in: one.max_input_tokens}));\n"
        "})().catch(e => { console.error(e); process.exit(1); });\n"
    )
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "BASE": gw.url,
        "KEY": gw.key,
        "NODE_PATH": str(fm.NODE_MODULES),
    }
    done = subprocess.run(
        ["node", str(script)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(out["ids"]) > 4 and "claude-opus-5-5" in out["ids"] and NOVA in out["ids"]
    assert out["adaptive"] is True and out["max_in"] == 1_000_000


# ---------------------------------------------------------------------- short names
@pytest.mark.parametrize("short", ["opus", "sonnet", "haiku", "opus-latest", "claude-haiku-latest"])
def test_short_names_go_upstream_as_todays_models(gw: Gateway, short: str) -> None:
    target = REGISTRY.short_names[short]
    family = short.removeprefix("claude-").split("-")[0]
    assert (
        target
        == {"opus": "claude-opus-5-5", "sonnet": "claude-sonnet-5-5", "haiku": "claude-haiku-5-5"}[family]
    )
    r = message(gw, short)
    assert r.status_code == 200, r.text
    assert seen_model(gw.sim_url) == target
    bearer = {"authorization": f"Bearer {gw.key}"}
    chat = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=bearer,
        timeout=30,
        json={"model": short, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert chat.status_code == 200, chat.text
    assert seen_model(gw.sim_url) == target
    resp = httpx.post(
        gw.url + "/v1/responses", headers=bearer, timeout=30, json={"model": short, "input": "hello"}
    )
    assert resp.status_code == 200, resp.text
    assert seen_model(gw.sim_url) == target


# ---------------------------------------------------------------------- a model only the upstream knows
def test_a_model_only_the_upstream_lists_is_served_and_billed_provisionally(gw: Gateway) -> None:
    wait_for(lambda: NOVA in listed_ids(gw), timeout=10)
    r = message(gw, NOVA)
    assert r.status_code == 200, r.text
    assert seen_model(gw.sim_url) == NOVA
    rid = r.headers["request-id"]
    usage = wait_for(
        lambda: (
            (u := httpx.get(gw.url + f"/v1/usage/{rid}", headers=auth(gw.key))).status_code == 200
            and u.json()
        ),
        timeout=10,
    )
    assert usage["model"] == NOVA and usage["cost_micro"] > 0 and usage["output_tokens"] > 0
    if "priced" in usage:
        assert usage["priced"] == "provisional"
    # the operator sees it: the credential's list and the console's model table flag it
    up = httpx.get(gw.url + "/admin/api/upstreams", headers={"x-api-key": ADMIN}).json()["data"]
    listed = next(u for u in up if u["name"] == "default")["models_listed"]
    assert NOVA in listed["ids"] and NOVA in listed["undescribed"] and listed["error"] is None
    assert "claude-opus-5-5" not in listed["undescribed"]
    metrics = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    if metrics.status_code == 200:
        assert f'ethereal_model_provisional{{model="{NOVA}"}} 1' in metrics.text


# ---------------------------------------------------------------------- an upstream 429 is scoped and capped
def test_a_429_on_haiku_leaves_the_other_models_serving_and_ends_within_the_cap(gw: Gateway) -> None:
    keys = [gw.key, mint_into(gw.data_dir, name="second")[0]]
    wait_for(lambda: message(gw, "sonnet", keys[1]).status_code == 200, timeout=10)  # the new key is known
    limited = message(gw, "haiku", text="hello sim:fault=429,retry_after=86400")
    # the client that met the 429 sees the upstream's own answer and hints
    assert limited.status_code == 429 and limited.headers["retry-after"] == "86400"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    t0 = time.monotonic()
    for key in keys:  # at once, for every key: the other groups serve
        for model in ("sonnet", "opus", "claude-sonnet-4-6", "claude-fable-5-2"):
            r = message(gw, model, key)
            assert r.status_code == 200, (model, r.text)
    for key in keys:  # the haiku group waits, with the real time left, never more than the cap
        r = message(gw, "haiku", key)
        if time.monotonic() - t0 < CAP - 0.3:
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            assert (
                0 < float(r.headers["retry-after-ms"]) <= CAP * 1000
            )  # retry-after: whole seconds, rounded up
    time.sleep(max(0.0, CAP - (time.monotonic() - t0)) + 0.1)
    for key in keys:
        r = message(gw, "haiku", key)
        assert r.status_code == 200, r.text
        assert seen_model(gw.sim_url) == "claude-haiku-5-5"
