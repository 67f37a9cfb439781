"""Redis Cluster: the limiter (its contract runs in test_limits.py), slot migration, a master failing
under load, shared upstream health and key-change notifications, on a real 3-master cluster."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord, mint
from ethereal.limits.pipe import Cluster
from ethereal.limits.plans import Plans
from ethereal.limits.redis import LIBRARY, RedisLimiter
from ethereal.storage.records import UsageRecord
from ethereal.storage.sqlite import SQLiteStore
from redis.crc import key_slot

from tests.services import RedisCluster
from tests.services import redis_cluster as start_cluster
from tests.unit.test_upstream_pool import test_redis_health_is_shared_between_replicas as _shared_health


def key(**attrs: Any) -> KeyRecord:
    return mint("sk-test-", **attrs)[1]


def owner(cluster: RedisCluster, key_id: str) -> int:
    """Which node (index) is the master of the slot of a key's hash tag."""
    slot = key_slot(f"k:{key_id}".encode())
    client = redis.Redis(port=cluster.ports[0])
    try:
        for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return cluster.ports.index(int(master[1]))
    finally:
        client.close()
    raise AssertionError(f"no master serves slot {slot}")


async def admit(limiter: RedisLimiter, k: KeyRecord, inp: int = 10, allowance: int = 100) -> Any:
    return await limiter.admit(k, model="m", input_tokens=inp, max_tokens=allowance, price_in=3, price_out=15)


async def test_every_key_of_a_call_in_one_slot_and_keys_spread_over_masters(
    redis_cluster_url: str, redis_cluster: RedisCluster
) -> None:
    limiter = RedisLimiter(redis_cluster_url, plans=Plans())
    try:
        keys = [
            key(
                plan="pro", rpm=100, tpm=10**6, budget_tokens=10**6, budget_micro_usd=10**9, max_concurrency=5
            )
            for _ in range(24)
        ]
        for k in keys:
            await limiter.settle(await admit(limiter, k), tokens=50, cost_micro=200)
        for k in keys:
            assert (await limiter.snapshot(k.id))["spent_tokens"] == 50
        where: dict[str, dict[int, int]] = {k.id: {} for k in keys}
        for i in range(3):
            client = redis.Redis(port=redis_cluster.ports[i])
            names = [n.decode() if isinstance(n, bytes) else n for n in client.keys("ethereal:v1:*")]
            assert LIBRARY.encode() in repr(client.execute_command("FUNCTION", "LIST")).encode()
            client.close()
            for k in keys:
                mine = [n for n in names if f"{{k:{k.id}}}" in n]
                if mine:
                    where[k.id][i] = len(mine)
        # the budget hash, its settled request ids and three windows of each key (the in-flight set is
        # empty, so gone), on one master
        assert all(list(nodes.values()) == [5] for nodes in where.values()), where
        assert {i for nodes in where.values() for i in nodes} == {0, 1, 2}  # and the keys spread over all
    finally:
        await limiter.close()


