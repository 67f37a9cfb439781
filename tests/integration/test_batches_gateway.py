"""Message Batches through a real gateway process: upstream errors, a credential disabled while its
batches are pending, budgets held and settled, RPM and TPM, two replicas sharing one database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from ethereal.sim.testing import control, inject_fault, start_sim_process

from tests.batches_util import (
    batch_record,
    check_usage,
    count_item_rows,
    mint_into_url,
    mixed_requests,
    usage_rows,
    wait_ended,
)
from tests.procs import gateway_process

ADMIN = "admin-key-for-batch-tests-0123456789"


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with start_sim_process(seed=11, batch_processing_ms=1000) as (_proc, url):
        yield url


@pytest.fixture(autouse=True)
def no_leftover_faults(sim: str) -> Iterator[None]:
    yield
    control(sim, "/_sim/faults", {"clear": True})  # a fault a test queued but did not use


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ethereal.sqlite3'}"


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    return {
        "ETHEREAL_DATABASE_URL": db_url,
        "ETHEREAL_BATCH_POLL_INTERVAL": "0.2",
        "ETHEREAL_ADMIN_KEY": ADMIN,
        "ETHEREAL_UPSTREAM_BACKOFF_BASE": "0.05",
        **extra,
    }


def results_of(client: anthropic.Anthropic, batch_id: str) -> dict[str, dict[str, Any]]:
    return {r.custom_id: r.result.model_dump(mode="json") for r in client.messages.batches.results(batch_id)}


def test_upstream_errors(sim: str, db_url: str, tmp_path: Path) -> None:
    """A refused create leaves nothing behind (no batch, no hold); polls and results that fail are
    retried; the batch is billed once."""
    key, _ = mint_into_url(db_url, name="unlucky", budget_micro_usd=50_000_000)
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        inject_fault(sim, "529", count=1, paths=["/v1/messages/batches"])
        with pytest.raises(anthropic.APIStatusError) as failed:
            client.messages.batches.create(requests=mixed_requests(5))  # type: ignore[arg-type]
        # the upstream's 529 as sent (it carried no wait): the SDK keeps its own backoff
        assert (
            failed.value.status_code == 529 and failed.value.response.headers.get("x-should-retry") == "true"
        )
        assert client.messages.batches.list().data == []
        inject_fault(sim, "400", count=1, paths=["/v1/messages/batches"], message="upstream says no")
        with pytest.raises(anthropic.BadRequestError, match="upstream says no"):
            client.messages.batches.create(requests=mixed_requests(5))  # type: ignore[arg-type]
        assert client.messages.batches.list().data == []

        time.sleep(0.2)  # the 529 cooled the only credential down for a moment
        requests = mixed_requests(20)
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        # the next polls fail (500s, a reset): the client still gets the last known state
        inject_fault(sim, "500", count=4, paths="*")
        assert client.messages.batches.retrieve(batch.id).id == batch.id
        inject_fault(sim, "reset", count=1, paths="*")
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == 20
        results = results_of(client, batch.id)
        check_usage(results, usage_rows(db_url, batch.id, list(results)))
        # settled: only the client reads the results now. An upstream that fails the download is an
        # error for the client (never a short file that looks complete); the next try works
        upstream_id = batch_record(db_url, batch.id).upstream_id
        # (two resets: the HTTP client retries a GET once by itself when a kept-alive connection drops)
        inject_fault(sim, "reset", count=2, paths=[f"/v1/messages/batches/{upstream_id}/results"])
        with pytest.raises(anthropic.APIStatusError) as cut:
            results_of(client, batch.id)
        assert cut.value.status_code == 502
        assert results_of(client, batch.id) == results
        assert count_item_rows(db_url, batch.id) == 20
        rec = batch_record(db_url, batch.id)
        assert rec.settled and rec.metered_items == 20


def test_credential_disabled_while_batches_pending(sim: str, db_url: str, tmp_path: Path) -> None:
    """A disabled credential takes no new batch, but its pending ones finish, are read and billed."""
    key, _ = mint_into_url(db_url, name="steady")
    admin = {"x-api-key": ADMIN}
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        requests = mixed_requests(15)
        requests[0]["params"]["messages"][0]["content"] += " sim:batch_ms=2000"
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        off = httpx.post(
            f"{url}/admin/api/upstreams/default/disable", headers=admin, json={"reason": "rotating"}
        )
        assert off.status_code == 200, off.text
        with pytest.raises(anthropic.APIStatusError) as refused:
            client.messages.batches.create(requests=mixed_requests(2))  # type: ignore[arg-type]
        assert refused.value.status_code == 503
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == 15
        results = results_of(client, batch.id)
        check_usage(results, usage_rows(db_url, batch.id, list(results)))
        assert httpx.post(f"{url}/admin/api/upstreams/default/enable", headers=admin).status_code == 200


def test_budget_is_held_at_create_and_settled_to_the_real_cost(sim: str, db_url: str, tmp_path: Path) -> None:
    key, record = mint_into_url(db_url, name="thrifty", budget_micro_usd=100_000_000)
    admin = {"x-api-key": ADMIN}
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        first = mixed_requests(20, tag="a")
        first[0]["params"]["messages"][0]["content"] += " sim:batch_ms=2500"
        batch = client.messages.batches.create(requests=first)  # type: ignore[arg-type]
        held = batch_record(db_url, batch.id).held_micro
        assert held > 0
        # a budget with room for this batch's hold and half of another one
        budget = held + held // 2
        assert (
            httpx.patch(
                f"{url}/admin/api/keys/{record.id}", headers=admin, json={"budget_micro_usd": budget}
            ).status_code
            == 200
        )
        time.sleep(1.0)  # the key cache (0.5 s) picks the new budget up
        # the second batch fits the budget, only not beside the first one's hold: 429, retry later
        with pytest.raises(anthropic.RateLimitError) as held_back:
            client.messages.batches.create(requests=mixed_requests(20, tag="b"))  # type: ignore[arg-type]
        assert "other unsettled batches" in held_back.value.message
        assert float(held_back.value.response.headers["retry-after"]) >= 1
        # one whose estimate alone is over the budget can never fit: 402
        with pytest.raises(anthropic.APIStatusError) as refused:
            client.messages.batches.create(requests=mixed_requests(40, tag="c"))  # type: ignore[arg-type]
        assert refused.value.status_code == 402 and "estimated cost" in refused.value.message
        wait_ended(client, batch.id)
        results = results_of(client, batch.id)
        _, real = check_usage(results, usage_rows(db_url, batch.id, list(results)))
        assert real < held // 2  # real output is far below the allowance held
        # the hold was replaced by the real cost: the same batch fits now
        second = client.messages.batches.create(requests=mixed_requests(20, tag="b"))  # type: ignore[arg-type]
        assert second.processing_status == "in_progress"


def test_rpm_counts_a_batch_once_and_tpm_not_at_all(sim: str, db_url: str, tmp_path: Path) -> None:
    key, _ = mint_into_url(db_url, name="paced", rpm=2, tpm=50)
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        big = mixed_requests(30)  # thousands of estimated tokens: far over the TPM, which batches skip
        batch = client.messages.batches.create(requests=big)  # type: ignore[arg-type]
        for _ in range(5):  # reading it is not a request against the RPM
            client.messages.batches.retrieve(batch.id)
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.batches.create(requests=mixed_requests(1))  # type: ignore[arg-type]
        assert "requests per minute" in limited.value.message


def test_two_replicas_bill_each_item_once(sim: str, pg_url: str, tmp_path: Path) -> None:
    key, _ = mint_into_url(pg_url, name="shared")
    env = env_for(pg_url, ETHEREAL_BATCH_POLL_INTERVAL="0.1")
    with (
        gateway_process(tmp_path / "a", sim, env=env) as url_a,
        gateway_process(tmp_path / "b", sim, env=env) as url_b,
        anthropic.Anthropic(base_url=url_a, api_key=key, max_retries=0) as a,
        anthropic.Anthropic(base_url=url_b, api_key=key, max_retries=0) as b,
    ):
        requests = mixed_requests(50)
        batch = a.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert b.messages.batches.retrieve(batch.id).id == batch.id  # any replica serves any batch
        wait_ended(b, batch.id)
        results = results_of(b, batch.id)
        assert results == results_of(a, batch.id)
        check_usage(results, usage_rows(pg_url, batch.id, list(results)))
        time.sleep(0.5)
        assert count_item_rows(pg_url, batch.id) == 50


def test_batch_gone_upstream_ends_and_releases_its_hold(sim: str, db_url: str, tmp_path: Path) -> None:
    """The upstream answers 404 for a batch (deleted there, past its retention): the batch ends, its
    hold is released, no rows."""
    key, _ = mint_into_url(db_url, name="orphaned", budget_micro_usd=50_000_000)
    with (
        gateway_process(tmp_path, sim, env=env_for(db_url)) as url,
        anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client,
    ):
        requests = mixed_requests(5)
        requests[0]["params"]["messages"][0]["content"] += " sim:batch_ms=600000"
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        upstream_id = batch_record(db_url, batch.id).upstream_id
        inject_fault(sim, "404", count=1000, paths=[f"/v1/messages/batches/{upstream_id}"])
        ended = wait_ended(client, batch.id)
        assert ended.processing_status == "ended"
        deadline = time.monotonic() + 10
        while not (rec := batch_record(db_url, batch.id)).settled and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (
            rec.settled
            and rec.metered_items == 0
            and rec.last_error == "the upstream no longer has this batch"
        )
        assert count_item_rows(db_url, batch.id) == 0
        with pytest.raises(anthropic.NotFoundError):  # the upstream's answer: no results to be had
            client.messages.batches.results(batch.id)
        assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
