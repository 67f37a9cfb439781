"""The locust mix through HAProxy and the replicas of ``scripts/cluster.sh``: scale-out and soak.

    python loadtest/bench_cluster.py scaleout [--rounds 3] [--seconds 30] [--users 40]
    python loadtest/bench_cluster.py soak [--minutes 30] [--users 20]

Both bring a cluster up (PostgreSQL, Redis, 2 replicas, HAProxy, a sim streaming at a set pace)
and take it down at the end.

``scaleout``: rounds alternating 1 replica (HAProxy's admin socket takes r2 out of the backend)
and 2 replicas, the same locust mix without think time; median requests/s and p99 TTFB
(Claude Code's streamed turns) per setting.

``soak``: the mix for ``--minutes``, sampling each replica's RSS (server + workers) every 10 s.
Checked at the end: no failed request, RSS of each replica within 5 % between the first and the
last fifth of the run after a warm-up (the first fifth), and usage rows in PostgreSQL = the
requests that write one (streams, non-streamed POSTs, count_tokens).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "loadtest"))

from bench import proc_tree, rss_mb

CLUSTER = ROOT / "scripts" / "cluster.sh"


class Cluster:
    def __init__(self, replicas: int, sim_args: str, **settings: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ethereal-cluster-"))
        self.env = {
            **os.environ,
            "CLUSTER_DIR": str(self.dir),
            "REPLICAS": str(replicas),
            "WORKERS": "1",
            "PYTHON": sys.executable,
            "SIM_ARGS": sim_args,
            **settings,
        }
        for k in [k for k in self.env if k.startswith("ETHEREAL_UPSTREAM")]:
            del self.env[k]

    def sh(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(CLUSTER), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if done.returncode:
            raise RuntimeError(done.stdout + done.stderr)
        return done.stdout

    def __enter__(self) -> Self:
        self.sh("up")
        self.conf = dict(line.split("=", 1) for line in (self.dir / "env").read_text().split())
        return self

    def __exit__(self, *exc: object) -> None:
        self.sh("down")

    def haproxy(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.dir / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            return s.makefile().read()

    def replica_pids(self) -> dict[str, list[int]]:
        out = {}
        for f in sorted(self.dir.glob("replica-*.pid")):
            out[f.stem.split("-")[1]] = proc_tree(int(f.read_text()))
        return out


def locust(c: Cluster, users: int, seconds: float, out: Path, extra: list[str]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--headless",
        "--host",
        c.conf["ETHEREAL_URL"],
        "-u",
        str(users),
        "-r",
        str(max(1, users)),
        "--run-time",
        f"{int(seconds)}s",
        "--only-summary",
        "--api-key",
        c.conf["ETHEREAL_KEY"],
        "--admin-key",
        c.conf["ETHEREAL_ADMIN_KEY"],
        "--csv",
        str(out),
        "--stop-timeout",
        "120",
        "--summary-json",
        f"{out}_summary.json",
        *extra,
    ]
    rc = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    ).returncode
    with open(f"{out}_stats.csv") as fh:
        rows = {f"{r['Type']} {r['Name']}": r for r in csv.DictReader(fh)}
    with open(f"{out}_summary.json") as fh:
        summary = json.load(fh)  # complete counts (the CSV misses requests that end while users stop)
    return {"rc": rc, "rows": rows, "summary": summary}


def scaleout(args: argparse.Namespace) -> int:
    extra = [
        "--think-min",
        "0",
        "--think-max",
        "0",
        "--tool-time",
        "0",
        "--big-prompt-every",
        "0",
        "--responses-weight",
        "0",
        "--operator-weight",
        "0",
        "--directives",
        args.directives,
    ]
    results: dict[str, list[dict[str, float]]] = {"1 replica": [], "2 replicas": []}
    with Cluster(2, args.sim_args) as c, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for setting in ("1 replica", "2 replicas"):
                c.haproxy(
                    "disable server replicas/r2" if setting == "1 replica" else "enable server replicas/r2"
                )
                time.sleep(1.5)
                res = locust(c, args.users, args.seconds, Path(tmp) / f"r{r}-{setting[0]}", extra)
                agg = res["rows"][" Aggregated"]
                ttfb = res["rows"]["SSE messages?beta=true · ttfb"]
                full = [row for k, row in res["rows"].items() if k.endswith("· full") or k.startswith("POST")]
                answered = sum(int(row["Request Count"]) for row in full)
                cell = {
                    "requests_per_s": answered / args.seconds,
                    "ttfb_p99_ms": float(ttfb["99%"]),
                    "ttfb_p50_ms": float(ttfb["50%"]),
                    "failures": int(agg["Failure Count"]),
                }
                results[setting].append(cell)
                print(f"round {r + 1} {setting}: {cell}", flush=True)
    print("\n| setting | answered requests/s | Claude Code turn TTFB p50 | p99 | failures |")
    print("|---|---|---|---|---|")
    for setting, runs in results.items():
        med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        print(
            f"| {setting} | {med['requests_per_s']:.0f} | {med['ttfb_p50_ms']:.0f} ms | {med['ttfb_p99_ms']:.0f} ms |"
            f" {sum(x['failures'] for x in runs)} |"
        )
    return 0


def soak(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    samples: dict[str, list[tuple[float, float]]] = {}
    # the meter's lookup cache of recent records is bounded (ETHEREAL_METER_RECENT_SIZE, 50,000 by
    # default): small here so that it is full within the warm-up and any growth after is a leak
    with (
        Cluster(2, args.sim_args, ETHEREAL_METER_RECENT_SIZE="200") as c,
        tempfile.TemporaryDirectory() as tmp,
    ):
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.wait(10.0):
                for name, pids in c.replica_pids().items():
                    samples.setdefault(name, []).append((time.monotonic() - t0, rss_mb(pids)))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        extra = ["--think-min", "0.2", "--think-max", "1.0", "--directives", args.directives]
        res = locust(c, args.users, seconds, Path(tmp) / "soak", extra)
        stop.set()
        th.join()
        time.sleep(1.5)  # the replicas flush every 0.2 s
        by_status = dict(
            line.split("|")
            for line in subprocess.run(
                [
                    "psql",
                    c.conf["DATABASE_URL"],
                    "-At",
                    "-c",
                    "SELECT status, COUNT(*) FROM usage_records GROUP BY 1",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        )
        rows = sum(int(n) for n in by_status.values())
    writes = sum(
        e["requests"] - e["failures"]
        for k, e in res["summary"].items()
        if k.endswith("· full") or k.startswith("POST")
    )
    failures = sum(e["failures"] for e in res["summary"].values())
    report: dict[str, Any] = {
        "minutes": args.minutes,
        "users": args.users,
        "requests_that_record": writes,
        "usage_rows": rows,
        "usage_rows_by_status": by_status,
        "failures": failures,
        "rss_mb": {},
    }
    ok = failures == 0 and rows == writes
    for name, pts in samples.items():
        n = len(pts)
        first = [v for _, v in pts[n // 5 : 2 * n // 5]] or [pts[0][1]]
        last = [v for _, v in pts[4 * n // 5 :]] or [pts[-1][1]]
        drift = (statistics.mean(last) - statistics.mean(first)) / statistics.mean(first) * 100
        report["rss_mb"][f"replica {name}"] = {
            "after_warmup": round(statistics.mean(first), 1),
            "end": round(statistics.mean(last), 1),
            "drift_pct": round(drift, 2),
            "samples": n,
        }
        ok = ok and abs(drift) <= 5.0
    report["passed"] = ok
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("scaleout", "soak"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--users", type=int, default=40)
    p.add_argument("--sim-args", default="--ttft-ms 100 --tps 400")
    p.add_argument("--directives", default="sim:tokens=60")
    args = p.parse_args()
    return scaleout(args) if args.mode == "scaleout" else soak(args)


if __name__ == "__main__":
    sys.exit(main())
