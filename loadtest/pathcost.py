"""What one request costs on the request path, counted rather than timed: side by side for checkouts.

    python loadtest/pathcost.py [--against CHECKOUT ...] [--governed] [--stream] [--postgres]
                                [--concurrency 32] [--requests 960] [--repeat N] [--cache-sim]
                                [--mode opcodes|callgrind|redis|syscalls|cpu]

Timed benchmarks (``bench.py``, ``bench_governed.py``) move by several per cent between two runs
of the same code on a shared two-core machine. These counts do not: each checkout's gateway app
runs in its own process, in process (ASGI, no HTTP server), against one sim (and one throwaway Redis
with ``--governed``: a key with every limit and a plan, as ``bench_governed.py``'s; with
``--postgres`` each on its own database of a throwaway PostgreSQL, else the embedded store), and after a
warm-up it counts the measured requests only:

- ``opcodes``: Python bytecodes executed per request, per function (``sys.settrace`` opcode events);
  prints the total and the functions that differ most from the first ``--against`` checkout;
- ``callgrind``: machine instructions per request (``valgrind --tool=callgrind``, counting switched
  on around the measured requests only): within a fraction of a per cent between runs;
- ``redis``: Redis commands per request, by command, and the time Redis spent in them
  (commandstats; that one is timed) (needs ``--governed``);
- ``cpu``: the child's CPU time per request (timed: it moves with the machine's load; use
  ``--repeat`` and read the median of the rounds' ratios);
- ``syscalls``: system calls per request, by call (``strace -c`` attached to every thread of the
  child around the measured requests): what callgrind, which counts user space only, cannot see.

``--against CHECKOUT``: a worktree of another commit with its built extension copied into its
``python/ethereal/`` (as for ``bench.py``). The access log line is written (to a discarded
stream) as the server writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the child: one checkout, in process
async def _child(args: argparse.Namespace) -> None:
    """The gateway app of the checkout on PYTHONPATH; its store already holds the key (the parent
    wrote it with this checkout's code: benchkeys.insert_key_as)."""
    from ethereal.app import create_app

    # the threads the app starts (the store's and the meter's executors) run part of each request:
    # with --mode opcodes they are traced too, from the first measured request on
    threading.settrace(lambda frame, event, arg: _thread_tracer[0](frame, event, arg))
    app = create_app()
    lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    lifespan = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, lifespan_in.get, lifespan_send)
    )
    await lifespan_in.put({"type": "lifespan.startup"})
    await started.wait()
    key = os.environ["PATHCOST_KEY"]
    body = Path(args.body).read_bytes()
    headers = [
        (b"host", b"localhost"),
        (b"x-api-key", key.encode()),
        (b"anthropic-version", b"2023-06-01"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/messages",
        "raw_path": b"/v1/messages",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }

    sends = [0]

    async def one() -> None:
        sent = False
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never goes away
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                sends[0] += 1  # each one a write to the client's socket under a real server

        await app({**scope, "state": {}}, receive, send)
        if status != [200]:
            raise SystemExit(f"pathcost: the gateway answered {status}")

    async def run(n: int) -> None:
        each = max(1, n // args.concurrency)

        async def worker() -> None:
            for _ in range(each):
                await one()

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    await run(args.warmup)
    await asyncio.sleep(1.0)  # the warm-up's records flushed, background loops settled
    n = max(1, args.requests // args.concurrency) * args.concurrency
    result: dict[str, Any] = {"requests": n}
    sends[0] = 0
    if args.mode == "opcodes":
        counts: collections.Counter[str] = collections.Counter()

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            code = frame.f_code
            name = f"{_short(code.co_filename)}:{code.co_name}"
            if code.co_filename == "<string>":  # a generated __init__ (dataclass): name its class
                owner = frame.f_locals.get("self")
                if owner is not None:
                    name = f"<string>:{type(owner).__qualname__}.{code.co_name}"

            def local(frame: Any, event: str, arg: Any) -> Any:
                if event == "opcode":
                    counts[name] += 1
                return local

            return local

        _thread_tracer[0] = tracer
        sys.settrace(tracer)
        await run(n)
        sys.settrace(None)
        _thread_tracer[0] = _untraced
        result["per_function"] = {k: v / n for k, v in counts.items()}
        result["total"] = sum(counts.values()) / n
    elif args.mode == "callgrind":
        control = shutil.which("callgrind_control") or "callgrind_control"
        subprocess.run([control, "-i", "on", str(os.getpid())], check=True, capture_output=True)
        await run(n)
        subprocess.run([control, "-i", "off", str(os.getpid())], check=True, capture_output=True)
    elif args.mode == "cpu":
        started = time.process_time()
        await run(n)
        result["total"] = 1000 * (time.process_time() - started) / n  # timed: moves with load
    elif args.mode == "syscalls":
        summary = os.path.join(os.path.dirname(args.out), "strace.txt")
        tids = [f"-p{t}" for t in os.listdir(f"/proc/{os.getpid()}/task")]
        tracer_proc = subprocess.Popen(
            [shutil.which("strace") or "strace", "-c", "-f", "-q", "-o", summary, *tids],
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # attached to every thread
        await run(n)
        tracer_proc.send_signal(signal.SIGINT)
        tracer_proc.wait(30)
        calls: dict[str, float] = {}
        for line in Path(summary).read_text().splitlines():
            cols = line.split()
            # "% time  seconds  usecs/call  calls  [errors]  syscall"
            if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
                calls[cols[-1]] = int(cols[3]) / n
        result["commands"] = calls
        result["total"] = sum(calls.values())
    else:
        import redis

        client = redis.Redis.from_url(os.environ["ETHEREAL_REDIS_URL"])
        client.config_resetstat()
        await run(n)
        await asyncio.sleep(0.5)  # settles are sent without waiting for their replies
        stats = client.info("commandstats")
        stats.pop("cmdstat_config|resetstat", None)
        stats.pop("cmdstat_info", None)
        result["commands"] = {k.removeprefix("cmdstat_"): v["calls"] / n for k, v in stats.items()}
        result["total"] = sum(v["calls"] for v in stats.values()) / n
        result["usec"] = sum(v["usec"] for v in stats.values()) / n
        client.close()
    result["body_messages"] = sends[0] / n
    Path(args.out).write_text(json.dumps(result))
    await lifespan_in.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, 30)


def _untraced(frame: Any, event: str, arg: Any) -> None:
    return None


_thread_tracer: list[Any] = [_untraced]


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/python/ethereal/", "/lib/python3"):
        if marker in filename:
            head = "ethereal/" if marker == "/python/ethereal/" else ""
            return head + filename.split(marker, 1)[1]
    return filename


# ---------------------------------------------------------------- the parent: sim, Redis, one child each
def _measure(
    label: str,
    checkout: Path,
    args: argparse.Namespace,
    sim_url: str,
    redis_url: str | None,
    database_url: str | None = None,
) -> dict:
    # the parent's own code (this checkout): the key and body it hands each child
    from bench import body_for
    from benchkeys import BENCH_PLAN, governed_key, insert_key_as
    from ethereal.keys import mint

    with tempfile.TemporaryDirectory() as data_dir:
        out = os.path.join(data_dir, "result.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
        key, record = governed_key("pathcost") if args.governed else mint("sk-ant-api03-", name="pathcost")
        insert_key_as(
            Path(data_dir),
            record,
            {} if checkout == REPO else {"PYTHONPATH": str(checkout / "python")},
            database_url,
        )
        body_file = os.path.join(data_dir, "body.json")
        Path(body_file).write_bytes(body_for(args.stream))
        env.update(
            {
                "PATHCOST_KEY": key,
                "PYTHONPATH": str(checkout / "python"),
                "ETHEREAL_DATA_DIR": data_dir,
                "ETHEREAL_UPSTREAM_URL": sim_url,
                "ETHEREAL_UPSTREAM_KEY": "sim-upstream-key",
                "ETHEREAL_KEY_CACHE_TTL": str(args.key_cache_ttl),
            }
        )
        if redis_url:
            env["ETHEREAL_REDIS_URL"] = redis_url
        if database_url:
            env["ETHEREAL_DATABASE_URL"] = database_url
        if args.governed:
            env["ETHEREAL_PLANS"] = json.dumps(BENCH_PLAN)
        cmd = [sys.executable, __file__, "--child", "--out", out, "--body", body_file, *_child_args(args)]
        cg_out = os.path.join(data_dir, "callgrind.out")
        if args.mode == "callgrind":
            cmd = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={cg_out}",
                *(["--cache-sim=yes"] if args.cache_sim else []),
                *cmd,
            ]
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            raise SystemExit(f"pathcost: {label} failed:\n{done.stderr[-3000:]}")
        result = json.loads(Path(out).read_text())
        if args.mode == "callgrind":
            # "totals:" ends the profile ("summary:" near its top can read 0 when counting
            # started switched off)
            with open(cg_out) as fh:
                lines = fh.readlines()
            totals = [line for line in lines if line.startswith("totals:")]
            events = [line for line in lines if line.startswith("events:")]
            if not totals or not events:
                raise SystemExit(f"pathcost: no totals in {label}'s callgrind profile")
            counts = dict(zip(events[0].split()[1:], (int(v) for v in totals[-1].split()[1:]), strict=False))
            n = result["requests"]
            result["total"] = counts["Ir"] / n
            if args.cache_sim:
                # callgrind's cycle estimate: a first-level miss weighs 10 instructions, a
                # last-level miss 100
                l1 = counts.get("I1mr", 0) + counts.get("D1mr", 0) + counts.get("D1mw", 0)
                ll = counts.get("ILmr", 0) + counts.get("DLmr", 0) + counts.get("DLmw", 0)
                result["l1_misses"], result["ll_misses"] = l1 / n, ll / n
                result["total"] = (counts["Ir"] + 10 * l1 + 100 * ll) / n
            if args.keep:  # for callgrind_annotate: where the instructions went
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(cg_out, os.path.join(args.keep, f"callgrind.{label}.out"))
        return result


def _child_args(args: argparse.Namespace) -> list[str]:
    out = ["--mode", args.mode, "--concurrency", str(args.concurrency), "--requests", str(args.requests)]
    out += ["--warmup", str(args.warmup)]
    out += ["--governed"] * args.governed + ["--stream"] * args.stream
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=("opcodes", "callgrind", "redis", "syscalls", "cpu"), default="opcodes"
    )
    parser.add_argument("--against", type=Path, action="append", default=[], metavar="CHECKOUT")
    parser.add_argument(
        "--governed", action="store_true", help="a key with every limit, over a throwaway Redis"
    )
    parser.add_argument("--stream", action="store_true")
    parser.add_argument(
        "--postgres", action="store_true", help="each checkout on its own database of a throwaway PostgreSQL"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=960)
    parser.add_argument("--warmup", type=int, default=320)
    parser.add_argument(
        "--key-cache-ttl",
        type=float,
        default=60.0,
        help="seconds a key is served from the cache (the benchmarks' gateways: 0.5)",
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="callgrind: simulate the caches and count estimated cycles (instructions + 10 × "
        "first-level misses + 100 × last-level misses) instead of instructions",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure every checkout this many times, rotating the order"
    )
    parser.add_argument("--top", type=int, default=30, help="opcodes: how many functions to list")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--keep", metavar="DIR", help="callgrind: keep each checkout's profile here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        uvloop.run(_child(args))
        return
    if args.mode == "redis" and not args.governed:
        parser.error("--mode redis counts the governed path's commands: add --governed")
    if args.mode == "syscalls" and shutil.which("strace") is None:
        parser.error("--mode syscalls needs strace (apt-get install strace)")
    if args.mode == "callgrind" and shutil.which("valgrind") is None:
        parser.error("--mode callgrind needs valgrind (apt-get install valgrind)")
    from bench import rotated
    from ethereal.sim.testing import start_sim_process

    from tests.services import postgres_server, redis_server

    trees = [("this", REPO), *((c.resolve().name, c.resolve()) for c in args.against)]
    results: dict[str, dict] = {}
    with start_sim_process() as (_sim, sim_url), contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_server()).url if args.governed else None
        pg = stack.enter_context(postgres_server())[0] if args.postgres else None
        dbs = {
            label: pg.create_database(f"pathcost_{label}".replace("-", "_")) if pg is not None else None
            for label, _ in trees
        }
        runs: dict[str, list[float]] = {label: [] for label, _ in trees}
        for r in range(args.repeat):  # timed modes: rounds, each starting one checkout further on
            for label, checkout in rotated(trees, r):
                results[label] = _measure(label, checkout, args, sim_url, redis_url, dbs[label])
                runs[label].append(results[label]["total"])
        if args.repeat > 1:
            for label, _ in trees:
                results[label]["rounds"] = runs[label]
                results[label]["total"] = statistics.median(runs[label])
                if label != trees[0][0] and len(trees) > 1:
                    ratios = [a / b for a, b in zip(runs[trees[0][0]], runs[label], strict=True)]
                    results[label]["ratio_median"] = statistics.median(ratios)
    unit = {
        "opcodes": "bytecodes",
        "callgrind": "estimated cycles" if args.cache_sim else "instructions",
        "redis": "Redis commands",
        "syscalls": "system calls",
        "cpu": "CPU ms",
    }[args.mode]
    first = trees[0][0]
    for label, _ in trees:
        r = results[label]
        line = f"{label:>8}: {r['total']:,.{3 if args.mode == 'cpu' else 1}f} {unit} per request"
        if label != first:
            ratio = r.get("ratio_median", results[first]["total"] / r["total"])
            line += f" ({(ratio - 1) * 100:+.1f} % {first} vs {label}"
            line += ", median of the rounds' ratios)" if "ratio_median" in r else ")"
        line += f", {r.get('body_messages', 0):.1f} response body messages"
        if "ll_misses" in r:
            line += f" ({r['l1_misses']:,.0f} first-level, {r['ll_misses']:,.0f} last-level cache misses)"
        if args.mode == "redis":
            line += f", Redis time in commands {r['usec']:.1f} µs per request (timed: moves with load)"
        print(line)
    if args.mode == "opcodes" and len(trees) > 1:
        a, b = results[first]["per_function"], results[trees[1][0]]["per_function"]
        names = sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))
        print(f"functions that differ most ({first} − {trees[1][0]}, bytecodes per request):")
        for name in names[: args.top]:
            print(
                f"  {a.get(name, 0) - b.get(name, 0):+8.1f}  {a.get(name, 0):8.1f}  {b.get(name, 0):8.1f}  {name}"
            )
    if args.mode in ("redis", "syscalls") and len(trees) > 1:
        a, b = results[first]["commands"], results[trees[1][0]]["commands"]
        for cmd in sorted(set(a) | set(b)):
            if abs(a.get(cmd, 0) - b.get(cmd, 0)) >= 0.01:
                print(f"  {cmd}: {a.get(cmd, 0):.2f} vs {b.get(cmd, 0):.2f} per request")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
