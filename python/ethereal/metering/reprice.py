"""Re-price stored usage after a correction to the registry's data (``ethereal models reprice``,
``POST /admin/api/models/reprice``).

Every usage record keeps its raw token counts, the labels that move a price (``speed``,
``inference_geo``, ``batch``) and the card it was priced with (``rate_card``). After the operator
corrects a card in ``ETHEREAL_MODELS_FILE`` (or the registry learns a model that was billed
provisionally), ``reprice`` prices each record of ``[since, until)`` again with the cards in force
when its request started, and where the cost (or the card) differs:

1. writes the record's new ``cost_micro``, ``rate_card`` and ``priced_provisional``, each only if
   the record still holds what was read (two runs at once never apply one change twice; a run
   again finds nothing to do: re-pricing is idempotent);
2. the sums the console and reports read follow: PostgreSQL's ``usage_hourly`` rollup is moved by
   the update trigger of migration 0006 in the same transaction; the embedded store sums the
   records themselves;
3. moves each affected key's spend in the limiter by the difference (``Limiter.charge``, signed,
   unchecked): the Redis counters every replica shares, or this process's in-process ones. A key
   whose spend the limiter has not seeded yet is left alone: its seed reads the corrected records.
   Rate windows count tokens, not money, so no window moves.

A record priced across several cards (iterations on other models, ``rate_card`` joined by ``+``)
cannot be re-priced from its totals and is left as it is (counted as ``skipped``). Records still
in a gateway's memory or spool when the run reads the range are priced by that gateway's registry:
run the correction after the gateways serve the corrected file (docs/models.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ethereal.metering.pricing import SEP, Priced, model_for, price
from ethereal.models import Model, Registry
from ethereal.storage.base import RepriceChange, Store, UsageFilter
from ethereal.storage.records import UsageRecord
from ethereal.usage import Usage

log = logging.getLogger("ethereal.metering")

PROVISIONAL_PREFIX = "provisional:"
PAGE = 1000
MAX_KEYS_SHOWN = 100  # keys listed in the answer and kept with the correction (the totals count all)


class RepriceError(ValueError):
    """A request for a reprice that cannot run (a bad date, an empty range)."""


def parse_bound(value: Any, *, field_name: str, end: bool = False) -> float:
    """A range bound: a UTC day ``YYYY-MM-DD`` (its start; with ``end``, the end of that day, so
    ``--until`` names the last day re-priced) or an RFC 3339 time (as given), or unix seconds."""
    if isinstance(value, bool):
        raise RepriceError(f"{field_name}: expected a date (YYYY-MM-DD) or an RFC 3339 time")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise RepriceError(f"{field_name}: must be a non-negative unix time")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise RepriceError(f"{field_name}: expected a date (YYYY-MM-DD) or an RFC 3339 time")
    text = value.strip()
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise RepriceError(f"{field_name}: {text[:40]!r} is not a date (YYYY-MM-DD)") from None
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return (start + timedelta(days=1) if end else start).timestamp()
    try:
        moment = datetime.fromisoformat(text)  # 3.11 reads a trailing Z
    except ValueError:
        raise RepriceError(
            f"{field_name}: {text[:40]!r} is not a date (YYYY-MM-DD) or an RFC 3339 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(slots=True)
class KeyChange:
    key_id: str
    records: int = 0
    delta_micro: int = 0
    before_micro: int = 0  # the key's whole spend before the correction (records in the store)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "records": self.records,
            "before_micro": self.before_micro,
            "after_micro": self.before_micro + self.delta_micro,
            "delta_micro": self.delta_micro,
        }


@dataclass(slots=True)
class RepriceResult:
    since: float
    until: float
    dry_run: bool
    registry_version: str
    examined: int = 0
    changed: int = 0  # records whose cost changed
    relabelled: int = 0  # records whose card or provisional flag changed at the same cost
    skipped: int = 0  # records priced across several cards (left as they are)
    conflicts: int = 0  # records changed by someone else between read and write (left: run again)
    before_micro: int = 0  # the changed records' cost before and after
    after_micro: int = 0
    now_exact: int = 0  # records priced provisionally before, exactly now
    keys: dict[str, KeyChange] = field(default_factory=dict)
    limiter_moved: int = 0  # keys whose budget counter moved
    id: str | None = None
    at: float = 0.0

    def to_json(self, *, serving_version: str | None = None) -> dict[str, Any]:
        keys = sorted(self.keys.values(), key=lambda k: (-abs(k.delta_micro), k.key_id))
        out: dict[str, Any] = {
            "type": "price_correction",
            "id": self.id,
            "dry_run": self.dry_run,
            "since": _rfc3339(self.since),
            "until": _rfc3339(self.until),
            "registry_version": self.registry_version,
            "records": {
                "examined": self.examined,
                "changed": self.changed,
                "relabelled": self.relabelled,
                "skipped": self.skipped,
                "conflicts": self.conflicts,
                "now_exact": self.now_exact,
            },
            "before_micro": self.before_micro,
            "after_micro": self.after_micro,
            "delta_micro": self.after_micro - self.before_micro,
            "keys_changed": sum(1 for k in keys if k.delta_micro),
            "keys": [k.to_json() for k in keys[:MAX_KEYS_SHOWN]],
            "limiter_keys_moved": self.limiter_moved,
        }
        if serving_version is not None:
            out["serving_registry_version"] = serving_version
            if serving_version != self.registry_version:
                out["note"] = (
                    "this gateway serves registry data " + serving_version + ": new requests are "
                    "priced with it until it is restarted with the corrected file; run the "
                    "correction again after the restart to cover them"
                )
        return out

    def correction_row(self) -> dict[str, Any]:
        keys = sorted(self.keys.values(), key=lambda k: (-abs(k.delta_micro), k.key_id))
        return {
            "id": self.id,
            "at": self.at,
            "since": self.since,
            "until": self.until,
            "registry_version": self.registry_version,
            "records": self.changed,
            "keys": sum(1 for k in keys if k.delta_micro),
            "before_micro": self.before_micro,
            "after_micro": self.after_micro,
            "detail": {
                "examined": self.examined,
                "relabelled": self.relabelled,
                "skipped": self.skipped,
                "conflicts": self.conflicts,
                "now_exact": self.now_exact,
                "keys": [k.to_json() for k in keys[:MAX_KEYS_SHOWN]],
            },
        }


def correction_json(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored correction (``Store.last_price_correction``) as the admin API and console show it."""
    if row is None:
        return None
    detail = row.get("detail") or {}
    return {
        "id": row["id"],
        "at": _rfc3339(row["at"]),
        "since": _rfc3339(row["since"]),
        "until": _rfc3339(row["until"]),
        "registry_version": row["registry_version"],
        "records": int(row["records"]),
        "keys": int(row["keys"]),
        "before_micro": int(row["before_micro"]),
        "after_micro": int(row["after_micro"]),
        "delta_micro": int(row["after_micro"]) - int(row["before_micro"]),
        "examined": detail.get("examined"),
        "now_exact": detail.get("now_exact"),
    }


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def model_of(registry: Registry, rec: UsageRecord) -> Model | None:
    """The model whose cards price ``rec``: the one named by the card it was priced with (the
    model the upstream reported serving, when it differed from the one asked for), else the
    record's model name (described, else provisional)."""
    card = rec.rate_card
    if card and not card.startswith(PROVISIONAL_PREFIX):
        found = registry.get(card.partition("@")[0])
        if found is not None:
            return found
    if rec.model:
        return model_for(registry, rec.model)
    return None


