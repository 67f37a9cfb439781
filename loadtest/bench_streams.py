"""Many concurrent streams through one gateway: none dropped, memory, event-loop lag.

    python loadtest/bench_streams.py [--streams 10000] [--workers 2] [--ramp 400] [--seconds 60]

The sim streams slowly (each stream lasts ``--seconds``: ``sim:tokens`` at ``sim:tps``); the
client opens ``--streams`` streamed ``/v1/messages`` requests at ``--ramp`` per second on their own
connections, holds them all, and reads each to its end. Reported: the peak of streams open at once,
streams that did not end with ``message_stop`` (dropped), the gateway's RSS (parent and workers)
at the peak, and each worker's event-loop lag (p50/p99/max over its last minute, from
``/healthz?verbose=1``) sampled while they run.

Descriptors: each stream holds one client and one upstream socket in a worker, one in the sim and
one here; every process raises its soft RLIMIT_NOFILE to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtest"))

from bench import find_listener_pid, proc_tree, rss_mb
from ethereal.sim.testing import start_sim_process

from tests.conftest import mint_into
from tests.procs import gateway_process


class Counters:
    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.done = 0
        self.dropped = 0
        self.errors: dict[str, int] = {}
        self.ttfb: list[float] = []


async def one_stream(host: str, port: int, key: str, body: bytes, c: Counters) -> None:
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        c.dropped += 1
        c.errors[f"connect: {exc.strerror}"] = c.errors.get(f"connect: {exc.strerror}", 0) + 1
        return
    c.open += 1
    c.peak = max(c.peak, c.open)
    ok = False
    try:
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nhost: gw\r\nx-api-key: "
            + key.encode()
            + b"\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        c.ttfb.append(time.perf_counter() - t0)
        tail = b""
        seen_stop = False
        while True:
            data = await reader.read(65536)
            if not data:
                break
            window = tail + data
            if b"event: message_stop" in window:
                seen_stop = True
            if window.endswith(b"0\r\n\r\n") and seen_stop:
                break
            tail = window[-64:]
        ok = seen_stop
        if not ok:
            c.errors["closed before message_stop"] = c.errors.get("closed before message_stop", 0) + 1
    except Exception as exc:  # noqa: BLE001 - counted as a drop, by kind
        name = f"{type(exc).__name__}: {str(exc)[:60]}"
        c.errors[name] = c.errors.get(name, 0) + 1
    finally:
        c.open -= 1
        writer.close()
        if ok:
            c.done += 1
        else:
            c.dropped += 1


async def health(host: str, port: int) -> dict[str, object] | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write(b"GET /healthz?verbose=1 HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return json.loads(raw.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]
    except (TimeoutError, OSError, ValueError):
        return None


async def run(args: argparse.Namespace, url: str, key: str, gw_pids: list[int]) -> dict[str, object]:
    host, port = url.split("//")[1].split(":")
    port_i = int(port)
    tokens = max(4, int(args.seconds * args.tps))
    body = json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": tokens + 16,
            "stream": True,
            "messages": [{"role": "user", "content": f"hold sim:tokens={tokens} sim:tps={args.tps}"}],
        }
    ).encode()
    c = Counters()
    tasks: list[asyncio.Task[None]] = []
    lag: dict[int, dict[str, float]] = {}
    rss_peak = 0.0
    stop = asyncio.Event()

    async def monitor() -> None:
        nonlocal rss_peak
        while not stop.is_set():
            rss_peak = max(rss_peak, rss_mb([p for pid in gw_pids for p in proc_tree(pid)]))
            for _ in range(args.workers * 2):
                h = await health(host, port_i)
                if h is not None and c.open > 0.9 * args.streams:  # the plateau: every stream open
                    pid = int(h["pid"])  # type: ignore[call-overload]
                    prev = lag.get(pid, {"p99": 0.0, "max": 0.0})
                    cur = h["loop_lag_ms"]  # type: ignore[index]
                    lag[pid] = {
                        "p50": cur["p50"],
                        "p99": max(prev["p99"], cur["p99"]),  # type: ignore[index]
                        "max": max(prev["max"], cur["max"]),
                        "streams": h["streams"],
                    }  # type: ignore[index]
            print(
                f"  t={time.monotonic() - t_start:5.1f}s open={c.open} done={c.done} dropped={c.dropped}"
                f" rss={rss_peak:.0f}MB",
                flush=True,
            )
            await asyncio.sleep(2.0)

    t_start = time.monotonic()
    mon = asyncio.get_running_loop().create_task(monitor())
    for i in range(args.streams):
        tasks.append(asyncio.get_running_loop().create_task(one_stream(host, port_i, key, body, c)))
        if i % 50 == 49:
            await asyncio.sleep(50 / args.ramp)
    await asyncio.gather(*tasks)
    stop.set()
    await mon
    c.ttfb.sort()
    n = len(c.ttfb)
    return {
        "streams": args.streams,
        "completed": c.done,
        "dropped": c.dropped,
        "peak_open": c.peak,
        "errors": c.errors,
        "gateway_rss_peak_mb": round(rss_peak),
        "ttfb_p50_ms": round(c.ttfb[n // 2] * 1000, 1) if n else None,
        "ttfb_p99_ms": round(c.ttfb[min(n - 1, int(n * 0.99))] * 1000, 1) if n else None,
        "loop_lag_ms_by_worker": lag,
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ramp", type=float, default=400.0, help="new streams per second")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each stream")
    p.add_argument("--tps", type=float, default=2.0, help="tokens per second each stream carries")
    args = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with start_sim_process() as (_, sim_url), tempfile.TemporaryDirectory() as tmp:
        key, _ = mint_into(Path(tmp))
        # every stream holds a client connection: lift the per-worker connection cap above them
        env = {"ETHEREAL_MAX_CONNECTIONS": str(args.streams + 100)}
        with gateway_process(Path(tmp), sim_url, workers=args.workers, env=env) as url:
            gw = find_listener_pid(int(url.rsplit(":", 1)[1]))
            uvloop.install()
            result = asyncio.run(run(args, url, key, [gw]))
            log = next(Path(tmp).glob("gateway-*.log")).read_text()
            result["fd_message"] = next((ln for ln in log.splitlines() if "file-descriptor" in ln), None)
    print(json.dumps(result, indent=2))
    return 0 if result["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
