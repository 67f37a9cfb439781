"""Credential management on both stores (SQLite and PostgreSQL), as two replicas would see it."""

from __future__ import annotations

import time

import pytest
from ethereal.errors import GatewayError
from ethereal.models import Registry
from ethereal.secretbox import SecretKeyError
from ethereal.settings import Settings
from ethereal.sim.testing import start_sim_process
from ethereal.storage.records import UsageRecord
from ethereal.upstream.client import UpstreamClient
from ethereal.upstream.pool import Pool
from ethereal.upstream.service import UpstreamService, stored_credential_count

SECRET = "service-test-secret"


async def replica(store, secret: str | None = SECRET) -> UpstreamService:  # type: ignore[no-untyped-def]
    svc = UpstreamService(Settings(secret_key=secret), Pool(), None, Registry())
    await svc.attach(store)
    return svc


async def test_credentials_across_replicas(store) -> None:  # type: ignore[no-untyped-def]
    one, two = await replica(store), await replica(store)
    view = await one.add(
        {
            "name": "a",
            "base_url": "https://api.example.com/v1",
            "api_key": "sk-ant-aaaa-1111",
            "weight": 2,
            "models": ["claude-sonnet-*"],
            "rpm": 10,
            "spend_cap_micro": 1000,
        }
    )
    assert view["base_url"] == "https://api.example.com" and view["models"] == ["claude-sonnet-*"]
    row = await store.get_credential("a")
    assert "sk-ant" not in row.api_key_enc and row.rpm == 10
    await one.reload()
    await two.reload()
    cred = one.pool.get("a")
    assert cred.api_key == "sk-ant-aaaa-1111" and cred.weight == 2 and cred.source == "store"

    # updates land in place (requests in flight keep a valid object)
    await two.update("a", {"api_key": "sk-ant-bbbb-2222", "weight": 5, "rpm": None})
    await one.reload()
    assert (
        one.pool.get("a") is cred
        and cred.api_key == "sk-ant-bbbb-2222"
        and cred.weight == 5
        and cred.rpm is None
    )

    # a request's 401 alone disables nothing; a refused probe of the credential's own is
    # persisted and replica two follows on its next reload
    await one.pool.report_failure(cred, "auth", detail="HTTP 401")
    assert cred.enabled and (await store.get_credential("a")).enabled
    with start_sim_process(api_keys={"sk-ant-some-other-key"}) as (_, sim_url):
        client = UpstreamClient()
        one.client, cred.base_url = client, sim_url
        try:
            assert await one.probe(cred, "HTTP 401") == 401
        finally:
            await client.close()
            one.client = None
    assert not (await store.get_credential("a")).enabled
    assert "probe GET /v1/models answered HTTP 401" in (await store.get_credential("a")).disabled_reason
    await two.reload()
    assert not two.pool.get("a").enabled and "401" in two.pool.get("a").disabled_reason
    await one.reload()  # still disabled after reloads: not a local flag
    assert not cred.enabled
    await two.set_enabled("a", True)
    await one.reload()
    assert cred.enabled and cred.disabled_reason is None

    # spend this month, toward the cap
    now = time.time()
    await store.insert_usage(
        [
            UsageRecord(
                request_id=f"req_spend{i}",
                key_id=None,
                credential="a",
                route="messages",
                model="m",
                status=200,
                stream=False,
                cost_micro=600,
                started_at=now,
                ended_at=now,
            )
            for i in range(2)
        ]
    )
    await one.refresh_spend()
    assert cred.spent_micro == 1200 and cred.state() == "spend_capped"

    with pytest.raises(GatewayError) as dup:
        await one.add({"name": "a", "base_url": "https://x", "api_key": "k"})
    assert dup.value.status == 409
    assert await one.delete("a")
    await two.reload()
    assert two.pool.get("a") is None
    with pytest.raises(GatewayError) as gone:
        await two.delete("a")
    assert gone.value.status == 404


async def test_secret_key_rules(store) -> None:  # type: ignore[no-untyped-def]
    no_key = await replica(store, secret=None)
    with pytest.raises(GatewayError) as info:
        await no_key.add({"name": "a", "base_url": "https://x", "api_key": "k"})
    assert info.value.status == 400 and "ETHEREAL_SECRET_KEY is not set" in info.value.message
    assert await stored_credential_count(store, Settings()) == 0

    await (await replica(store)).add({"name": "a", "base_url": "https://x", "api_key": "k"})
    with pytest.raises(SecretKeyError, match="ETHEREAL_SECRET_KEY is not set"):
        await stored_credential_count(store, Settings())
    with pytest.raises(SecretKeyError, match="cannot be decrypted"):
        await stored_credential_count(store, Settings(secret_key="wrong"))
    assert await stored_credential_count(store, Settings(secret_key=SECRET)) == 1
    with pytest.raises(SecretKeyError, match="ETHEREAL_SECRET_KEY is not set"):
        await no_key.reload(strict=True)
    await no_key.reload()  # at run time: logged, the others keep working


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "", "base_url": "https://x", "api_key": "k"},
        {"name": "a b", "base_url": "https://x", "api_key": "k"},
        {"name": "a", "base_url": "x", "api_key": "k"},
        {"name": "a", "base_url": "https://x", "api_key": ""},
        {"name": "a", "base_url": "https://x", "api_key": "k", "weight": 0},
        {"name": "a", "base_url": "https://x", "api_key": "k", "rpm": 0},
        {"name": "a", "base_url": "https://x", "api_key": "k", "spend_cap_micro": -1},
        # past what the stores keep (PostgreSQL's INTEGER, 64 bits): refused, never a failed write
        {"name": "a", "base_url": "https://x", "api_key": "k", "rpm": 2**31},
        {"name": "a", "base_url": "https://x", "api_key": "k", "spend_cap_micro": 2**62 + 1},
        {"name": "a", "base_url": "https://x", "api_key": "k", "spend_cap_micro": 10**19},
        {"name": "a", "base_url": "https://x", "api_key": "k", "models": "claude"},
        {"name": "a", "base_url": "https://x", "api_key": "k", "enabled": "yes"},
        {"name": "a", "base_url": "https://x", "api_key": "k", "other": 1},
        ["not", "an", "object"],
    ],
)
def test_validation(bad) -> None:  # type: ignore[no-untyped-def]
    from ethereal.upstream.service import validate_spec

    with pytest.raises(GatewayError) as info:
        validate_spec(bad, Registry(), partial=False)
    assert info.value.status == 400
