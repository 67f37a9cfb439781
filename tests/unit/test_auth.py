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
