"""The simulated Message Batches API over real HTTP with the official SDK: shapes, timing, outcomes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from ethereal.sim.testing import control, inject_fault, start_sim_process

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with start_sim_process(seed=3, batch_processing_ms=300) as (_proc, url):
        yield url


def item(custom_id: str, text: str = "hello", **params: Any) -> dict[str, Any]:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    body.update(params)
    return {"custom_id": custom_id, "params": body}


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended" or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def test_lifecycle_outcomes_and_results(sim: str) -> None:
    with anthropic.Anthropic(base_url=sim, api_key="sk-test") as client:
        # 1.5 s of processing: long enough to see it unfinished on a busy machine
        requests = [item("ok-0", "question 0 sim:batch_ms=1500")] + [
            item(f"ok-{i}", f"question {i}") for i in range(1, 6)
        ]
        requests += [
            item(
                "tools",
                "weather?",
                tools=[
                    {
                        "name": "w",
                        "input_schema": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"],
                        },
                    }
                ],
            ),
            item("think", "think", max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}),
            item("expires", "late sim:expire"),
            item("fails", "boom sim:fault=500"),
            item("unknown-model", model="gpt-4o"),
        ]
        batch = client.messages.batches.create(requests=requests)
        assert batch.id.startswith("msgbatch_01") and batch.processing_status == "in_progress"
        assert batch.request_counts.processing == len(requests) and batch.results_url is None
        early = httpx.get(f"{sim}/v1/messages/batches/{batch.id}/results", headers=HEADERS)
        assert early.status_code == 404  # no results before the end
        ended = wait_ended(client, batch.id)
        assert ended.processing_status == "ended" and ended.ended_at is not None
        counts = ended.request_counts
        assert (counts.succeeded, counts.errored, counts.expired, counts.canceled, counts.processing) == (
            8,
            2,
            1,
            0,
            0,
        )
        assert ended.results_url == f"{sim}/v1/messages/batches/{batch.id}/results"
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        assert list(results) == [r["custom_id"] for r in requests]  # request order
        assert results["tools"].type == "succeeded" and results["tools"].message.stop_reason == "tool_use"
        assert next(b.type for b in results["think"].message.content) == "thinking"
        assert (
            results["ok-0"].message.usage.input_tokens > 0 and results["ok-0"].message.usage.output_tokens > 0
        )
        assert results["expires"].type == "expired"
        assert results["fails"].type == "errored" and results["fails"].error.error.type == "api_error"
        assert results["unknown-model"].error.error.type == "not_found_error"
        listed = client.messages.batches.list(limit=1000)
        assert batch.id in [b.id for b in listed.data]
        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)


def test_cache_usage_matches_messages(sim: str) -> None:
    with anthropic.Anthropic(base_url=sim, api_key="sk-test") as client:
        system = [
            {"type": "text", "text": "policy " * 800, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ]
        batch = client.messages.batches.create(
            requests=[item(f"c{i}", f"q{i}", system=system) for i in range(3)]
        )
        wait_ended(client, batch.id)
        usages = [r.result.message.usage for r in client.messages.batches.results(batch.id)]
        assert usages[0].cache_creation.ephemeral_1h_input_tokens > 0  # the first writes the prefix
        assert all(u.cache_read_input_tokens > 0 for u in usages[1:])  # the others read it


def test_cancel_cancels_what_is_not_done(sim: str) -> None:
    with anthropic.Anthropic(base_url=sim, api_key="sk-test") as client:
        batch = client.messages.batches.create(
            requests=[item("slow-0", "sim:batch_ms=5000")] + [item(f"slow-{i}") for i in range(1, 50)]
        )
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
        with pytest.raises(anthropic.BadRequestError):  # not deletable before it has ended
            client.messages.batches.delete(batch.id)
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.canceled >= 45
        kinds = [r.result.type for r in client.messages.batches.results(batch.id)]
        assert kinds.count("canceled") == ended.request_counts.canceled


def test_bad_batches_and_faults(sim: str) -> None:
    with httpx.Client(base_url=sim, headers=HEADERS, timeout=10) as http:
        dup = http.post("/v1/messages/batches", json={"requests": [item("a"), item("a")]})
        assert dup.status_code == 400 and "requests.1" in dup.json()["error"]["message"]
        assert http.post("/v1/messages/batches", json={"requests": []}).status_code == 400
        assert http.get("/v1/messages/batches/msgbatch_nope").status_code == 404
        assert httpx.post(f"{sim}/v1/messages/batches", json={"requests": [item("a")]}).status_code == 401
        control(sim, "/_sim/config", {"batch_processing_ms": 0})
        try:
            inject_fault(sim, "529", count=1, paths="*")
            assert http.post("/v1/messages/batches", json={"requests": [item("a")]}).status_code == 529
            made = http.post("/v1/messages/batches", json={"requests": [item("a")]})
            assert (
                made.status_code == 200 and made.json()["processing_status"] == "ended"
            )  # 0 ms: done at once
            lines = http.get(f"/v1/messages/batches/{made.json()['id']}/results")
            assert lines.headers["content-type"] == "application/x-jsonl"
            assert [orjson.loads(x)["result"]["type"] for x in lines.content.splitlines()] == ["succeeded"]
        finally:
            control(sim, "/_sim/config", {"batch_processing_ms": 300})
