"""Throughput per core: requests/s and gateway CPU per request through 1 and 2 workers, side by side.

    python loadtest/bench_scale.py [--duration 4] [--rounds 3] [--concurrency 64]

One sim, two gateways (1 worker, 2 workers) on the embedded store with a key without limits,
both running the whole time. Each round measures, alternating so that machine noise hits all
alike: non-streamed and streamed ``/v1/messages`` at ``--concurrency`` keep-alive connections
(``loadtest/httplload.py``, closed loop). Reported per cell, the median over rounds: requests/s,
p50/p99 latency and TTFB, and the gateway's CPU per request (user + system of the server and its
workers from /proc, over the measured window).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtest"))

from bench import body_for, cpu_seconds, find_listener_pid, proc_tree
from ethereal.sim.testing import start_sim_process
from httpload import run_load

from tests.conftest import mint_into
from tests.procs import gateway_process


async def one(
    url: str, key: str, stream: bool, concurrency: int, duration: float, pids: list[int]
) -> dict[str, float]:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    body = body_for(stream)
    await run_load(url + "/v1/messages", body, headers, concurrency=concurrency, duration=0.5, warmup=0.0)
    before = cpu_seconds(pids)
    res = await run_load(
        url + "/v1/messages", body, headers, concurrency=concurrency, duration=duration, warmup=0.0
    )
    cpu = cpu_seconds(pids) - before
    s = res.summary()
    return {
        "rps": s["rps"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "ttfb_p99_ms": s["ttfb_p99_ms"],
        "errors": res.errors,
        "cpu_ms_per_req": cpu * 1000 / max(1, res.count),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    uvloop.install()
    cells: dict[str, list[dict[str, float]]] = {}
    with (
        start_sim_process() as (_, sim_url),
        tempfile.TemporaryDirectory() as t1,
        tempfile.TemporaryDirectory() as t2,
    ):
        key1, _ = mint_into(Path(t1))
        key2, _ = mint_into(Path(t2))
        with (
            gateway_process(Path(t1), sim_url, workers=1) as g1,
            gateway_process(Path(t2), sim_url, workers=2) as g2,
        ):
            gws = [("1 worker", g1, key1), ("2 workers", g2, key2)]
            pids = {name: proc_tree(find_listener_pid(int(url.rsplit(":", 1)[1]))) for name, url, _ in gws}
            for r in range(args.rounds):
                for stream in (False, True):
                    for name, url, key in gws:
                        cell = f"{'streamed' if stream else 'non-streamed'}, {name}"
                        res = asyncio.run(one(url, key, stream, args.concurrency, args.duration, pids[name]))
                        cells.setdefault(cell, []).append(res)
                        print(
                            f"round {r + 1} {cell}: {res['rps']:.0f} req/s, {res['cpu_ms_per_req']:.3f} ms CPU/req,"
                            f" p99 {res['p99_ms']:.1f} ms, errors {res['errors']}",
                            flush=True,
                        )
    print(f"\nmedians of {args.rounds} rounds, c={args.concurrency}, {args.duration:g} s each:")
    print("| scenario | req/s | gateway CPU / request | p50 | p99 | TTFB p99 | errors |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for cell, runs in cells.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        summary[cell] = med
        print(
            f"| {cell} | {med['rps']:.0f} | {med['cpu_ms_per_req']:.3f} ms | {med['p50_ms']:.2f} ms |"
            f" {med['p99_ms']:.2f} ms | {med['ttfb_p99_ms']:.2f} ms | {sum(r['errors'] for r in runs):.0f} |"
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
