"""Served ⇒ billed: a request the upstream served is billed what it reported, whatever fails after.

What a route echoes or translates is checked before admission (a body too deep to write back is
the client's 400, in the route's own shape, before the upstream sees it); once the upstream has
answered, a failure answering the client (a reply the adapter cannot translate, a stream relay
that breaks) is recorded as the gateway's error at the upstream's usage (else the reservation)
and settles the key's budget: never at 0.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from ethereal.api.openai import ChatCompletions
from ethereal.api.responses import Responses
from ethereal.app import Ethereal
from ethereal.keys import mint
from ethereal.limits.local import LocalLimiter
from ethereal.pipeline import Adapter, Call, Outbound, Relay
from ethereal.settings import Settings
from ethereal.sim.testing import control

from tests.asgi import call
from tests.conftest import Gateway, mint_into
from tests.procs import gateway_process


def nested(depth: int) -> Any:
    """An object ``depth`` levels deep (written by the stdlib: orjson stops at 254)."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def sim_received(sim_url: str) -> int:
    return int(control(sim_url, "/_sim/requests")["received"])


def sim_usage(sim_url: str, upstream_request_id: str) -> dict[str, int]:
    return control(sim_url, "/_sim/requests")["replies"][upstream_request_id]["usage"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def budgeted(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("billed")
    key, _ = mint_into(data_dir, name="budgeted", budget_micro_usd=50_000)
    with gateway_process(data_dir, sim_url) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_metadata_nested_300_deep_is_400_before_the_upstream(
    budgeted: Gateway, stream: bool
) -> None:
    """The finding: metadata too deep to echo was generated upstream, then answered 500 and billed 0."""
    before = sim_received(budgeted.sim_url)
    body = {
        "model": "claude-opus-4-7",
        "input": "hi",
        "stream": stream,
        "max_output_tokens": 16,
        "metadata": nested(300),
    }
    for _ in range(3):
        resp = httpx.post(
            budgeted.url + "/v1/responses",
            content=json.dumps(body),
            timeout=30,
            headers={"authorization": f"Bearer {budgeted.key}", "content-type": "application/json"},
        )
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["param"] == "metadata"
        assert "metadata" in error["message"]
    assert sim_received(budgeted.sim_url) == before  # the upstream never saw them
    # the same shapes, shallow, are served
    resp = httpx.post(
        budgeted.url + "/v1/responses",
        timeout=30,
        content=orjson.dumps({**body, "metadata": nested(20), "stream": False}),
        headers={"authorization": f"Bearer {budgeted.key}", "content-type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["metadata"] == nested(20)


def test_deep_tool_schema_and_arguments_are_400_naming_the_field(budgeted: Gateway) -> None:
    before = sim_received(budgeted.sim_url)
    auth = {"authorization": f"Bearer {budgeted.key}", "content-type": "application/json"}
    cases = [
        (
            "/v1/responses",
            {
                "model": "claude-sonnet-4-6",
                "input": "hi",
                "tools": [{"type": "function", "name": "f", "parameters": nested(300)}],
            },
            "tools[0].parameters",
        ),
        (
            "/v1/responses",
            {
                "model": "claude-sonnet-4-6",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "x", "schema": nested(260)}},
            },
            "text.format.schema",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "claude-sonnet-4-6",
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": nested(400)},
                },
            },
            "response_format.json_schema.schema",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "claude-sonnet-4-6",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": json.dumps(nested(300))},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
    ]
    for path, body, param in cases:
        resp = httpx.post(budgeted.url + path, content=json.dumps(body), headers=auth, timeout=30)
        assert resp.status_code == 400, (path, resp.text)
        error = resp.json()["error"]
        if "arguments" in param:
            assert error["param"] == param, error
        else:  # the top-level field, the message a few levels further
            assert error["param"] == param.split(".")[0].split("[")[0] and error["message"].startswith(
                param
            ), error
    assert sim_received(budgeted.sim_url) == before


# -- in-process: a failure after the upstream answered -------------------------------------------


@pytest.fixture
async def app(tmp_path: Path, sim_url: str) -> AsyncIterator[Ethereal]:
    settings = Settings(data_dir=tmp_path, upstream_url=sim_url, upstream_key="sim-key")
    entry = Ethereal(settings)
    await entry.start()
    try:
        yield entry
    finally:
        await entry.stop()


async def _call(app: Ethereal, path: str, key: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    return await call(app, path, key, body, bearer=True, client_stays=True)


async def _budgeted_key(app: Ethereal) -> tuple[str, str]:
    plaintext, record = mint("sk-ant-api03-", budget_micro_usd=10_000_000)
    await app.gateway.store.insert_keys([record])
    return plaintext, record.id


def _settled(app: Ethereal, key_id: str) -> tuple[int, int]:
    limiter = app.gateway.limiter
    assert isinstance(limiter, LocalLimiter)
    st = limiter.state(key_id)
    return st.spent_micro, len(st.reservations)


class Broken(Exception):
    pass


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise Broken("the reply cannot be translated")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "adapter", "body"),
    [
        (
            "/v1/responses",
            Responses,
            {"model": "claude-opus-4-7", "input": "hello there", "max_output_tokens": 64},
        ),
        (
            "/v1/chat/completions",
            ChatCompletions,
            {
                "model": "claude-opus-4-7",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello there"}],
            },
        ),
    ],
)
async def test_a_reply_the_adapter_cannot_translate_is_billed_what_the_upstream_reported(
    app: Ethereal,
    sim_url: str,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    adapter: type[Adapter],
    body: dict[str, Any],
) -> None:
    key, key_id = await _budgeted_key(app)
    monkeypatch.setattr(adapter, "reply", _raise)
    status, headers, payload = await _call(app, path, key, orjson.dumps(body))
    assert status == 500, payload
    assert orjson.loads(payload)["error"]["type"] == "server_error"  # the route's own shape
    rec = app.gateway.meter.recent_records()[-1]
    assert rec.request_id == headers[b"request-id"].decode()
    assert (rec.status, rec.error_type) == (500, "api_error")
    assert rec.upstream_request_id is not None
    reported = sim_usage(sim_url, rec.upstream_request_id)
    assert (rec.input_tokens, rec.output_tokens) == (reported["input_tokens"], reported["output_tokens"])
    assert rec.output_tokens > 0 and rec.cost_micro > 0 and rec.exact
    spent, held = _settled(app, key_id)
    assert (spent, held) == (rec.cost_micro, 0)


