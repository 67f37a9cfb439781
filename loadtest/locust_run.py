"""Run the locust mix headless for a bounded time; fail on any error or a p99 above the limits.

    python loadtest/locust_run.py [--users 20] [--spawn-rate 10] [--duration 60s] [--workers 2]
                                  [--p99-ms 2000] [--p99-full-ms 30000] [--out loadtest/results/locust]
    python loadtest/locust_run.py --host http://127.0.0.1:8080 --api-key sk-ant-... [--admin-key ...]

Without ``--host`` it starts what it measures: a simulated upstream streaming at a realistic pace
(``--sim-ttft-ms``, ``--sim-tps``) and a gateway on the embedded store (``--workers`` uvicorn
workers), mints a key, and sets an admin key for the operator user. With ``--host`` (e.g. the
HAProxy of ``scripts/cluster.sh up``) it drives that gateway with the key given.

Reports: ``<out>_stats.csv``, ``<out>_stats_history.csv``, ``<out>_failures.csv``,
``<out>_exceptions.csv`` and ``<out>.html``. Exit status: locust's (1 on any failure or a p99 over
the limits, see ``loadtest/locustfile.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ethereal.sim.testing import start_sim_process

from tests.conftest import mint_into
from tests.procs import gateway_process

ADMIN_KEY = "load-admin-key-0123456789"


def recorded_requests(summary_json: str) -> dict[str, int]:
    """Requests locust saw answered that write a usage row, per gateway route."""
    routes = {"messages": 0, "count_tokens": 0, "chat.completions": 0, "responses": 0}
    with open(summary_json) as fh:
        entries = json.load(fh)
    for key, e in entries.items():
        kind, name = key.split(" ", 1)
        done = e["requests"] - e["failures"]
        if name.startswith("messages") and name.endswith("· full"):
            routes["messages"] += done
        elif name == "count_tokens":
            routes["count_tokens"] += done
        elif name.startswith("chat/completions") and (name.endswith("· full") or kind == "POST"):
            routes["chat.completions"] += done
        elif name == "responses · full":
            routes["responses"] += done
    return routes


def usage_rows(data_dir: Path) -> dict[str, int]:
    """Usage rows with status 200 per route, from the embedded store."""
    db = sqlite3.connect(data_dir / "ethereal.sqlite3")
    try:
        return dict(
            db.execute("SELECT route, COUNT(*) FROM usage_records WHERE status = 200 GROUP BY 1").fetchall()
        )
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", help="an already running gateway (else one is started with a sim)")
    p.add_argument("--api-key", default=os.environ.get("ETHEREAL_LOAD_KEY", ""))
    p.add_argument("--admin-key", default=os.environ.get("ETHEREAL_LOAD_ADMIN_KEY", ""))
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=10.0)
    p.add_argument("--duration", default="60s", help="locust --run-time (e.g. 60s, 30m)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers of the gateway started here")
    p.add_argument("--sim-ttft-ms", type=float, default=150.0)
    p.add_argument("--sim-tps", type=float, default=600.0, help="tokens per second the sim streams")
    p.add_argument("--p99-ms", type=float, default=2000.0, help="limit for non-streamed and ttfb entries")
    p.add_argument("--p99-full-ms", type=float, default=30000.0, help="limit for full-stream entries")
    p.add_argument("--out", default=str(ROOT / "loadtest" / "results" / "locust"))
    args, extra = p.parse_known_args(argv)  # anything else goes to locust (e.g. --agent-weight 3)

    def run(host: str, key: str, admin: str) -> int:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "--host",
            host,
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "--run-time",
            args.duration,
            "--stop-timeout",
            "30",
            "--csv",
            args.out,
            "--csv-full-history",
            "--html",
            args.out + ".html",
            "--only-summary",
            "--api-key",
            key,
            "--p99-ms",
            str(args.p99_ms),
            "--p99-full-ms",
            str(args.p99_full_ms),
            "--summary-json",
            args.out + "_summary.json",
            *extra,
        ]
        if admin:
            cmd += ["--admin-key", admin]
        print("+ locust", " ".join(c if c != key else "<key>" for c in cmd[3:]), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"reports: {args.out}_stats.csv, {args.out}.html; locust exit {rc}", flush=True)
        return rc

    if args.host:
        if not args.api_key:
            p.error("--api-key (or ETHEREAL_LOAD_KEY) is required with --host")
        return run(args.host, args.api_key, args.admin_key)
    with (
        start_sim_process(ttft_ms=args.sim_ttft_ms, tokens_per_second=args.sim_tps) as (_, sim_url),
        tempfile.TemporaryDirectory(prefix="ethereal-locust-") as tmp,
    ):
        data = Path(tmp)
        key, _ = mint_into(data, name="locust")
        with gateway_process(
            data, sim_url, env={"ETHEREAL_ADMIN_KEY": ADMIN_KEY}, workers=args.workers
        ) as url:
            print(f"gateway {url} ({args.workers} worker(s)) → sim {sim_url}", flush=True)
            rc = run(url, key, ADMIN_KEY)
        # the gateway has stopped (SIGTERM: drain, flush): one usage row per answered request
        expected, rows = recorded_requests(args.out + "_summary.json"), usage_rows(data)
        for route, n in expected.items():
            ok = rows.get(route, 0) == n
            print(
                f"usage rows {route}: {rows.get(route, 0)} for {n} answered request(s){'' if ok else '  MISMATCH'}"
            )
            rc = rc if ok else (rc or 1)
        return rc


if __name__ == "__main__":
    sys.exit(main())
