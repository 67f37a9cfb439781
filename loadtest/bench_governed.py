"""Governed vs ungoverned, side by side in one run: what auth + admit + settle (Redis) add per request.

    python loadtest/bench_governed.py [--duration 4] [--rounds 3] [--workers 1] [--postgres]
                                      [--against CHECKOUT ...]

One gateway (uvicorn) in front of the sim, with a throwaway Redis, and two keys:
the *ungoverned* key has no limits (authenticated from the key cache, the limiter
does nothing), the *governed* key has every limit at once (token and micro-USD
budgets, RPM, TPM, a concurrency cap and a plan with a 5-hour and a weekly window),
so each of its requests runs admit.lua and settle.lua (one EVALSHA each). Runs
alternate between the keys (machine noise hits both alike) for non-streaming and
streaming requests at concurrency 1 and non-streaming at 32; the report gives
p50/p99 latency of both, the governed path's added latency, and CPU milliseconds
per request of the gateway and of Redis.

``--against CHECKOUT`` compares two versions in one run: a second gateway runs from another
checkout (``git worktree add --detach ../base main``, with the built ``_native`` extension
copied into its ``python/ethereal/``), on the same sim and Redis, and the rounds alternate
between all (version, key) pairs, each round starting one pair further on, so a loaded machine
skews every version alike. ``--against`` repeats: a second worktree of this same tree beside the
base gives the benchmark's own noise (an A/A pair) in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (
    body_for,
    cpu_seconds,
    find_listener_pid,
    format_paired,
    merge,
    paired,
    proc_tree,
    rotated,
    scenario,
)
from benchkeys import BENCH_PLAN, governed_key, insert_key_as
from ethereal.keys import mint
from httpload import run_load

from tests.procs import gateway_process
from tests.services import postgres_server
from tests.services import redis_server as tcp_redis_server


@contextlib.contextmanager
def redis_server(unix: bool) -> Iterator[Any]:
    """The throwaway Redis of the tests (TCP on loopback), or one on a Unix socket (``--redis-unix``)."""
    if not unix:
        with tcp_redis_server() as server:
            yield server
        return
    workdir = tempfile.mkdtemp(prefix="ethereal-redis-")
    sock = os.path.join(workdir, "redis.sock")
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            "0",
            "--unixsocket",
            sock,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield SimpleNamespace(url=f"unix://{sock}?db=0", proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


async def main_async(args: argparse.Namespace, trees: list[tuple[str, Path, dict[str, str]]]) -> dict:
    """``trees``: (label, data dir holding the two keys, extra environment) per gateway under test."""
    from ethereal.sim.testing import start_sim_process

    report: dict = {
        "config": {k: v for k, v in vars(args).items()},
        "scenarios": [],
        "loadavg_before": os.getloadavg(),
    }
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the run", flush=True)
    with (
        redis_server(unix=args.redis_unix) as redis,
        start_sim_process() as (_sim, sim_url),
        contextlib.ExitStack() as stack,
    ):
        gateways = []
        for label, data_dir, extra in trees:
            env = {"ETHEREAL_PLANS": json.dumps(BENCH_PLAN), **extra}
            if not args.local:
                env["ETHEREAL_REDIS_URL"] = redis.url
            gw_url = stack.enter_context(gateway_process(data_dir, sim_url, workers=args.workers, env=env))
            keys_file = json.loads((data_dir / "bench-keys.json").read_text())
            gateways.append(
                (label, gw_url, proc_tree(find_listener_pid(int(gw_url.rsplit(":", 1)[1]))), keys_file)
            )
        redis_pids = [redis.proc.pid]
        base = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
        only = {name for name in args.only.split(",") if name}
        for stream, conc in ((False, 1), (True, 1), (False, 32)):
            if only and scenario(stream, conc) not in only:
                continue
            body = body_for(stream)
            runs = [
                (label, url + "/v1/messages", pids, name, {**base, "x-api-key": keys[name]})
                for label, url, pids, keys in gateways
                for name in ("ungoverned", "governed")
            ]
            for _, url, _, _, headers in runs:  # warm all (scripts loaded, caches filled)
                await run_load(url, body, headers, concurrency=conc, duration=0.5)
            results: dict[tuple[str, str], list] = {(r[0], r[3]): [] for r in runs}
            # CPU per request of each round: the report gives the median round (one round that
            # shared the machine with a stray process moves a pooled figure by tens of per cent)
            cpu: dict[tuple[str, str], list[float]] = {k: [] for k in results}
            rcpu: dict[tuple[str, str], list[float]] = {k: [] for k in results}
            for r in range(args.rounds):  # alternating: machine noise hits every configuration alike
                for label, url, pids, name, headers in rotated(runs, r):  # no configuration always first
                    before, rbefore = cpu_seconds(pids), cpu_seconds(redis_pids)
                    done = await run_load(url, body, headers, concurrency=conc, duration=args.duration)
                    results[label, name].append(done)
                    n = max(1, len(done.latencies))
                    cpu[label, name].append(1000 * (cpu_seconds(pids) - before) / n)
                    rcpu[label, name].append(1000 * (cpu_seconds(redis_pids) - rbefore) / n)
            for label, *_ in gateways:
                s = {name: merge(results[label, name]).summary() for name in ("ungoverned", "governed")}
                row = {
                    "tree": label,
                    "stream": stream,
                    "concurrency": conc,
                    **s,
                    "added_p50_ms": s["governed"]["p50_ms"] - s["ungoverned"]["p50_ms"],
                    "added_p99_ms": s["governed"]["p99_ms"] - s["ungoverned"]["p99_ms"],
                    "gateway_cpu_ms_per_request": {
                        n: statistics.median(cpu[label, n]) for n in ("ungoverned", "governed")
                    },
                    "redis_cpu_ms_per_request": {
                        n: statistics.median(rcpu[label, n]) for n in ("ungoverned", "governed")
                    },
                    "rounds_cpu_ms_per_request": {n: cpu[label, n] for n in ("ungoverned", "governed")},
                }
                report["scenarios"].append(row)
                print(format_row(row), flush=True)
            if len(gateways) > 1:  # against the first --against
                reference = gateways[1][0]
                for name in ("ungoverned", "governed"):
                    ratios = paired(
                        {label: results[label, name] for label, *_ in gateways},
                        {label: cpu[label, name] for label, *_ in gateways},
                        reference,
                    )
                    what = f"{'stream' if stream else 'non-stream'} c={conc} {name}"
                    report.setdefault("paired", {})[what] = ratios
                    print("\n".join(format_paired(what, ratios, reference)), flush=True)
    report["loadavg_after"] = os.getloadavg()
    print(
        f"load average {os.getloadavg()[0]:.2f} after the run (other processes skew c=1 latency most)",
        flush=True,
    )
    return report


def format_row(row: dict) -> str:
    u, g = row["ungoverned"], row["governed"]
    cpu, rcpu = row["gateway_cpu_ms_per_request"], row["redis_cpu_ms_per_request"]
    kind = "stream    " if row["stream"] else "non-stream"
    tree = f"[{row['tree']}] " if row.get("tree") else ""
    return (
        f"{tree}{kind} c={row['concurrency']:<3} ungoverned p50 {u['p50_ms']:.3f} p99 {u['p99_ms']:.3f} "
        f"{u['rps']:.0f} rps | governed p50 {g['p50_ms']:.3f} p99 {g['p99_ms']:.3f} {g['rps']:.0f} rps "
        f"(errors {u['errors']}/{g['errors']}) | added p50 {row['added_p50_ms']:+.3f} "
        f"p99 {row['added_p99_ms']:+.3f} ms | gateway cpu {cpu['ungoverned']:.3f} -> {cpu['governed']:.3f} "
        f"ms/req | redis cpu {rcpu['governed']:.3f} ms/req"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--redis-unix", action="store_true", help="Redis on a Unix socket instead of loopback TCP"
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="no Redis: the in-process LocalLimiter (the limiter's own CPU, without the round trip)",
    )
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        action="append",
        default=[],
        help="also run a gateway from another checkout of ethereal (e.g. a worktree of main with its "
        "built extension), side by side in the same run, alternating rounds; repeatable (a second "
        "worktree of this tree gives an A/A run: the benchmark's own noise)",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="SCENARIOS",
        help="comma-separated subset of non-stream-1, stream-1, non-stream-32",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="each gateway on its own database of a throwaway PostgreSQL, not the embedded store",
    )
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as services:
        pg = services.enter_context(postgres_server())[0] if args.postgres else None
        trees: list[tuple[str, Path, dict[str, str]]] = []
        checkouts: list[tuple[str, Path | None]] = [("this", None)]
        checkouts += [(c.resolve().name, c) for c in args.against]
        if len({label for label, _ in checkouts}) != len(checkouts):
            parser.error("--against: each checkout needs its own folder name (it labels the rows)")
        for label, checkout in checkouts:
            data_dir = Path(tmp) / label
            data_dir.mkdir()
            extra = {"PYTHONPATH": str(Path(checkout).resolve() / "python")} if checkout is not None else {}
            db_url = None
            if pg is not None:
                db_url = pg.create_database(f"bench_{label}".replace("-", "_"))
                extra["ETHEREAL_DATABASE_URL"] = db_url
            free, record = mint("sk-ant-api03-", name="ungoverned")
            insert_key_as(data_dir, record, extra, db_url)
            governed, record = governed_key()
            insert_key_as(data_dir, record, extra, db_url)
            (data_dir / "bench-keys.json").write_text(json.dumps({"ungoverned": free, "governed": governed}))
            trees.append((label if args.against else "", data_dir, extra))
        report = uvloop.run(main_async(args, trees))
    report["seconds"] = time.time() - started
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
