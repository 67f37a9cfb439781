"""Redis loses its state mid-traffic (FLUSHALL; SIGKILL and a restart without persistence): two gateway
processes, 200 clients on one money budget, bounded duration. The spend stays within the hard-budget
bound, and once the traffic is over Redis's counter equals the sum of the usage rows (docs/limits.md,
"Redis loss and restart").

Run: pytest -q -s -m slow tests/integration/test_redis_loss.py
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_budget_bound import ADMIN, HEADERS, mint, output_cost, redis_spent, rows_of
from tests.procs import free_port, gateway_process

pytestmark = pytest.mark.slow

CLIENTS = 200
BUDGET = 2_000_000  # $2
DURATION = 45.0  # seconds: every client stops by then, refused (402) or not


class RedisProc:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def setup(sim_url: str, postgres: Any, tmp: Path) -> Iterator[tuple[str, str, str, RedisProc]]:
    pg_url = postgres.create_database(f"loss_{uuid.uuid4().hex[:10]}")
    redis = RedisProc(tmp)
    redis.start()
    env = {
        "ETHEREAL_ADMIN_KEY": ADMIN,
        "ETHEREAL_KEY_CACHE_TTL": "1.0",
        "ETHEREAL_DATABASE_URL": pg_url,
        "ETHEREAL_REDIS_URL": redis.url,
    }
    try:
        with (
            gateway_process(tmp / "a", sim_url, env=env) as a,
            gateway_process(tmp / "b", sim_url, env=env) as b,
        ):
            yield a, b, pg_url, redis
    finally:
        redis.stop()


def body(i: int, n: int) -> dict[str, Any]:
    tokens = 100 + (i * 53 + n * 17) % 700
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "system": [
            {
                "type": "text",
                "text": f"[{uuid.uuid4().hex}] policy " * 40,
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "messages": [
            {"role": "user", "content": f"client {i} request {n} sim:tokens={tokens} sim:latency=500"}
        ],
    }


async def traffic(urls: tuple[str, str], key: str, event: Any) -> dict[str, int]:
    """200 clients, each sending until refused (402) or DURATION is over; 429 and 503 retried after their
    retry-after. ``event`` (the Redis loss) runs once the first third of the budget is likely spent."""
    headers = {**HEADERS, "x-api-key": key}
    stats: dict[str, int] = {}
    stop_at = time.monotonic() + DURATION

    async def client_loop(client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            try:
                resp = await client.post(urls[(i + n) % 2] + "/v1/messages", json=body(i, n), headers=headers)
            except httpx.TransportError:
                stats["lost"] = stats.get("lost", 0) + 1
                await asyncio.sleep(0.5)
                continue
            stats[str(resp.status_code)] = stats.get(str(resp.status_code), 0) + 1
            if resp.status_code in (429, 503):
                await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
                continue
            if resp.status_code == 402:
                return
            assert resp.status_code == 200, (resp.status_code, resp.text[:300])
            n += 1

    async with httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=CLIENTS + 10, keepalive_expiry=0.5)
    ) as client:
        tasks = [asyncio.ensure_future(client_loop(client, i)) for i in range(CLIENTS)]
        await asyncio.sleep(1.2)
        await event()
        await asyncio.gather(*tasks)
    return stats


async def counter_matches_rows(redis_url: str, pg_url: str, key_id: str) -> tuple[int, int]:
    """Poll (bounded) until Redis's spend for the key equals the sum of its rows; (redis, rows)."""
    deadline = time.monotonic() + 30
    while True:
        rows = await rows_of(pg_url, key_id, settle=0.5)
        spend = sum(r["cost_micro"] for r in rows)
        counted = await redis_spent(redis_url, key_id)
        if counted == spend or time.monotonic() > deadline:
            return counted, spend
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("loss", ["flushall", "sigkill_restart"])
async def test_redis_loss_mid_traffic(sim_url: str, postgres: Any, tmp_path: Path, loss: str) -> None:
    import redis.asyncio as aioredis

    with setup(sim_url, postgres, tmp_path) as (url_a, url_b, pg_url, redis):
        key = mint(url_a, budget_micro_usd=BUDGET, name=f"loss {loss}")
        timing: dict[str, float] = {}

        async def event() -> None:
            timing["at"] = time.monotonic()
            if loss == "flushall":
                r = aioredis.Redis.from_url(redis.url)
                await r.flushall()
                await r.aclose()
            else:
                await asyncio.to_thread(redis.kill)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(redis.start)  # empty: no persistence
            timing["done"] = time.monotonic()

        t0 = time.monotonic()
        stats = await traffic((url_a, url_b), key["key"], event)
        rows = await rows_of(pg_url, key["id"])
        served = [r for r in rows if r["status"] == 200]
        spend = sum(r["cost_micro"] for r in rows)
        alone = max(output_cost(r) for r in served)
        over = spend - BUDGET
        eps = max(0, over - alone) / BUDGET
        counted, summed = await counter_matches_rows(redis.url, pg_url, key["id"])
        print(
            f"\n{loss} at {timing['at'] - t0:.1f}s: {CLIENTS} clients, 2 gateways, budget {BUDGET} µ$: served "
            f"{len(served)} in {time.monotonic() - t0:.1f}s, answers {stats}; spent {spend} µ$ "
            f"({100 * over / BUDGET:+.2f} %), largest output part {alone} µ$, ε = {eps:.4f}; "
            f"Redis counter {counted} vs rows {summed}"
        )
        assert eps <= 0.02, (spend, BUDGET, alone)
        assert counted == summed
        assert stats.get("402", 0) > 0  # the budget was reached
