"""Message Batches: creating a big batch, and streaming its results, through the gateway vs the sim.

    python loadtest/bench_batches.py [--items 10000] [--item-bytes 2000] [--rounds 3] [--fetches 5]

One gateway (uvicorn, one worker, embedded SQLite) in front of the sim. Side by side in one run:

* create: ``POST /v1/messages/batches`` with ``--items`` requests of about ``--item-bytes`` each
  (10,000 x 2 KB ~ 20 MB), to the sim directly and through the gateway (validation of every item,
  the estimate and budget hold, the store row, forwarding the bytes), alternating, ``--rounds``
  times; medians of the wall time from the first byte sent to the answer.
* results: the JSONL of an ended batch (outputs made long with ``sim:tokens``) downloaded
  ``--fetches`` times from the sim and through the gateway; MB/s (10^6 bytes) and the gateway's
  resident memory sampled every 5 ms while it streams (peak growth over its size before).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import find_listener_pid
from ethereal.sim.testing import start_sim_process

from tests.batches_util import mint_into_url
from tests.procs import gateway_process

HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}


def build_body(items: int, item_bytes: int, output_tokens: int, batch_ms: int | None = None) -> bytes:
    filler = "The quick brown fox jumps over the lazy dog. "
    requests = []
    for i in range(items):
        text = f"item {i}: sim:tokens={output_tokens} " + filler * max(1, (item_bytes - 160) // len(filler))
        if i == 0 and batch_ms is not None:
            text = f"sim:batch_ms={batch_ms} " + text
        requests.append(
            {
                "custom_id": f"item-{i:06d}",
                "params": {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": max(1024, output_tokens * 2),
                    "messages": [{"role": "user", "content": text}],
                },
            }
        )
    return orjson.dumps({"requests": requests})


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def create(base: str, key: str, body: bytes) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    resp = httpx.post(
        f"{base}/v1/messages/batches", content=body, headers={**HEADERS, "x-api-key": key}, timeout=120
    )
    elapsed = time.perf_counter() - t0
    resp.raise_for_status()
    return elapsed, resp.json()


def wait_ended(base: str, key: str, batch_id: str) -> dict[str, Any]:
    while True:
        batch = httpx.get(
            f"{base}/v1/messages/batches/{batch_id}", headers={**HEADERS, "x-api-key": key}
        ).json()
        if batch["processing_status"] == "ended":
            return batch
        time.sleep(0.2)


def fetch(url: str, key: str, pid: int | None) -> tuple[float, int, int]:
    """(seconds, bytes, peak RSS growth KiB of ``pid`` while streaming)."""
    peak = [0]
    stop = threading.Event()
    base_rss = rss_kib(pid) if pid else 0

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid) - base_rss)  # type: ignore[arg-type]
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True) if pid else None
    if sampler:
        sampler.start()
    size = 0
    t0 = time.perf_counter()
    with httpx.stream("GET", url, headers={**HEADERS, "x-api-key": key}, timeout=120) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_raw(1 << 16):
            size += len(chunk)
    elapsed = time.perf_counter() - t0
    stop.set()
    if sampler:
        sampler.join()
    return elapsed, size, peak[0]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--item-bytes", type=int, default=2000)
    parser.add_argument("--output-tokens", type=int, default=600, help="output length of each result")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fetches", type=int, default=5)
    args = parser.parse_args()

    # the timed batches run for an hour upstream (canceled at the end), so no settlement of an
    # earlier round competes with a later create for the gateway's CPU
    body = build_body(args.items, args.item_bytes, args.output_tokens, batch_ms=3_600_000)
    print(f"batch: {args.items} items, {len(body) / 1e6:.1f} MB body", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-batches-"))
    db = f"sqlite:///{data_dir / 'ethereal.sqlite3'}"
    key, _ = mint_into_url(db, name="bench")
    with start_sim_process(batch_processing_ms=500) as (_sim_proc, sim):
        with gateway_process(
            data_dir,
            sim,
            upstream_key="sim",
            env={"ETHEREAL_DATABASE_URL": db, "ETHEREAL_BATCH_POLL_INTERVAL": "0.5"},
        ) as url:
            pid = find_listener_pid(int(url.rsplit(":", 1)[1]))
            create(url, key, build_body(10, 200, 10))  # warm both paths
            create(sim, "sim", build_body(10, 200, 10))
            direct, through = [], []
            made = []
            for _ in range(args.rounds):
                direct.append(create(sim, "sim", body)[0])
                seconds, batch = create(url, key, body)
                through.append(seconds)
                made.append(batch["id"])
            print(
                f"create {args.items} items: sim {statistics.median(direct) * 1000:.0f} ms, gateway "
                f"{statistics.median(through) * 1000:.0f} ms (median of {args.rounds}; gateway runs "
                f"{', '.join(f'{s * 1000:.0f}' for s in through)} ms; sim runs "
                f"{', '.join(f'{s * 1000:.0f}' for s in direct)} ms)",
                flush=True,
            )
            for batch_id in made:
                httpx.post(
                    f"{url}/v1/messages/batches/{batch_id}/cancel", headers={**HEADERS, "x-api-key": key}
                )
            _, last = create(url, key, build_body(args.items, args.item_bytes, args.output_tokens))
            ended = wait_ended(url, key, last["id"])
            last_item = f"req_{last['id'].removeprefix('msgbatch_')}_item-{args.items - 1:06d}"
            t_settle = time.perf_counter()
            while httpx.get(f"{url}/v1/usage/{last_item}", headers={"x-api-key": key}).status_code != 200:
                time.sleep(0.2)  # the poller settles it: one read of the results, a usage row per item
            print(
                f"settled (a usage row per item) {time.perf_counter() - t_settle:.1f} s after it ended",
                flush=True,
            )
            upstream_url = ended["results_url"]
            sim_rows = httpx.get(
                f"{sim}/v1/messages/batches?limit=1", headers={**HEADERS, "x-api-key": "sim"}
            ).json()
            sim_results = sim_rows["data"][0]["results_url"]
            print(f"gateway RSS before results: {rss_kib(pid) / 1024:.0f} MiB", flush=True)
            rates_direct, rates_gw, peaks = [], [], []
            size = 0
            for _ in range(args.fetches):
                seconds, size, _ = fetch(sim_results, "sim", None)
                rates_direct.append(size / seconds / 1e6)
                seconds, size, peak = fetch(upstream_url, key, pid)
                rates_gw.append(size / seconds / 1e6)
                peaks.append(peak)
            print(
                f"results {size / 1e6:.1f} MB: sim {statistics.median(rates_direct):.0f} MB/s, gateway "
                f"{statistics.median(rates_gw):.0f} MB/s (median of {args.fetches}; gateway runs "
                f"{', '.join(f'{r:.0f}' for r in rates_gw)}); gateway RSS growth while streaming: peak "
                f"{max(peaks) / 1024:.1f} MiB for a {size / 2**20:.0f} MiB file",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
