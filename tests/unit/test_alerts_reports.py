"""Pure parts of alerts and reports: Standard Webhooks signatures, cost allocation, cent strings,
spend-limit validation, the split of a report range over rollups and records."""

from __future__ import annotations

import time

import pytest
from ethereal.admin.reports import allocate
from ethereal.alerts import generate_secret, sign, verify
from ethereal.errors import GatewayError
from ethereal.spend.service import cents_text, parse_limit
from ethereal.storage.report import split_range


def test_signature_matches_the_standard_webhooks_vector() -> None:
    # the example of the Standard Webhooks specification
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_verify_checks_signature_and_timestamp() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": "v1,bogus " + sign(secret, "msg_1", now, b"{}"),
    }
    assert verify(secret, headers, b"{}")
    assert not verify(secret, headers, b"{ }")
    assert not verify(generate_secret(), headers, b"{}")
    stale = {
        **headers,
        "webhook-timestamp": str(now - 3600),
        "webhook-signature": sign(secret, "msg_1", now - 3600, b"{}"),
    }
    assert not verify(secret, stale, b"{}")


@pytest.mark.parametrize(
    ("total", "weights"),
    [(10, [1, 1, 1]), (0, [5, 0]), (7, [0, 0]), (999_999, [3, 5, 11, 0, 2]), (1, [1, 1])],
)
def test_allocate_keeps_the_total(total: int, weights: list[int]) -> None:
    parts = allocate(total, weights)
    assert sum(parts) == total and len(parts) == len(weights)
    assert all(p >= 0 for p in parts)


def test_cents_text_is_exact() -> None:
    assert [cents_text(m) for m in (0, 10_000, 12_345, 1_234_567, 100, -50)] == [
        "0",
        "1",
        "1.2345",
        "123.4567",
        "0.01",
        "-0.005",
    ]


def test_parse_limit_validates_like_the_admin_api() -> None:
    lim = parse_limit(
        {
            "amount": "250",
            "period": "weekly",
            "scope": {"type": "rbac_group", "rbac_group_id": "eng"},
            "shared": True,
        }
    )
    assert (lim.amount_cents, lim.period, lim.scope_type, lim.scope_id, lim.shared) == (
        250,
        "weekly",
        "rbac_group",
        "eng",
        True,
    )
    assert lim.id.startswith("spl_")
    assert (
        parse_limit({"amount": None, "period": "daily", "scope": {"type": "organization"}}).amount_cents
        is None
    )
    for bad, field in (
        (
            {"amount": "1", "period": "daily", "scope": {"type": "organization"}, "currency": "EUR"},
            "currency",
        ),
        ({"amount": "-1", "period": "daily", "scope": {"type": "organization"}}, "amount"),
        ({"amount": "1", "period": "daily", "scope": {"type": "user"}}, "scope.user_id"),
        (
            {"amount": "1", "period": "daily", "scope": {"type": "user", "user_id": "a"}, "shared": True},
            "shared",
        ),
        (
            {"amount": "1", "period": "daily", "scope": {"type": "organization", "user_id": "a"}},
            "scope.user_id",
        ),
        ({"period": "daily", "scope": {"type": "organization"}}, "amount"),
    ):
        with pytest.raises(GatewayError) as err:
            parse_limit(bad)
        assert err.value.status == 400 and err.value.param == field, (bad, err.value.message)


def test_split_range_reads_days_hours_then_records() -> None:
    day = 86400 * 20000
    assert split_range(day, day + 3 * 86400, 86400) == [("usage_daily", day, day + 3 * 86400)]
    pieces = split_range(day + 1800, day + 2 * 86400 + 5400, 86400)
    assert pieces == [
        ("usage_records", day + 1800, day + 3600),
        ("usage_hourly", day + 3600, day + 86400),
        ("usage_daily", day + 86400, day + 2 * 86400),
        ("usage_hourly", day + 2 * 86400, day + 2 * 86400 + 3600),
        ("usage_records", day + 2 * 86400 + 3600, day + 2 * 86400 + 5400),
    ]
    assert split_range(day, day + 7200, 3600) == [("usage_hourly", day, day + 7200)]
    assert split_range(day, day + 7200, 60) == [("usage_records", day, day + 7200)]