async def test_slot_migration_follows_ask_then_moved(
    redis_cluster_url: str, redis_cluster: RedisCluster
) -> None:
    """A key's slot is migrated live to another master: admits follow ASK during the migration, MOVED after
    it, and its counters travel with it."""
    limiter = RedisLimiter(redis_cluster_url)
    k = key(budget_tokens=10_000, rpm=1000, max_concurrency=10)
    slot = key_slot(f"k:{k.id}".encode())
    src = owner(redis_cluster, k.id)
    dst = (src + 1) % 3
    ids = {i: redis_cluster.cli(i, "CLUSTER", "MYID").strip() for i in range(3)}
    try:
        await limiter.settle(await admit(limiter, k, inp=100), tokens=300, cost_micro=0)
        held = await admit(limiter, k, inp=100, allowance=100)  # in flight across the migration
        await limiter.snapshot(k.id)  # (the settle is on the wire)
        redis_cluster.cli(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[src])
        redis_cluster.cli(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[dst])
        names = redis_cluster.cli(src, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
        assert len(names) == 4  # budget hash, in-flight set, settled request ids, minute window
        redis_cluster.cli(
            src, "MIGRATE", "127.0.0.1", str(redis_cluster.ports[dst]), "", "0", "5000", "KEYS", *names
        )
        # the keys are on dst, the slot still belongs to src: src answers ASK
        during = await admit(limiter, k, inp=100)
        assert (await limiter.snapshot(k.id))["spent_tokens"] == 300
        await limiter.settle(during, tokens=150, cost_micro=0)
        for i in range(3):
            redis_cluster.cli(i, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[dst])
        # now src answers MOVED, and the limiter re-reads the slot map
        await limiter.settle(held, tokens=200, cost_micro=0)
        after = await admit(limiter, k, inp=100)
        await limiter.settle(after, tokens=100, cost_micro=0)
        snap = await limiter.snapshot(k.id)
        assert snap == {
            "spent_tokens": 750,
            "spent_micro": 0,
            "held_tokens": 0,
            "held_micro": 0,
            "in_flight": 0,
        }
        router = limiter.router
        assert isinstance(router, Cluster) and router.slots[slot] == ("127.0.0.1", redis_cluster.ports[dst])
    finally:
        await limiter.close()


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_master_fails_under_load_and_recovers(
    fail_open: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Load on keys spread over all masters; one master is SIGKILLed: its keys fail closed (503) or open
    (admitted unlimited) as configured, the others' keys keep their limits; it restarts empty: its keys
    are limited again (functions reloaded, spend re-seeded from the database)."""
    with start_cluster(3, full_coverage=False) as cluster:
        store = await SQLiteStore.open(str(tmp_path / "s.sqlite3"))
        await store.migrate()
        # (a restarted master lost its state: the keys it seeds hold admissions recovery_hold seconds)
        limiter = RedisLimiter(
            cluster.url, store=store, fail_open=fail_open, socket_timeout=0.5, recovery_hold=0.2
        )
        try:
            keys: dict[int, KeyRecord] = {}
            while len(keys) < 3:  # one budgeted key on each master
                k = key(budget_tokens=10**6, rpm=10**6)
                keys.setdefault(owner(cluster, k.id), k)
            outcomes: dict[int, list[str]] = {0: [], 1: [], 2: []}
            phase = ["before"]

            async def load(node: int) -> None:
                while phase[0] != "done":
                    tag = phase[0]
                    try:
                        adm = await admit(limiter, keys[node], inp=10, allowance=10)
                    except GatewayError as exc:
                        outcome = str(exc.status)
                    else:
                        outcome = "limited" if adm.limited else "open"
                    # an outcome belongs to a phase when it started and ended in it (the node is started
                    # and awaited synchronously, so a call may straddle two phases)
                    outcomes[node].append(f"{tag if tag == phase[0] else 'between'}:{outcome}")
                    if outcome == "limited":
                        await limiter.settle(adm, tokens=20, cost_micro=0)
                        now = time.time()
                        await store.insert_usage(
                            [
                                UsageRecord(  # the row of that request (same id)
                                    request_id=adm.token,
                                    key_id=keys[node].id,
                                    credential=None,
                                    route="messages",
                                    model="m",
                                    status=200,
                                    stream=False,
                                    input_tokens=10,
                                    output_tokens=10,
                                    started_at=now,
                                    ended_at=now,
                                )
                            ]
                        )
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(load(n)) for n in range(3)]
            await asyncio.sleep(0.5)
            cluster.kill(0)
            phase[0] = "down"
            await asyncio.sleep(2.5)  # past the node timeout: the others mark it failed
            phase[0] = "restarting"
            cluster.start(0)
            cluster.wait_ok()
            recovered_at = time.monotonic()
            phase[0] = "back"
            await asyncio.sleep(1.0)
            phase[0] = "done"
            await asyncio.gather(*tasks)

            down = [o.split(":")[1] for o in outcomes[0] if o.startswith("down:")]
            assert down and set(down) == ({"open"} if fail_open else {"503"}), set(down)
            for node in (1, 2):  # the surviving masters' keys never noticed
                assert {o.split(":")[1] for o in outcomes[node]} == {"limited"}, set(outcomes[node])
            back = [o.split(":")[1] for o in outcomes[0] if o.startswith("back:")]
            assert back and back[-5:] == ["limited"] * 5, back
            # the restarted master lost its data: the key's spend came back from the database
            snap = await limiter.snapshot(keys[0].id)
            rows = await store.spend_by_key([keys[0].id])
            assert snap["spent_tokens"] == rows[keys[0].id]["tokens"] and snap["in_flight"] == 0
            assert ("FAILING OPEN" if fail_open else "failing closed") in caplog.text
            assert time.monotonic() - recovered_at < 5
        finally:
            await limiter.close()
            await store.close()


async def test_upstream_health_is_shared_on_a_cluster(redis_cluster_url: str) -> None:
    await _shared_health(redis_cluster_url)


async def test_key_change_notifications_on_a_cluster(
    redis_cluster_url: str, redis_cluster: RedisCluster
) -> None:
    from ethereal.keychanges import CHANNEL, RedisKeyChanges, publish_once

    h1, h2, h3 = ("1" * 64, "2" * 64, "3" * 64)
    got: list[str] = []
    subscriber, publisher = RedisKeyChanges(redis_cluster_url), RedisKeyChanges(redis_cluster_url)
    subscriber.listen(got.append)
    try:
        await subscriber.start()
        await publisher.start()
        deadline = time.monotonic() + 5
        while h1 not in got and time.monotonic() < deadline:  # until the subscription is up
            await publisher.publish(h1)
            await asyncio.sleep(0.05)
        assert h1 in got
        publish_once(redis_cluster_url, h2, cache_ttl=1.0)  # the CLI's one-shot client
        node = redis.Redis(port=redis_cluster.ports[2])  # straight on a node the subscriber may not use
        node.publish(CHANNEL, h3)
        node.close()
        deadline = time.monotonic() + 5
        while not {h2, h3} <= set(got) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert {h2, h3} <= set(got)
    finally:
        await subscriber.close()
        await publisher.close()


async def test_a_plain_url_to_a_cluster_node_fails_loudly(
    redis_cluster_url: str, redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """redis:// to one node of a cluster: the keys of the other nodes' slots answer MOVED; the limiter
    refuses (fail closed) and says what to configure instead of half working."""
    limiter = RedisLimiter(redis_cluster.node_url(0))
    try:
        k = key(rpm=10)
        while owner(redis_cluster, k.id) == 0:
            k = key(rpm=10)
        with pytest.raises(GatewayError) as info:
            await admit(limiter, k)
        assert info.value.status == 503
        assert "redis+cluster://" in caplog.text
    finally:
        await limiter.close()