def reprice_record(registry: Registry, rec: UsageRecord) -> Priced | None:
    """What ``rec`` costs at ``registry``'s cards (None: it cannot be re-priced from its totals)."""
    if rec.rate_card is not None and SEP in rec.rate_card:
        return None
    return price(registry, model_of(registry, rec), record_usage(rec), at=rec.started_at, batch=rec.batch)


def record_usage(rec: UsageRecord) -> Usage:
    """The billable usage a stored record's totals hold (its per-iteration split is not stored)."""
    return Usage(
        input_tokens=rec.input_tokens,
        output_tokens=rec.output_tokens,
        cache_5m=rec.cache_creation_5m,
        cache_1h=rec.cache_creation_1h,
        cache_read=rec.cache_read,
        web_searches=rec.web_search_requests,
        speed=rec.speed,
        inference_geo=rec.inference_geo,
    )


async def reprice(
    store: Store,
    registry: Registry,
    limiter: Any,
    *,
    since: float,
    until: float,
    dry_run: bool = False,
    page: int = PAGE,
) -> RepriceResult:
    """Re-price every record that started in ``[since, until)``; see the module's docstring."""
    if not until > since:
        raise RepriceError("until: must be after since")
    result = RepriceResult(
        since=since, until=until, dry_run=dry_run, registry_version=registry.version, at=time.time()
    )
    filters = UsageFilter(since=since, until=until)
    before: tuple[float, str] | None = None
    spenders: set[tuple[str | None, str]] = set()  # (owner, key_id) of records whose cost moved
    teams: set[str] = set()
    while True:
        records = await store.list_usage(filters, limit=page, before=before)
        if not records:
            break
        last = records[-1]
        before = (last.started_at, last.request_id)
        changes: list[RepriceChange] = []
        for rec in records:
            result.examined += 1
            priced = reprice_record(registry, rec)
            if priced is None:
                result.skipped += 1
                continue
            if (
                priced.cost_micro == rec.cost_micro
                and priced.rate_card == rec.rate_card
                and priced.provisional == rec.priced_provisional
            ):
                continue
            changes.append(
                RepriceChange(
                    rec.request_id,
                    rec.key_id,
                    rec.cost_micro,
                    priced.cost_micro,
                    rec.rate_card,
                    priced.rate_card,
                    priced.provisional,
                )
            )
        applied = changes if dry_run else await store.reprice_usage(changes)
        by_id = {r.request_id: r for r in records}
        for c in applied:
            moved_rec = by_id.get(c.request_id)
            if moved_rec is not None and c.new_cost != c.old_cost and moved_rec.key_id is not None:
                spenders.add((moved_rec.owner or None, moved_rec.key_id))
                teams.update(t for t in (moved_rec.teams or "").split(",") if t)
        result.conflicts += len(changes) - len(applied)
        was_provisional = {r.request_id for r in records if r.priced_provisional}
        for c in applied:
            if c.request_id in was_provisional and not c.provisional:
                result.now_exact += 1
            if c.new_cost == c.old_cost:
                result.relabelled += 1
                continue
            result.changed += 1
            result.before_micro += c.old_cost
            result.after_micro += c.new_cost
            if c.key_id is not None:
                entry = result.keys.get(c.key_id)
                if entry is None:
                    entry = result.keys[c.key_id] = KeyChange(c.key_id)
                entry.records += 1
                entry.delta_micro += c.new_cost - c.old_cost
        if len(records) < page:
            break
    moved = [k for k in result.keys.values() if k.delta_micro]
    if moved:
        spend = await store.spend_by_key([k.key_id for k in moved])
        for k in moved:
            after = int((spend.get(k.key_id) or {}).get("cost_micro") or 0)
            # the store holds the corrected records already (a dry run: the old ones)
            k.before_micro = after if dry_run else after - k.delta_micro
    if not dry_run:
        result.limiter_moved = await _move_budgets(store, limiter, moved)
        if spenders and hasattr(limiter, "reseed_caps"):
            # spend limits: the current periods' counters are seeded again from the corrected records
            await limiter.reseed_caps(spenders, teams)
        result.id = f"pc_{int(result.at * 1000):x}{os.urandom(4).hex()}"
        await store.insert_price_correction(result.correction_row())
        log.warning(
            "price correction %s: %d record(s) of %s..%s re-priced with registry %s, %d key(s), "
            "%+d micro-USD",
            result.id,
            result.changed,
            _rfc3339(since),
            _rfc3339(until),
            registry.version,
            len(moved),
            result.after_micro - result.before_micro,
        )
    return result


async def _move_budgets(store: Store, limiter: Any, moved: list[KeyChange]) -> int:
    """Move each key's spend counter by its correction (keys the limiter tracks a budget for)."""
    count = 0
    for change in moved:
        key = await store.get_key(change.key_id)
        if key is None or not limiter.budgeted(key):
            continue
        await limiter.charge(key, tokens=0, cost_micro=change.delta_micro, check=False)
        count += 1
    return count
