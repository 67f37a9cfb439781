"""The credential pool in isolation: choice, affinity, cooldowns, caps, shared health."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import pytest
from ethereal.upstream.affinity import cache_affinity
from ethereal.upstream.pool import Credential, FailureKind, Pool, Refusal, Refused


def creds(*names: str, **kw) -> list[Credential]:
    return [Credential(name=n, base_url=f"http://{n}", api_key=f"key-{n}", **kw) for n in names]


def key(i: int) -> bytes:
    return cache_affinity(
        {
            "system": [{"type": "text", "text": f"prefix {i}", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}],
        },
        "claude-sonnet-4-5",
    )


# ---------------------------------------------------------------------- choice
async def test_least_in_flight_by_weight_and_idle_spread() -> None:
    pool = Pool(creds("a", "b", "c"), rng=random.Random(1))
    counts = Counter()
    for _ in range(300):
        c = await pool.acquire("m")
        counts[c.name] += 1
        pool.release(c)
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 60  # idle: ties broken at random

    held = [await pool.acquire("m") for _ in range(9)]
    assert Counter(c.name for c in held) == {"a": 3, "b": 3, "c": 3}
    for c in held:
        pool.release(c)

    heavy = Pool([*creds("big", weight=3.0), *creds("small")], rng=random.Random(2))
    held = [await heavy.acquire("m") for _ in range(8)]
    assert Counter(c.name for c in held) == {"big": 6, "small": 2}
    # weights count even when nothing is in flight: the first pick goes to the bigger one
    for c in held:
        heavy.release(c)
    assert (await heavy.acquire("m")).name == "big"


async def test_models_filter() -> None:
    pool = Pool([*creds("opus", models=["claude-opus-4-1"]), *creds("sonnets", models=["claude-sonnet-*"])])
    assert [c.name for c in pool.candidates("claude-opus-4-1")] == ["opus"]
    assert [c.name for c in pool.candidates("claude-sonnet-4-5")] == ["sonnets"]
    assert pool.candidates("claude-haiku-4-5") == []
    assert isinstance(await pool.acquire("claude-haiku-4-5"), Refusal)


async def test_affinity_is_sticky_spreads_and_is_stable() -> None:
    pool = Pool(creds("a", "b", "c"))
    owners = {}
    for i in range(300):
        first = pool.candidates("m", key(i))[0].name
        assert all(pool.candidates("m", key(i))[0].name == first for _ in range(3))
        owners[i] = first
    spread = Counter(owners.values())
    assert set(spread) == {"a", "b", "c"} and min(spread.values()) > 70, spread
    # rendezvous: removing a credential moves only the prefixes it owned
    pool.remove("c")
    for i, owner in owners.items():
        now = pool.candidates("m", key(i))[0].name
        if owner != "c":
            assert now == owner


async def test_affinity_with_weights() -> None:
    pool = Pool([*creds("big", weight=4.0), *creds("small")])
    spread = Counter(pool.candidates("m", key(i))[0].name for i in range(500))
    assert 330 < spread["big"] < 470, spread


async def test_affinity_bounded_load() -> None:
    pool = Pool(creds("a", "b", "c"))
    k = key(7)
    owner = pool.candidates("m", k)[0]
    owner.in_flight = 50  # far above the pool average
    assert pool.candidates("m", k)[0] is not owner
    owner.in_flight = 1
    assert pool.candidates("m", k)[0] is owner


async def test_exclude_gives_next_in_rendezvous_order() -> None:
    pool = Pool(creds("a", "b", "c"))
    order = [c.name for c in pool.candidates("m", key(3))]
    got = await pool.acquire("m", key(3), exclude=[order[0]])
    assert got is not None and got.name == order[1]


# ---------------------------------------------------------------------- health
class Clock:
    """The pool's clock, stepped by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def clocked(*names: str, **kw) -> tuple[Pool, Clock]:
    clock = Clock()
    return Pool(creds(*names), clock=clock, **kw), clock


