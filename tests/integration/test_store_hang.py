"""A hung PostgreSQL (its processes stopped with SIGSTOP: connections accepted, nothing answered) costs
a bounded wait: cached keys keep their throughput, no request waits past the store deadline, a key never
seen fails fast with 503 + retry-after, and every usage row arrives once the server is resumed.

Run: pytest -q -s -m slow tests/integration/test_store_hang.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_budget_bound import ADMIN, HEADERS, mint
from tests.procs import gateway_process

pytestmark = pytest.mark.slow

HANG = 25.0  # seconds PostgreSQL stays stopped
DEADLINE = 2.0  # ETHEREAL_STORE_TIMEOUT
SLACK = 1.0  # a loaded 2-vCPU machine's scheduling delay on top of the deadline
CLIENTS = 16


def postgres_pids(data_dir: str) -> list[int]:
    """The postmaster (first line of postmaster.pid) and its children."""
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        master = int(f.readline())
    pids = [master]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry))
    return pids


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_hung_postgres_costs_a_bounded_wait(sim_url: str, postgres: Any, tmp_path: Path) -> None:
    from tests.services import postgres_server

    with postgres_server() as (server, data_dir):
        pg_url = server.create_database(f"hang_{uuid.uuid4().hex[:8]}")
        env = {
            "ETHEREAL_ADMIN_KEY": ADMIN,
            "ETHEREAL_KEY_CACHE_TTL": "1.0",
            "ETHEREAL_DATABASE_URL": pg_url,
            "ETHEREAL_STORE_TIMEOUT": str(DEADLINE),
            "ETHEREAL_METER_RETRY_MAX": "0.5",
        }
        with gateway_process(tmp_path, sim_url, env=env) as url:
            plain = mint(url, name="cached plain")
            budgeted = mint(url, name="cached budgeted", budget_micro_usd=100_000_000)
            fresh = mint(url, name="never used before the hang")
            result = asyncio.run(load(url, [plain["key"], budgeted["key"]], fresh["key"], data_dir))
            before, during, after = result["rates"]
            print(
                f"\nhung PostgreSQL {HANG:.0f}s: requests/s before {before:.0f}, during {during:.0f}, after "
                f"{after:.0f}; slowest request during the hang {result['slowest']:.2f}s (deadline {DEADLINE}s); "
                f"new key answered {result['fresh']} in {result['fresh_wait']:.2f}s; statuses {result['statuses']}"
            )
            assert result["statuses"] == {200: result["total"]}, result["statuses"]
            assert result["slowest"] <= DEADLINE + SLACK
            assert during >= 0.5 * before  # cached keys keep their throughput
            assert result["fresh"] == 503 and result["fresh_retry_after"] is not None
            assert result["fresh_wait"] <= DEADLINE + SLACK
            rows = asyncio.run(wait_rows(pg_url, result["total"]))
            assert rows == result["total"], (rows, result["total"])  # nothing lost


async def load(url: str, keys: list[str], fresh: str, data_dir: str) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    done: list[tuple[float, float]] = []  # (end time, duration)
    phase = {"stop": 0.0, "cont": 0.0}
    stop_at = [time.monotonic() + 8 + HANG + 8]
    out: dict[str, Any] = {}

    async def client_loop(client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while time.monotonic() < stop_at[0]:
            t = time.monotonic()
            resp = await client.post(
                url + "/v1/messages",
                headers={**HEADERS, "x-api-key": keys[i % len(keys)]},
                json={
                    "model": "claude-haiku-4-5",
                    "max_tokens": 32,
                    "messages": [{"role": "user", "content": f"client {i} request {n} sim:tokens=8"}],
                },
            )
            done.append((time.monotonic(), time.monotonic() - t))
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            n += 1

    async def controller() -> None:
        await asyncio.sleep(8)
        pids = postgres_pids(data_dir)
        phase["stop"] = time.monotonic()
        signal_all(pids, signal.SIGSTOP)
        await asyncio.sleep(3)
        async with httpx.AsyncClient(timeout=30) as c:
            t = time.monotonic()
            resp = await c.post(
                url + "/v1/messages",
                headers={**HEADERS, "x-api-key": fresh},
                json={
                    "model": "claude-haiku-4-5",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            out["fresh"], out["fresh_wait"] = resp.status_code, time.monotonic() - t
            out["fresh_retry_after"] = resp.headers.get("retry-after")
        await asyncio.sleep(max(0.0, phase["stop"] + HANG - time.monotonic()))
        signal_all(pids, signal.SIGCONT)
        phase["cont"] = time.monotonic()

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=CLIENTS + 4)) as client:
        await asyncio.gather(controller(), *(client_loop(client, i) for i in range(CLIENTS)))
    t_stop, t_cont = phase["stop"], phase["cont"]
    start = min(e - d for e, d in done)

    def rate(lo: float, hi: float) -> float:
        return sum(1 for e, _ in done if lo <= e < hi) / max(0.001, hi - lo)

    out["rates"] = (rate(start + 2, t_stop), rate(t_stop, t_cont), rate(t_cont + 1, max(e for e, _ in done)))
    out["slowest"] = max((d for e, d in done if t_stop <= e <= t_cont + DEADLINE), default=0.0)
    out["statuses"] = statuses
    out["total"] = sum(statuses.values())
    return out


async def wait_rows(pg_url: str, expect: int) -> int:
    """Rows of served requests (polled, bounded: the meter writes what waited once the server answers)."""
    import asyncpg

    deadline = time.monotonic() + 90
    n = 0
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(pg_url, timeout=5)
            try:
                n = await conn.fetchval("SELECT count(*) FROM usage_records WHERE status = 200")
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            pass
        if n >= expect:
            return int(n)
        await asyncio.sleep(0.5)
    return int(n)
