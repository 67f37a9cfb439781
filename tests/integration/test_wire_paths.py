"""The base URLs and model names users type, and each response header exactly once.

Real gateway processes in front of the sim, the official anthropic SDK and raw httpx as clients.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from ethereal.sim.testing import inject_fault, reset_sim

from tests.conftest import Gateway, mint_into
from tests.procs import gateway_process

HELLO = [{"role": "user", "content": "hello"}]


def duplicated(response: httpx.Response) -> list[str]:
    counts = Counter(name.lower() for name, _ in response.headers.multi_items())
    return sorted(name for name, n in counts.items() if n > 1)


@pytest.fixture(scope="module")
def mounted(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("mounted")
    key, _ = mint_into(data_dir, name="mounted")
    with gateway_process(data_dir, sim_url, env={"ETHEREAL_BASE_PATH": "/api/proxy/"}) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)


def test_v1_in_the_base_url_is_served(gateway: Gateway) -> None:
    """One vendor's docs put /v1 in the anthropic SDK's base_url: requests arrive at /v1/v1/..."""
    with anthropic.Anthropic(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as client:
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=32, messages=HELLO)
        assert msg.content and msg.model == "claude-sonnet-4-6"
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=32, messages=HELLO) as stream:
            assert stream.get_final_message().content
        assert client.messages.count_tokens(model="claude-sonnet-4-6", messages=HELLO).input_tokens > 0
        assert any(m.id == "claude-opus-4-7" for m in client.models.list())


def test_a_base_path_mounts_every_route(mounted: Gateway) -> None:
    base = mounted.url + "/api/proxy"
    assert httpx.head(base + "/").status_code == 200 and httpx.head(base).status_code == 200
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    with anthropic.Anthropic(base_url=base, api_key=mounted.key, max_retries=0) as client:
        assert client.messages.create(model="sonnet", max_tokens=32, messages=HELLO).content
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=HELLO) as stream:
            assert stream.get_final_message().content
        assert client.models.retrieve("claude-opus-4-7").id == "claude-opus-4-7"
    # both together, and the upstream sees plain /v1/messages (the sim answers nothing else)
    with anthropic.Anthropic(base_url=base + "/v1", api_key=mounted.key, max_retries=0) as both:
        assert both.messages.create(model="opus", max_tokens=32, messages=HELLO).model == "claude-opus-5-5"
    # unknown paths under the prefix: Anthropic's 404 shape, naming the path as sent
    r = httpx.get(base + "/v1/nothing", headers={"x-api-key": mounted.key})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_a_bad_base_path_is_refused_at_start() -> None:
    from ethereal.settings import SettingsError, load_settings

    for bad in ("/api/../x", "/a b", "/a?b"):
        with pytest.raises(SettingsError, match="ETHEREAL_BASE_PATH"):
            load_settings(base_path=bad)
    assert load_settings(base_path="api/proxy/").base_path == "/api/proxy"


MODEL_NAMES = [
    "claude-opus-4-8",
    "claude-opus-4-7",
    "anthropic/claude-opus-4-7",
    "anthropic/claude-sonnet-4.6",
    "Claude-Haiku-4-5",
    "claude-sonnet-5",
    "claude-fable-5-2",
    "sonnet",
    "opus",
    "haiku",
    "claude-haiku-latest",
]
RETIRED_NAMES = [
    "anthropic/claude-4-sonnet",
    "anthropic/claude-4-opus",
    "anthropic/claude-3-5-haiku-latest",
    "claude-sonnet-4-5",
]


def test_model_names_users_type(gateway: Gateway) -> None:
    from ethereal.models import Registry

    registry = Registry()
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as client:
        listed = {m.id for m in client.models.list(limit=1000)}
        assert {m.id for m in registry.models if not m.retired} <= listed
        for name in MODEL_NAMES:
            msg = client.messages.create(model=name, max_tokens=16, messages=HELLO)
            assert msg.content, name
            expected = registry.resolve(name)
            assert expected is not None and msg.model == expected.id, name  # what went upstream
            info = client.models.retrieve(name)  # every model /v1/messages serves has an entry
            assert info.id == expected.id, name
            usage = httpx.get(
                f"{gateway.url}/v1/usage/{msg._request_id}", headers={"x-api-key": gateway.key}
            ).json()
            assert usage["cost_micro"] > 0, name  # priced, never free
        listed = [m.id for m in client.models.list(limit=1000)]
        assert listed.count("claude-opus-4-8") == 1 and listed.count("claude-sonnet-5") == 1
        # retired ids and names nobody serves: the upstream's own 404, unchanged
        for gone in (*RETIRED_NAMES, "gpt-4o", "llama-3-70b"):
            with pytest.raises(anthropic.NotFoundError) as info:
                client.messages.create(model=gone, max_tokens=16, messages=HELLO)
            assert info.value.body["error"]["type"] == "not_found_error", gone  # type: ignore[index]
            assert info.value.body["error"]["message"].startswith("model: "), gone  # type: ignore[index]
            if gone in ("gpt-4o", "llama-3-70b"):  # forwarded as the client named it
                assert info.value.body["error"]["message"] == f"model: {gone}"  # type: ignore[index]
        with pytest.raises(anthropic.NotFoundError):
            client.models.retrieve("gpt-4o")
        # one the upstream serves is billed provisionally and listed once served
        httpx.post(gateway.sim_url + "/_sim/models", json={"id": "claude-nova-7"}).raise_for_status()
        msg = client.messages.create(model="claude-nova-7", max_tokens=16, messages=HELLO)
        usage = httpx.get(
            f"{gateway.url}/v1/usage/{msg._request_id}", headers={"x-api-key": gateway.key}
        ).json()
        assert usage["model"] == "claude-nova-7" and usage["cost_micro"] > 0
        listed_now = [m.id for m in client.models.list(limit=1000)]
        assert listed_now.count("claude-nova-7") == 1
        httpx.post(gateway.sim_url + "/_sim/models", json={"remove": "claude-nova-7"}).raise_for_status()


def test_each_response_header_once(mounted: Gateway) -> None:
    """Every kind of response the gateway gives: no header appears twice. (On the module's own
    gateway: the upstream 429 below walls its only credential for a second.)"""
    gateway = mounted
    reset_sim(gateway.sim_url)
    auth = {"x-api-key": gateway.key, "anthropic-version": "2023-06-01"}
    body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": HELLO}
    seen: dict[str, httpx.Response] = {}
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        seen["messages"] = http.post("/v1/messages", json=body, headers=auth)
        with http.stream("POST", "/v1/messages", json={**body, "stream": True}, headers=auth) as stream:
            stream.read()
            seen["stream"] = stream
        seen["count_tokens"] = http.post("/v1/messages/count_tokens", json=body, headers=auth)
        seen["models"] = http.get("/v1/models", headers=auth)
        seen["model"] = http.get("/v1/models/claude-opus-4-7", headers=auth)
        seen["openai models"] = http.get("/v1/models", headers={"authorization": f"Bearer {gateway.key}"})
        seen["chat"] = http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {gateway.key}"},
            json={
                "model": "claude-sonnet-4-6",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        seen["head"] = http.head("/")
        seen["401"] = http.post("/v1/messages", json=body, headers={"x-api-key": "sk-ant-wrong"})
        seen["400"] = http.post("/v1/messages", json={"model": "claude-sonnet-4-6"}, headers=auth)
        seen["404"] = http.get("/v1/nothing", headers=auth)
        inject_fault(gateway.sim_url, "529")
        seen["upstream 529"] = http.post("/v1/messages", json=body, headers=auth)
        inject_fault(gateway.sim_url, "429", retry_after=1)
        seen["upstream 429"] = http.post("/v1/messages", json=body, headers=auth)
    assert seen["messages"].status_code == 200 and seen["stream"].status_code == 200
    assert seen["upstream 529"].status_code == 529 and seen["upstream 429"].status_code == 429
    assert {name: duplicated(r) for name, r in seen.items() if duplicated(r)} == {}
    assert seen["messages"].headers["content-type"] == "application/json"
    assert seen["stream"].headers["content-type"] == "text/event-stream; charset=utf-8"


def test_a_served_worker_tunes_its_collector(gateway: Gateway) -> None:
    """``app.tune_gc`` at lifespan startup: startup's objects frozen, a young threshold for a
    server whose requests leave no cycles; ``/healthz?verbose=1`` shows both."""
    detail = httpx.get(gateway.url + "/healthz?verbose=1", timeout=10).json()["gc"]
    assert detail["frozen"] > 10_000
    assert detail["young_threshold"] == 5000
    assert len(detail["collections"]) == 3


def test_claude_code_probes_are_answered_here(gateway: Gateway, mounted: Gateway) -> None:
    """``HEAD``/``GET /api/hello`` (Claude Code's start-up probe) answer 200 without a key; its
    telemetry batches answer 200 and go nowhere (the sim counts every path it is asked for)."""
    reset_sim(gateway.sim_url)
    for base in (gateway.url, mounted.url + "/api/proxy"):
        head = httpx.head(base + "/api/hello")
        assert head.status_code == 200 and head.content == b""
        got = httpx.get(base + "/api/hello")
        assert got.status_code == 200 and got.json()["status"] == "ok"
        for path in ("/api/event_logging/batch", "/api/event_logging/v2/batch"):
            posted = httpx.post(base + path, json={"events": [{"event_type": "ClaudeCodeInternalEvent"}]})
            assert posted.status_code == 200 and posted.json() == {}
            # the read is bounded: a body past 1 MiB is refused, not buffered
            big = httpx.post(
                base + path, content=b"x" * (1024 * 1024 + 1), headers={"content-type": "application/json"}
            )
            assert big.status_code == 413
    seen = str(httpx.get(gateway.sim_url + "/_sim/stats").json()["requests"])
    assert "event_logging" not in seen and "hello" not in seen, seen