class _FailsMidStream:
    """A relay whose second chunk raises (a translator bug): what it saw before is what is billed."""

    def __init__(self, inner: Relay) -> None:
        self.inner = inner
        self.chunks = 0

    def feed(self, chunk: bytes) -> Any:
        self.chunks += 1
        if self.chunks == 2:
            raise Broken("translator bug")
        return self.inner.feed(chunk)

    def finish(self) -> Any:
        return self.inner.finish()

    def usage(self) -> Any:
        return self.inner.usage()

    def state(self) -> Any:
        return self.inner.state()


@pytest.mark.asyncio
async def test_a_stream_relay_that_breaks_is_billed_the_stream_so_far(
    app: Ethereal, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, key_id = await _budgeted_key(app)
    seen: list[Relay] = []
    original = Responses.stream_relay

    def stream_relay(self: Responses, call: Call, out: Outbound) -> tuple[Relay, bool]:
        native, translate = original(self, call, out)
        seen.append(native)
        return _FailsMidStream(native), translate

    monkeypatch.setattr(Responses, "stream_relay", stream_relay)
    # paced, so the stream comes in several chunks: the first (message_start) before the ttft wait
    body = {
        "model": "claude-opus-4-7",
        "input": "hello there sim:ttft=30 sim:tps=2000",
        "max_output_tokens": 256,
        "stream": True,
    }
    status, _, payload = await _call(app, "/v1/responses", key, orjson.dumps(body))
    assert status == 200
    assert b"response.failed" in payload  # the translator's own error event ends the stream
    rec = app.gateway.meter.recent_records()[-1]
    assert (rec.status, rec.error_type) == (500, "api_error")
    so_far = seen[0].usage()  # message_start's input (cache writes here: the adapter marks breakpoints)
    assert (rec.input_tokens, rec.cache_creation_5m, rec.cache_read) == (
        so_far.input_tokens,
        so_far.cache_5m,
        so_far.cache_read,
    )
    assert rec.input_tokens + rec.cache_creation_5m + rec.cache_read > 0 and rec.cost_micro > 0
    spent, held = _settled(app, key_id)
    assert (spent, held) == (rec.cost_micro, 0)


@pytest.mark.asyncio
async def test_a_stream_relay_that_cannot_be_built_is_billed_the_reservation(
    app: Ethereal, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, key_id = await _budgeted_key(app)
    monkeypatch.setattr(Responses, "stream_relay", _raise)
    body = {"model": "claude-opus-4-7", "input": "hello there", "max_output_tokens": 100, "stream": True}
    status, _, payload = await _call(app, "/v1/responses", key, orjson.dumps(body))
    assert status == 500, payload
    rec = app.gateway.meter.recent_records()[-1]
    assert (rec.status, rec.error_type, rec.exact) == (500, "api_error", False)
    assert rec.output_tokens == 100 and rec.input_tokens > 0 and rec.cost_micro > 0
    spent, held = _settled(app, key_id)
    assert (spent, held) == (rec.cost_micro, 0)
    assert sum(c.in_flight for c in app.gateway.pool.credentials) == 0


# -- PostgreSQL + Redis: the same finding, and ids a client sends that PostgreSQL cannot take -------


def test_postgres_and_redis_refuse_deep_metadata_and_ids_with_nul(
    sim_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    from tests.batches_util import mint_into_url

    key, _ = mint_into_url(pg_url, name="pg", budget_micro_usd=50_000)
    env = {"ETHEREAL_DATABASE_URL": pg_url, "ETHEREAL_REDIS_URL": redis_url}
    anthropic_auth = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with gateway_process(tmp_path, sim_url, env=env) as url, httpx.Client(timeout=30) as client:
        before = sim_received(sim_url)
        for stream in (False, True):
            body = {"model": "claude-opus-4-7", "input": "hi", "stream": stream, "metadata": nested(300)}
            resp = client.post(
                url + "/v1/responses",
                content=json.dumps(body),
                headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            )
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "metadata", resp.text
        assert sim_received(sim_url) == before
        # a batch whose params nest deep: its bytes go upstream as they came (nothing is written back),
        # so it is created and held like any other, never a 500
        deep_params = {
            "model": "claude-haiku-4-5",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": nested(300),
        }
        resp = client.post(
            url + "/v1/messages/batches",
            headers=anthropic_auth,
            content=json.dumps({"requests": [{"custom_id": "a", "params": deep_params}]}),
        )
        assert resp.status_code == 200 and resp.json()["type"] == "message_batch", resp.text
        # a NUL in an id: no lookup (PostgreSQL refuses such a text parameter), the usual 404 / 400
        for method, path in (
            ("GET", "/v1/messages/batches/msgbatch_%00"),
            ("GET", "/v1/messages/batches/msgbatch_a%00b/results"),
            ("POST", "/v1/messages/batches/msgbatch_%00/cancel"),
            ("DELETE", "/v1/messages/batches/msgbatch_%00"),
            ("GET", "/v1/usage/req_%00"),
            ("GET", "/v1/usage/req_abc%00_x"),
        ):
            resp = client.request(method, url + path, headers=anthropic_auth)
            assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error", (
                path,
                resp.text,
            )
        for name in ("after_id", "before_id"):
            resp = client.get(
                url + "/v1/messages/batches", params={name: "msgbatch_\x00"}, headers=anthropic_auth
            )
            assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error", (
                resp.text
            )
        ok = client.get(url + "/v1/messages/batches", headers=anthropic_auth)
        assert ok.status_code == 200, ok.text
