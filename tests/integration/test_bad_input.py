"""Bad input gets a clear Anthropic-shaped error, and the gateway keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway, mint_into
from tests.procs import gateway_process

GOOD = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def headers(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}


def assert_error(resp: httpx.Response, status: int, error_type: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"] == resp.headers["request-id"]
    assert body["request_id"].startswith("req_")
    return body


def still_serving(gateway: Gateway) -> None:
    resp = httpx.post(gateway.url + "/v1/messages", json=GOOD, headers=headers(gateway.key), timeout=10)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"max_tokens": 5, "messages": []}', "model"),
        (b'{"model": "claude-sonnet-4-6", "messages": []}', "max_tokens"),
        (b'{"model": "claude-sonnet-4-6", "max_tokens": 5}', "messages"),
        (b'{"model": "claude-sonnet-4-6", "max_tokens": -1, "messages": []}', "max_tokens"),
        (b'{"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": "hi"}', "messages"),
        (b'{"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"content": "x"}]}', "messages.0"),
        (b'{"model": 7, "max_tokens": 5, "messages": []}', "model"),
    ],
)
def test_invalid_bodies(gateway: Gateway, body: bytes, fragment: str) -> None:
    resp = httpx.post(gateway.url + "/v1/messages", content=body, headers=headers(gateway.key), timeout=10)
    error = assert_error(resp, 400, "invalid_request_error")
    assert fragment in error["error"]["message"]
    still_serving(gateway)


def test_missing_and_wrong_key(gateway: Gateway) -> None:
    resp = httpx.post(gateway.url + "/v1/messages", json=GOOD, headers={"anthropic-version": "2023-06-01"})
    assert_error(resp, 401, "authentication_error")
    resp = httpx.post(gateway.url + "/v1/messages", json=GOOD, headers=headers("sk-ant-api03-nope"))
    assert_error(resp, 401, "authentication_error")
    # the upstream credential is never accepted from clients either
    resp = httpx.post(gateway.url + "/v1/messages", json=GOOD, headers=headers("sim-upstream-key"))
    assert_error(resp, 401, "authentication_error")
    still_serving(gateway)


def test_unknown_route_and_method(gateway: Gateway) -> None:
    resp = httpx.post(gateway.url + "/v1/nothing-here", json=GOOD, headers=headers(gateway.key))
    assert_error(resp, 404, "not_found_error")
    resp = httpx.get(gateway.url + "/v1/messages", headers=headers(gateway.key))
    assert_error(resp, 404, "not_found_error")
    resp = httpx.post(gateway.url + "/v1/chat/nothing", json={}, headers=headers(gateway.key))
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "invalid_request_error"
    still_serving(gateway)


def test_unknown_model_id(gateway: Gateway) -> None:
    resp = httpx.get(gateway.url + "/v1/models/gpt-nothing", headers=headers(gateway.key))
    assert_error(resp, 404, "not_found_error")


def test_root_probes(gateway: Gateway) -> None:
    assert httpx.head(gateway.url + "/").status_code == 200
    assert httpx.get(gateway.url + "/").status_code == 200


@pytest.fixture(scope="module")
def small_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("small")
    key, _ = mint_into(data_dir)
    with gateway_process(data_dir, sim_url, env={"ETHEREAL_MAX_BODY_BYTES": "65536"}) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)


def test_oversized_body_declared(small_gateway: Gateway) -> None:
    big = (
        b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"'
        + b"x" * 70_000
        + b'"}]}'
    )
    resp = httpx.post(small_gateway.url + "/v1/messages", content=big, headers=headers(small_gateway.key))
    assert_error(resp, 413, "request_too_large")
    still_serving(small_gateway)


def test_oversized_body_chunked(small_gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}]}'

    resp = httpx.post(
        small_gateway.url + "/v1/messages", content=chunks(), headers=headers(small_gateway.key)
    )
    assert_error(resp, 413, "request_too_large")
    still_serving(small_gateway)


def test_default_limit_allows_large_bodies(gateway: Gateway) -> None:
    # 1 MB of text is well within the 32 MB default
    body = dict(GOOD, messages=[{"role": "user", "content": "z" * 1_000_000}])
    resp = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers(gateway.key), timeout=30)
    assert resp.status_code == 200, resp.text
