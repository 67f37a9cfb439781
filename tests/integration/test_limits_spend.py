"""Spend limits enforced by the limiter (#22), held by both backends: in-process, one Redis, a Redis
Cluster. Person, team (per member and pooled), organization and key caps; the refusal rules; the
bound under concurrency."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord, mint
from ethereal.limits import Admission, BaseLimiter
from ethereal.limits.local import LocalLimiter
from ethereal.spend.enforce import SpendLimitError
from ethereal.spend.limits import LimitBook, SpendLimit, new_limit_id
from ethereal.spend.periods import period_end

CONTRACT_BACKENDS = ["local", "redis", "cluster"]


@pytest.fixture(params=CONTRACT_BACKENDS)
async def make_limiter(request: pytest.FixtureRequest) -> Any:
    """The contract's backends (as tests/integration/test_limits.py): in-process, one Redis server, a
    3-master Redis Cluster."""
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


CENT = 10_000  # micro-USD


class Book:
    """What the limiter reads of the SpendService: its ``book``."""

    def __init__(self, *limits: SpendLimit) -> None:
        self.book = LimitBook.of(limits, version=time.time())

    def set(self, *limits: SpendLimit) -> None:
        self.book = LimitBook.of(limits, version=time.time())


def limit(scope_type: str, scope_id: str, period: str, cents: int | None, shared: bool = False) -> SpendLimit:
    return SpendLimit(
        id=new_limit_id(),
        scope_type=scope_type,
        scope_id=scope_id,
        period=period,
        amount_cents=cents,
        shared=shared,
    )


def key(**attrs: Any) -> KeyRecord:
    return mint("sk-test-", **attrs)[1]


def limited(make: Callable[..., BaseLimiter], book: Book) -> BaseLimiter:
    limiter = make()
    limiter.gate.service = book
    return limiter


async def admit(limiter: BaseLimiter, k: KeyRecord, in_m: int, out_m: int) -> Admission:
    return await limiter.admit(
        k, model="claude-sonnet-4-6", input_tokens=10, max_tokens=100, input_micro=in_m, output_micro=out_m
    )


async def refused(coro: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    return info.value


async def test_person_daily_cap(make_limiter: Callable[..., BaseLimiter]) -> None:
    book = Book(limit("user", "ann", "daily", 1))  # 1 cent = 10,000 micro-USD
    limiter = limited(make_limiter, book)
    ann = key(owner="ann")
    a = await admit(limiter, ann, 1000, 5000)
    hdr = dict(a.headers)
    assert (
        hdr[b"ethereal-spend-limit-period"] == b"daily"
        and hdr[b"ethereal-spend-limit-utilization"] == b"0.0000"
    )
    assert hdr[b"ethereal-spend-limit-status"] == b"allowed"
    # only its output allowance and ann's request in flight do not fit: held, a short retry
    err = await refused(admit(limiter, ann, 1000, 5000))
    assert (err.status, err.type) == (429, "rate_limit_error") and not isinstance(err, SpendLimitError)
    assert err.retry_after is not None and err.retry_after <= 60
    assert (b"x-should-retry", b"true") in err.response_headers()
    await limiter.settle(a, tokens=0, cost_micro=7000)
    # nothing in flight: admitted alone although its allowance does not fit
    c = await admit(limiter, ann, 1000, 5000)
    assert dict(c.headers)[b"ethereal-spend-limit-utilization"] == b"0.7000"
    assert dict(c.headers)[b"ethereal-spend-limit-status"] == b"allowed"  # warning from 80 %
    await limiter.settle(c, tokens=0, cost_micro=4000)  # spent 11,000: over by c's output only
    err = await refused(admit(limiter, ann, 1, 1))
    assert isinstance(err, SpendLimitError)
    assert (err.status, err.type) == (429, "billing_error")
    now = time.time()
    reset = period_end("daily", now)
    assert err.resets_at == int(reset)
    assert (
        err.message
        == "spend limit reached (daily; resets "
        + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(reset))
        + ")"
    )
    headers = dict(err.response_headers())
    assert headers[b"x-should-retry"] == b"false"
    assert abs(int(headers[b"retry-after"]) - (reset - now)) <= 2
    body = err.openai_body()["error"]
    assert body == {
        "type": "usage_limit_reached",
        "code": "spend_limit_reached",
        "message": err.message,
        "param": None,
        "resets_at": int(reset),
    }
    # spend + its own input over the cap: billing_error even while nothing is in flight; another person is free
    bob = await admit(limiter, key(owner="bob"), 50_000, 50_000)
    await limiter.settle(bob, tokens=0, cost_micro=100_000)
    # a second key of ann's is held by the same cap
    assert isinstance(await refused(admit(limiter, key(owner="ann"), 1, 1)), SpendLimitError)
    # the cap deleted: admitted again
    book.set()
    await limiter.settle(await admit(limiter, ann, 1, 1), tokens=0, cost_micro=1)


async def test_input_alone_over_the_cap_is_billing(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(make_limiter, Book(limit("user", "ann", "daily", 1)))
    ann = key(owner="ann")
    a = await admit(limiter, ann, 2000, 2000)
    err = await refused(admit(limiter, ann, 9000, 1))  # 0 + 9000 fits the cap, held by a: 429 rate limit
    assert err.type == "rate_limit_error"
    err = await refused(admit(limiter, ann, 10_001, 1))  # its input alone is over: billing
    assert isinstance(err, SpendLimitError)
    await limiter.settle(a, tokens=0, cost_micro=100)


async def test_team_default_applies_to_each_member(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(
        make_limiter, Book(limit("rbac_group", "eng", "monthly", 1), limit("organization", "", "weekly", 100))
    )
    ann, bob = key(owner="ann", teams=["eng"]), key(owner="bob", teams=["eng"])
    for k in (ann, bob):
        a = await admit(limiter, k, 1000, 1000)
        await limiter.settle(a, tokens=0, cost_micro=9_000)
        a = await admit(limiter, k, 100, 100)  # the fullest cap is the team's: 90 %
        assert dict(a.headers)[b"ethereal-spend-limit-source"] == b"rbac_group"
        await limiter.settle(a, tokens=0, cost_micro=1_000)
    for k in (ann, bob):
        err = await refused(admit(limiter, k, 1, 1))
        assert isinstance(err, SpendLimitError) and "monthly" in err.message
    # someone outside the team: the organization's weekly default
    carol = await admit(limiter, key(owner="carol"), 1000, 1000)
    assert dict(carol.headers)[b"ethereal-spend-limit-source"] == b"organization"
    await limiter.settle(carol, tokens=0, cost_micro=1)


async def test_shared_pool(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(make_limiter, Book(limit("rbac_group", "eng", "daily", 2, shared=True)))
    ann, bob = key(owner="ann", teams=["eng"]), key(owner="bob", teams=["eng"])
    a = await admit(limiter, ann, 1000, 1000)
    # the pool holds ann's request: bob waits (nothing of bob's own is in flight, but the pool's is)
    err = await refused(admit(limiter, bob, 10_000, 10_000))
    assert err.type == "rate_limit_error"
    await limiter.settle(a, tokens=0, cost_micro=15_000)
    b = await admit(limiter, bob, 1000, 10_000)  # alone on the pool
    await limiter.settle(b, tokens=0, cost_micro=6000)  # the pool spent 21,000 > 20,000
    for k in (ann, bob):
        assert isinstance(await refused(admit(limiter, k, 1, 1)), SpendLimitError)
    # outside the team: unaffected
    await limiter.settle(await admit(limiter, key(owner="dan"), 1, 1), tokens=0, cost_micro=1)


async def test_pool_refusal_undoes_the_person_reservation(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(
        make_limiter,
        Book(limit("rbac_group", "eng", "daily", 1, shared=True), limit("user", "ann", "daily", 100)),
    )
    ann, bob = key(owner="ann", teams=["eng"]), key(owner="bob", teams=["eng"])
    b = await admit(limiter, bob, 1000, 1000)
    await limiter.settle(b, tokens=0, cost_micro=10_000)  # the pool is spent
    assert isinstance(await refused(admit(limiter, ann, 1, 500_000)), SpendLimitError)
    # ann's own cap holds nothing of the refused request: without the pool, 1,000 + 600,000 fits her
    # $1 cap unless 500,001 were still held
    limiter.gate.service = Book(limit("user", "ann", "daily", 100))
    a1 = await admit(limiter, ann, 1000, 600_000)
    assert (await refused(admit(limiter, ann, 1000, 500_000))).type == "rate_limit_error"  # held by a1
    await limiter.settle(a1, tokens=0, cost_micro=1)


async def test_key_cap_beside_the_person(make_limiter: Callable[..., BaseLimiter]) -> None:
    k1, k2 = key(owner="ann"), key(owner="ann")
    limiter = limited(
        make_limiter, Book(limit("api_key", k1.id, "daily", 1), limit("user", "ann", "monthly", 100))
    )
    a = await admit(limiter, k1, 1000, 1000)
    await limiter.settle(a, tokens=0, cost_micro=10_000)
    err = await refused(admit(limiter, k1, 1, 1))
    assert isinstance(err, SpendLimitError) and "daily" in err.message
    await limiter.settle(await admit(limiter, k2, 1, 1), tokens=0, cost_micro=1)  # ann's other key is free


async def test_several_caps_spent_name_the_last_reset(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(
        make_limiter,
        Book(
            limit("user", "ann", "daily", 1),
            limit("user", "ann", "monthly", 1),
            limit("user", "ann", "weekly", 1),
        ),
    )
    ann = key(owner="ann")
    await limiter.settle(await admit(limiter, ann, 100, 100), tokens=0, cost_micro=20_000)
    err = await refused(admit(limiter, ann, 1, 1))
    assert isinstance(err, SpendLimitError)
    now = time.time()
    last = max(("daily", "weekly", "monthly"), key=lambda p: period_end(p, now))
    assert f"({last};" in err.message and err.resets_at == int(period_end(last, now))


async def test_zero_blocks(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(make_limiter, Book(limit("user", "ann", "daily", 0)))
    assert isinstance(await refused(admit(limiter, key(owner="ann"), 0, 0)), SpendLimitError)


async def test_count_tokens_never_blocked(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(make_limiter, Book(limit("user", "ann", "daily", 0)))
    ann = key(owner="ann")
    assert limiter.governs(ann) and not limiter.governs_count(ann)
    adm = await limiter.admit_count(ann)
    await limiter.settle(adm, tokens=0, cost_micro=0)


async def test_keys_without_limits_are_not_governed(make_limiter: Callable[..., BaseLimiter]) -> None:
    limiter = limited(make_limiter, Book(limit("user", "ann", "daily", 1)))
    bob = key(owner="bob")
    assert not limiter.governs(bob) and limiter.gate.plan(bob) is None


async def test_concurrent_bound(make_limiter: Callable[..., BaseLimiter]) -> None:
    """200 concurrent requests of one person's keys, each retried after its 429's retry-after until
    served or refused for the day: spend <= cap + one request's output, and the cap ends up spent."""
    cap_cents = 50
    limiter = limited(make_limiter, Book(limit("user", "ann", "daily", cap_cents)))
    keys = [key(owner="ann") for _ in range(5)]
    rng = random.Random(11)
    spent = 0
    max_out = 0
    served = 0

    async def client(i: int) -> None:
        nonlocal spent, max_out, served
        k = keys[i % len(keys)]
        in_m, out_m = rng.randint(200, 2000), rng.randint(2000, 20_000)
        while True:
            try:
                adm = await admit(limiter, k, in_m, out_m)
            except SpendLimitError:
                return
            except GatewayError as exc:
                assert exc.status == 429 and exc.type == "rate_limit_error"
                await asyncio.sleep(min(0.05, (exc.retry_after or 0.01) / 20))
                continue
            await asyncio.sleep(rng.random() * 0.01)
            real_out = rng.randint(out_m // 4, out_m)
            max_out = max(max_out, real_out)
            spent += in_m + real_out
            served += 1
            await limiter.settle(adm, tokens=0, cost_micro=in_m + real_out)
            return

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(200))), 120)
    cap = cap_cents * CENT
    assert spent <= cap + max_out, (spent, cap, max_out)
    assert spent >= cap - 20_000 or served == 200  # the cap was used, not stranded by holds


