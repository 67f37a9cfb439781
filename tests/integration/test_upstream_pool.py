"""The credential pool over real HTTP: three simulated upstreams as credentials, the gateway
in its own process, the official ``anthropic`` SDK (max_retries=0) as the client.

Credential ``a`` gets weight 10 so it is the first choice whenever it is healthy; faults are
queued on it through the sim's control API and the sims' stats show who served what.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from ethereal.models import Registry
from ethereal.sim.testing import control, inject_fault, start_sim_process

from tests.conftest import mint_into
from tests.procs import gateway_process
from tests.upstreams import ADMIN, SECRET, Admin, seed_credentials, served, wait_for

MODEL = "claude-sonnet-4-6"
CANONICAL = "claude-sonnet-4-6"
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        urls = {n: stack.enter_context(start_sim_process())[1] for n in NAMES}
        yield urls


@pytest.fixture(scope="module")
def gw(sims: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    data_dir = tmp_path_factory.mktemp("pool")
    seed_credentials(data_dir, [{"name": n, "base_url": u} for n, u in sims.items()])
    key, _ = mint_into(data_dir, name="pool-test")
    env = {
        "ETHEREAL_SECRET_KEY": SECRET,
        "ETHEREAL_ADMIN_KEY": ADMIN,
        "ETHEREAL_FIRST_BYTE_TIMEOUT": "1.0",
        "ETHEREAL_UPSTREAM_RELOAD_INTERVAL": "0.3",
        "ETHEREAL_UPSTREAM_PROBE_INTERVAL": "0",
    }
    with gateway_process(data_dir, None, env=env) as url:
        admin = Admin(url)
        try:
            yield {"url": url, "key": key, "admin": admin, "data_dir": data_dir}
        finally:
            admin.close()


@pytest.fixture
def pool(gw: dict[str, object], sims: dict[str, str]) -> dict[str, object]:
    """Every credential enabled, healthy and reset; ``a`` preferred (weight 10)."""
    admin: Admin = gw["admin"]  # type: ignore[assignment]
    for n in NAMES:
        control(sims[n], "/_sim/reset", {})
        admin.patch(n, weight=10.0 if n == "a" else 1.0, rpm=None, spend_cap_micro=None)
        admin.enable(n)
    return gw


@pytest.fixture
def client(pool: dict[str, object]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=str(pool["url"]), api_key=str(pool["key"]), max_retries=0, timeout=20
    ) as client:
        yield client


def ask(client: anthropic.Anthropic, text: str = "hello", **kw: object) -> anthropic.types.Message:
    return client.messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": text}], **kw
    )


def counts(sims: dict[str, str], status: str = "200") -> dict[str, int]:
    return {n: served(u, status) for n, u in sims.items()}


def test_429_moves_traffic_to_the_others_and_back_after_the_cooldown(pool, sims, client) -> None:
    ask(client)
    assert counts(sims) == {"a": 1, "b": 0, "c": 0}  # a is the first choice

    inject_fault(sims["a"], "429", retry_after=2)
    t0 = time.monotonic()
    msg = ask(client)  # a answers 429: failed over, the client sees a normal response
    assert msg.content and served(sims["a"], "429") == 1
    health = pool["admin"].get("a")["health"]
    # a 429 is about its model's rate-limit group: the credential itself keeps serving other models
    group = Registry().rate_limit_group(MODEL)
    assert health["state"] == "healthy" and 1.0 < health["rate_limited_groups"][group] <= 2.0
    assert health["last_error"].startswith("rate_limited")
    while time.monotonic() - t0 < 1.6:
        ask(client)
    during = counts(sims)
    assert during["a"] == 1 and during["b"] + during["c"] >= 2  # nothing reached a while it cooled

    wait_for(lambda: time.monotonic() - t0 > 2.1, timeout=3)
    ask(client)
    assert served(sims["a"]) == 2  # back on a after the cooldown
    assert pool["admin"].get("a")["health"]["state"] == "healthy"


def test_reset_before_the_first_byte_is_retried_invisibly(pool, sims, client) -> None:
    admin: Admin = pool["admin"]
    inject_fault(sims["a"], "reset")
    assert ask(client).stop_reason in ("end_turn", "max_tokens")
    assert control(sims["a"], "/_sim/stats")["requests"]["/v1/messages"] == {"reset": 1}

    # streaming: a reset before the headers, and a stream that dies before its first event
    for fault in ({"fault": "reset"}, {"fault": "reset_mid", "after_events": 0}):
        admin.enable("a")  # clear the cooldown the previous reset caused
        before = counts(sims)
        inject_fault(sims["a"], **fault)
        with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "stream please"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text and final.usage.output_tokens > 0
        after = counts(sims)
        assert after["a"] == before["a"] and sum(after.values()) == sum(before.values()) + 1
    assert served(sims["a"], "reset") == 3


def test_reset_mid_stream_gives_the_client_an_error_event_and_is_settled(pool, sims, client) -> None:
    inject_fault(sims["a"], "reset_mid", after_events=6)
    events = []
    with pytest.raises(anthropic.APIStatusError) as info:
        stream = client.messages.create(
            model=MODEL,
            max_tokens=200,
            stream=True,
            messages=[{"role": "user", "content": "sim:tokens=150 sim:tps=200 long answer"}],
        )
        request_id = stream.response.headers["request-id"]
        for event in stream:
            events.append(event.type)
    assert events[0] == "message_start" and "message_stop" not in events
    assert info.value.body["error"]["type"] == "api_error"
    assert served(sims["a"], "reset") == 1
    # settled from what was streamed: estimated output, status 502
    r = httpx.get(f"{pool['url']}/v1/usage/{request_id}", headers={"x-api-key": str(pool["key"])})
    usage = r.json()
    assert usage["status"] == 502 and usage["error_type"] == "api_error" and usage["exact"] is False
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert pool["admin"].get("a")["health"]["last_error"].startswith("stream")


def test_403_on_a_request_is_the_clients_and_disables_nothing(pool, sims, client) -> None:
    """A model or beta the organisation lacks answers 403: that must not take a credential down."""
    admin: Admin = pool["admin"]
    inject_fault(sims["a"], "403", count=3)
    for _ in range(3):
        assert ask(client).content  # failed over to another credential
    assert served(sims["a"], "403") == 3
    # the probe (GET /v1/models with the credential alone) succeeded: nothing disabled
    probe = wait_for(lambda: admin.get("a")["health"]["last_probe"])
    assert (
        probe["status"] == 200
        and probe["request"] == "GET /v1/models?limit=1"
        and probe["after"] == "HTTP 403"
    )
    assert admin.get("a")["enabled"] is True
    ask(client)
    assert served(sims["a"]) == 1


def test_a_credential_is_disabled_only_when_its_own_probe_is_refused(pool, sims, client) -> None:
    admin: Admin = pool["admin"]
    inject_fault(sims["a"], "401")
    inject_fault(sims["a"], "401", paths=["/v1/models"])  # the credential itself is dead
    assert ask(client).content  # the client still gets its answer from another credential
    view = wait_for(lambda: next((v for v in [admin.get("a")] if not v["enabled"]), None))
    assert "probe GET /v1/models answered HTTP 401" in view["disabled_reason"]
    assert view["health"]["state"] == "disabled" and view["health"]["last_probe"]["status"] == 401
    time.sleep(0.8)  # several store reloads later: still disabled (persisted)
    for _ in range(4):
        ask(client)
    assert served(sims["a"]) == 0 and served(sims["a"], "401") == 1
    assert admin.get("a")["enabled"] is False
    assert "probe" in next(v for v in admin.list() if v["name"] == "a")["disabled_reason"]
    admin.enable("a")
    ask(client)
    assert served(sims["a"]) == 1


def test_all_credentials_rate_limited_gives_429_with_the_time_left(pool, sims, client) -> None:
    for n in NAMES:
        inject_fault(sims[n], "429", retry_after=4)
    headers = {"x-api-key": str(pool["key"]), "anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    first = httpx.post(f"{pool['url']}/v1/messages", json=body, headers=headers)
    # every credential tried: the last upstream error, with its retry headers as sent
    assert first.status_code == 429 and first.json()["error"]["type"] == "rate_limit_error"
    assert first.headers["retry-after"] == "4" and first.headers["x-should-retry"] == "true"
    assert "retry-after-ms" not in first.headers
    assert sum(served(u, "429") for u in sims.values()) == 3
    t0 = time.monotonic()
    r = httpx.post(f"{pool['url']}/v1/messages", json=body, headers=headers)
    left = 4.0 - (time.monotonic() - t0)
    # inside every credential's retry-after: the gateway answers 429 with the real time left
    assert r.status_code == 429
    assert (
        r.json()["error"]["type"] == "rate_limit_error" and r.json()["request_id"] == r.headers["request-id"]
    )
    assert int(r.headers["retry-after"]) == 4 and r.headers["x-should-retry"] == "true"
    assert left - 0.5 <= int(r.headers["retry-after-ms"]) / 1000 <= 4.0
    assert sum(served(u, "429") for u in sims.values()) == 3  # nothing was sent upstream
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}])


def test_nothing_enabled_gives_503_with_retry_after(pool, sims) -> None:
    admin: Admin = pool["admin"]
    for n in NAMES:
        admin.http.post(f"/{n}/disable", json={"reason": "maintenance"}).raise_for_status()
    headers = {"x-api-key": str(pool["key"]), "anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{pool['url']}/v1/messages", json=body, headers=headers)
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"
    assert r.headers["retry-after"] == "60" and r.headers["retry-after-ms"] == "60000"
    assert sum(served(u, "200") for u in sims.values()) == 0


def test_cache_affinity_keeps_a_prefix_on_one_credential_and_spreads_prefixes(pool, sims, client) -> None:
    admin: Admin = pool["admin"]
    for n in NAMES:
        admin.patch(n, weight=1.0)
    reads = []
    for i in range(30):
        system = [
            {
                "type": "text",
                "text": f"Project {uuid.uuid4()} guidelines. " + "Be precise. " * 400,
                "cache_control": {"type": "ephemeral"},
            }
        ]
        first = [
            {
                "role": "user",
                "content": [{"type": "text", "text": f"task {i}", "cache_control": {"type": "ephemeral"}}],
            }
        ]
        m1 = client.messages.create(model=MODEL, max_tokens=32, system=system, messages=first)
        assert m1.usage.cache_read_input_tokens == 0 and m1.usage.cache_creation_input_tokens > 0
        # the next turn: the breakpoint moves to the new last message; the cache must be warm
        turn2 = [
            {"role": "user", "content": f"task {i}"},
            {"role": "assistant", "content": m1.content[0].text},
            {
                "role": "user",
                "content": [{"type": "text", "text": "and then?", "cache_control": {"type": "ephemeral"}}],
            },
        ]
        m2 = client.messages.create(model=MODEL, max_tokens=32, system=system, messages=turn2)
        reads.append(m2.usage.cache_read_input_tokens)
    assert all(r > 0 for r in reads), reads  # every second turn found its prompt cache
    spread = counts(sims)
    assert sum(spread.values()) == 60 and min(spread.values()) >= 4, spread


def test_slow_first_byte_beyond_the_timeout_fails_over(pool, sims, client) -> None:
    inject_fault(sims["a"], "slow", delay_ms=4000)
    t0 = time.monotonic()
    ask(client)
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 3.0  # first_byte_timeout is 1 s here
    assert served(sims["b"]) + served(sims["c"]) == 1
    assert pool["admin"].get("a")["health"]["last_error"].startswith("timeout")


def test_client_going_away_cancels_the_upstream_request(pool, sims, client) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "sim:tokens=300 sim:tps=30 a slow stream"}],
    }
    headers = {"x-api-key": str(pool["key"]), "anthropic-version": "2023-06-01"}
    ask(client)  # a pooled connection to a exists
    with (
        httpx.Client(timeout=20) as http,
        http.stream("POST", f"{pool['url']}/v1/messages", json=body, headers=headers) as resp,
    ):
        request_id = resp.headers["request-id"]
        open_during = 0
        for line in resp.iter_lines():
            if line.startswith("event: content_block_delta"):
                open_during = control(sims["a"], "/_sim/stats")["open_connections"]  # stream + this one
                break
    assert open_during >= 2
    # the client is gone: the gateway drops the upstream connection (the stream had ~10 s to run)
    wait_for(lambda: control(sims["a"], "/_sim/stats")["open_connections"] < open_during, timeout=3)
    time.sleep(0.3)
    assert served(sims["a"]) == 1  # the slow stream never completed upstream
    usage = httpx.get(f"{pool['url']}/v1/usage/{request_id}", headers={"x-api-key": str(pool["key"])}).json()
    assert usage["status"] == 499 and usage["error_type"] == "client_disconnected"
    assert pool["admin"].get("a")["health"]["in_flight"] == 0


def test_rpm_and_spend_caps(pool, sims, client) -> None:
    admin: Admin = pool["admin"]
    admin.patch("a", rpm=2)
    for _ in range(4):
        ask(client)
    assert served(sims["a"]) == 2 and served(sims["b"]) + served(sims["c"]) == 2
    assert admin.get("a")["health"]["state"] == "rpm_capped"
    # the two requests a served cost more than one micro-dollar
    assert admin.patch("a", rpm=None, spend_cap_micro=1)["health"]["state"] == "spend_capped"
    ask(client)
    assert served(sims["a"]) == 2
    assert admin.patch("a", spend_cap_micro=None)["health"]["state"] == "healthy"
    ask(client)
    assert served(sims["a"]) == 3


def test_count_tokens_failures_do_not_cool_a_credential_down(pool, sims, client) -> None:
    inject_fault(sims["a"], "500", count=3, paths=["/v1/messages/count_tokens"])
    inject_fault(sims["b"], "500", count=3, paths=["/v1/messages/count_tokens"])
    inject_fault(sims["c"], "500", count=3, paths=["/v1/messages/count_tokens"])
    res = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "count me"}])
    assert res.input_tokens > 0
    for n in NAMES:
        assert pool["admin"].get(n)["health"]["state"] == "healthy"
    ask(client)
    assert served(sims["a"]) == 1


def test_admin_api(pool, sims) -> None:
    admin: Admin = pool["admin"]
    http = admin.http
    assert (
        http.get("", headers={"x-api-key": str(pool["key"])}).status_code == 401
    )  # a user key is no admin key
    items = admin.list()
    assert [i["name"] for i in items] == ["a", "b", "c"]
    for item in items:
        assert item["api_key_hint"].startswith("…") and "sim-key" not in str(item)
        assert {"state", "cooldown_until", "in_flight", "recent", "last_error"} <= set(item["health"])

    r = http.post(
        "",
        json={
            "name": "d",
            "base_url": sims["b"] + "/v1/",
            "api_key": "sk-ant-d-123456789",
            "weight": 2,
            "models": ["sonnet-4.6"],
            "rpm": 100,
            "spend_cap_micro": 5_000_000,
        },
    )
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["base_url"] == sims["b"] and d["models"] == [CANONICAL] and d["api_key_hint"] == "…6789"
    assert "sk-ant-d" not in r.text
    assert http.post("", json={"name": "d", "base_url": sims["b"], "api_key": "x"}).status_code == 409
    bad = http.post("", json={"name": "bad name", "base_url": "ftp://x", "api_key": "k"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert (
        http.post("", json={"name": "e", "base_url": "http://x", "api_key": "k", "weight": -1}).status_code
        == 400
    )
    assert (
        http.post("", json={"name": "e", "base_url": "http://x", "api_key": "k", "colour": 1}).status_code
        == 400
    )
    upd = admin.patch("d", weight=3, rpm=None)
    assert upd["weight"] == 3 and upd["rpm"] is None
    dis = admin.disable("d", reason="maintenance")
    assert dis["enabled"] is False and dis["disabled_reason"] == "maintenance"
    assert dis["health"]["state"] == "disabled"
    assert http.delete("/d").json() == {"name": "d", "deleted": True}
    assert http.get("/d").status_code == 404 and http.delete("/d").status_code == 404
    # the stored key is encrypted at rest
    import sqlite3

    db = sqlite3.connect(Path(str(pool["data_dir"])) / "ethereal.sqlite3")
    try:
        rows = db.execute("SELECT name, api_key_enc FROM upstream_credentials").fetchall()
    finally:
        db.close()
    assert rows and all("sim-key" not in enc for _, enc in rows)
