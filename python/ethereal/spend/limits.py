"""Spend limits: what they are and which one applies to a person, a team or a key.

A limit caps spend per UTC calendar period (periods.py) for one scope:

- ``user`` (a person: a key's ``owner``), ``rbac_group`` (a team: one of a key's ``teams``),
  ``organization`` (everyone), and ``api_key`` (one key; an extension of Anthropic's shapes);
- ``amount_cents``: USD cents, ``None`` for unlimited, 0 blocks;
- a group or organization limit is a per-member default, unless ``shared`` (an extension): one
  pooled cap for the whole team (or organization).

Resolution per period, for a person (``resolve``): the person's own limit, else the most
restrictive per-member limit of their teams, else the organization's per-member default, else
unlimited. A pooled (``shared``) limit is not a default: it is a cap of its own on the sum of the
team's spend, checked beside the person's (``pools``); a key limit likewise (``key_limit``).

Everything here is pure: a ``LimitBook`` is an immutable snapshot of the stored limits, built by
``LimitBook.of(limits)``; admission keeps one (spend/service.py refreshes it) and asks it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ethereal.spend.periods import PERIODS

SCOPES = ("user", "rbac_group", "organization", "api_key")
SCOPE_ID = {"user": "user_id", "rbac_group": "rbac_group_id", "api_key": "api_key_id"}
MICRO_PER_CENT = 10_000


def new_limit_id() -> str:
    # time-ordered (the first 12 hex digits are milliseconds) so lists page by id in creation order
    return f"spl_{int(time.time() * 1000):012x}{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class SpendLimit:
    id: str
    scope_type: str  # SCOPES
    scope_id: str  # user_id, rbac_group_id, api_key_id; "" for the organization
    period: str  # PERIODS
    amount_cents: int | None  # None: unlimited
    currency: str = "USD"
    shared: bool = False
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def amount_micro(self) -> int | None:
        return None if self.amount_cents is None else self.amount_cents * MICRO_PER_CENT

    def scope(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.scope_type}
        if self.scope_type in SCOPE_ID:
            out[SCOPE_ID[self.scope_type]] = self.scope_id
        return out

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope_type": self.scope_type,
            "scope_id": self.scope_id,
            "period": self.period,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "shared": self.shared,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SpendLimit:
        return cls(
            id=row["id"],
            scope_type=row["scope_type"],
            scope_id=row["scope_id"] or "",
            period=row["period"],
            amount_cents=None if row["amount_cents"] is None else int(row["amount_cents"]),
            currency=row.get("currency") or "USD",
            shared=bool(row.get("shared")),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
        )


SPEND_LIMIT_COLUMNS = (
    "id",
    "scope_type",
    "scope_id",
    "period",
    "amount_cents",
    "currency",
    "shared",
    "created_at",
    "updated_at",
)


@dataclass(frozen=True, slots=True)
class Resolved:
    """The cap that applies to a person for one period.

    ``amount_micro`` None: unlimited. ``source``: ``user`` | ``rbac_group`` | ``organization`` |
    ``default`` (nothing set); ``limit`` the limit it comes from (None for ``default``)."""

    period: str
    amount_micro: int | None
    source: str
    limit: SpendLimit | None = None

    @property
    def unlimited(self) -> bool:
        return self.amount_micro is None


class LimitBook:
    """An immutable index of spend limits, answering resolution in O(teams) per period."""

    __slots__ = ("_by", "limits", "version")

    def __init__(self, limits: Iterable[SpendLimit], version: float = 0.0) -> None:
        self.limits: tuple[SpendLimit, ...] = tuple(limits)
        self.version = version
        self._by: dict[tuple[str, str, str, bool], SpendLimit] = {
            (lim.scope_type, lim.scope_id, lim.period, lim.shared): lim for lim in self.limits
        }

    @classmethod
    def of(cls, limits: Iterable[SpendLimit], version: float = 0.0) -> LimitBook:
        return cls(limits, version)

    def __len__(self) -> int:
        return len(self.limits)

    def get(self, scope_type: str, scope_id: str, period: str, shared: bool = False) -> SpendLimit | None:
        return self._by.get((scope_type, scope_id, period, shared))

    def resolve(self, owner: str | None, teams: Iterable[str] | None, period: str) -> Resolved:
        """The per-member cap of ``owner`` (a person) for ``period``: user override → the most
        restrictive per-member group cap → organization default → unlimited. A key without an
        owner is nobody's: only group and organization defaults apply to it."""
        if period not in PERIODS:
            raise ValueError(f"unknown period {period!r}")
        if owner:
            own = self._by.get(("user", owner, period, False))
            if own is not None:
                return Resolved(period, own.amount_micro, "user", own)
        best: SpendLimit | None = None
        for team in teams or ():
            lim = self._by.get(("rbac_group", team, period, False))
            if lim is None:
                continue
            if best is None or _tighter(lim, best):
                best = lim
        if best is not None:
            return Resolved(period, best.amount_micro, "rbac_group", best)
        org = self._by.get(("organization", "", period, False))
        if org is not None:
            return Resolved(period, org.amount_micro, "organization", org)
        return Resolved(period, None, "default", None)

    def resolve_all(self, owner: str | None, teams: Iterable[str] | None) -> list[Resolved]:
        teams = tuple(teams or ())
        return [self.resolve(owner, teams, period) for period in PERIODS]

    def pools(self, teams: Iterable[str] | None, period: str) -> list[SpendLimit]:
        """The pooled (``shared``) caps a member of ``teams`` spends against for ``period``: each
        team's, and the organization's; the sum of the pool's spend is what each one caps."""
        out = [lim for team in (teams or ()) if (lim := self._by.get(("rbac_group", team, period, True)))]
        org = self._by.get(("organization", "", period, True))
        if org is not None:
            out.append(org)
        return out

    def key_limit(self, key_id: str, period: str) -> SpendLimit | None:
        """A single key's own cap (the ``api_key`` scope, an extension), beside its person's."""
        return self._by.get(("api_key", key_id, period, False))

    def governs(self, owner: str | None, teams: Iterable[str] | None, key_id: str | None = None) -> bool:
        """Whether any limit can apply to this key (admission skips the spend check otherwise)."""
        if not self.limits:
            return False
        teams = tuple(teams or ())
        for period in PERIODS:
            if not self.resolve(owner, teams, period).unlimited or self.pools(teams, period):
                return True
            if key_id and self.key_limit(key_id, period) is not None:
                return True
        return False


