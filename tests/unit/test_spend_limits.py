"""Spend limits, pure parts: UTC calendar periods and the resolution of a person's cap."""

from __future__ import annotations

import calendar

import pytest
from ethereal.spend import LimitBook, SpendLimit, checks, period_end, period_start, person_of, reset_text


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, s)))


def lim(scope: str, sid: str, period: str, cents: int | None, shared: bool = False) -> SpendLimit:
    return SpendLimit(
        id=f"spl_{scope}_{sid}_{period}_{shared}",
        scope_type=scope,
        scope_id=sid,
        period=period,
        amount_cents=cents,
        shared=shared,
    )


@pytest.mark.parametrize(
    ("at", "period", "start", "end"),
    [
        (ts(2026, 12, 7, 13, 5), "daily", ts(2026, 12, 7), ts(2026, 12, 8)),
        (
            ts(2026, 12, 7, 0, 0),
            "daily",
            ts(2026, 12, 7),
            ts(2026, 12, 8),
        ),  # the boundary belongs to the new day
        (ts(2026, 12, 6, 23, 59, 59), "daily", ts(2026, 12, 6), ts(2026, 12, 7)),
        (ts(2026, 12, 7, 9), "weekly", ts(2026, 12, 7), ts(2026, 12, 14)),  # 2026-12-07 is a Monday
        (ts(2026, 12, 13, 23, 59), "weekly", ts(2026, 12, 7), ts(2026, 12, 14)),  # Sunday
        (ts(2026, 12, 6, 12), "weekly", ts(2026, 11, 30), ts(2026, 12, 7)),
        (ts(2027, 1, 1, 0, 0), "weekly", ts(2026, 12, 28), ts(2027, 1, 4)),  # across a year
        (ts(2026, 12, 31, 23, 59), "monthly", ts(2026, 12, 1), ts(2027, 1, 1)),
        (ts(2028, 2, 29, 12), "monthly", ts(2028, 2, 1), ts(2028, 3, 1)),  # leap year
        (ts(2026, 2, 1), "monthly", ts(2026, 2, 1), ts(2026, 3, 1)),
    ],
)
def test_periods_reset_on_utc_calendar_boundaries(at: float, period: str, start: float, end: float) -> None:
    assert period_start(period, at) == start
    assert period_end(period, at) == end


def test_reset_text_names_the_reset() -> None:
    assert reset_text("daily", ts(2026, 12, 6, 18)) == "2026-12-07 00:00 UTC"
    assert reset_text("monthly", ts(2026, 12, 6, 18)) == "2027-01-01 00:00 UTC"
    with pytest.raises(ValueError):
        period_start("yearly", 0)


def test_resolution_user_then_tightest_group_then_organization_then_unlimited() -> None:
    book = LimitBook.of(
        [
            lim("organization", "", "daily", 1000),
            lim("rbac_group", "eng", "daily", 500),
            lim("rbac_group", "ml", "daily", 300),
            lim("rbac_group", "ops", "daily", None),  # an explicit unlimited group cap is the loosest
            lim("user", "alice", "daily", 5000),
            lim("user", "bob", "weekly", 0),
        ]
    )
    r = book.resolve("alice", ["eng"], "daily")
    assert (r.source, r.amount_micro) == ("user", 5000 * 10_000)  # the override wins, even when looser
    r = book.resolve("carol", ["eng", "ml", "ops"], "daily")
    assert (r.source, r.amount_micro, r.limit.scope_id) == ("rbac_group", 300 * 10_000, "ml")  # type: ignore[union-attr]
    r = book.resolve("carol", ["ops"], "daily")
    assert (r.source, r.amount_micro) == ("rbac_group", None)
    r = book.resolve("dave", [], "daily")
    assert (r.source, r.amount_micro) == ("organization", 1000 * 10_000)
    r = book.resolve("dave", [], "monthly")
    assert (r.source, r.amount_micro, r.unlimited) == ("default", None, True)
    r = book.resolve("bob", ["eng"], "weekly")
    assert (r.source, r.amount_micro) == ("user", 0)  # "0" blocks
    assert [x.period for x in book.resolve_all("bob", ["eng"])] == ["daily", "weekly", "monthly"]


def test_shared_pools_and_key_caps_are_checked_beside_the_person() -> None:
    book = LimitBook.of(
        [
            lim("rbac_group", "eng", "monthly", 10_000, shared=True),
            lim("rbac_group", "eng", "monthly", 2_000),
            lim("organization", "", "monthly", 100_000, shared=True),
            lim("api_key", "key_1", "daily", 50),
        ]
    )
    r = book.resolve("alice", ["eng"], "monthly")
    assert (r.source, r.amount_micro) == ("rbac_group", 2_000 * 10_000)  # the pooled cap is no default
    assert [p.scope_type for p in book.pools(["eng"], "monthly")] == ["rbac_group", "organization"]
    assert book.pools(["ml"], "monthly")[0].scope_type == "organization"
    got = checks(book, "alice", ["eng"], "key_1")
    assert {(c.period, c.kind, c.amount_micro) for c in got} == {
        ("daily", "key", 500_000),
        ("monthly", "person", 20_000_000),
        ("monthly", "pool", 100_000_000),
        ("monthly", "pool", 1_000_000_000),
    }
    assert book.governs("x", [], "key_1")
    assert book.governs("x", [], None)  # the organization's pool
    assert not LimitBook.of([]).governs("x", ["eng"], "key_1")


def test_a_key_nobody_owns_is_its_own_person() -> None:
    assert person_of("alice", "key_1") == "alice"
    assert person_of("", "key_1") == "key_1"
