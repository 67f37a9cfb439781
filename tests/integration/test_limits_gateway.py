"""Budgets, rate limits and revocation end to end: gateway processes backed by the sim, real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import free_port, gateway_process
from tests.upstreams import eventually, eventually_sync

ADMIN_KEY = "admin-" + "y" * 32
HEADERS = {"anthropic-version": "2023-06-01"}


def body(text: str = "hi", max_tokens: int = 64, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


def mint(url: str, **attrs: Any) -> dict[str, Any]:
    resp = httpx.post(url + "/admin/api/keys", json=attrs, headers={"x-api-key": ADMIN_KEY}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


@contextlib.contextmanager
def governed(
    tmp: Path, sim_url: str, pg_url: str | None, redis_url: str | None, workers: int = 1, **env: str
) -> Iterator[str]:
    full = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_KEY_CACHE_TTL": "1.0", **env}
    if pg_url:
        full["ETHEREAL_DATABASE_URL"] = pg_url
    if redis_url:
        full["ETHEREAL_REDIS_URL"] = redis_url
    with gateway_process(tmp, sim_url, env=full, workers=workers) as url:
        yield url


async def usage_rows(
    pg_url: str, key_id: str, expect: int, timeout: float = 20.0, *, status: int | None = None
) -> list[Any]:
    """The key's usage rows once at least ``expect`` of them (with ``status``: of that status) are
    in PostgreSQL (the meter flushes in the background), or at the deadline."""
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT * FROM usage_records WHERE key_id = $1", key_id)
            counted = rows if status is None else [r for r in rows if r["status"] == status]
            if len(counted) >= expect or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def redis_spent(redis_url: str, key_id: str) -> tuple[int, int, int]:
    from ethereal.redisconn import async_client

    client = async_client(redis_url)
    try:
        st, sm, ft = await client.hmget(f"ethereal:v1:{{k:{key_id}}}:b", "st", "sm", "ft")
        return int(st or 0), int(sm or 0), int(ft or 0)
    finally:
        await client.aclose()


async def post_until_decided(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    held: list[httpx.Response],
    lost: list[Exception] | None = None,
) -> httpx.Response:
    """Send; on a 429 wait its retry-after and send again, until served (read to the end) or refused 402.

    With ``lost``, a connection dropped before the answer is sent again, as the SDKs do, and recorded (under
    hundreds of streams on this 2-vCPU machine the gateway's uvicorn occasionally drops one: the server logs
    the request body as aborted by the client, the client sees the connection closed)."""
    while True:
        try:
            if payload.get("stream"):
                async with client.stream("POST", url + "/v1/messages", json=payload, headers=headers) as resp:
                    await resp.aread()
            else:
                resp = await client.post(url + "/v1/messages", json=payload, headers=headers)
        except httpx.TransportError as exc:
            if lost is None:
                raise
            lost.append(exc)
            await asyncio.sleep(0.2)
            continue
        if resp.status_code != 429:
            return resp
        held.append(resp)
        await asyncio.sleep(int(resp.headers["retry-after"]))


def check_held(held: list[httpx.Response]) -> None:
    """Every 429 says the budget is held by requests in flight, with a short retry-after."""
    assert held, "no request waited for the budget held by others"
    waits = sorted(int(r.headers["retry-after"]) for r in held)
    print(f"\nretry-after of the 429s (s): min {waits[0]}, median {waits[len(waits) // 2]}, max {waits[-1]}")
    for r in held:
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert "held by its requests in flight" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 5, r.headers["retry-after"]


async def test_budget_under_hundreds_of_concurrent_requests(
    sim_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    """300 requests at once against one budget, through 2 workers sharing Redis and PostgreSQL: spend
    exceeds the budget by at most one request's output."""
    # each request stays in flight 1.5 s upstream: the 300 arrive well within that (sending them takes the
    # one client process ~1 s on a busy 2-vCPU machine), so the first ones admitted still hold the budget
    # when the rest arrive, however fast or slow the gateway admits them
    text = "Count to ten please. sim:tokens=64 sim:latency=1500"
    with governed(tmp_path, sim_url, pg_url, redis_url, workers=2) as url:
        async with httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=400, keepalive_expiry=0.5)
        ) as client:
            # the price of one such request, measured on an unlimited key
            probe = mint(url)
            first = await client.post(
                url + "/v1/messages", json=body(text), headers={**HEADERS, "x-api-key": probe["key"]}
            )
            assert first.status_code == 200, first.text
            usage = first.json()["usage"]
            assert 0 < usage["output_tokens"] <= 64
            # claude-sonnet-4-6: $3 / $15 per MTok; the sim's answer is the same for the same body
            cost = usage["input_tokens"] * 3 + usage["output_tokens"] * 15
            in_cost, out_cost = usage["input_tokens"] * 3, usage["output_tokens"] * 15
            # room for 20.5 requests: well under the ~40 the 300 connections keep in flight at once, so
            # some always meet the budget held by others (at 40.5 a fast gateway could let them pass in turn)
            budget = cost * 20 + cost // 2
            key = mint(url, budget_micro_usd=budget, name="budgeted")
            headers = {**HEADERS, "x-api-key": key["key"]}
            held: list[httpx.Response] = []
            replies = await asyncio.gather(
                *(post_until_decided(client, url, body(text), headers, held) for _ in range(300))
            )
        statuses = [r.status_code for r in replies]
        assert set(statuses) == {200, 402}, {s: statuses.count(s) for s in set(statuses)}
        for r in replies:
            if r.status_code == 402:
                assert r.json()["error"]["type"] == "billing_error"
        check_held(held)
        rows = await usage_rows(pg_url, key["id"], expect=statuses.count(200), status=200)
        served = [r for r in rows if r["status"] == 200]
        assert len(served) == statuses.count(200)
        total = sum(r["cost_micro"] for r in rows)
        assert all(r["cost_micro"] == cost for r in served)
        # 1. over the budget by at most one request's output
        print(
            f"\n300 requests, budget {budget} micro-USD: served {len(served)}, held (429) {len(held)} times, "
            f"spent {total}, overshoot {total - budget} (one request's output costs {out_cost})"
        )
        assert total - budget <= out_cost, (total, budget, out_cost)
        # 2. 402 only once spend + a request's own input no longer fits: the budget is used up
        assert total + in_cost > budget, (total, budget, in_cost)
        # 3. Redis's spend for the key is exactly the sum of its usage rows, and nothing is left reserved
        # (settles are sent without waiting for Redis's reply: the last may land after its row)
        _, spent_micro, held_micro = await eventually(
            lambda: redis_spent(redis_url, key["id"]), lambda got: got[1:] == (total, 0)
        )
        assert spent_micro == total and held_micro == 0
        shown = httpx.get(
            f"{url}/admin/api/keys/{key['id']}",  # blocking on purpose: one check after the load
            headers={"x-api-key": ADMIN_KEY},
        ).json()
        assert shown["spend"]["cost_micro"] == total


