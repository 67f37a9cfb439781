"""Message Batches through the gateway with the official SDKs (Python, Node), on SQLite and PostgreSQL.

200 mixed requests (plain, tools, thinking, cache_control 5m/1h, aliases); one invalid item
refused at create with its index; poll until ended; results streamed; one usage row per item
with its exact usage at the batch price; cancel and delete; another key gets 404, the admin
key sees all; a gateway restart between create and end loses nothing and bills nothing twice.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from ethereal.batches.ids import item_request_id
from ethereal.sim.testing import start_sim_process

from tests.batches_util import (
    batch_record,
    check_usage,
    count_item_rows,
    mint_into_url,
    mixed_requests,
    usage_rows,
    wait_ended,
)
from tests.procs import REPO, gateway_process

ADMIN = "admin-key-for-batch-tests-0123456789"
NODE_SDK = REPO / "clients" / "node_modules" / "@anthropic-ai" / "sdk"


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with start_sim_process(seed=7, batch_processing_ms=1500) as (_proc, url):
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ethereal.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


def env_for(db_url: str) -> dict[str, str]:
    return {
        "ETHEREAL_DATABASE_URL": db_url,
        "ETHEREAL_BATCH_POLL_INTERVAL": "0.2",
        "ETHEREAL_ADMIN_KEY": ADMIN,
    }


def results_of(client: anthropic.Anthropic, batch_id: str) -> dict[str, dict[str, Any]]:
    return {r.custom_id: r.result.model_dump(mode="json") for r in client.messages.batches.results(batch_id)}


def test_python_sdk_mixed_batch(sim: str, db_url: str, tmp_path: Path) -> None:
    key, record = mint_into_url(_migrated(db_url), name="batcher", budget_micro_usd=50_000_000)
    other, _ = mint_into_url(db_url, name="someone-else")
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
        anthropic.Anthropic(base_url=url, api_key=other, max_retries=0) as stranger,
        anthropic.Anthropic(base_url=url, api_key=ADMIN, max_retries=0) as admin,
    ):
        requests = mixed_requests(200)
        bad = [
            *requests[:137],
            {"custom_id": "broken", "params": {**requests[137]["params"], "max_tokens": 0}},
            *requests[137:],
        ]
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.batches.create(requests=bad)  # type: ignore[arg-type]
        assert "requests.137" in refused.value.message and "max_tokens" in refused.value.message

        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert batch.type == "message_batch" and batch.processing_status == "in_progress"
        assert batch.request_counts.processing == 200 and batch.results_url is None

        # another key sees nothing of it; the admin key sees it
        for call in (
            lambda: stranger.messages.batches.retrieve(batch.id),
            lambda: stranger.messages.batches.cancel(batch.id),
            lambda: stranger.messages.batches.delete(batch.id),
        ):
            with pytest.raises(anthropic.NotFoundError):
                call()
        assert stranger.messages.batches.list().data == []
        assert batch.id in [b.id for b in admin.messages.batches.list().data]

        ended = wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == 200 and ended.ended_at is not None
        assert (
            ended.results_url == f"{url}/v1/messages/batches/{batch.id}/results"
        )  # the gateway, never upstream
        with pytest.raises(anthropic.NotFoundError):
            stranger.messages.batches.results(batch.id)
        results = results_of(client, batch.id)
        assert sorted(results) == sorted(r["custom_id"] for r in requests)
        assert results["item-001"]["message"]["stop_reason"] == "tool_use"
        assert results["item-002"]["message"]["content"][0]["type"] == "thinking"
        # "sonnet-4" was spliced to its canonical id (the upstream knows no such name)
        assert results["item-001"]["message"]["model"] == "claude-sonnet-4-6"

        rows = usage_rows(db_url, batch.id, list(results))
        tokens, micro = check_usage(results, rows)
        assert any(r.cache_creation_1h for r in rows.values()) and any(r.cache_read for r in rows.values())
        settled = batch_record(db_url, batch.id)
        assert (settled.settled_tokens, settled.settled_micro, settled.metered_items) == (tokens, micro, 200)
        assert settled.held_micro >= micro  # the estimate held at create covered the real cost
        # an item's usage through the API, by its derived id
        one = httpx.get(f"{url}/v1/usage/{item_request_id(batch.id, 'item-003')}", headers={"x-api-key": key})
        assert one.status_code == 200 and one.json()["batch"] is True
        assert one.json()["cost_micro"] == rows["item-003"].cost_micro
        assert (
            httpx.get(
                f"{url}/v1/usage/{item_request_id(batch.id, 'item-003')}", headers={"x-api-key": other}
            ).status_code
            == 404
        )

        # fetching the results again bills nothing twice
        assert results_of(client, batch.id) == results
        time.sleep(0.5)
        assert count_item_rows(db_url, batch.id) == 200

        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(batch.id)
        assert count_item_rows(db_url, batch.id) == 200  # the usage stays
        del record


def test_cancel_then_delete(sim: str, db_url: str, tmp_path: Path) -> None:
    key, _ = mint_into_url(_migrated(db_url), name="canceler")
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        requests = mixed_requests(40)
        requests[0]["params"]["messages"][0]["content"] += " sim:batch_ms=20000"
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError):  # only an ended batch can be deleted
            client.messages.batches.delete(batch.id)
        canceling = client.messages.batches.cancel(batch.id)
        assert (
            canceling.processing_status in ("canceling", "ended")
            and canceling.cancel_initiated_at is not None
        )
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.canceled >= 35
        results = results_of(client, batch.id)
        assert sum(r["type"] == "canceled" for r in results.values()) == ended.request_counts.canceled
        rows = usage_rows(db_url, batch.id, list(results))
        check_usage(results, rows)
        assert client.messages.batches.delete(batch.id).id == batch.id


def test_restart_between_create_and_end(sim: str, db_url: str, tmp_path: Path) -> None:
    key, _ = mint_into_url(_migrated(db_url), name="patient", budget_micro_usd=50_000_000)
    requests = mixed_requests(30, tag="r")
    requests[0]["params"]["messages"][0]["content"] += " sim:batch_ms=3000"
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    # the gateway is gone while the batch runs upstream; a new one takes over from the store
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == 30
        results = results_of(client, batch.id)
        check_usage(results, usage_rows(db_url, batch.id, list(results)))
        assert count_item_rows(db_url, batch.id) == 30


def test_node_sdk_mixed_batch(sim: str, db_url: str, tmp_path: Path) -> None:
    assert NODE_SDK.exists(), "the Node SDK is missing: `make clients` (make test runs it) installs it"
    key, _ = mint_into_url(_migrated(db_url), name="node")
    requests = mixed_requests(200, tag="n")
    bad = [
        *requests[:42],
        {"custom_id": "n-bad", "params": {**requests[42]["params"], "model": 7}},
        *requests[42:],
    ]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    script = REPO / "tests" / "e2e" / "batches_node.mjs"
    with gateway_process(tmp_path, sim, env=env_for(db_url)) as url:
        done = subprocess.run(
            ["node", str(script), url, key, str(tmp_path / "requests.json"), str(tmp_path / "bad.json")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO / "clients",
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["refused"]["status"] == 400 and "requests.42" in out["refused"]["message"]
        assert (
            out["batch"]["processing_status"] == "ended"
            and out["batch"]["request_counts"]["succeeded"] == 200
        )
        results = {line["custom_id"]: line["result"] for line in out["results"]}
        assert sorted(results) == sorted(r["custom_id"] for r in requests)
        check_usage(results, usage_rows(db_url, out["batch"]["id"], list(results)))
        assert out["deleted"]["type"] == "message_batch_deleted"


def _migrated(db_url: str) -> str:
    """Keys are minted before the gateway starts: the store must exist (open_store migrates)."""
    return db_url
