"""Side-by-side benchmark: the same load against the sim directly and through the gateway, in one run.

    python loadtest/bench.py [--duration 5] [--workers 1] [--rounds 2]

For concurrency 1 and 32, non-streaming and streaming, it alternates direct and
gateway runs (so machine noise hits both alike) and reports p50/p99 latency,
the gateway's added latency and added time to first byte, requests/s, the
gateway's CPU milliseconds per request (from /proc, all its processes) and RSS.
Then throughput through the gateway at concurrency 64, its rounds alternating too.

``--against CHECKOUT`` (repeatable) runs other checkouts' gateways in the same rounds; each round
starts one gateway further on, so none is always measured first. A second worktree of this same
tree as one of them gives an A/A pair: the benchmark's own noise, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkeys import insert_key_as
from ethereal.keys import mint
from httpload import Result, run_load

from tests.procs import gateway_process

CLK = os.sysconf("SC_CLK_TCK")


def proc_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            continue
    return total / CLK


def context_switches(pids: list[int]) -> int:
    """Context switches, voluntary and not, of every thread of ``pids`` so far: a count where CPU
    time is timed. A thread handoff (an executor taking the GIL back from the event loop's thread)
    costs CPU in the kernel and shows here long before it stands out of the CPU figure's noise."""
    total = 0
    for p in pids:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/status") as fh:
                    for line in fh:  # voluntary_ctxt_switches:, nonvoluntary_ctxt_switches:
                        if "ctxt_switches:" in line:
                            total += int(line.split()[-1])
            except FileNotFoundError:
                continue
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def find_listener_pid(port: int) -> int:
    """The pid of the process listening on 127.0.0.1:port (the server's main process)."""
    inode = None
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            parts = line.split()
            local, state = parts[1], parts[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                inode = parts[9]
                break
    if inode is None:
        raise RuntimeError(f"nothing listens on {port}")
    candidates = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    candidates.append(int(pid))
                    break
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return min(candidates)


def body_for(stream: bool) -> bytes:
    return json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": "Write a short note about gateways. sim:tokens=40"}],
        }
    ).encode()


async def measure(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float, pids: list[int] | None
) -> tuple[Result, float]:
    before = cpu_seconds(pids) if pids else 0.0
    switched = context_switches(pids) if pids else 0
    res = await run_load(url, body, headers, concurrency=concurrency, duration=duration)
    after = cpu_seconds(pids) if pids else 0.0
    res.switches = (context_switches(pids) - switched) if pids else 0
    return res, after - before


def scenario(stream: bool, concurrency: int) -> str:
    """A scenario's name for ``--only`` (``non-stream-1``, ``stream-32``, ...)."""
    return f"{'stream' if stream else 'non-stream'}-{concurrency}"


def rotated(items: list, start: int) -> list:
    """``items`` starting at ``start`` (mod its length): each gateway takes each place in turn, so
    none is always the one measured right after the sim or after another gateway's load."""
    if not items:
        return items
    start %= len(items)
    return items[start:] + items[:start]


def paired(
    rounds: dict[str, list[Result]], cpu: dict[str, list[float]], reference: str
) -> dict[str, dict[str, float]]:
    """Each version against ``reference``, round by round: the median over rounds of the ratio of
    its round to the reference's round (p50, p99, requests/s, CPU per request).

    Rounds are measured back to back, so a machine that is busier in one round than in another
    moves both sides of that round's ratio alike: on the shared two-core machine one version's
    CPU per request ranged 0.26-0.55 ms over eight rounds while seven of the eight ratios stayed
    within ±10 %."""
    out: dict[str, dict[str, float]] = {}
    ref = rounds[reference]
    for label, mine in rounds.items():
        if label == reference:
            continue
        ratios: dict[str, list[float]] = {"p50": [], "p99": [], "rps": [], "cpu": []}
        for i, (a, b) in enumerate(zip(mine, ref, strict=True)):
            sa, sb = a.summary(), b.summary()
            for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("rps", "rps")):
                if sb[key] and sa[key] == sa[key] and sb[key] == sb[key]:  # no NaN
                    ratios[name].append(sa[key] / sb[key])
            if cpu[reference][i] > 0:
                ratios["cpu"].append(cpu[label][i] / cpu[reference][i])
        out[label] = {name: statistics.median(v) for name, v in ratios.items() if v}
        out[label].update({f"{name}_rounds": v for name, v in ratios.items()})  # the JSON report's
    return out


