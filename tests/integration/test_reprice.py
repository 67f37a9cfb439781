"""Re-pricing stored usage after a correction to the models file (metering/reprice.py), on both
stores (SQLite; PostgreSQL with its usage_hourly rollup moved by the update trigger), with the
in-process limiter's budget counter; the gateway with PostgreSQL and Redis is in
test_reprice_gateway.py."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from ethereal.keys import mint
from ethereal.limits.local import LocalLimiter
from ethereal.metering.pricing import price
from ethereal.metering.reprice import record_usage, reprice
from ethereal.models import Registry, load_registry
from ethereal.storage.base import UsageFilter
from ethereal.storage.records import UsageRecord

MODEL = "claude-sonnet-4-6"
# the correction: Sonnet 4.6's card from its release, input and cache reads dearer
CORRECTION = f"""
[[models]]
id = "{MODEL}"
[[models.prices]]
effective_from = 2026-02-17
input = 3.5
cache_read = 0.35
"""
# the operator describes a model that was billed provisionally
NEW_MODEL = """
[[models]]
id = "claude-sonnet-9"
family = "sonnet"
released = 2020-01-01
[[models.prices]]
effective_from = 2020-01-01
input = 1
output = 2
"""


def priced(registry: Registry, rec: UsageRecord, name: str | None = None) -> tuple[int, str | None, bool]:
    model = registry.resolve(name or rec.model or "") or registry.provisional(name or rec.model or "")
    p = price(registry, model, record_usage(rec), at=rec.started_at, batch=rec.batch)
    return p.cost_micro, p.rate_card, p.provisional


def records(key_a: str, key_b: str, hour: float, registry: Registry) -> list[UsageRecord]:
    out = []
    for i in range(6):
        rec = UsageRecord(
            request_id=f"req_{i:04d}",
            key_id=key_a if i % 3 else key_b,
            credential="default",
            route="messages",
            model=MODEL,
            status=200,
            stream=bool(i % 2),
            input_tokens=1000 + i,
            output_tokens=100 + i,
            cache_creation_5m=10 * i,
            cache_creation_1h=5,
            cache_read=2000 * i,
            started_at=hour + 60 * i,
            ended_at=hour + 60 * i + 1,
            web_search_requests=i % 2,
            inference_geo="us" if i == 4 else None,
        )
        out.append(rec)
    out[5].batch = True  # a batch item: re-priced at the batch rate
    # a model the registry did not describe: provisional
    out.append(
        UsageRecord(
            request_id="req_prov",
            key_id=key_a,
            credential="default",
            route="messages",
            model="claude-sonnet-9",
            status=200,
            stream=False,
            input_tokens=500,
            output_tokens=50,
            started_at=hour + 600,
            ended_at=hour + 601,
        )
    )
    # priced across two cards (an advisor iteration): left as it is
    out.append(
        UsageRecord(
            request_id="req_mixed",
            key_id=key_a,
            credential="default",
            route="messages",
            model=MODEL,
            status=200,
            stream=False,
            input_tokens=500,
            output_tokens=50,
            started_at=hour + 700,
            ended_at=hour + 701,
            cost_micro=123_456,
            rate_card=f"{MODEL}@2026-02-17+claude-opus-4-6@2026-02-05",
        )
    )
    # outside the range: never touched
    out.append(
        UsageRecord(
            request_id="req_old",
            key_id=key_a,
            credential="default",
            route="messages",
            model=MODEL,
            status=200,
            stream=False,
            input_tokens=500,
            output_tokens=50,
            started_at=hour - 86400 * 3,
            ended_at=hour - 86400 * 3 + 1,
        )
    )
    for rec in out:
        if rec.rate_card is None:
            rec.cost_micro, rec.rate_card, rec.priced_provisional = priced(registry, rec)
    return out


async def test_reprice_moves_records_sums_and_budget_counters(store: Any, tmp_path: Path) -> None:
    shipped = load_registry()
    path = tmp_path / "models.toml"
    path.write_text(CORRECTION + NEW_MODEL)
    corrected = load_registry(path)
    _, key_a = mint("sk-test-", name="a", budget_micro_usd=10**12)
    _, key_b = mint("sk-test-", name="b")  # no budget: nothing tracked in the limiter
    await store.insert_keys([key_a, key_b])
    hour = math.floor(time.time() / 3600) * 3600 - 2 * 86400  # whole hours: PostgreSQL reads its rollup
    rows = records(key_a.id, key_b.id, hour, shipped)
    assert await store.insert_usage(rows) == len(rows)
    assert next(r for r in rows if r.request_id == "req_prov").priced_provisional
    limiter = LocalLimiter(store=store)
    await limiter.charge(key_a, tokens=0, cost_micro=0, check=True)  # seeded from the store, as at an admit
    seeded = limiter.snapshot(key_a.id)["spent_micro"]
    assert seeded == sum(r.cost_micro for r in rows if r.key_id == key_a.id)
    totals_before = {t["key_id"]: t["cost_micro"] for t in await store.usage_totals(group_by="key_id")}

    since, until = hour - 3600, hour + 86400
    dry = await reprice(store, corrected, limiter, since=since, until=until, dry_run=True)
    assert dry.changed == 7 and dry.skipped == 1 and dry.examined == 8
    assert (await store.get_usage("req_0001")).cost_micro == rows[1].cost_micro  # a dry run changes nothing
    assert await store.last_price_correction() is None

    result = await reprice(store, corrected, limiter, since=since, until=until)
    assert (result.changed, result.skipped, result.conflicts, result.now_exact) == (7, 1, 0, 1)
    expected: dict[str, int] = {}
    for rec in rows:
        stored = await store.get_usage(rec.request_id)
        if rec.request_id in ("req_mixed", "req_old"):
            assert stored.cost_micro == rec.cost_micro and stored.rate_card == rec.rate_card
        else:
            cost, card, provisional = priced(corrected, rec)
            assert (stored.cost_micro, stored.rate_card, stored.priced_provisional) == (
                cost,
                card,
                provisional,
            )
            assert cost != rec.cost_micro
        expected[rec.key_id] = expected.get(rec.key_id, 0) + stored.cost_micro  # type: ignore[index]
    prov = await store.get_usage("req_prov")
    assert prov.rate_card == "claude-sonnet-9@2020-01-01" and not prov.priced_provisional
    assert prov.cost_micro == 500 * 1 + 50 * 2
    batch = await store.get_usage("req_0005")
    card = corrected.get(MODEL).card_at(batch.started_at)  # type: ignore[union-attr]
    full = (
        batch.input_tokens * card.rates.input
        + batch.output_tokens * card.rates.output
        + batch.cache_creation_5m * card.rates.cache_write_5m
        + batch.cache_creation_1h * card.rates.cache_write_1h
        + batch.cache_read * card.rates.cache_read
    )
    assert (
        batch.cost_micro == round(full / 2 / 1_000_000) + 10_000
    )  # half the tokens, the search at full price
    # every sum the console and reports read moved to the new figure
    spend = await store.spend_by_key([key_a.id, key_b.id])
    assert {k: v["cost_micro"] for k, v in spend.items()} == expected
    totals = {t["key_id"]: t["cost_micro"] for t in await store.usage_totals(group_by="key_id")}
    assert totals == expected and totals != totals_before
    assert {
        t["key_id"]: t["cost_micro"]
        for t in await store.usage_totals(group_by="key_id", since=hour, until=hour + 3 * 3600)
    } == {k: v - (rows[-1].cost_micro if k == key_a.id else 0) for k, v in expected.items()}
    series = await store.usage_series(since=hour, until=hour + 3600, step=3600)
    assert (
        sum(s["cost_micro"] for s in series) == expected[key_a.id] + expected[key_b.id] - rows[-1].cost_micro
    )
    # the limiter's counter: moved by the correction, equal to what a fresh seed would read
    assert limiter.snapshot(key_a.id)["spent_micro"] == expected[key_a.id]
    assert result.limiter_moved == 1  # key_b has no budget
    out = result.to_json()
    by_key = {k["key_id"]: k for k in out["keys"]}
    assert (
        by_key[key_a.id]["after_micro"] == expected[key_a.id] and by_key[key_a.id]["before_micro"] == seeded
    )
    assert out["delta_micro"] == sum(expected.values()) - sum(totals_before.values())
    last = await store.last_price_correction()
    assert last is not None and last["id"] == result.id and last["records"] == 7
    assert last["after_micro"] - last["before_micro"] == out["delta_micro"]

    again = await reprice(store, corrected, limiter, since=since, until=until)  # idempotent
    assert (again.changed, again.relabelled) == (0, 0)
    assert limiter.snapshot(key_a.id)["spent_micro"] == expected[key_a.id]
    back = await reprice(store, shipped, limiter, since=since, until=until)  # undone by the shipped data
    assert back.changed == 7 and back.now_exact == 0  # the model the file described is provisional again
    assert {t["key_id"]: t["cost_micro"] for t in await store.usage_totals(group_by="key_id")} == {
        k: v for k, v in totals_before.items()
    }


async def test_a_record_changed_meanwhile_is_not_overwritten(store: Any) -> None:
    from ethereal.storage.base import RepriceChange

    rec = UsageRecord(
        request_id="req_race",
        key_id=None,
        credential=None,
        route="messages",
        model=MODEL,
        status=200,
        stream=False,
        input_tokens=10,
        cost_micro=30,
        rate_card=f"{MODEL}@2026-02-17",
        started_at=time.time() - 10,
        ended_at=time.time(),
    )
    await store.insert_usage([rec])
    stale = RepriceChange("req_race", None, 29, 35, rec.rate_card, rec.rate_card, False)
    fresh = RepriceChange("req_race", None, 30, 35, rec.rate_card, rec.rate_card, False)
    assert await store.reprice_usage([stale]) == []
    assert await store.reprice_usage([fresh]) == [fresh]
    assert (await store.get_usage("req_race")).cost_micro == 35
    listed = await store.list_usage(UsageFilter(since=rec.started_at - 1))
    assert listed[0].rate_card == rec.rate_card


def test_cli_reprice(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``ethereal models reprice`` on the embedded store: a dry run, then the correction."""
    import asyncio
    import os

    from ethereal.storage import open_store

    url = f"sqlite:///{tmp_path / 'ethereal.sqlite3'}"
    shipped = load_registry()
    _, key = mint("sk-test-", name="a", budget_micro_usd=10**9)
    hour = math.floor(time.time() / 3600) * 3600 - 86400
    rows = records(key.id, key.id, hour, shipped)

    async def setup() -> None:
        store = await open_store(url)
        await store.insert_keys([key])
        await store.insert_usage(rows)
        await store.close()

    asyncio.run(setup())
    path = tmp_path / "models.toml"
    path.write_text(CORRECTION)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    env.update(
        {"ETHEREAL_DATABASE_URL": url, "ETHEREAL_MODELS_FILE": str(path), "ETHEREAL_DATA_DIR": str(tmp_path)}
    )
    day = time.strftime("%Y-%m-%d", time.gmtime(hour))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ethereal", "models", "reprice", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    dry = run("--since", day, "--until", day, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    # the provisional card is the family's dearest: it follows the correction too
    assert orjson.loads(dry.stdout)["records"]["changed"] == 7
    done = run("--since", day, "--until", day)
    assert done.returncode == 0, done.stderr
    assert "changed 7" in done.stdout and key.id in done.stdout
    assert run("--since", "yesterday").returncode == 2
