"""The limiter alone, against a throwaway Redis: CPU per admit + settle, this checkout vs another.

    python loadtest/bench_limiter.py [--ops 4000] [--rounds 5] [--against CHECKOUT]

Each round runs, for each version, a fresh process that admits and settles ``--ops`` requests
of one fully governed key (token and micro-USD budgets, RPM, TPM, a concurrency cap and a plan
with two windows: every part of admit.lua runs), first one at a time (c=1), then 32 at once.
Reported per request: the limiter's Python CPU (process time of that process), Redis's CPU
(from /proc), and wall time; medians over rounds. CPU time is far less sensitive than latency to
other processes on a shared machine, so this isolates what a change to the limiter costs.
``--against`` runs another checkout (its ``python/`` on PYTHONPATH, the built extension inside).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HUGE = 10**15


async def worker(url: str, ops: int, concurrency: int) -> dict[str, float]:
    from ethereal.keys import mint
    from ethereal.limits.plans import Plans
    from ethereal.limits.redis import RedisLimiter

    plans = Plans(
        {
            "bench": {
                "requests_per_5h": HUGE,
                "tokens_per_5h": HUGE,
                "requests_per_week": HUGE,
                "tokens_per_week": HUGE,
            }
        }
    )
    limiter = RedisLimiter(url, plans=plans)
    await limiter.start()
    key = mint(
        "sk-bench-",
        plan="bench",
        budget_tokens=HUGE,
        budget_micro_usd=HUGE,
        rpm=HUGE,
        tpm=HUGE,
        max_concurrency=100_000,
    )[1]

    async def loop(n: int) -> None:
        for _ in range(n):
            adm = await limiter.admit(
                key, model="m", input_tokens=120, max_tokens=256, price_in=3, price_out=15
            )
            await limiter.settle(adm, tokens=160, cost_micro=1000)

    await loop(50)  # warm: functions loaded, spend seeded, specs encoded
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop(ops // concurrency) for _ in range(concurrency)))
    await limiter.snapshot(key.id)  # every settle answered
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await limiter.close()
    return {"cpu_s": cpu, "wall_s": wall, "ops": ops // concurrency * concurrency}


def redis_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", type=Path, metavar="CHECKOUT")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "OPS", "CONCURRENCY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import uvloop

        url, ops, conc = args.worker
        print(json.dumps(uvloop.run(worker(url, int(ops), int(conc)))))
        return
    from tests.services import redis_server

    trees = [("this", None)] + ([("against", args.against.resolve())] if args.against else [])
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    with redis_server() as redis:
        for conc in (1, 32):
            rows: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in trees}
            for _ in range(args.rounds):
                for label, checkout in trees:
                    env = {k: v for k, v in os.environ.items() if not k.startswith("ETHEREAL_")}
                    if checkout is not None:
                        env["PYTHONPATH"] = str(checkout / "python")
                    r0 = redis_cpu(redis.proc.pid)
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", redis.url, str(args.ops), str(conc)],
                        env=env,
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    rcpu = redis_cpu(redis.proc.pid) - r0
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    n = res["ops"]
                    rows[label].append((1e6 * res["cpu_s"] / n, 1e6 * rcpu / n, 1e6 * res["wall_s"] / n))
            for label, samples in rows.items():
                py, rc, wall = (statistics.median(s[i] for s in samples) for i in range(3))
                print(
                    f"[{label}] c={conc:<3} per admit+settle: limiter python cpu {py:.1f} µs, redis cpu {rc:.1f} µs, "
                    f"wall {wall:.1f} µs (medians of {len(samples)} rounds of {args.ops})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
