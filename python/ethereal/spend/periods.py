"""UTC calendar periods of spend limits: a day starts at 00:00, a week on Monday 00:00, a month on
the 1st at 00:00. Pure arithmetic over unix seconds, no clock read."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

PERIODS = ("daily", "weekly", "monthly")
_DAY = 86400


def period_start(period: str, at: float) -> float:
    """The start (unix seconds) of the ``period`` containing ``at``."""
    day = int(at // _DAY) * _DAY
    if period == "daily":
        return float(day)
    if period == "weekly":
        # 1970-01-01 was a Thursday: Monday is 3 days before it
        weekday = (day // _DAY + 3) % 7  # 0 = Monday
        return float(day - weekday * _DAY)
    if period == "monthly":
        t = datetime.fromtimestamp(day, UTC)
        return float(calendar.timegm((t.year, t.month, 1, 0, 0, 0)))
    raise ValueError(f"unknown period {period!r}")


def period_end(period: str, at: float) -> float:
    """The end (exclusive, unix seconds) of the ``period`` containing ``at``: when it resets."""
    start = period_start(period, at)
    if period == "daily":
        return start + _DAY
    if period == "weekly":
        return start + 7 * _DAY
    t = datetime.fromtimestamp(start, UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def seconds_to_reset(period: str, at: float) -> float:
    return period_end(period, at) - at


def reset_text(period: str, at: float) -> str:
    """``2026-12-07 00:00 UTC``: the reset time as the refusal's message names it."""
    return datetime.fromtimestamp(period_end(period, at), UTC).strftime("%Y-%m-%d %H:%M UTC")
