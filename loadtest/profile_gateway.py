"""Where a gateway worker's CPU goes: py-spy samples of one worker under non-streamed (or streamed) load.

    python loadtest/profile_gateway.py [--seconds 10] [--concurrency 32] [--stream] [--native]

Starts a sim and a one-worker gateway, drives ``/v1/messages`` with ``loadtest/httpload.py`` and
records the worker with ``py-spy record --format raw`` (``pip install py-spy``; needs ptrace).
Prints the share of samples per layer (inclusive: the event loop and the kernel calls it makes
show as uvloop/asyncio frames; ``--native`` adds C frames) and the top functions by own time.
The raw stacks are kept in ``loadtest/results/profile-*.txt`` (flamegraph.pl or speedscope read them).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtest"))

from bench import body_for, find_listener_pid, proc_tree
from ethereal.sim.testing import start_sim_process
from httpload import run_load

from tests.conftest import mint_into
from tests.procs import gateway_process

# Layers by the file a frame comes from, most specific first.
LAYERS = [
    ("ethereal lifecycle (health, stream tracking)", "ethereal/lifecycle.py"),
    ("ethereal pipeline (auth, admit, open, relay, record)", "ethereal/pipeline.py"),
    ("ethereal routes/adapters", "ethereal/api/"),
    ("ethereal metering", "ethereal/metering/"),
    ("ethereal limits/auth", "ethereal/limits/"),
    ("ethereal upstream pool/client", "ethereal/upstream/"),
    ("ethereal storage (usage writes, key reads; a thread for SQLite)", "ethereal/storage/"),
    ("ethereal usage/other", "ethereal/"),
    ("aiohttp (upstream HTTP client)", "aiohttp/"),
    ("blacksheep (app framework)", "blacksheep/"),
    ("uvicorn + httptools (server)", "uvicorn/"),
    ("thread pool (storage calls' plumbing)", "concurrent/futures/"),
    ("asyncio / uvloop (event loop, socket I/O)", "asyncio/"),
]


def layer_of(frames: list[str]) -> str:
    """The innermost layer in the stack: where the sample's time was spent."""
    for frame in reversed(frames):
        for name, marker in LAYERS:
            if marker in frame:
                return name
    return "other (interpreter, C extensions)"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--native", action="store_true")
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--output", type=Path, help="where the raw stacks go")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = args.output or ROOT / "loadtest" / "results" / f"profile-{'stream' if args.stream else 'json'}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    uvloop.install()
    with start_sim_process() as (_, sim_url), tempfile.TemporaryDirectory() as tmp:
        key, _ = mint_into(Path(tmp))
        with gateway_process(Path(tmp), sim_url, workers=1) as url:
            server = find_listener_pid(int(url.rsplit(":", 1)[1]))
            worker = max(proc_tree(server))  # one worker: the server process itself, or its single child
            headers = {
                "x-api-key": key,
                "anthropic-version": "2023-06-01",
                "content-type": "application/json",
            }
            cmd = [
                spy,
                "record",
                "--pid",
                str(worker),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ] + (["--native"] if args.native else [])
            rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result: dict[str, float] = {}

            def load() -> None:
                res = asyncio.run(
                    run_load(
                        url + "/v1/messages",
                        body_for(args.stream),
                        headers,
                        concurrency=args.concurrency,
                        duration=args.seconds + 1,
                        warmup=0.0,
                    )
                )
                result.update(res.summary())

            t = threading.Thread(target=load)
            t.start()
            rec.wait()
            t.join()
    if rec.returncode:
        print(rec.stderr.read().decode() if rec.stderr else "py-spy failed", file=sys.stderr)
        return 1
    layers: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = stack.split(";")
        total += count
        layers[layer_of(frames)] += count
        own[frames[-1]] += count
    print(
        f"{result.get('requests', 0):.0f} requests at {result.get('rps', 0):.0f} req/s; {total} samples of the worker"
        f" ({'streamed' if args.stream else 'non-streamed'}, c={args.concurrency})"
    )
    print("\n| layer (where the sample was) | share |\n|---|---|")
    for name, n in layers.most_common():
        print(f"| {name} | {n / total * 100:.1f} % |")
    print("\ntop functions by own time:")
    for frame, n in own.most_common(15):
        print(f"  {n / total * 100:5.1f} %  {frame[:110]}")
    print(f"\nraw stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