def test_failure_kinds_by_status() -> None:
    assert FailureKind.for_status(429) is FailureKind.RATE_LIMITED
    assert (
        FailureKind.for_status(529) is FailureKind.OVERLOADED
        and FailureKind.for_status(503) is FailureKind.OVERLOADED
    )
    assert (
        FailureKind.for_status(500) is FailureKind.SERVER_ERROR
        and FailureKind.for_status(502) is FailureKind.SERVER_ERROR
    )
    assert (
        FailureKind.for_status(504) is FailureKind.TIMEOUT
        and FailureKind.for_status(408) is FailureKind.TIMEOUT
    )
    assert FailureKind.for_status(401) is FailureKind.AUTH and FailureKind.for_status(403) is FailureKind.AUTH
    # the client's own errors never count against a credential
    for status in (400, 404, 409, 413, 422):
        assert FailureKind.for_status(status) is None
    assert FailureKind.STREAM.backs_off and not FailureKind.RATE_LIMITED.backs_off
    assert FailureKind("connect") is FailureKind.CONNECT


async def test_rate_limited_with_retry_after_is_a_wall_for_exactly_that_long() -> None:
    pool, clock = clocked("a", default_retry_after=5.0)
    a = pool.get("a")
    await pool.report_failure(a, FailureKind.RATE_LIMITED, 0.3)
    got = await pool.acquire("m")
    assert isinstance(got, Refusal) and got.reason is Refused.RATE_LIMITED
    assert got.status == 429 and got.error_type == "rate_limit_error" and got.wait == pytest.approx(0.3)
    assert a.state(clock()) == "rate_limited"
    clock.step(0.2)
    got = await pool.acquire("m")
    assert isinstance(got, Refusal) and got.wait == pytest.approx(0.1)
    clock.step(0.1)
    assert await pool.acquire("m") is a


async def test_rate_limited_without_retry_after_is_only_a_preference() -> None:
    pool, clock = clocked("a", "b", default_retry_after=5.0)
    a = pool.get("a")
    await pool.report_failure(a, FailureKind.RATE_LIMITED, None)
    assert a.cooldown_until - clock() == pytest.approx(5.0) and a.rate_limited_until == 0.0
    assert [c.name for c in pool.candidates("m")] == ["b"]
    pool.remove("b")
    assert await pool.acquire("m") is a  # no upstream time to honour: sent anyway


GROUPS = {"haiku-a": "haiku", "haiku-b": "haiku", "sonnet-a": "sonnet"}


def grouped(*names: str, **kw) -> tuple[Pool, Clock]:
    """A pool whose models belong to rate-limit groups (the registry's ``rate_limit_group``)."""
    return clocked(*names, group_of=lambda m: GROUPS.get(m or "", m or ""), **kw)


async def test_a_429_walls_only_its_rate_limit_group_and_is_capped() -> None:
    pool, clock = grouped("a", rate_limit_cap=60.0)
    a = pool.get("a")
    await pool.report_failure(a, FailureKind.RATE_LIMITED, 86400.0, model="haiku-a")
    # the other group and an unknown model (its own group) keep being sent to the credential
    assert await pool.acquire("sonnet-a") is a and await pool.acquire("other-model") is a
    assert a.state(clock()) == "healthy"
    for model in ("haiku-a", "haiku-b"):  # every model of the group waits, for at most the cap
        got = await pool.acquire(model)
        assert (
            isinstance(got, Refusal)
            and got.reason is Refused.RATE_LIMITED
            and got.wait == pytest.approx(60.0)
        )
    assert pool.describe(a)["rate_limited_groups"] == {"haiku": pytest.approx(60.0)}
    assert (
        pool.earliest_recovery("haiku-a") == pytest.approx(60.0) and pool.earliest_recovery("sonnet-a") == 0.0
    )
    clock.step(60.0)
    assert await pool.acquire("haiku-b") is a
    assert pool.describe(a)["rate_limited_groups"] == {}


