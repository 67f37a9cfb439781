"""Operators see why a request failed: the message the client was told, the gateway's own or
the upstream's, on the usage record (``GET /v1/usage/{id}``, both stores), the request log line
and ``/admin/api/usage?group_by=error_type`` — clipped, control characters escaped, never a body."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ethereal.storage.records import UsageRecord

from tests.conftest import mint_into
from tests.procs import gateway_process
from tests.upstreams import eventually_sync

ADMIN = "error-messages-admin-key-0123"


@pytest.fixture(scope="module")
def gw(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("errors-gateway")
    key, _ = mint_into(data_dir, name="errors")
    with gateway_process(data_dir, sim_url, env={"ETHEREAL_ADMIN_KEY": ADMIN}) as url:
        yield {"url": url, "key": key, "data_dir": data_dir}


def usage_of(gw: dict[str, Any], request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        got = httpx.get(f"{gw['url']}/v1/usage/{request_id}", headers={"x-api-key": gw["key"]})
        if got.status_code == 200 or time.monotonic() > deadline:
            assert got.status_code == 200, got.text
            return got.json()  # type: ignore[no-any-return]
        time.sleep(0.05)


def log_lines(gw: dict[str, Any], until: Any) -> list[str]:
    deadline = time.monotonic() + 10  # the log writer flushes in the background
    while True:
        lines = [
            line
            for f in Path(gw["data_dir"]).glob("gateway-*.log")
            for line in f.read_text().splitlines()
            if " ethereal.access: request " in line
        ]
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def post(gw: dict[str, Any], body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gw['url']}/v1/messages",
        json=body,
        timeout=30,
        headers={"x-api-key": gw["key"], "anthropic-version": "2023-06-01"},
    )


def test_the_gateways_own_refusal(gw: dict[str, Any]) -> None:
    resp = post(gw, {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400
    told = resp.json()["error"]["message"]
    rec = usage_of(gw, resp.headers["request-id"])
    assert (
        rec["status"] == 400 and rec["error_type"] == "invalid_request_error" and rec["error_message"] == told
    )
    rid = resp.headers["request-id"]
    lines = log_lines(gw, lambda ls: any(rid in line for line in ls))
    line = next(line for line in lines if f"request_id={rid} " in line)
    assert line.endswith(" error_message=" + json.dumps(told))


def test_the_upstreams_error_as_it_said_it(gw: dict[str, Any]) -> None:
    resp = post(
        gw,
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi sim:fault=400"}],
        },
    )
    assert resp.status_code == 400
    told = resp.json()["error"]["message"]
    rec = usage_of(gw, resp.headers["request-id"])
    assert rec["error_message"] == told[:200] and rec["status"] == 400


def test_control_characters_are_escaped_and_long_messages_clipped(gw: dict[str, Any]) -> None:
    name = "claude-\nnot-a-model\x1b[2J" + "x" * 400
    resp = post(gw, {"model": name, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code in (400, 404), resp.text
    rec = usage_of(gw, resp.headers["request-id"])
    said = rec["error_message"]
    assert said and "\n" not in said and "\x1b" not in said and len(said) <= 200
    rid = resp.headers["request-id"]
    lines = log_lines(gw, lambda ls: any(rid in line for line in ls))
    assert (
        len([line for line in lines if f"request_id={rid} " in line]) == 1
    )  # nothing in the message broke it


def test_unrecorded_refusals_are_logged_with_their_message(gw: dict[str, Any]) -> None:
    resp = httpx.get(f"{gw['url']}/v1/models", headers={"x-api-key": "sk-ant-api03-unknown"})
    assert resp.status_code == 401
    rid = resp.headers["request-id"]
    lines = log_lines(gw, lambda ls: any(rid in line for line in ls))
    line = next(line for line in lines if f"request_id={rid} " in line)
    assert line.endswith(" error_message=" + json.dumps(resp.json()["error"]["message"]))


def test_usage_grouped_by_error_type(gw: dict[str, Any]) -> None:
    for _ in range(2):
        post(gw, {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "no max_tokens"}]})

    def by_error_type() -> dict[str, Any]:
        got = httpx.get(
            f"{gw['url']}/admin/api/usage", params={"group_by": "error_type"}, headers={"x-api-key": ADMIN}
        )
        assert got.status_code == 200, got.text
        return {row["error_type"]: row for row in got.json()["data"]}

    # the records reach the database in the meter's batches: wait for them (bounded)
    rows = eventually_sync(
        by_error_type, lambda got: got.get("invalid_request_error", {}).get("errors", 0) >= 2
    )
    assert rows["invalid_request_error"]["requests"] >= 2 and rows["invalid_request_error"]["errors"] >= 2


async def test_both_stores_keep_it(store: Any) -> None:
    said = UsageRecord(
        request_id="req_err_1",
        key_id="key_a",
        credential="default",
        route="messages",
        model="claude-sonnet-4-5-20250929",
        status=529,
        stream=True,
        error_type="overloaded_error",
        error_message="Overloaded",
        started_at=time.time(),
        ended_at=time.time(),
    )
    fine = UsageRecord(
        request_id="req_ok_1",
        key_id="key_a",
        credential="default",
        route="messages",
        model="claude-sonnet-4-5-20250929",
        status=200,
        stream=False,
        started_at=time.time(),
        ended_at=time.time(),
    )
    assert await store.insert_usage([said, fine]) == 2
    back = await store.get_usage("req_err_1")
    assert back.error_message == "Overloaded" and (await store.get_usage("req_ok_1")).error_message is None
    totals = {row["error_type"]: row for row in await store.usage_totals(group_by="error_type")}
    assert totals["overloaded_error"]["requests"] == 1 and totals["overloaded_error"]["errors"] == 1
    assert totals[None]["requests"] == 1 and totals[None]["errors"] == 0
    assert "error_message_applied" not in str(await store.migrate())  # migrating again changes nothing
