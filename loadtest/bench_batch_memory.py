"""Memory and event-loop responsiveness of big batch creates.

    python loadtest/bench_batch_memory.py [--mib 249] [--creates 3] [--item-bytes 4096]

One gateway (``ethereal serve``, one worker, embedded SQLite) in front of a stand-in upstream
that reads each create's body and drops it (tests/batches_util.BatchSink), so the figures are
the gateway's alone. ``--creates`` creates of about ``--mib`` MiB each are sent at once; one
refused for the worker's byte cap (429) is sent again after its ``retry-after``. Reported: the
worker's resident memory above its idle size (peak, sampled every 10 ms; goal < 1 GiB for three
249 MiB creates), ``/healthz`` latency while the creates run (sampled every 50 ms; goal: max <
200 ms), each create's statuses and time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import find_listener_pid

from tests.batches_util import BatchSink, big_batch_body, healthz_watch, mint_into_url
from tests.procs import gateway_process

HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def create_until_accepted(url: str, key: str, body: bytes, out: list[tuple[list[int], float]]) -> None:
    statuses: list[int] = []
    t0 = time.perf_counter()
    with httpx.Client(timeout=600) as client:
        while True:
            resp = client.post(
                f"{url}/v1/messages/batches", content=body, headers={**HEADERS, "x-api-key": key}
            )
            statuses.append(resp.status_code)
            if resp.status_code != 429 or len(statuses) > 20:
                break
            time.sleep(float(resp.headers.get("retry-after", "1")))
    out.append((statuses, time.perf_counter() - t0))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=float, default=249.0, help="size of each create's body")
    parser.add_argument("--creates", type=int, default=3)
    parser.add_argument("--item-bytes", type=int, default=4096)
    args = parser.parse_args()

    body = big_batch_body(int(args.mib * 1024 * 1024), args.item_bytes)
    print(
        f"each create: {len(body) / 2**20:.1f} MiB, {body.count(b'custom_id')} items; {args.creates} at once",
        flush=True,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="bench-batch-memory-"))
    db = f"sqlite:///{data_dir / 'ethereal.sqlite3'}"
    key, _ = mint_into_url(db, name="bench")
    with BatchSink() as sink:
        with gateway_process(
            data_dir,
            sink.url,
            upstream_key="sink",
            env={"ETHEREAL_DATABASE_URL": db, "ETHEREAL_BATCH_POLL_INTERVAL": "3600"},
        ) as url:
            pid = find_listener_pid(int(url.rsplit(":", 1)[1]))
            warm: list[tuple[list[int], float]] = []
            create_until_accepted(url, key, big_batch_body(200_000), warm)  # every code path loaded once
            assert warm[0][0] == [200], warm
            time.sleep(0.5)
            idle = rss_kib(pid)
            peak = [idle]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_kib(pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            results: list[tuple[list[int], float]] = []
            t0 = time.perf_counter()
            with healthz_watch(url) as latencies:
                threads = [
                    threading.Thread(target=create_until_accepted, args=(url, key, body, results))
                    for _ in range(args.creates)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            wall = time.perf_counter() - t0
            stop.set()
            sampler.join()
            after = rss_kib(pid)
    print(
        f"worker RSS idle {idle / 1024:.0f} MiB; peak {peak[0] / 1024:.0f} MiB, {(peak[0] - idle) / 1024:.0f} MiB "
        f"above idle (goal < 1024); {(after - idle) / 1024:.0f} MiB above idle after"
    )
    finite = sorted(x for x in latencies if x != float("inf"))
    failed = len(latencies) - len(finite)
    if finite:
        p99 = finite[min(len(finite) - 1, int(len(finite) * 0.99))]
        print(
            f"/healthz during the creates: {len(latencies)} probes, {failed} failed; median "
            f"{statistics.median(finite) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {finite[-1] * 1000:.1f} ms "
            "(goal max < 200)"
        )
    for statuses, took in results:
        print(f"create: statuses {statuses}, {took:.1f} s")
    print(
        f"all accepted in {wall:.1f} s; the upstream received {len(sink.sizes) - 1} bodies of "
        f"{', '.join(f'{s / 2**20:.1f}' for s in sink.sizes[1:])} MiB"
    )
    ok = all(r[0][-1] == 200 for r in results) and not failed
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
