"""The limiter contract, held by both backends: LocalLimiter (in-process) and RedisLimiter (real Redis)."""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord, mint
from ethereal.limits import Admission, BaseLimiter
from ethereal.limits.local import LocalLimiter
from ethereal.limits.plans import Plans
from ethereal.storage.records import UsageRecord
from ethereal.storage.sqlite import SQLiteStore

RFC3339 = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(params=["local", "redis", "cluster"])
async def make_limiter(request: pytest.FixtureRequest) -> Any:
    """The contract's backends: in-process, one Redis server, a 3-master Redis Cluster."""
    made: list[BaseLimiter] = []

    def make(**kwargs: Any) -> BaseLimiter:
        if request.param == "local":
            limiter: BaseLimiter = LocalLimiter(**kwargs)
        else:
            from ethereal.limits.redis import RedisLimiter

            url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
            limiter = RedisLimiter(url, **kwargs)
        made.append(limiter)
        return limiter

    make.backend = request.param  # type: ignore[attr-defined]
    yield make
    for limiter in made:
        await limiter.close()


def key(**attrs: Any) -> KeyRecord:
    return mint("sk-test-", **attrs)[1]


async def admit(
    limiter: BaseLimiter,
    k: KeyRecord,
    inp: int = 10,
    allowance: int = 100,
    price_in: float = 0.0,
    price_out: float = 0.0,
) -> Admission:
    return await limiter.admit(
        k,
        model="claude-sonnet-4-6",
        input_tokens=inp,
        max_tokens=allowance,
        price_in=price_in,
        price_out=price_out,
    )