@pytest.mark.parametrize("make_limiter", ["redis"], indirect=True)  # a single server's FLUSHALL
async def test_redis_loss_gives_back_reservations_in_flight(make_limiter: Callable[..., BaseLimiter]) -> None:
    """Redis loses its state while a capped request is in flight: the replica puts the reservation back
    (spend_restore.lua) before anything else is admitted, and the counter is seeded again."""
    import redis.asyncio as aioredis

    limiter = limited(make_limiter, Book(limit("user", "ann", "daily", 1)))
    ann = key(owner="ann")
    a = await admit(limiter, ann, 1000, 5000)
    url = limiter.url  # type: ignore[attr-defined]
    client = aioredis.from_url(url)
    try:
        await client.flushall()
        # the next admission sees the loss, gives a's reservation back, then holds (recovery) or waits for a
        err = await refused(admit(limiter, ann, 1000, 5000))
        assert err.type == "rate_limit_error"
        held = await client.hget("ethereal:v1:{u:ann}:p", f"r:{a.token}")
        assert held is not None and int(held.split(b",")[1]) == 6000
        await limiter.settle(a, tokens=0, cost_micro=7000)
        await asyncio.sleep(2.2)  # the recovery hold
        c = await admit(limiter, ann, 1000, 5000)  # 7,000 spent: alone
        await limiter.settle(c, tokens=0, cost_micro=1000)
        assert isinstance(await refused(admit(limiter, ann, 2001, 1)), SpendLimitError)  # 8,000 + 2,001
    finally:
        await client.aclose()