def person_of(owner: str | None, key_id: str | None) -> str:
    """The person a key spends as: its owner, else the key itself (a key nobody owns is its own
    person, so per-member defaults cap each such key alone, never all of them together)."""
    return owner or key_id or ""


def _tighter(a: SpendLimit, b: SpendLimit) -> bool:
    """Whether ``a`` is more restrictive than ``b`` (unlimited is the least)."""
    if a.amount_cents is None:
        return False
    return b.amount_cents is None or a.amount_cents < b.amount_cents


@dataclass(frozen=True, slots=True)
class Check:
    """One cap a request is held against (what enforcement reads): the period, the cap in micro-USD,
    where it comes from and the spend it caps (``person`` the owner's own spend, ``pool`` a shared
    team's or the organization's, ``key`` one key's)."""

    period: str
    amount_micro: int
    source: str
    kind: str  # person | pool | key
    limit: SpendLimit | None


def checks(
    book: LimitBook, owner: str | None, teams: Iterable[str] | None, key_id: str | None
) -> list[Check]:
    """Every finite cap a request of this key is held against, for every period."""
    teams = tuple(teams or ())
    out: list[Check] = []
    for period in PERIODS:
        res = book.resolve(owner, teams, period)
        if res.amount_micro is not None:
            out.append(Check(period, res.amount_micro, res.source, "person", res.limit))
        for pool in book.pools(teams, period):
            if pool.amount_micro is not None:
                out.append(Check(period, pool.amount_micro, pool.scope_type, "pool", pool))
        if key_id:
            lim = book.key_limit(key_id, period)
            if lim is not None and lim.amount_micro is not None:
                out.append(Check(period, lim.amount_micro, "api_key", "key", lim))
    return out