def format_paired(what: str, ratios: dict[str, dict[str, float]], reference: str) -> list[str]:
    """Lines of ``paired``'s ratios as percentages (+ is more: worse for p50, p99 and CPU)."""
    lines = []
    for label, r in ratios.items():
        parts = [f"{name} {100 * (r[name] - 1):+.1f} %" for name in ("p50", "p99", "rps", "cpu") if name in r]
        lines.append(f"  {label:>7} vs {reference} {what}: " + ", ".join(parts))
    return lines


def merge(results: list[Result]) -> Result:
    out = Result()
    for r in results:
        out.latencies += r.latencies
        out.ttfb += r.ttfb
        out.errors += r.errors
        out.elapsed += r.elapsed
    return out


async def main_async(
    args: argparse.Namespace, trees: list[tuple[str, Path, dict[str, str]]], key: str
) -> dict:
    """Sim directly and every gateway in ``trees`` (label, data dir, extra env), alternating rounds."""
    from ethereal.sim.testing import start_sim_process

    report: dict = {"config": {k: str(v) for k, v in vars(args).items()}, "scenarios": []}
    with start_sim_process() as (_sim_proc, sim_url), contextlib.ExitStack() as stack:
        gateways = []
        for label, data_dir, env in trees:
            url = stack.enter_context(gateway_process(data_dir, sim_url, workers=args.workers, env=env))
            gateways.append((label, url, proc_tree(find_listener_pid(int(url.rsplit(":", 1)[1])))))
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        only = {name for name in args.only.split(",") if name}
        for stream in (False, True):
            for conc in (1, 32):
                if only and scenario(stream, conc) not in only:
                    continue
                body = body_for(stream)
                await run_load(sim_url + "/v1/messages", body, headers, concurrency=conc, duration=0.5)
                for _, url, _ in gateways:  # warm every path
                    await run_load(url + "/v1/messages", body, headers, concurrency=conc, duration=0.5)
                direct: list[Result] = []
                through: dict[str, list[Result]] = {label: [] for label, _, _ in gateways}
                # CPU per request of each round; the median round is reported (bench_governed.py)
                cpu: dict[str, list[float]] = {label: [] for label in through}
                for r in range(args.rounds):
                    d, _ = await measure(sim_url + "/v1/messages", body, headers, conc, args.duration, None)
                    direct.append(d)
                    for label, url, pids in rotated(gateways, r):
                        g, c = await measure(url + "/v1/messages", body, headers, conc, args.duration, pids)
                        through[label].append(g)
                        cpu[label].append(1000 * c / max(1, len(g.latencies)))
                ds = merge(direct).summary()
                for label, _, pids in gateways:
                    g = merge(through[label]).summary()
                    row = {
                        "version": label,
                        "stream": stream,
                        "concurrency": conc,
                        "direct": ds,
                        "gateway": g,
                        "added_p50_ms": g["p50_ms"] - ds["p50_ms"],
                        "added_p99_ms": g["p99_ms"] - ds["p99_ms"],
                        "added_ttfb_p50_ms": g["ttfb_p50_ms"] - ds["ttfb_p50_ms"],
                        "gateway_cpu_ms_per_request": statistics.median(cpu[label]),
                        "rounds_cpu_ms_per_request": cpu[label],
                        "gateway_switches_per_request": statistics.median(
                            r.switches / max(1, len(r.latencies)) for r in through[label]
                        ),
                        "gateway_rss_mb": rss_mb(pids),
                    }
                    report["scenarios"].append(row)
                    print(format_row(row), flush=True)
                if len(gateways) > 1:  # against the first --against
                    reference = gateways[1][0]
                    ratios = paired(through, cpu, reference)
                    what = f"{'stream' if stream else 'non-stream'} c={conc}"
                    report.setdefault("paired", {})[what] = ratios
                    print("\n".join(format_paired(what, ratios, reference)), flush=True)
        # throughput through each gateway, non-streaming: rounds alternating between the gateways
        body = body_for(False)
        report["throughput"] = {}
        measured = gateways if not only or "throughput" in only else []
        runs: dict[str, list[Result]] = {label: [] for label, _, _ in measured}
        busy: dict[str, list[float]] = {label: [] for label in runs}
        for r in range(args.rounds if measured else 0):
            for label, url, pids in rotated(measured, r):
                res, cpu_s = await measure(url + "/v1/messages", body, headers, 64, args.duration * 2, pids)
                runs[label].append(res)
                busy[label].append(1000 * cpu_s / max(1, len(res.latencies)))
        for label, _url, pids in measured:
            s = merge(runs[label]).summary()
            report["throughput"][label] = {
                "concurrency": 64,
                "rps": s["rps"],
                "errors": s["errors"],
                "p50_ms": s["p50_ms"],
                "p99_ms": s["p99_ms"],
                "gateway_cpu_ms_per_request": statistics.median(busy[label]),
                "rounds_cpu_ms_per_request": busy[label],
                "gateway_rss_mb": rss_mb(pids),
            }
            print(
                f"{label:>7} throughput c=64 non-stream: {s['rps']:.0f} req/s, errors {s['errors']}, "
                f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
                f"cpu {report['throughput'][label]['gateway_cpu_ms_per_request']:.3f} ms/req",
                flush=True,
            )
    if len(measured) > 1:
        reference = measured[1][0]
        ratios = paired(runs, busy, reference)
        report.setdefault("paired", {})["throughput c=64"] = ratios
        print("\n".join(format_paired("throughput c=64", ratios, reference)), flush=True)
    return report


