"""Spend limits per person, team, organization and key, per UTC day, week and month (#22).

``periods``: calendar arithmetic; ``limits``: the limits and their resolution (pure);
``service``: the stored limits kept in memory for admission, spend to date, the admin API's
validation and audit (admin/spend_limits.py serves ``/v1/organizations/spend_limits``).
"""

from ethereal.spend.limits import Check, LimitBook, Resolved, SpendLimit, checks, person_of
from ethereal.spend.periods import PERIODS, period_end, period_start, reset_text, seconds_to_reset

__all__ = [
    "PERIODS",
    "Check",
    "LimitBook",
    "Resolved",
    "SpendLimit",
    "checks",
    "period_end",
    "period_start",
    "person_of",
    "reset_text",
    "seconds_to_reset",
]