async def test_changing_the_owner_moves_the_state(make_limiter: Callable[..., BaseLimiter]) -> None:
    """A key given to another person is held by that person's caps from its next request on (its
    limiter state lives under the person's tag); what it spent stays with the person who spent it."""
    import dataclasses

    limiter = limited(make_limiter, Book(limit("user", "ann", "daily", 1), limit("user", "bob", "daily", 1)))
    k = key(owner="ann")
    await limiter.settle(await admit(limiter, k, 100, 100), tokens=0, cost_micro=10_000)
    assert isinstance(await refused(admit(limiter, k, 1, 1)), SpendLimitError)
    moved = dataclasses.replace(k, owner="bob")
    a = await admit(limiter, moved, 100, 100)
    assert a.caps is not None and a.caps.tag == "u:bob"
    await limiter.settle(a, tokens=0, cost_micro=10_000)
    assert isinstance(await refused(admit(limiter, moved, 1, 1)), SpendLimitError)
    assert isinstance(
        await refused(admit(limiter, key(owner="ann"), 1, 1)), SpendLimitError
    )  # ann's spend stays


async def test_reseed_after_a_reprice(make_limiter: Callable[..., BaseLimiter]) -> None:
    """A re-price drops the current periods' counters it moved: they are seeded again from the
    (corrected) records at their next use (here no store: nothing spent)."""
    limiter = limited(
        make_limiter,
        Book(limit("user", "ann", "daily", 1), limit("rbac_group", "eng", "daily", 1, shared=True)),
    )
    k = key(owner="ann", teams=["eng"])
    await limiter.settle(await admit(limiter, k, 100, 100), tokens=0, cost_micro=10_000)
    assert isinstance(await refused(admit(limiter, k, 1, 1)), SpendLimitError)
    assert await limiter.reseed_caps({("ann", k.id)}, {"eng"}) >= 1
    await limiter.settle(await admit(limiter, k, 1, 1), tokens=0, cost_micro=1)
