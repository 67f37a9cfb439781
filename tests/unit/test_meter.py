"""The meter: batching off the request path, the spool during outages, replay without duplicates."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from ethereal.metering.config import MeterConfig
from ethereal.metering.meter import Meter
from ethereal.storage.base import Store
from ethereal.storage.records import UsageRecord


def rec(i: int, **kw: Any) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{i:024d}",
        key_id="key_a",
        credential="default",
        route="messages",
        model="claude-sonnet-4-5-20250929",
        status=200,
        stream=False,
        input_tokens=i,
        output_tokens=1,
        cost_micro=10,
        started_at=1.7e9 + i,
        ended_at=1.7e9 + i + 0.5,
        **kw,
    )


class FakeStore(Store):
    """insert_usage with the real contract (ignore known request_ids), switchable down."""

    dialect = "fake"

    def __init__(self) -> None:
        self.rows: dict[str, UsageRecord] = {}
        self.order: list[str] = []
        self.down = False
        self.poison: set[str] = set()
        self.calls = 0
        self.commit_then_fail = False

    async def insert_usage(self, records: list[UsageRecord]) -> int:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionRefusedError("database is down")
        if any(r.request_id in self.poison for r in records):
            raise ValueError("invalid byte sequence")
        n = 0
        for r in records:
            if r.request_id not in self.rows:
                self.rows[r.request_id] = r
                self.order.append(r.request_id)
                n += 1
        if self.commit_then_fail:  # committed, but the answer was lost
            self.commit_then_fail = False
            raise TimeoutError("lost the reply")
        return n

    async def get_usage(self, request_id: str) -> UsageRecord | None:
        if self.down:
            raise ConnectionRefusedError("database is down")
        return self.rows.get(request_id)

    async def ping(self) -> None:
        if self.down:
            raise ConnectionRefusedError("database is down")

    async def migrate(self) -> list[str]:
        return []

    async def close(self) -> None: ...
    async def insert_keys(self, records): ...  # type: ignore[no-untyped-def]
    async def get_key_by_hash(self, key_hash): ...  # type: ignore[no-untyped-def]
    async def get_key(self, key_id): ...  # type: ignore[no-untyped-def]
    async def list_keys(self, **kw): ...  # type: ignore[no-untyped-def]
    async def update_key(self, key_id, changes): ...  # type: ignore[no-untyped-def]
    async def delete_key(self, key_id): ...  # type: ignore[no-untyped-def]
    async def usage_totals(self, **kw): ...  # type: ignore[no-untyped-def]
    async def spend_by_key(self, key_ids): ...  # type: ignore[no-untyped-def]
    async def upsert_credential(self, credential): ...  # type: ignore[no-untyped-def]
    async def get_credential(self, name): ...  # type: ignore[no-untyped-def]
    async def list_credentials(self): ...  # type: ignore[no-untyped-def]
    async def delete_credential(self, name): ...  # type: ignore[no-untyped-def]


def config(tmp_path: Path, **kw: Any) -> MeterConfig:
    base = {
        "batch_size": 100,
        "interval": 0.01,
        "spool_dir": tmp_path / "spool",
        "retry_min": 0.01,
        "retry_max": 0.05,
        "lookup_wait": 0.3,
        "segment_bytes": 16 * 1024,
    }
    base.update(kw)
    return MeterConfig(**base)  # type: ignore[arg-type]


async def until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_batches_flush_in_background(tmp_path: Path) -> None:
    store = FakeStore()
    meter = Meter(store, config(tmp_path))
    meter.start()
    for i in range(1050):
        meter.record(rec(i))
    await until(lambda: len(store.rows) == 1050)
    assert store.calls <= 15  # batched, not one write per record
    assert store.order == [rec(i).request_id for i in range(1050)]
    s = meter.stats()
    assert s["flushed_rows"] == 1050 and s["queue_depth"] == 0 and s["flush_failures"] == 0
    await meter.close()


async def test_outage_spools_then_replays_in_order_without_duplicates(tmp_path: Path) -> None:
    store = FakeStore()
    meter = Meter(store, config(tmp_path))
    meter.start()
    for i in range(300):
        meter.record(rec(i))
    await until(lambda: len(store.rows) == 300)
    store.down = True
    for i in range(300, 2300):
        meter.record(rec(i))
        if i % 100 == 0:
            await asyncio.sleep(0.005)  # requests keep flowing while the flusher spools
    await until(lambda: meter.stats()["queue_depth"] == 0 and meter.stats()["spooled_records"] == 2000)
    s = meter.stats()
    assert s["degraded"] and s["spool_bytes"] > 0 and s["flush_failures"] >= 1
    assert len(store.rows) == 300
    store.down = False
    store.commit_then_fail = True  # the first replayed batch commits but looks failed: replayed again
    for i in range(2300, 2400):
        meter.record(rec(i))
    await until(lambda: len(store.rows) == 2400 and not meter.stats()["degraded"])
    assert store.order == [rec(i).request_id for i in range(2400)]  # in order, each once
    s = meter.stats()
    assert s["replayed_records"] >= 2000 and s["spool_bytes"] == 0 and s["dropped_records"] == 0
    await meter.close()
    assert not list((tmp_path / "spool").glob("*/*.seg"))


async def test_close_while_down_leaves_spool_for_next_process(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    meter = Meter(store, config(tmp_path))
    meter.start()
    for i in range(250):
        meter.record(rec(i))
    await meter.close()
    assert len(list((tmp_path / "spool").glob("*/*.seg"))) >= 1
    store.down = False
    meter2 = Meter(store, config(tmp_path))
    meter2.start()
    meter2.record(rec(999))
    await until(lambda: len(store.rows) == 251)
    assert store.order[:250] == [rec(i).request_id for i in range(250)]
    await meter2.close()
    assert not any((tmp_path / "spool").iterdir())


async def test_poison_rows_are_quarantined_not_blocking(tmp_path: Path) -> None:
    store = FakeStore()
    store.poison = {rec(37).request_id, rec(80).request_id}
    meter = Meter(store, config(tmp_path))
    meter.start()
    for i in range(100):
        meter.record(rec(i))
    await until(lambda: len(store.rows) == 98)
    await meter.close()
    assert meter.quarantined == 2
    lines = (tmp_path / "spool" / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 2 and rec(37).request_id in lines[0]


async def test_spool_full_drop_policy_counts_losses(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    meter = Meter(store, config(tmp_path, spool_max_bytes=20_000, queue_max=200, batch_size=50))
    meter.start()
    for i in range(1000):
        meter.record(rec(i))
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    s = meter.stats()
    assert s["spool_full"] and s["dropped_records"] > 0 and s["queue_depth"] <= 200
    assert s["dropped_cost_micro"] == 10 * s["dropped_records"]
    assert meter.accepting  # drop policy keeps serving
    spooled = s["spooled_records"]
    store.down = False
    await until(lambda: not meter.stats()["degraded"] and meter.stats()["queue_depth"] == 0)
    # everything not counted as dropped is stored exactly once
    assert len(store.rows) == 1000 - meter.stats()["dropped_records"]
    assert spooled <= len(store.rows)
    await meter.close()


async def test_spool_full_reject_policy_stops_admission(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    meter = Meter(
        store, config(tmp_path, spool_max_bytes=10_000, queue_max=100, batch_size=50, on_full="reject")
    )
    meter.start()
    for i in range(400):
        meter.record(rec(i))
        await asyncio.sleep(0)
    await until(lambda: not meter.accepting)
    store.down = False
    await until(lambda: meter.accepting and not meter.stats()["degraded"])
    await meter.close()


async def test_get_waits_for_another_workers_flush(tmp_path: Path) -> None:
    store = FakeStore()
    meter = Meter(store, config(tmp_path))
    meter.start()
    other = rec(5)

    async def other_worker_flushes() -> None:
        await asyncio.sleep(0.1)
        await store.insert_usage([other])

    task = asyncio.create_task(other_worker_flushes())
    assert await meter.get(other.request_id) == other
    await task
    t0 = time.monotonic()
    assert await meter.get("req_unknown") is None
    assert time.monotonic() - t0 >= 0.25  # waited lookup_wait before saying 404
    mine = rec(6)
    meter.record(mine)
    assert await meter.get(mine.request_id) is mine  # no wait, before any flush
    await meter.close()


async def test_get_finds_spooled_records_while_down(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    meter = Meter(store, config(tmp_path, recent_size=10))
    meter.start()
    for i in range(50):
        meter.record(rec(i))
    await until(lambda: meter.stats()["spooled_records"] == 50)
    found = await meter.get(rec(3).request_id, wait=0)
    assert found == rec(3)
    await meter.close()


def test_record_is_cheap(tmp_path: Path) -> None:
    meter = Meter(FakeStore(), MeterConfig(spool_dir=None, queue_max=10**6))
    records = [rec(i) for i in range(100_000)]
    t0 = time.perf_counter()
    for r in records:
        meter.record(r)
    per = (time.perf_counter() - t0) / len(records)
    assert per < 20e-6, f"record() took {per * 1e6:.1f} µs"


def test_client_strings_are_bounded() -> None:
    meter = Meter(FakeStore(), MeterConfig(spool_dir=None))
    r = rec(1)
    r.model = "x\x00" * 1000
    meter.record(r)
    assert r.model is not None and len(r.model) == 256 and "\x00" not in r.model


@pytest.mark.parametrize("value", ["maybe"])
def test_config_validation(value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ethereal.settings import SettingsError, load_settings

    monkeypatch.setenv("ETHEREAL_METER_ON_FULL", value)
    with pytest.raises(SettingsError, match="ETHEREAL_METER_ON_FULL"):
        load_settings(data_dir=str(tmp_path))
    monkeypatch.setenv("ETHEREAL_METER_ON_FULL", "reject")
    monkeypatch.setenv("ETHEREAL_METER_BATCH_SIZE", "500")
    cfg = MeterConfig.from_settings(load_settings(data_dir=str(tmp_path)))
    assert cfg.on_full == "reject" and cfg.batch_size == 500 and cfg.spool_dir == tmp_path / "spool"
