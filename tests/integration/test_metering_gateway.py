"""Metering through a real gateway process and the simulated upstream.

Every recorded fixture stream is replayed (``sim:replay NAME``), streamed and not,
and the usage the gateway answers on ``GET /v1/usage/{id}`` and stores in its
database is checked against what the recording says Anthropic billed, priced
independently here (the 1-hour cache write, compaction and advisor iterations,
web searches included).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import mint_into
from tests.procs import RECORDED, gateway_process

FIXTURES = sorted(p.stem for p in RECORDED.glob("*.sse"))
ONE_HOUR_FIXTURE = "test_anthropic_cache_earlier_breakpoint_raised_to_later_longer_ttl.TRIMMED.0"
ADMIN = "metering-admin-key-0123456789"

# USD per MTok == micro-USD per token, written out here rather than read from the registry.
PRICES = {
    "claude-haiku-4-5-20251001": (1, 5),
    "claude-sonnet-4-5-20250929": (3, 15),
    "claude-sonnet-4-6": (3, 15),
    "claude-sonnet-4-20250514": (3, 15),
    "claude-opus-4-6": (5, 25),
    "claude-sonnet-5": (2, 10),  # its launch price became the standard one (the rise was cancelled)
    "claude-opus-4-8": (5, 25),
}


def fixture_events(name: str) -> list[dict[str, Any]]:
    raw = (RECORDED / f"{name}.sse").read_bytes()
    return [orjson.loads(line[5:]) for line in raw.split(b"\n") if line.startswith(b"data:")]


# a recording names the model it was made with; a retired one is asked for by a served model of the same
# prices (the upstream answers a retired id 404), and the replay reports, and is priced by, the recorded one
STAND_IN = {
    "claude-sonnet-4-20250514": "claude-sonnet-4-6",
    "claude-sonnet-4-5-20250929": "claude-sonnet-4-6",
}


def billed(name: str) -> dict[str, Any]:
    """What the recording says was billed, and its cost (the oracle)."""
    events = fixture_events(name)
    start = next(e for e in events if e["type"] == "message_start")["message"]
    u0 = start["usage"]
    u1 = [e for e in events if e["type"] == "message_delta"][-1]["usage"]
    model = start["model"]
    web = (u1.get("server_tool_use") or {}).get("web_search_requests", 0)

    def split(u: dict[str, Any], fallback: dict[str, Any] | None = None) -> tuple[int, int]:
        total = u.get("cache_creation_input_tokens", 0) or 0
        cc = u.get("cache_creation") or (fallback or {}).get("cache_creation")
        if cc is None:
            return total, 0
        return total - cc["ephemeral_1h_input_tokens"], cc["ephemeral_1h_input_tokens"]

    def cost(m: str, i: int, o: int, c5: int, c1: int, cr: int) -> float:
        pin, pout = PRICES[m]
        return i * pin + o * pout + c5 * pin * 1.25 + c1 * pin * 2 + cr * pin * 0.1

    if u1.get("iterations"):
        tot = {"input": 0, "output": 0, "c5": 0, "c1": 0, "cr": 0}
        micro = 0.0
        for it in u1["iterations"]:
            c5, c1 = split(it)
            vals = (it["input_tokens"], it["output_tokens"], c5, c1, it.get("cache_read_input_tokens", 0))
            for k, v in zip(tot, vals, strict=True):
                tot[k] += v
            micro += cost(it.get("model") or model, *vals)
    else:
        c5, c1 = split({**u0, **u1}, u0)
        tot = {
            "input": u1.get("input_tokens", u0["input_tokens"]),
            "output": u1["output_tokens"],
            "c5": c5,
            "c1": c1,
            "cr": u1.get("cache_read_input_tokens", u0.get("cache_read_input_tokens", 0)),
        }
        micro = cost(model, tot["input"], tot["output"], c5, c1, tot["cr"])
    return {"model": model, **tot, "web": web, "cost_micro": round(micro) + web * 10_000}


@pytest.fixture(scope="module")
def gw(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("metering-gw")
    key_a, rec_a = mint_into(data_dir, name="a")
    key_b, _rec_b = mint_into(data_dir, name="b")
    with gateway_process(data_dir, sim_url, env={"ETHEREAL_ADMIN_KEY": ADMIN}) as url:
        yield {"url": url, "a": key_a, "a_id": rec_a.id, "b": key_b, "data_dir": data_dir}


def headers(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


def stored_row(data_dir: Path, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(data_dir / "ethereal.sqlite3")
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute("SELECT * FROM usage_records WHERE request_id = ?", (request_id,)).fetchall()
        finally:
            conn.close()
        if rows:
            assert len(rows) == 1
            return dict(rows[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"no stored usage row for {request_id}")
        time.sleep(0.05)


def test_fixture_models_are_priced() -> None:
    assert {billed(name)["model"] for name in FIXTURES} <= set(PRICES)
    one_hour = billed(ONE_HOUR_FIXTURE)
    assert one_hour["c1"] == 3913 and one_hour["c5"] == 0  # the real 1-hour cache write


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("name", FIXTURES)
def test_recorded_fixture_usage_and_cost(gw: dict[str, Any], name: str, stream: bool) -> None:
    want = billed(name)
    body = {
        "model": STAND_IN.get(want["model"], want["model"]),
        "max_tokens": 4096,
        "stream": stream,
        "messages": [{"role": "user", "content": f"sim:replay {name}"}],
    }
    with httpx.Client(base_url=gw["url"], timeout=30) as client:
        resp = client.post("/v1/messages", json=body, headers=headers(gw["a"]))
        assert resp.status_code == 200, resp.text
        request_id = resp.headers["request-id"]
        if stream:
            assert resp.content == (RECORDED / f"{name}.sse").read_bytes()  # bytes untouched
        # answered right after the response ended, before any flush
        usage = client.get(f"/v1/usage/{request_id}", headers=headers(gw["a"]))
    assert usage.status_code == 200, usage.text
    got = usage.json()
    assert got["stream"] is stream and got["status"] == 200 and got["exact"] is True
    assert got["model"] == body["model"]
    assert (got["input_tokens"], got["output_tokens"]) == (want["input"], want["output"])
    assert got["cache_read_input_tokens"] == want["cr"]
    assert got["cache_creation"] == {
        "ephemeral_5m_input_tokens": want["c5"],
        "ephemeral_1h_input_tokens": want["c1"],
    }
    assert got["cache_ttl_assumed"] is False  # every recording reports the 5m/1h split
    assert got["server_tool_use"]["web_search_requests"] == want["web"]
    assert got["cost_micro"] == want["cost_micro"], (name, got, want)
    assert got["key_id"] == gw["a_id"]
    assert got["timing"]["duration_ms"] >= 0 and got["timing"]["started_at"].endswith("Z")
    row = stored_row(gw["data_dir"], request_id)
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cache_creation_5m"],
        row["cache_creation_1h"],
        row["cache_read"],
        row["cost_micro"],
        row["web_search_requests"],
    ) == (want["input"], want["output"], want["c5"], want["c1"], want["cr"], want["cost_micro"], want["web"])
    assert row["stream"] == int(stream) and row["exact"] == 1 and row["status"] == 200
    assert row["credential"] and row["upstream_request_id"]


def test_usage_visibility(gw: dict[str, Any]) -> None:
    with httpx.Client(base_url=gw["url"], timeout=30) as client:
        resp = client.post(
            "/v1/messages",
            headers=headers(gw["a"]),
            json={
                "model": "claude-haiku-4-5",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        rid = resp.headers["request-id"]
        assert client.get(f"/v1/usage/{rid}", headers=headers(gw["a"])).status_code == 200
        other = client.get(f"/v1/usage/{rid}", headers=headers(gw["b"]))
        assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"
        admin = client.get(f"/v1/usage/{rid}", headers={"x-api-key": ADMIN})
        assert admin.status_code == 200 and admin.json()["request_id"] == rid
        assert client.get(f"/v1/usage/{rid}", headers={"x-api-key": "sk-ant-nope"}).status_code == 401
        assert (
            client.get("/v1/usage/req_doesnotexist000000000000", headers=headers(gw["a"])).status_code == 404
        )
        # the alias resolved before pricing
        assert admin.json()["model"] == "claude-haiku-4-5-20251001"


def test_every_request_with_a_key_is_recorded(gw: dict[str, Any]) -> None:
    with httpx.Client(base_url=gw["url"], timeout=30) as client:
        before = client.get("/admin/api/meter", headers={"x-api-key": ADMIN}).json()
        cases = [
            ({"model": "claude-sonnet-4-6", "messages": []}, 400, "invalid_request_error"),  # no max_tokens
            (
                {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": "sim:fault=400"}],
                },
                400,
                "invalid_request_error",
            ),
            (
                {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 10,
                    "stream": True,
                    "messages": [
                        {"role": "user", "content": "sim:fault=error_mid,after_events=4 sim:tokens=50"}
                    ],
                },
                200,
                "overloaded_error",
            ),
        ]
        for body, status, etype in cases:
            resp = client.post("/v1/messages", json=body, headers=headers(gw["a"]))
            assert resp.status_code == status, resp.text
            got = client.get(f"/v1/usage/{resp.headers['request-id']}", headers=headers(gw["a"])).json()
            assert got["status"] == status and got["error_type"] == etype, got
        # the stream cut by an error event is billed from the tap's estimate, marked as such
        assert got["exact"] is False and got["output_tokens"] >= 1
        # count_tokens and models are recorded too, at no cost
        resp = client.post(
            "/v1/messages/count_tokens",
            headers=headers(gw["a"]),
            json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hello"}]},
        )
        got = client.get(f"/v1/usage/{resp.headers['request-id']}", headers=headers(gw["a"])).json()
        assert got["route"] == "count_tokens" and got["cost_micro"] == 0
        resp = client.get("/v1/models", headers=headers(gw["a"]))
        assert (
            client.get(f"/v1/usage/{resp.headers['request-id']}", headers=headers(gw["a"])).json()["route"]
            == "models"
        )
        # refused before a key is known: counted, not recorded
        resp = client.post("/v1/messages", json=cases[0][0], headers=headers("sk-ant-api03-wrong"))
        assert resp.status_code == 401
        assert (
            client.get(
                f"/v1/usage/{resp.headers['request-id']}",
                headers={"x-api-key": ADMIN},
            ).status_code
            == 404
        )
        after = client.get("/admin/api/meter", headers={"x-api-key": ADMIN}).json()
        assert after["unauthenticated"] == before["unauthenticated"] + 1
        assert after["recorded"] >= before["recorded"] + 5


def test_client_disconnect_is_billed_from_the_estimate(gw: dict[str, Any]) -> None:
    from ethereal.sim._gen import ctok

    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 4000,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story. sim:tokens=3000 sim:tps=200"}],
    }
    with httpx.Client(base_url=gw["url"], timeout=30) as client:
        with client.stream("POST", "/v1/messages", json=body, headers=headers(gw["a"])) as resp:
            assert resp.status_code == 200
            rid = resp.headers["request-id"]
            buf = b""
            t0 = time.monotonic()
            for chunk in resp.iter_raw():
                buf += chunk
                if time.monotonic() - t0 > 1.5:
                    break
        # the connection is closed here, mid-stream
        # the sim bills ceil(characters / 4) per text block (its message_delta would have said so)
        complete = buf[: buf.rfind(b"\n") + 1]  # a chunk may end mid-line
        text = "".join(
            orjson.loads(line[5:])["delta"]["text"]
            for line in complete.split(b"\n")
            if line.startswith(b"data:") and b'"text_delta"' in line
        )
        received = ctok(text)
        assert 100 < received < 3000
        deadline = time.monotonic() + 10
        while True:
            got = client.get(f"/v1/usage/{rid}", headers=headers(gw["a"]))
            if got.status_code == 200 or time.monotonic() > deadline:
                break
    rec = got.json()
    print(f"\nclient received {received} output tokens; recorded {rec['output_tokens']} (estimated)")
    assert rec["status"] == 499 and rec["error_type"] == "client_disconnected"
    assert rec["exact"] is False
    # the gateway may have read a little past what the client got before noticing it was gone
    assert abs(rec["output_tokens"] - received) <= 0.15 * received, (rec["output_tokens"], received)
    assert rec["cost_micro"] == rec["input_tokens"] * 3 + rec["output_tokens"] * 15
    row = stored_row(gw["data_dir"], rid)
    assert row["exact"] == 0 and row["output_tokens"] == rec["output_tokens"]


def test_admin_aggregates(gw: dict[str, Any]) -> None:
    with httpx.Client(base_url=gw["url"], timeout=30) as client:
        since = time.time() - 0.001
        for _ in range(3):
            client.post(
                "/v1/messages",
                headers=headers(gw["b"]),
                json={
                    "model": "claude-haiku-4-5",
                    "max_tokens": 20,
                    "messages": [{"role": "user", "content": "x"}],
                },
            )
        ids = []
        for group_by in ("key_id", "model", "credential", "route"):
            resp = client.get(
                "/admin/api/usage",
                params={"group_by": group_by, "since": str(since)},
                headers={"x-api-key": ADMIN},
            )
            assert resp.status_code == 200, resp.text
            data = resp.json()
            assert data["totals"]["requests"] == 3
            ids.append(data["data"][0][group_by])
        rows = resp.json()["data"]
        assert rows[0]["cost_micro"] > 0 and rows[0]["cost_usd"] == f"{rows[0]['cost_micro'] / 1e6:.6f}"
        assert ids[1] == "claude-haiku-4-5-20251001" and ids[3] == "messages"
        assert (
            client.get(
                "/admin/api/usage", params={"group_by": "nope"}, headers={"x-api-key": ADMIN}
            ).status_code
            == 400
        )
        assert (
            client.get(
                "/admin/api/usage", params={"since": "2026-13-99"}, headers={"x-api-key": ADMIN}
            ).status_code
            == 400
        )
        assert client.get("/admin/api/usage", headers=headers(gw["a"])).status_code == 401
        iso = client.get(
            "/admin/api/usage",
            params={"group_by": "model", "since": "2000-01-01T00:00:00Z", "until": "2000-01-02"},
            headers={"x-api-key": ADMIN},
        )
        assert iso.status_code == 200 and iso.json()["data"] == []


def test_usage_answers_across_workers(sim_url: str, tmp_path: Path) -> None:
    """With two workers the lookup often lands on the worker that did not serve the request:
    it waits for the other worker's flush instead of answering 404."""
    key, _ = mint_into(tmp_path, name="workers")
    with gateway_process(tmp_path, sim_url, workers=2, env={"ETHEREAL_ADMIN_KEY": ADMIN}) as url:
        pids = set()
        # at least 16 lookups, and on until both workers have answered one: the workers share one
        # listening socket, and on a busy machine one of them can take many connections in a row
        deadline = time.monotonic() + 120
        i = 0
        while i < 16 or (len(pids) < 2 and time.monotonic() < deadline):
            i += 1
            with httpx.Client(base_url=url, timeout=30) as client:  # a new connection: any worker
                resp = client.post(
                    "/v1/messages",
                    headers=headers(key),
                    json={
                        "model": "claude-haiku-4-5",
                        "max_tokens": 20,
                        "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": "x"}],
                    },
                )
                rid = resp.headers["request-id"]
            with httpx.Client(base_url=url, timeout=30) as client:
                got = client.get(f"/v1/usage/{rid}", headers=headers(key))
                assert got.status_code == 200, got.text
                assert got.json()["request_id"] == rid
                pids.add(client.get("/admin/api/meter", headers={"x-api-key": ADMIN}).json()["worker_pid"])
        assert len(pids) == 2  # both workers really answered
