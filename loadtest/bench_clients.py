"""Upstream HTTP client candidates, side by side against the sim: CPU and wall time per request.

    python loadtest/bench_clients.py [--n 3000]

The gateway's own overhead is dominated by what its upstream client costs per
request, so the client was chosen by this measurement (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time

import uvloop
from ethereal.sim.testing import start_sim_process

BODY = json.dumps(
    {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi sim:tokens=40"}],
    }
).encode()
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01", "content-type": "application/json"}


async def bench_aiohttp(url: str, n: int) -> tuple[float, float]:
    import aiohttp

    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()

        return await timed(one, n)


async def bench_httpx(url: str, n: int) -> tuple[float, float]:
    import httpx

    async with httpx.AsyncClient() as client:

        async def one() -> None:
            await client.post(url, content=BODY, headers=HEADERS)

        return await timed(one, n)


async def timed(one, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for _ in range(200):
        await one()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await one()
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    with start_sim_process() as (_proc, base):
        url = base + "/v1/messages"
        for name, fn in (("aiohttp", bench_aiohttp), ("httpx", bench_httpx)):
            cpu, wall = uvloop.run(fn(url, args.n))
            print(f"{name:8s} client CPU {cpu:7.1f} µs/request   wall {wall:7.1f} µs/request")


if __name__ == "__main__":
    main()
