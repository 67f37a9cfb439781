"""Key authentication: header forms, cache TTL, and behaviour while the key store is down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ethereal.auth import Authenticator, extract_key
from ethereal.errors import GatewayError
from ethereal.keys import mint
from ethereal.storage.sqlite import SQLiteStore


def test_extract_key_forms() -> None:
    assert extract_key({b"x-api-key": b" sk-1 "}) == "sk-1"
    assert extract_key({b"authorization": b"Bearer sk-2"}) == "sk-2"
    assert extract_key({b"authorization": b"bearer sk-3"}) == "sk-3"
    assert extract_key({b"authorization": b"Basic abc"}) is None
    assert extract_key({}) is None
    # x-api-key wins when both are present
    assert extract_key({b"x-api-key": b"a", b"authorization": b"Bearer b"}) == "a"


async def test_revocation_visible_after_ttl_and_stale_cache_when_store_down(tmp_path: Path) -> None:
    store = await SQLiteStore.open(str(tmp_path / "k.sqlite3"))
    await store.migrate()
    plaintext, record = mint("sk-ant-api03-", name="t")
    other, other_record = mint("sk-ant-api03-", name="never-seen")
    await store.insert_keys([record, other_record])
    auth = Authenticator(store, ttl=0.05)
    headers = {b"x-api-key": plaintext.encode()}
    assert (await auth.authenticate(headers)).id == record.id

    await store.update_key(record.id, {"revoked": True})
    await asyncio.sleep(0.06)
    with pytest.raises(GatewayError) as revoked:
        await auth.authenticate(headers)
    assert revoked.value.status == 401 and "revoked" in revoked.value.message

    await store.update_key(record.id, {"revoked": False})
    await asyncio.sleep(0.06)
    assert (await auth.authenticate(headers)).id == record.id

    await store.close()  # the key store is now unreachable
    await asyncio.sleep(0.06)
    # a key seen before keeps working on its last known record
    assert (await auth.authenticate(headers)).id == record.id
    # an unseen key cannot be checked: 503 with retry-after, not a 500
    with pytest.raises(GatewayError) as down:
        await auth.authenticate({b"x-api-key": other.encode()})
    assert down.value.status == 503 and down.value.retry_after is not None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_stale_record_served_for_a_bounded_time_during_an_outage(tmp_path: Path) -> None:
    store = await SQLiteStore.open(str(tmp_path / "k.sqlite3"))
    await store.migrate()
    plaintext, record = mint("sk-ant-api03-", name="t")
    await store.insert_keys([record])
    clock = Clock()
    auth = Authenticator(store, ttl=1.0, stale_max=300.0, clock=clock)
    headers = {b"x-api-key": plaintext.encode()}
    assert (await auth.authenticate(headers)).id == record.id
    await store.close()  # the key store is now unreachable
    clock.now += 299.0
    assert (await auth.authenticate(headers)).id == record.id  # within the bound: last known record
    clock.now += 2.0
    with pytest.raises(GatewayError) as down:  # past it: the record is too old to trust
        await auth.authenticate(headers)
    assert down.value.status == 503 and down.value.retry_after is not None


async def test_unknown_key_flood_cannot_evict_known_keys(tmp_path: Path) -> None:
    store = await SQLiteStore.open(str(tmp_path / "k.sqlite3"))
    await store.migrate()
    plaintext, record = mint("sk-ant-api03-", name="t")
    await store.insert_keys([record])
    clock = Clock()
    auth = Authenticator(store, ttl=1.0, max_entries=50, max_unknown=100, clock=clock)
    headers = {b"x-api-key": plaintext.encode()}
    assert (await auth.authenticate(headers)).id == record.id
    for i in range(2000):  # made-up keys: each one a 401, each one cached as unknown
        with pytest.raises(GatewayError) as bad:
            await auth.authenticate({b"x-api-key": f"sk-ant-api03-flood{i}".encode()})
        assert bad.value.status == 401
    assert len(auth._unknown) == 100 and len(auth._known) == 1  # both bounded
    await store.close()  # now an outage: the known key still has its record
    clock.now += 10.0
    assert (await auth.authenticate(headers)).id == record.id
    await asyncio.sleep(0)


async def test_known_keys_cache_is_lru(tmp_path: Path) -> None:
    store = await SQLiteStore.open(str(tmp_path / "k.sqlite3"))
    await store.migrate()
    keys = [mint("sk-ant-api03-", name=f"k{i}") for i in range(4)]
    await store.insert_keys([r for _, r in keys])
    clock = Clock()
    auth = Authenticator(store, ttl=100.0, max_entries=3, clock=clock)
    for plaintext, _ in keys[:3]:
        await auth.authenticate({b"x-api-key": plaintext.encode()})
    await auth.authenticate({b"x-api-key": keys[0][0].encode()})  # k0 is now the most recent
    await auth.authenticate({b"x-api-key": keys[3][0].encode()})  # evicts k1, the least recent
    await store.close()
    assert (await auth.authenticate({b"x-api-key": keys[0][0].encode()})).id == keys[0][1].id
    with pytest.raises(GatewayError) as down:
        await auth.authenticate({b"x-api-key": keys[1][0].encode()})
    assert down.value.status == 503


def test_client_address_trusts_forwarded_for_only_from_a_trusted_proxy() -> None:
    from ethereal.guards import client_address

    def scope(peer: str, *forwarded: bytes) -> dict[str, object]:
        return {"client": (peer, 5555), "headers": [(b"x-forwarded-for", f) for f in forwarded]}

    assert client_address(scope("203.0.113.9", b"198.51.100.1"), "127.0.0.1") == "203.0.113.9"  # not a proxy
    assert client_address(scope("127.0.0.1", b"198.51.100.1"), "127.0.0.1") == "198.51.100.1"
    # the nearest hop that is not a trusted proxy; what the client itself wrote further left is ignored
    assert (
        client_address(scope("127.0.0.1", b"6.6.6.6, 198.51.100.1, 10.0.0.2"), "127.0.0.1, 10.0.0.2")
        == "198.51.100.1"
    )
    assert client_address(scope("127.0.0.1", b"6.6.6.6", b"198.51.100.1"), "127.0.0.1") == "198.51.100.1"
    assert client_address(scope("127.0.0.1"), "127.0.0.1") == "127.0.0.1"  # nothing forwarded
    assert client_address(scope("10.9.9.9", b"198.51.100.7"), "*") == "198.51.100.7"
    assert client_address({"headers": []}, "127.0.0.1") == "unknown"
    assert len(client_address(scope("127.0.0.1", b"x" * 10_000), "127.0.0.1")) < 100  # bounded


async def test_hung_store_costs_one_bounded_wait_and_warns_rarely(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that never answers: the first lookup of a cached key waits the deadline, the next ones
    are served the cached record at once; a key never seen is 503 fast; one warning per 30 s."""
    import logging
    import time

    store = await SQLiteStore.open(str(tmp_path / "k.sqlite3"))
    await store.migrate()
    plaintext, record = mint("sk-ant-api03-", name="t")
    other, other_record = mint("sk-ant-api03-", name="never-seen")
    await store.insert_keys([record, other_record])
    now = [0.0]
    auth = Authenticator(store, ttl=1.0, deadline=0.2, retry_after=1.0, clock=lambda: now[0])
    headers = {b"x-api-key": plaintext.encode()}
    assert (await auth.authenticate(headers)).id == record.id
    hung = asyncio.Event()

    async def never(key_hash: str) -> None:
        await hung.wait()

    store.get_key_by_hash = never  # type: ignore[method-assign,assignment]
    now[0] = 2.0
    with caplog.at_level(logging.WARNING, logger="ethereal.auth"):
        t = time.monotonic()
        first = await asyncio.gather(*(auth.authenticate(headers) for _ in range(20)))
        assert all(r.id == record.id for r in first)
        assert time.monotonic() - t < 0.5  # one wait of the deadline, shared, not one each
        t = time.monotonic()
        for _ in range(50):
            assert (await auth.authenticate(headers)).id == record.id
        with pytest.raises(GatewayError) as unknown:
            await auth.authenticate({b"x-api-key": other.encode()})
        assert time.monotonic() - t < 0.1  # inside retry_after: the store is not asked
        assert unknown.value.status == 503 and unknown.value.retry_after
        now[0] = 40.0  # past retry_after and the warning interval: asked again, one more warning
        assert (await auth.authenticate(headers)).id == record.id
    warnings = [r.getMessage() for r in caplog.records if "using the cached key record" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert "did not answer in time" in warnings[0] and "more times" in warnings[1]
    hung.set()
    await store.close()