def format_row(row: dict) -> str:
    d, g = row["direct"], row["gateway"]
    kind = "stream    " if row["stream"] else "non-stream"
    return (
        f"{row['version']:>7} {kind} c={row['concurrency']:<3} direct p50 {d['p50_ms']:.3f} p99 {d['p99_ms']:.3f} "
        f"{d['rps']:.0f} rps | gateway p50 {g['p50_ms']:.3f} p99 {g['p99_ms']:.3f} {g['rps']:.0f} rps "
        f"(errors {g['errors']}) | added p50 {row['added_p50_ms']:.3f} p99 {row['added_p99_ms']:.3f} "
        f"ttfb+ {row['added_ttfb_p50_ms']:.3f} ms | cpu {row['gateway_cpu_ms_per_request']:.3f} ms/req "
        f"switches {row['gateway_switches_per_request']:.2f}/req rss {row['gateway_rss_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="gateway workers (one per core)")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        action="append",
        default=[],
        help="also run a gateway from another checkout (a worktree with its built extension), "
        "side by side in the same run, rounds alternating; repeatable",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL[@CHECKOUT]:NAME=VALUE[,NAME=VALUE]",
        help="also run this checkout (or CHECKOUT) with these settings in its environment (e.g. "
        "'nolog:ETHEREAL_LOG_LEVEL=warning'), side by side; repeatable",
    )
    parser.add_argument(
        "--only",
        default="",
        metavar="SCENARIOS",
        help="comma-separated subset of non-stream-1, non-stream-32, stream-1, stream-32, throughput",
    )
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        trees: list[tuple[str, Path, dict[str, str]]] = []
        key = ""
        variants: list[tuple[str, dict[str, str]]] = [("this", {})]
        variants += [(c.name, {"PYTHONPATH": str(c.resolve() / "python")}) for c in args.against]
        for spec in args.variant:
            label, _, assignments = spec.partition(":")
            pairs = [a.split("=", 1) for a in assignments.split(",") if a]
            if any(len(pair) != 2 for pair in pairs):
                parser.error(f"--variant {spec!r}: settings are NAME=VALUE, comma-separated")
            env = dict(pairs)
            label, _, checkout = label.partition("@")
            if checkout:
                env["PYTHONPATH"] = str(Path(checkout).resolve() / "python")
            variants.append((label, env))
        for label, env in variants:
            data_dir = Path(tmp) / label
            data_dir.mkdir()
            plaintext, record = mint("sk-ant-api03-", name="bench")
            key = key or plaintext
            if key != plaintext:  # one key for both: the same bytes on the wire
                record.key_hash = hashlib.sha256(key.encode()).hexdigest()
            insert_key_as(data_dir, record, env)
            trees.append((label, data_dir, env))
        report = uvloop.run(main_async(args, trees, key))
    report["seconds"] = time.time() - started
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