async def test_a_group_429_sends_its_models_to_another_credential() -> None:
    pool, _clock = grouped("a", "b")
    a, b = pool.get("a"), pool.get("b")
    await pool.report_failure(a, FailureKind.RATE_LIMITED, 30.0, model="haiku-a")
    assert {(await pool.acquire("haiku-b")).name for _ in range(5)} == {"b"}
    assert {c.name for c in pool.candidates("sonnet-a")} == {"a", "b"}
    # a 429 that named no time is a preference for the group: sent there anyway when nothing else
    # serves, and its first success ends it
    await pool.report_failure(b, FailureKind.RATE_LIMITED, None, model="sonnet-a")
    assert [c.name for c in pool.candidates("sonnet-a")] == ["a"] and b.group_cool
    pool.remove("a")
    assert await pool.acquire("sonnet-a") is b
    await pool.report_success(b, "sonnet-a")
    assert not b.group_cool and [c.name for c in pool.candidates("sonnet-a")] == ["b"]


async def test_the_429_cap_applies_to_a_credential_wide_429_and_an_operator_may_raise_it() -> None:
    pool, _clock = clocked("a", rate_limit_cap=2.0)
    await pool.report_failure(pool.get("a"), FailureKind.RATE_LIMITED, 86400.0)
    got = await pool.acquire("m")
    assert isinstance(got, Refusal) and got.wait == pytest.approx(2.0)
    long, _ = grouped("a", rate_limit_cap=86400.0)
    await long.report_failure(long.get("a"), FailureKind.RATE_LIMITED, 3600.0, model="haiku-a")
    got = await long.acquire("haiku-a")
    assert isinstance(got, Refusal) and got.wait == pytest.approx(3600.0)


async def test_a_cooldown_is_a_preference_not_a_wall() -> None:
    pool, clock = clocked("a", "b", backoff_base=0.5, backoff_cap=30)
    a, b = pool.get("a"), pool.get("b")
    await pool.report_failure(a, FailureKind.OVERLOADED)
    assert [(await pool.acquire("m")).name for _ in range(3)] == ["b"] * 3  # healthy first
    await pool.report_failure(b, FailureKind.SERVER_ERROR)
    b.cooldown_until = clock() + 2.0  # b recovers later than a
    assert await pool.acquire("m") is a  # every one cooling: the one that recovers first
    # a credential inside an upstream 429 is passed over for one merely backing off
    await pool.report_failure(a, FailureKind.RATE_LIMITED, 10.0)
    assert await pool.acquire("m") is b
    await pool.report_failure(b, FailureKind.RATE_LIMITED, 4.0)
    got = await pool.acquire("m")
    assert isinstance(got, Refusal) and got.reason is Refused.RATE_LIMITED and got.wait == pytest.approx(4.0)


async def test_backoff_escalates_per_credential_and_resets_on_first_success() -> None:
    pool, clock = clocked("a", "b", backoff_base=0.01, backoff_cap=0.05)
    a, b = pool.get("a"), pool.get("b")
    waits = []
    for _ in range(5):
        clock.step(1.0)  # each cooldown has passed
        await pool.report_failure(a, FailureKind.SERVER_ERROR)
        waits.append(round(a.cooldown_until - clock(), 3))
    assert waits == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert b.failures == 0 and b.cooldown_until == 0.0  # another credential's backoff is its own
    await pool.report_success(a)
    assert a.failures == 0 and not a.cooling(clock())
    clock.step(1.0)
    await pool.report_failure(a, FailureKind.CONNECT)
    assert a.failures == 1 and a.cooldown_until - clock() == pytest.approx(0.01)


async def test_a_success_during_the_cooldown_ends_it() -> None:
    pool, clock = clocked("a", "b", backoff_base=0.5)
    a = pool.get("a")
    await pool.report_failure(a, FailureKind.OVERLOADED)
    assert a.cooling(clock())
    await pool.report_success(a)  # sent as the fallback, and it worked
    assert not a.cooling(clock()) and a.failures == 0


async def test_burst_of_failures_during_cooldown_counts_once() -> None:
    pool, clock = clocked("a", backoff_base=0.5, backoff_cap=30)
    a = pool.get("a")
    for _ in range(20):  # 20 in-flight requests cut by the same outage
        await pool.report_failure(a, FailureKind.STREAM)
    assert a.failures == 1 and a.cooldown_until - clock() == pytest.approx(0.5)


