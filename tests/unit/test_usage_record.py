"""``usage_record`` builds its UsageRecord positionally (every request builds one): each field is
held here to where its value comes from, so a field added, removed or moved is caught."""

from __future__ import annotations

from dataclasses import fields

from ethereal.metering.record import usage_record
from ethereal.models import load_registry
from ethereal.storage.records import UsageRecord
from ethereal.usage import Usage


def test_every_field_holds_its_own_value() -> None:
    registry = load_registry()
    model = registry.resolve("claude-sonnet-4-6")
    assert model is not None
    usage = Usage(
        input_tokens=11,
        output_tokens=12,
        cache_5m=13,
        cache_1h=14,
        cache_read=15,
        web_searches=2,
        exact=False,
        ttl_assumed=True,
        served_model="claude-sonnet-4-6",
        speed="standard",
        inference_geo="global",
        service_tier="priority",
    )
    rec = usage_record(
        registry,
        usage,
        request_id="req_1",
        key_id="key_1",
        credential="cred_1",
        route="messages",
        model=model,
        model_name="claude-sonnet-4-6",
        status=201,
        stream=True,
        started_at=1_800_000_000.0,
        ended_at=1_800_000_001.0,
        duration_ms=1000.5,
        ttfb_ms=20.5,
        upstream_request_id="up_1",
        error_type="api_error",
        error_message="it failed",
        batch=True,
        owner="ada",
        teams="core,infra",
    )
    expected = {
        "request_id": "req_1",
        "key_id": "key_1",
        "credential": "cred_1",
        "route": "messages",
        "model": "claude-sonnet-4-6",
        "status": 201,
        "stream": True,
        "input_tokens": 11,
        "output_tokens": 12,
        "cache_creation_5m": 13,
        "cache_creation_1h": 14,
        "cache_read": 15,
        "exact": False,
        "cache_ttl_assumed": True,
        "ttfb_ms": 20.5,
        "duration_ms": 1000.5,
        "started_at": 1_800_000_000.0,
        "ended_at": 1_800_000_001.0,
        "upstream_request_id": "up_1",
        "error_type": "api_error",
        "web_search_requests": 2,
        "batch": True,
        "priced_provisional": False,
        "speed": "standard",
        "inference_geo": "global",
        "service_tier": "priority",
        "error_message": "it failed",
        "owner": "ada",
        "teams": "core,infra",
    }
    got = rec.to_dict()
    # the two priced fields come from the price, checked against pricing itself elsewhere
    assert got.pop("cost_micro") > 0
    assert got.pop("rate_card", "").startswith("claude-sonnet-4-6@")
    assert got == expected
    assert {f.name for f in fields(UsageRecord)} == {*expected, "cost_micro", "rate_card"}