async def refused(coro: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    return info.value


def header(adm: Admission, name: str) -> bytes | None:
    return dict(adm.headers).get(b"anthropic-ratelimit-" + name.encode())


async def test_unlimited_key_reserves_nothing(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter()
    adm = await admit(limiter, key())
    assert not adm.limited and adm.headers == []
    await limiter.settle(adm, tokens=100, cost_micro=5)


async def test_token_budget(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter()
    k = key(budget_tokens=100)
    a = await admit(
        limiter, k, inp=30, allowance=500
    )  # its allowance does not fit, nothing else in flight: alone
    err = await refused(admit(limiter, k, inp=10, allowance=10))  # the budget is held by a: 429, not 402
    assert (err.status, err.type) == (429, "rate_limit_error") and err.retry_after is not None
    assert "held by its requests in flight" in err.message and "token budget" in err.message
    await limiter.settle(a, tokens=60, cost_micro=0)
    b = await admit(limiter, k, inp=20, allowance=20)  # 60 + 20 + 20 fits exactly
    assert (await refused(admit(limiter, k, inp=1, allowance=1))).status == 429  # 60 + 40 held + 2 > 100
    await limiter.settle(b, tokens=40, cost_micro=0)
    err = await refused(admit(limiter, k, inp=1))  # spent: 402
    assert (err.status, err.type, err.retry_after) == (402, "billing_error", None)


async def test_micro_budget_hard(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter()
    k = key(budget_micro_usd=10_000)
    a = await admit(limiter, k, inp=1000, allowance=8192, price_in=3, price_out=15)  # reserves 3000 + 122880
    assert a.reserved_micro == 3000 + 8192 * 15
    # admitted alone: the next one waits for it, whatever it asks
    err = await refused(admit(limiter, k, inp=10, allowance=10, price_in=3, price_out=15))
    assert err.status == 429 and "spending budget" in err.message
    await limiter.settle(a, tokens=1100, cost_micro=4500)
    b = await admit(limiter, k, inp=100, allowance=100, price_in=3, price_out=15)  # 4500 + 300 + 1500 fits
    assert (await refused(admit(limiter, k, inp=1400, allowance=1, price_in=3, price_out=15))).status == 429
    # spend + its own input alone is over the budget: 402 even while others are in flight
    err = await refused(admit(limiter, k, inp=2000, allowance=1, price_in=3, price_out=15))
    assert err.status == 402 and err.type == "billing_error"
    await limiter.settle(b, tokens=200, cost_micro=1800)  # spent 6300
    c = await admit(limiter, k, inp=1200, allowance=8192, price_in=3, price_out=15)  # 3600 fits: alone
    await limiter.settle(c, tokens=1200 + 500, cost_micro=3600 + 7500)  # spent 17400: over by c's output only
    err = await refused(admit(limiter, k, inp=1, price_in=3, price_out=15))
    assert err.status == 402 and "budget" in err.message


async def test_hard_budget_under_concurrency(make_limiter: Callable[..., BaseLimiter]) -> None:
    """300 concurrent requests retrying on 429: spend exceeds the budget by at most one request's output,
    402 only once spend + the request's own input is over, and the budget ends up spent."""
    limiter = make_limiter()
    budget = 200_000
    k = key(budget_micro_usd=budget)
    rng = random.Random(7)
    spent = 0
    max_out_cost = 0
    outcomes = {"admitted": 0, "held": 0, "spent": 0}
    refusals: list[tuple[int, int]] = []  # (spent when refused, its input cost)

    async def one(i: int) -> None:
        nonlocal spent, max_out_cost
        inp, allowance = rng.randint(50, 400), 1000
        out = rng.randint(0, allowance)
        await asyncio.sleep(rng.random() * 0.05)
        while True:
            try:
                adm = await admit(limiter, k, inp=inp, allowance=allowance, price_in=3, price_out=15)
                break
            except GatewayError as exc:
                if exc.status == 402:
                    outcomes["spent"] += 1
                    refusals.append((spent, inp * 3))
                    return
                assert exc.status == 429 and exc.type == "rate_limit_error", exc.message
                assert exc.retry_after is not None and 0 < exc.retry_after <= 60
                outcomes["held"] += 1
                await asyncio.sleep(min(exc.retry_after, 0.2) * rng.random())
        outcomes["admitted"] += 1
        await asyncio.sleep(rng.random() * 0.05)
        cost = inp * 3 + out * 15
        max_out_cost = max(max_out_cost, out * 15)
        spent += cost
        await limiter.settle(adm, tokens=inp + out, cost_micro=cost)

    await asyncio.gather(*(one(i) for i in range(300)))
    assert outcomes["spent"] and outcomes["held"] and outcomes["admitted"], outcomes
    assert spent <= budget + max_out_cost, (spent - budget, max_out_cost)
    for spent_then, input_cost in refusals:
        assert spent_then + input_cost > budget  # 402 only when its own input did not fit
    snap = limiter.snapshot(k.id)
    snap = await snap if asyncio.iscoroutine(snap) else snap
    assert snap["spent_micro"] == spent and snap["held_micro"] == 0 and snap["in_flight"] == 0


async def test_token_windows_hold_allowances(make_limiter: Callable[..., BaseLimiter]) -> None:
    plans = Plans({"small": {"windows": [{"name": "burst", "seconds": 60, "tokens": 2000}]}})
    limiter = make_limiter(plans=plans)
    k = key(tpm=1000)
    a = await admit(limiter, k, inp=10, allowance=500)
    err = await refused(admit(limiter, k, inp=10, allowance=500))  # 10 + 500 + 10 + 500 > 1000
    assert err.status == 429 and "minute token window" in err.message and err.retry_after is not None
    await limiter.settle(a, tokens=110, cost_micro=0)
    await limiter.settle(await admit(limiter, k, inp=10, allowance=500), tokens=20, cost_micro=0)
    # plan windows: the same rule
    p = key(plan="small")
    b = await admit(limiter, p, inp=100, allowance=1500)
    err = await refused(admit(limiter, p, inp=100, allowance=400))
    assert err.status == 429 and "burst token window" in err.message
    await limiter.settle(b, tokens=200, cost_micro=0)
    c = await admit(limiter, p, inp=100, allowance=1700)  # 200 + 100 + 1700 fits exactly
    assert c.limited


async def test_held_retry_after_follows_request_durations(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter()
    k = key(budget_tokens=1000)
    for _ in range(2):  # requests of this key take ~0.6 s
        adm = await admit(limiter, k, inp=10, allowance=100)
        await asyncio.sleep(0.6)
        await limiter.settle(adm, tokens=20, cost_micro=0)
    a = await admit(limiter, k, inp=10, allowance=900)
    err = await refused(admit(limiter, k, inp=10, allowance=100))
    assert err.status == 429 and 0.4 <= (err.retry_after or 0) <= 0.7, err.retry_after
    await asyncio.sleep(0.3)
    err = await refused(admit(limiter, k, inp=10, allowance=100))
    assert 0.1 <= (err.retry_after or 0) <= 0.4, err.retry_after  # a is expected to end sooner now
    await limiter.settle(a, tokens=20, cost_micro=0)


async def test_refresh_keeps_a_long_request_reserved(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter(reservation_ttl=0.4)
    assert limiter.refresh_interval == pytest.approx(0.4 / 3)
    k = key(max_concurrency=1, budget_tokens=1000)
    stream = await admit(limiter, k, inp=100, allowance=800)
    for _ in range(8):  # 1.2 s: three reservation ttls
        await asyncio.sleep(0.15)
        await limiter.refresh(stream)
        assert (await refused(admit(limiter, k, inp=10, allowance=10))).status == 429
    await limiter.settle(stream, tokens=500, cost_micro=0)
    await limiter.refresh(stream)  # after settle: nothing happens
    again = await admit(limiter, k, inp=10, allowance=10)
    await limiter.settle(again, tokens=10, cost_micro=0)
    # without refreshes the reservation lapses after its ttl (a replica that died mid-stream)
    lost = await admit(limiter, k, inp=10, allowance=10)
    await asyncio.sleep(0.5)
    await limiter.refresh(lost)  # too late: not re-created
    late = await admit(limiter, k, inp=10, allowance=10)
    assert late.limited


async def test_count_tokens_admission(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter(window_seconds=2.0)
    k = key(rpm=3, max_concurrency=2, budget_tokens=100, tpm=50)
    spend = await admit(limiter, k, inp=40, allowance=60)
    await limiter.settle(spend, tokens=100, cost_micro=0)  # budget and TPM now spent
    assert (await refused(admit(limiter, k, inp=1))).status == 402
    assert limiter.governs_count(k) and not limiter.governs_count(key(budget_tokens=5, tpm=5))
    a = await limiter.admit_count(k)  # counting is free: neither budget nor TPM stops it
    b = await limiter.admit_count(k)
    err = await refused(limiter.admit_count(k))  # but it takes a concurrency slot
    assert err.status == 429 and "concurrent" in err.message
    await limiter.settle(a, tokens=0, cost_micro=0)
    await limiter.settle(b, tokens=0, cost_micro=0)
    err = await refused(limiter.admit_count(k))  # and counts in the RPM window (with the messages request)
    assert err.status == 429 and "requests per minute" in err.message
    snap = limiter.snapshot(k.id)
    snap = await snap if asyncio.iscoroutine(snap) else snap
    assert snap["spent_tokens"] == 100 and snap["in_flight"] == 0
    free = await limiter.admit_count(key(budget_tokens=5))
    assert not free.limited


async def test_concurrency_cap(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter()
    k = key(max_concurrency=2)
    a = await admit(limiter, k)
    await admit(limiter, k)
    err = await refused(admit(limiter, k))
    assert err.status == 429 and err.type == "rate_limit_error" and err.retry_after is not None
    assert "concurrent" in err.message
    await limiter.settle(a, tokens=1, cost_micro=0)
    await admit(limiter, k)


async def test_unsettled_reservations_expire(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter(reservation_ttl=0.5)
    k = key(max_concurrency=1, budget_tokens=1000)
    await admit(limiter, k, inp=900)  # never settled: its replica "died"
    assert (await refused(admit(limiter, k, inp=200))).status == 429
    await asyncio.sleep(0.6)
    late = await admit(limiter, k, inp=200)
    assert late.limited


async def test_rpm_window_edges(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter(window_seconds=2.0)
    k = key(rpm=3)
    remaining = []
    started = time.monotonic()
    for _ in range(3):
        adm = await admit(limiter, k)
        assert header(adm, "requests-limit") == b"3"
        assert RFC3339.match(header(adm, "requests-reset") or b"")
        remaining.append(header(adm, "requests-remaining"))
        await limiter.settle(adm, tokens=10, cost_micro=0)
    assert remaining == [b"2", b"1", b"0"]
    err = await refused(admit(limiter, k))
    assert err.status == 429 and err.retry_after is not None and 0 < err.retry_after <= 2.1
    assert dict(err.headers)[b"anthropic-ratelimit-requests-remaining"] == b"0"
    # well before the edge: still refused; just after it: admitted
    await asyncio.sleep(max(0.0, 1.4 - (time.monotonic() - started)))
    assert (await refused(admit(limiter, k))).status == 429
    await asyncio.sleep(max(0.0, 2.25 - (time.monotonic() - started)))
    adm = await admit(limiter, k)
    assert adm.limited


async def test_tpm_window_counts_real_tokens(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = make_limiter(window_seconds=1.0)
    k = key(tpm=100)
    a = await admit(limiter, k, inp=60, allowance=1000)
    assert header(a, "tokens-limit") == b"100" and header(a, "tokens-remaining") == b"40"
    assert header(a, "input-tokens-limit") == b"100" and header(a, "output-tokens-remaining") == b"40"
    err = await refused(admit(limiter, k, inp=60))
    assert err.status == 429 and "tokens per minute" in err.message
    await limiter.settle(a, tokens=30, cost_micro=0)  # the real total was smaller than the estimate
    b = await admit(limiter, k, inp=60)
    assert header(b, "tokens-remaining") == b"10"
    await limiter.settle(b, tokens=300, cost_micro=0)  # and larger: the window is full
    err = await refused(admit(limiter, k, inp=1))
    assert err.status == 429 and 0 < (err.retry_after or 0) <= 1.05
    await asyncio.sleep(err.retry_after + 0.05)  # type: ignore[operator]
    await admit(limiter, k, inp=60)


async def test_plan_envelopes_apply_on_top_of_key_caps(make_limiter: Callable[..., BaseLimiter]) -> None:
    plans = Plans({"tiny": {"windows": [{"name": "burst", "seconds": 1, "requests": 2, "tokens": 1000}]}})
    limiter = make_limiter(plans=plans, window_seconds=1.0)
    k = key(plan="Tiny", rpm=50)
    a = await admit(limiter, k)
    # the most restrictive window is reported
    assert header(a, "requests-limit") == b"2" and header(a, "requests-remaining") == b"1"
    await admit(limiter, k)
    err = await refused(admit(limiter, k))
    assert err.status == 429 and "burst" in err.message
    # the default plans exist and are matched loosely
    assert limiter.plans.get("Max 5×") is not None and limiter.plans.get("max-20x") is not None
    assert limiter.plans.get("pro").windows[0].requests == 45  # type: ignore[union-attr]


async def test_spend_seeded_from_the_database(
    make_limiter: Callable[..., BaseLimiter], tmp_path: Any
) -> None:
    store = await SQLiteStore.open(str(tmp_path / "s.sqlite3"))
    try:
        await store.migrate()
        k = key(budget_micro_usd=1000, budget_tokens=10_000)
        now = time.time()
        await store.insert_usage(
            [
                UsageRecord(
                    request_id=f"req_{uuid.uuid4().hex}",
                    key_id=k.id,
                    credential=None,
                    route="messages",
                    model="m",
                    status=200,
                    stream=False,
                    input_tokens=100,
                    output_tokens=100,
                    cost_micro=450,
                    started_at=now,
                    ended_at=now,
                )
                for _ in range(2)
            ]
        )
        limiter = make_limiter(store=store)
        a = await admit(limiter, k, inp=10, price_in=3)  # 900 + 30 fits
        await limiter.settle(a, tokens=20, cost_micro=60)  # 960
        assert (await refused(admit(limiter, k, inp=20, price_in=3))).status == 402
        snap = limiter.snapshot(k.id)
        snap = await snap if asyncio.iscoroutine(snap) else snap
        assert snap["spent_micro"] == 960 and snap["spent_tokens"] == 420
    finally:
        await store.close()


# Redis only


async def test_redis_keys_are_hash_tagged_and_versioned(redis_url: str) -> None:
    import redis.asyncio as aioredis
    from ethereal.limits.redis import RedisLimiter

    limiter = RedisLimiter(redis_url, plans=Plans())
    try:
        k = key(plan="pro", rpm=10, tpm=1000, budget_tokens=10**6, max_concurrency=3)
        adm = await admit(limiter, k)
        client = aioredis.Redis.from_url(redis_url)
        # one epoch hash per server (how a replica sees that Redis lost its state: kept, no expiry)
        names = [n.decode() for n in await client.keys("*") if n != b"ethereal:v1:epoch"]
        assert len(names) == 5  # budget hash, in-flight zset, minute + 5h + week windows
        assert all(n.startswith(f"ethereal:v1:{{k:{k.id}}}:") for n in names)
        await limiter.settle(adm, tokens=50, cost_micro=0)
        # a refused admit on fresh windows leaves nothing behind without an expiry either
        await refused(admit(limiter, key(tpm=10), inp=50))
        await limiter.snapshot(k.id)  # (flushes this worker's deferred settle)
        for name in await client.keys("*"):
            assert name == b"ethereal:v1:epoch" or await client.pttl(name) > 0, name
        await client.aclose()
    finally:
        await limiter.close()


async def test_redis_reloads_functions_after_flush(redis_url: str) -> None:
    import redis.asyncio as aioredis
    from ethereal.limits.redis import RedisLimiter

    limiter = RedisLimiter(redis_url)
    try:
        k = key(rpm=100)
        await limiter.settle(await admit(limiter, k), tokens=1, cost_micro=0)
        client = aioredis.Redis.from_url(redis_url)
        await client.execute_command("FUNCTION", "FLUSH")  # (a restart without persistence, a new node)
        await client.aclose()
        await limiter.settle(await admit(limiter, k), tokens=1, cost_micro=0)
    finally:
        await limiter.close()


@pytest.mark.parametrize("fail_open", [False, True])
async def test_redis_unreachable(fail_open: bool, caplog: pytest.LogCaptureFixture) -> None:
    from ethereal.limits.redis import RedisLimiter

    from tests.procs import free_port

    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", fail_open=fail_open, socket_timeout=0.5)
    try:
        k = key(rpm=10, budget_tokens=100)
        if fail_open:
            adm = await admit(limiter, k)
            assert not adm.limited
            await limiter.settle(adm, tokens=1, cost_micro=0)
            assert "FAILING OPEN" in caplog.text
        else:
            err = await refused(admit(limiter, k))
            assert err.status == 503 and err.type == "overloaded_error" and err.retry_after
            assert "failing closed" in caplog.text
    finally:
        await limiter.close()


async def test_local_limiter_window_math_with_a_fake_clock() -> None:
    now = [1_000_000.0]
    limiter = LocalLimiter(window_seconds=60.0, clock=lambda: now[0])
    k = key(rpm=2)
    await admit(limiter, k)
    now[0] += 30
    await admit(limiter, k)
    err = await refused(admit(limiter, k))
    # the first request leaves the window 60-61 s after it (never early, at most one 1 s bucket late)
    assert 30 <= (err.retry_after or 0) <= 31
    now[0] += 29.9
    assert (await refused(admit(limiter, k))).status == 429
    now[0] += 1.1
    await admit(limiter, k)


async def test_redis_restart_reconnects_reloads_and_reseeds(tmp_path: Any) -> None:
    """Redis dies mid-service (fail closed meanwhile), comes back empty: scripts reload, spend re-seeds."""
    import shutil
    import subprocess

    from ethereal.limits.redis import RedisLimiter

    from tests.procs import free_port

    port = free_port()
    cmd = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]

    async def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )  # a test's redis-server
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return proc
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    store = await SQLiteStore.open(str(tmp_path / "s.sqlite3"))
    await store.migrate()
    proc = await start()
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", store=store, socket_timeout=0.5, recovery_hold=0.3)
    await limiter.start()
    try:
        k = key(budget_tokens=1000, rpm=100)
        adm = await limiter.admit(k, model="m", input_tokens=100, max_tokens=0, request_id="req_x")
        await limiter.settle(adm, tokens=300, cost_micro=0)
        now = time.time()
        await store.insert_usage(
            [
                UsageRecord(
                    request_id="req_x",
                    key_id=k.id,
                    credential=None,
                    route="messages",
                    model="m",
                    status=200,
                    stream=False,
                    input_tokens=100,
                    output_tokens=200,
                    started_at=now,
                    ended_at=now,
                )
            ]
        )
        proc.terminate()
        proc.wait(timeout=10)
        assert (await refused(admit(limiter, k))).status == 503
        proc = await start()  # empty: no scripts, no counters
        # reconnects, loads the scripts, sees the loss (its settle of req_x is sent again), seeds 300
        # from the store (req_x's row: counted once) and holds the key a moment for other replicas
        assert (await refused(admit(limiter, k, inp=600))).status == 429
        deadline = time.monotonic() + 5
        while True:
            try:
                again = await admit(limiter, k, inp=600)
                break
            except GatewayError as exc:
                assert exc.status == 429 and time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await limiter.settle(again, tokens=650, cost_micro=0)
        assert (await limiter.snapshot(k.id))["spent_tokens"] == 950  # type: ignore[misc]
        assert (await refused(admit(limiter, k, inp=100))).status == 402
    finally:
        await limiter.close()
        await store.close()
        proc.terminate()
        proc.wait(timeout=10)