@pytest.mark.parametrize(
    ("budget", "backend"), [("tokens", "redis"), ("micro", "redis"), ("tokens", "cluster")]
)
async def test_hard_budget_200_streams_two_gateways(
    sim_url: str, pg_url: str, tmp_path: Path, budget: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """200 concurrent streams (max_tokens 4096, outputs of 200 to 4,000 tokens) on a small budget, spread over
    two gateway processes sharing Redis (one server, or a 3-master Redis Cluster) and PostgreSQL, each client
    retrying on 429 until served or refused: the spend exceeds the budget by at most one request's output."""
    import random

    redis_url = request.getfixturevalue("redis_url" if backend == "redis" else "redis_cluster_url")
    rng = random.Random(11)
    with (
        governed(tmp_path / "a", sim_url, pg_url, redis_url) as url_a,
        governed(tmp_path / "b", sim_url, pg_url, redis_url) as url_b,
    ):
        if budget == "tokens":
            limit = 30_000
            key = mint(url_a, budget_tokens=limit, name="small token budget")
        else:
            limit = 500_000  # $0.50: ~10 answers of 2,000 tokens at $15/MTok
            key = mint(url_a, budget_micro_usd=limit, name="small money budget")
        headers = {**HEADERS, "x-api-key": key["key"]}
        held: list[httpx.Response] = []
        lost: list[Exception] = []
        # No connection is reused after a retry-after wait: on this loaded machine the gateway's event loop can
        # lag by seconds under 200 streams, so its 5 s keep-alive timer may close a connection a POST was just
        # sent on (the answer is lost; an SDK would retry, this test must not need to).
        limits = httpx.Limits(max_connections=450, keepalive_expiry=0.5)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            replies = await asyncio.gather(
                *(
                    post_until_decided(
                        client,
                        (url_a, url_b)[i % 2],
                        body(
                            f"stream {i} sim:tokens={rng.randint(200, 4000)} sim:tps=20000",
                            max_tokens=4096,
                            stream=True,
                        ),
                        headers,
                        held,
                        lost,
                    )
                    for i in range(200)
                )
            )
        statuses = [r.status_code for r in replies]
        assert set(statuses) == {200, 402}, {s: statuses.count(s) for s in set(statuses)}
        check_held(held)
        rows = await usage_rows(pg_url, key["id"], expect=statuses.count(200), status=200)
        served = [r for r in rows if r["status"] == 200]
        # a dropped connection may have lost an answer the gateway served (and metered)
        assert statuses.count(200) <= len(served) <= statuses.count(200) + len(lost), (len(served), len(lost))
        assert all(r["exact"] for r in served)
        if budget == "tokens":
            spend = [r["input_tokens"] + r["output_tokens"] for r in served]
            outputs = [r["output_tokens"] for r in served]
            inputs = [r["input_tokens"] for r in served]
        else:
            spend = [r["cost_micro"] for r in served]
            outputs = [r["output_tokens"] * 15 for r in served]
            inputs = [r["input_tokens"] * 3 for r in served]
        total = sum(spend)
        print(
            f"\n200 streams via 2 gateways ({backend}), {budget} budget {limit}: served {len(served)}, "
            f"held (429) {len(held)} times, connections dropped {len(lost)}, spent {total}, overshoot {total - limit} "
            f"(largest single output {max(outputs)})"
        )
        assert total - limit <= max(outputs), (total, limit, max(outputs))
        assert total + min(inputs) > limit  # refused only once even the smallest input no longer fits
        st, sm, held_tokens = await eventually(
            lambda: redis_spent(redis_url, key["id"]),
            lambda got: (got[0] if budget == "tokens" else got[1]) == total and got[2] == 0,
        )
        assert (st if budget == "tokens" else sm) == total and held_tokens == 0


async def test_budget_rebuilt_from_postgres_after_redis_loss(
    sim_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    import redis.asyncio as aioredis

    with governed(tmp_path, sim_url, pg_url, redis_url) as url:
        key = mint(url, budget_tokens=10_000)
        headers = {**HEADERS, "x-api-key": key["key"]}
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(3):
                assert (
                    await client.post(url + "/v1/messages", json=body("x sim:tokens=20"), headers=headers)
                ).status_code == 200
            rows = await usage_rows(pg_url, key["id"], expect=3)
            tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
            flusher = aioredis.Redis.from_url(redis_url)
            await flusher.flushall()  # Redis lost everything (restart without persistence)
            await flusher.aclose()
            # the key is held a moment (recovery_hold: other replicas re-announce what they had in
            # flight), with a 429 saying when to come back
            held: list[httpx.Response] = []
            resp = await post_until_decided(client, url, body("x sim:tokens=20"), headers, held)
            assert resp.status_code == 200 and len(held) <= 3
            rows = await usage_rows(pg_url, key["id"], expect=4 + len(held))  # the 429s are recorded too
            spent = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
            # the last settle is sent without waiting for Redis's reply: its row can be in PostgreSQL
            # before Redis has run it (on a busy machine)
            st, _, _ = await eventually(
                lambda: redis_spent(redis_url, key["id"]), lambda got: got[0] == spent
            )
            assert st == spent > tokens


async def test_stream_cut_short_is_settled_on_the_estimate(
    sim_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    with governed(tmp_path, sim_url, pg_url, redis_url) as url:
        key = mint(url, budget_micro_usd=10_000_000, max_concurrency=1)
        headers = {**HEADERS, "x-api-key": key["key"]}
        async with httpx.AsyncClient(timeout=30) as client:
            resp = await client.post(
                url + "/v1/messages",
                headers=headers,
                json=body(
                    "tell me sim:tokens=200 sim:ttft=30 sim:tps=4000 sim:fault=reset_mid,after_events=30",
                    max_tokens=400,
                    stream=True,
                ),
            )
            assert resp.status_code == 200 and b"event: error" in resp.content
            rows = await usage_rows(pg_url, key["id"], expect=1)
            assert len(rows) == 1 and rows[0]["exact"] is False and rows[0]["output_tokens"] > 0
            _st, sm, held = await eventually(
                lambda: redis_spent(redis_url, key["id"]), lambda got: got[1:] == (rows[0]["cost_micro"], 0)
            )
            assert sm == rows[0]["cost_micro"] > 0 and held == 0
            # the concurrency slot was released (the cut credential itself may be cooling down now)
            import redis.asyncio as aioredis

            client_r = aioredis.Redis.from_url(redis_url)
            assert await client_r.zcard(f"ethereal:v1:{{k:{key['id']}}}:z") == 0
            await client_r.aclose()


async def test_rpm_and_tpm_at_the_window_edges(sim_url: str, redis_url: str, tmp_path: Path) -> None:
    with governed(tmp_path, sim_url, None, redis_url, ETHEREAL_LIMITS_WINDOW_SECONDS="2") as url:
        key = mint(url, rpm=3)
        headers = {**HEADERS, "x-api-key": key["key"]}
        async with httpx.AsyncClient(timeout=30) as client:
            remaining = []
            for _ in range(3):
                resp = await client.post(url + "/v1/messages", json=body("a sim:tokens=3"), headers=headers)
                assert resp.status_code == 200
                assert resp.headers["anthropic-ratelimit-requests-limit"] == "3"
                assert resp.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
                remaining.append(resp.headers["anthropic-ratelimit-requests-remaining"])
            assert remaining == ["2", "1", "0"]
            refused = await client.post(url + "/v1/messages", json=body("a"), headers=headers)
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
            retry = int(refused.headers["retry-after"])
            assert 1 <= retry <= 3 and refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
            # the window slides: a little over 2 s after the first request there is room again
            deadline = time.monotonic() + 3.5
            while (
                resp := await client.post(url + "/v1/messages", json=body("a"), headers=headers)
            ).status_code == 429 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert resp.status_code == 200

            tkey = mint(url, tpm=300)
            theaders = {**HEADERS, "x-api-key": tkey["key"]}
            first = await client.post(
                url + "/v1/messages", json=body("b sim:tokens=200", max_tokens=250), headers=theaders
            )
            assert first.status_code == 200 and first.headers["anthropic-ratelimit-tokens-limit"] == "300"
            # admitted on its input estimate; settled at its real total (~210 tokens)
            second = await client.post(
                url + "/v1/messages", json=body("b sim:tokens=200", max_tokens=250), headers=theaders
            )
            assert second.status_code == 200
            third = await client.post(url + "/v1/messages", json=body("b"), headers=theaders)
            assert third.status_code == 429 and "tokens per minute" in third.json()["error"]["message"]
            assert int(third.headers["retry-after"]) >= 1


async def test_revocation_reaches_a_second_gateway_within_a_second(
    sim_url: str, pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    with (
        governed(tmp_path / "a", sim_url, pg_url, redis_url) as url_a,
        governed(tmp_path / "b", sim_url, pg_url, redis_url) as url_b,
    ):
        async with httpx.AsyncClient(timeout=30) as client:
            for pubsub in (True, False):
                key = mint(url_a)
                headers = {**HEADERS, "x-api-key": key["key"]}
                assert (
                    await client.post(url_b + "/v1/messages", json=body(), headers=headers)
                ).status_code == 200
                if pubsub:  # revoke through gateway A's admin API
                    revoked = await client.post(
                        f"{url_a}/admin/api/keys/{key['id']}/revoke", headers={"x-api-key": ADMIN_KEY}
                    )
                    assert revoked.status_code == 200
                else:  # straight in the database (no notification): the 1 s cache TTL bounds it
                    import asyncpg

                    conn = await asyncpg.connect(pg_url)
                    await conn.execute("UPDATE api_keys SET revoked = TRUE WHERE id = $1", key["id"])
                    await conn.close()
                t0 = time.monotonic()
                while True:
                    sent = time.monotonic() - t0
                    status = (
                        await client.post(url_b + "/v1/messages", json=body(), headers=headers)
                    ).status_code
                    if status == 401:
                        break
                    # a request sent a second or more after the revocation must be refused
                    assert status == 200 and sent < 1.0, (status, sent)
                    await asyncio.sleep(0.01)
                if pubsub:  # published through Redis: gone from B's cache at once
                    assert sent < 0.3, sent


@pytest.mark.parametrize("fail_open", [False, True])
def test_redis_unreachable_through_the_gateway(sim_url: str, tmp_path: Path, fail_open: bool) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with governed(tmp_path, sim_url, None, dead, ETHEREAL_LIMITS_FAIL_OPEN=str(fail_open).lower()) as url:
        key = mint(url, rpm=100, budget_usd=5)
        resp = httpx.post(
            url + "/v1/messages", json=body(), headers={**HEADERS, "x-api-key": key["key"]}, timeout=30
        )
        if fail_open:
            assert resp.status_code == 200
        else:
            assert resp.status_code == 503 and resp.json()["error"]["type"] == "overloaded_error"
            assert int(resp.headers["retry-after"]) >= 1
        said = "FAILING OPEN" if fail_open else "failing closed"
        logs = eventually_sync(
            lambda: "".join(p.read_text() for p in tmp_path.glob("gateway-*.log")), lambda text: said in text
        )  # the log writer flushes in the background
        assert said in logs


def test_embedded_mode_uses_the_local_limiter(sim_url: str, tmp_path: Path) -> None:
    with governed(tmp_path, sim_url, None, None) as url:
        key = mint(url, rpm=2, budget_tokens=10**6)
        headers = {**HEADERS, "x-api-key": key["key"]}
        codes = [
            httpx.post(url + "/v1/messages", json=body(), headers=headers, timeout=30).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