async def test_auth_failure_asks_for_a_probe_and_disables_nothing() -> None:
    asked = []
    pool, clock = clocked("a", "b")
    pool.on_auth_failure = lambda cred, detail: asked.append((cred.name, detail))
    a = pool.get("a")
    for _ in range(5):
        await pool.report_failure(a, FailureKind.AUTH, detail="HTTP 403")
    assert a.enabled and a.state(clock()) == "healthy" and not a.cooling(clock())
    assert asked == [("a", "HTTP 403")] * 5  # the service rate-limits the probes themselves
    assert {c.name for c in pool.candidates("m")} == {"a", "b"}
    await pool.disable(a, "probe refused")
    assert a.state(clock()) == "disabled" and [c.name for c in pool.candidates("m")] == ["b"]
    await pool.enable(a)
    assert a.enabled and {c.name for c in pool.candidates("m")} == {"a", "b"}


async def test_refusals_no_credential_and_exhausted() -> None:
    pool, clock = clocked("a", "b")
    got = await pool.acquire("m", exclude=["a", "b"])
    assert isinstance(got, Refusal) and got.reason is Refused.EXHAUSTED
    for c in pool.credentials:
        await pool.disable(c, "off")
    got = await pool.acquire("m")
    assert isinstance(got, Refusal) and got.reason is Refused.NO_CREDENTIAL and got.status == 503
    assert got.error_type == "overloaded_error" and got.wait == 60.0
    assert isinstance(await Pool([], clock=clock).acquire("m"), Refusal)


async def test_rpm_window_and_recovery() -> None:
    pool = Pool([*creds("capped", rpm=2, weight=100.0), *creds("other")])
    names = [(await pool.acquire("m")).name for _ in range(4)]
    assert names[:2] == ["capped", "capped"] and names[2:] == ["other", "other"]
    capped = pool.get("capped")
    assert capped.state(time.monotonic()) == "rpm_capped"
    pool.remove("other")
    got = await pool.acquire("m")
    assert isinstance(got, Refusal) and got.reason is Refused.RATE_LIMITED and 55 < got.wait <= 60
    assert 55 < pool.earliest_recovery("m") <= 60
    assert await pool.acquire("m", count_rpm=False) is capped  # count_tokens: RPM caps do not apply


async def test_spend_cap() -> None:
    pool = Pool(creds("a", spend_cap_micro=1000))
    a = await pool.acquire("m")
    pool.release(a, cost_micro=999)
    assert await pool.acquire("m") is a
    pool.release(a, cost_micro=1)
    got = await pool.acquire("m")
    assert a.state(time.monotonic()) == "spend_capped" and isinstance(got, Refusal)
    assert got.reason is Refused.NO_CREDENTIAL and got.wait >= 1.0
    assert pool.earliest_recovery("m") >= 1.0


async def test_earliest_recovery_and_describe() -> None:
    pool, _clock = clocked("a", "b")
    a, b = pool.get("a"), pool.get("b")
    await pool.report_failure(a, FailureKind.RATE_LIMITED, 10)
    await pool.report_failure(b, FailureKind.RATE_LIMITED, 3)
    assert pool.earliest_recovery("m") == pytest.approx(3)
    await pool.report_success(a)
    info = pool.describe(a)
    assert info["state"] == "rate_limited" and info["cooldown_remaining_s"] == pytest.approx(10)
    assert info["rate_limited_remaining_s"] == pytest.approx(10)
    assert info["recent"]["requests"] == 2 and info["recent"]["errors"] == 1
    assert info["recent"]["error_rate"] == 0.5 and info["recent"]["errors_by_kind"] == {"rate_limited": 1}
    assert info["last_error"].startswith("rate_limited") and "key-a" not in repr(info)


# ---------------------------------------------------------------------- affinity key
SYSTEM = [
    {"type": "text", "text": "You are a helpful assistant. " * 20, "cache_control": {"type": "ephemeral"}}
]


