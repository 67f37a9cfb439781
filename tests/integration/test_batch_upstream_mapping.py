"""Message Batches share the pipeline's mappings: an upstream error status means the same to a
credential's health on a batch call as on /v1/messages (``FailureKind.for_status``), and a batch
item's usage record is the one ``Pipeline.finish`` builds for the same usage (``metering.record``).

The real app in-process over the shared sim (faults queued on one path, used at once)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ethereal.app import Ethereal
from ethereal.batches.ids import item_request_id
from ethereal.batches.service import ROUTE, BatchService
from ethereal.keys import KeyRecord, mint
from ethereal.metering.pricing import model_for
from ethereal.pipeline import Call, Pipeline
from ethereal.settings import Settings
from ethereal.sim.testing import control, inject_fault
from ethereal.storage.records import BatchRecord
from ethereal.upstream.pool import Credential
from ethereal.usage import Usage

from tests.asgi import call

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def app(tmp_path: Path, sim_url: str) -> AsyncIterator[Ethereal]:
    # the poller stays out of the way: the test's own GET is what polls the batch
    settings = Settings(
        data_dir=tmp_path, upstream_url=sim_url, upstream_key="sim-key", batch_poll_interval=3600.0
    )
    entry = Ethereal(settings)
    await entry.start()
    try:
        yield entry
    finally:
        await entry.stop()
        control(sim_url, "/_sim/faults", {"clear": True})  # a fault the test queued but did not use


async def _minted(app: Ethereal) -> tuple[str, KeyRecord]:
    plaintext, record = mint("sk-ant-api03-")
    await app.gateway.store.insert_keys([record])
    return plaintext, record


async def _call(app: Ethereal, method: str, path: str, key: str, body: bytes = b"") -> tuple[int, Any]:
    status, _, payload = await call(app, path, key, body, method=method)
    return status, orjson.loads(payload or b"null")


def _health(cred: Credential) -> tuple[str | None, int, str]:
    """What the last failure did to the credential: its kind, the failure count, the state."""
    return cred.outcomes[-1][1], cred.failures, cred.state()


MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("status", [503, 504])
async def test_upstream_status_on_batch_calls_cools_the_credential_as_on_messages(
    app: Ethereal, sim_url: str, status: int
) -> None:
    key, _ = await _minted(app)
    pool = app.gateway.pool
    (cred,) = pool.credentials

    inject_fault(sim_url, str(status), count=1, paths=["/v1/messages"])
    got, _ = await _call(app, "POST", "/v1/messages", key, orjson.dumps(MESSAGE))
    assert got == status
    on_messages = _health(cred)
    assert on_messages[0] == ("overloaded" if status == 503 else "timeout")
    await pool.enable(cred)  # healthy again before the batch calls

    # a create the upstream refuses with the same status
    batch = orjson.dumps({"requests": [{"custom_id": "a", "params": MESSAGE}]})
    inject_fault(sim_url, str(status), count=1, paths=["/v1/messages/batches"])
    got, _ = await _call(app, "POST", "/v1/messages/batches", key, batch)
    assert got == status
    assert _health(cred) == on_messages
    await pool.enable(cred)

    # a poll the upstream refuses with the same status (a client's GET refreshes the batch)
    got, created = await _call(app, "POST", "/v1/messages/batches", key, batch)
    assert got == 200, created
    upstream_id = (await app.gateway.store.get_batch(created["id"])).upstream_id
    inject_fault(sim_url, str(status), count=1, paths=[f"/v1/messages/batches/{upstream_id}"])
    deadline = time.monotonic() + 10.0
    while control(sim_url, "/_sim/faults")["faults"]:  # a GET refreshes at most once a second
        assert time.monotonic() < deadline, "the batch was never polled"
        await _call(app, "GET", f"/v1/messages/batches/{created['id']}", key)
    assert _health(cred) == on_messages


ITEM_USAGES: list[Any] = [
    {
        "input_tokens": 1200,
        "output_tokens": 340,
        "cache_read_input_tokens": 5000,
        "cache_creation_input_tokens": 2048,
        "cache_creation": {"ephemeral_5m_input_tokens": 1024, "ephemeral_1h_input_tokens": 1024},
    },
    {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 300},  # no split: 5m assumed
    {
        "input_tokens": 50,
        "output_tokens": 60,
        "server_tool_use": {"web_search_requests": 3},
        "service_tier": "batch",
        "inference_geo": "us",
    },
    None,  # the upstream said nothing: counts unknown
]


@pytest.mark.parametrize("served", ["claude-sonnet-4-6", "sonnet-4", "claude-haiku-4-5", "claude-unknown-9"])
@pytest.mark.parametrize("usage", ITEM_USAGES)
async def test_batch_item_record_is_what_the_pipeline_records(app: Ethereal, served: str, usage: Any) -> None:
    """The same usage, served by the same model: the batch item's row and ``Pipeline.finish``'s
    record agree on every field but the request's own timing."""
    _, key = await _minted(app)
    gw = app.gateway
    pipeline = Pipeline(gw)
    service = BatchService(gw, pipeline)
    now = time.time()
    rec = BatchRecord(
        id="msgbatch_" + "a" * 24,
        key_id=key.id,
        credential="default",
        status="ended",
        request_count=1,
        created_at=now - 60.0,
        ended_at=now,
    )
    message = {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": served,
        "content": [],
        "usage": usage,
    }
    line = orjson.dumps({"custom_id": "item-1", "result": {"type": "succeeded", "message": message}})
    row = service._usage_row(rec, line)
    assert row is not None

    model = model_for(gw.registry, served)
    assert model is not None
    call = Call(
        request_id=item_request_id(rec.id, "item-1"),
        route=ROUTE,
        key=key,
        model=model,
        model_name=model.id,
        started=rec.created_at,
        upstream_request_id="msg_01abc",
    )
    finished = await pipeline.finish(call, 200, Usage.from_message(usage, served_model=served), batch=True)

    timing = ("duration_ms", "ended_at", "ttfb_ms", "credential")  # the item's are the batch's
    assert {k: v for k, v in row.to_dict().items() if k not in timing} == {
        k: v for k, v in finished.to_dict().items() if k not in timing
    }
    assert row.batch and row.model == model.id and row.credential == "default"


async def test_batch_item_errors_record_as_the_pipeline_records_an_error(app: Ethereal) -> None:
    _, key = await _minted(app)
    gw = app.gateway
    pipeline = Pipeline(gw)
    service = BatchService(gw, pipeline)
    now = time.time()
    rec = BatchRecord(
        id="msgbatch_" + "b" * 24,
        key_id=key.id,
        credential="default",
        status="ended",
        request_count=1,
        created_at=now - 60.0,
        ended_at=now,
    )
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded\x1b[2J"}}
    line = orjson.dumps({"custom_id": "item-2", "result": {"type": "errored", "error": error}})
    row = service._usage_row(rec, line)
    assert row is not None
    call = Call(request_id=item_request_id(rec.id, "item-2"), route=ROUTE, key=key, started=rec.created_at)
    finished = await pipeline.finish(
        call, 529, Usage(), error_type="overloaded_error", error_message="Overloaded\x1b[2J", batch=True
    )
    timing = ("duration_ms", "ended_at", "ttfb_ms", "credential")
    assert {k: v for k, v in row.to_dict().items() if k not in timing} == {
        k: v for k, v in finished.to_dict().items() if k not in timing
    }
    assert row.status == 529 and row.cost_micro == 0 and row.error_message == "Overloaded\\x1b[2J"