def test_affinity_key() -> None:
    m = "claude-sonnet-4-5"
    assert cache_affinity({"messages": [{"role": "user", "content": "hi"}]}, m) is None
    assert cache_affinity({"messages": [{"role": "user", "content": "hi"}]}, m, b'{"messages":[]}') is None
    turn1 = {
        "system": SYSTEM,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "question one", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    turn2 = {
        "system": SYSTEM,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "question one"}]},
            {"role": "assistant", "content": "answer"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "next", "cache_control": {"type": "ephemeral"}}],
            },
        ],
    }
    other = {
        "system": SYSTEM,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "question two", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    k1, k2, k3 = cache_affinity(turn1, m), cache_affinity(turn2, m), cache_affinity(other, m)
    assert k1 is not None and len(k1) == 16
    assert k1 == k2  # a conversation keeps its key as the breakpoint moves forward
    assert k1 != k3  # another conversation may go elsewhere
    assert cache_affinity(turn1, "claude-opus-4-1") != k1  # caches are per model
    # a string content is one text block
    turn2_str = {**turn2, "messages": [{"role": "user", "content": "question one"}, *turn2["messages"][1:]]}
    assert cache_affinity(turn2_str, m) == k1
    # breakpoint only in the system prompt: every conversation with it shares the key
    sys_only = {"system": SYSTEM, "messages": [{"role": "user", "content": "a"}]}
    assert cache_affinity(sys_only, m) == cache_affinity(
        {**sys_only, "messages": [{"role": "user", "content": "b"}]}, m
    )
    # tools: the prefix stops at the tool with the breakpoint
    tools = [
        {"name": "t1", "input_schema": {}, "cache_control": {"type": "ephemeral"}},
        {"name": "t2", "input_schema": {}},
    ]
    a = cache_affinity({"tools": tools, "messages": [{"role": "user", "content": "x"}]}, m)
    b = cache_affinity(
        {
            "tools": [*tools[:1], {"name": "t3", "input_schema": {}}],
            "system": "s",
            "messages": [{"role": "user", "content": "y"}],
        },
        m,
    )
    assert a == b
    # automatic caching (top-level cache_control): keyed by the conversation
    auto1 = {
        "cache_control": {"type": "ephemeral"},
        "system": "s",
        "messages": [{"role": "user", "content": "q"}],
    }
    auto2 = {
        **auto1,
        "messages": auto1["messages"]
        + [{"role": "assistant", "content": "r"}, {"role": "user", "content": "q2"}],
    }
    assert cache_affinity(auto1, m) == cache_affinity(auto2, m) is not None


# ---------------------------------------------------------------------- shared health (Redis)
async def test_redis_health_is_shared_between_replicas(redis_url: str) -> None:
    from ethereal.upstream.redis_health import RedisHealth

    h1, h2 = RedisHealth(redis_url), RedisHealth(redis_url)
    try:
        p1 = Pool(creds("a", "b"), health=h1, backoff_base=0.2, backoff_cap=1.0)
        p2 = Pool(creds("a", "b"), health=h2, backoff_base=0.2, backoff_cap=1.0)
        await p1.health.sync(p1.credentials)
        assert await p2.health.sync(p2.credentials) is False

        await p1.report_failure(p1.get("a"), "rate_limited", 2.0)
        await p2.health.sync(p2.credentials)
        assert [c.name for c in p2.candidates("m")] == ["b"]
        assert 1.5 < p2.get("a").cooldown_until - time.monotonic() <= 2.0
        assert 1.5 < p2.get("a").rate_limited_until - time.monotonic() <= 2.0  # the 429 wall is shared too

        # backoff is counted once across replicas, escalates, and resets on success
        await p1.report_failure(p1.get("b"), "server_error")
        await p2.report_failure(p2.get("b"), "server_error")  # during the cooldown: not counted
        await p2.health.sync(p2.credentials)
        assert p2.get("b").failures == 1
        await p2.report_success(p2.get("b"))
        await p1.health.sync(p1.credentials)
        assert p1.get("b").failures == 0

        # a disable (a failed probe) on one replica disables the (env) credential on the other; enable undoes it
        await p1.disable(p1.get("b"), "probe GET /v1/models answered HTTP 401")
        await p2.health.sync(p2.credentials)
        assert not p2.get("b").enabled and "401" in p2.get("b").disabled_reason
        await p2.enable(p2.get("b"))
        await p2.enable(p2.get("a"))
        await p1.health.sync(p1.credentials)
        assert p1.get("b").enabled and {c.name for c in p1.candidates("m")} == {"a", "b"}
        assert p1.get("a").rate_limited_until == 0.0

        # the admin version key tells replicas to reload
        await p1.health.bump_version()
        assert await p2.health.sync(p2.credentials) is True

        # an RPM cap holds across replicas
        for p in (p1, p2):
            p.get("a").rpm = 3
            p.get("a").weight = 100.0
        got = [(await p.acquire("m")).name for p in (p1, p2, p1, p2)]
        assert got.count("a") == 3 and got[-1] == "b"
    finally:
        await h1.close()
        await h2.close()


async def test_redis_health_shares_a_groups_429(redis_url: str) -> None:
    from ethereal.upstream.redis_health import RedisHealth

    h1, h2 = RedisHealth(redis_url), RedisHealth(redis_url)

    def group_of(m: str | None) -> str:
        return GROUPS.get(m or "", m or "")

    try:
        p1 = Pool(creds("a", "b"), health=h1, group_of=group_of, rate_limit_cap=2.0)
        p2 = Pool(creds("a", "b"), health=h2, group_of=group_of, rate_limit_cap=2.0)
        await p1.report_failure(p1.get("a"), "rate_limited", 86400.0, model="haiku-a")
        await p1.report_failure(p1.get("b"), "rate_limited", None, model="sonnet-a")
        await p2.health.sync(p2.credentials)
        a2, b2 = p2.get("a"), p2.get("b")
        assert set(a2.group_walls) == {"haiku"} and 1.5 < a2.group_walls["haiku"] - time.monotonic() <= 2.0
        assert a2.rate_limited_until == 0.0 and not a2.cooling(time.monotonic())  # the rest of a serves
        assert set(b2.group_cool) == {"sonnet"} and not b2.group_walls
        assert [c.name for c in p2.candidates("haiku-b")] == ["b"]
        assert [c.name for c in p2.candidates("sonnet-a")] == ["a"]
        assert {c.name for c in p2.candidates("other")} == {"a", "b"}
        await p2.report_success(b2, "sonnet-a")  # a success ends the preference everywhere
        await p1.health.sync(p1.credentials)
        assert not p1.get("b").group_cool
        await p2.enable(a2)
        await p1.health.sync(p1.credentials)
        assert not p1.get("a").group_walls
        await p1.report_failure(p1.get("a"), "rate_limited", 0.3, model="haiku-a")
        await asyncio.sleep(0.4)
        await p2.health.sync(p2.credentials)
        assert not p2.get("a").group_walls  # over: nothing left behind
    finally:
        await h1.close()
        await h2.close()


async def test_redis_down_falls_back_to_local_health() -> None:
    from ethereal.upstream.redis_health import RedisHealth

    from tests.procs import free_port

    health = RedisHealth(f"redis://127.0.0.1:{free_port()}/0")
    try:
        pool = Pool(creds("a", "b", rpm=5), health=health)
        await pool.report_failure(pool.get("a"), "connect")
        assert [c.name for c in pool.candidates("m")] == ["b"]
        assert (await pool.acquire("m")).name == "b"
        assert await health.sync(pool.credentials) is False
    finally:
        await health.close()


def test_affinity_key_of_a_large_prefix_is_stable_and_small() -> None:
    """A 50 KB cached system prompt and 30 tools give one 16-byte key, the same on every call and
    whatever follows the prefix. (Its speed is a benchmark's business, not a unit test's.)"""
    body: dict[str, Any] = {
        "system": [{"type": "text", "text": "x" * 50_000, "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": f"t{i}", "input_schema": {"type": "object"}} for i in range(30)],
        "messages": [{"role": "user", "content": "hello " * 100}] * 50,
    }
    key = cache_affinity(body, "m")
    assert key is not None and len(key) == 16 and cache_affinity(body, "m") == key
    longer = {**body, "messages": [*body["messages"], {"role": "user", "content": "more"}]}
    assert cache_affinity(longer, "m") == key
