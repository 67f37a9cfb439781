"""OpenAI Chat Completions translation: the native translator against the Python reference,
and the translated route's added latency next to the native route, in one run.

    python loadtest/bench_translate.py [--seconds 1.0] [--duration 4] [--rounds 3] [--json out.json]

1. Throughput over every recorded Anthropic stream (fixtures/.../sse-extracted):
   ``_native.ChatTranslator`` (Rust, called from Python once per chunk, as the route does)
   against ``tests/reference_chat_translator.py`` (straightforward pure Python, json
   stdlib), both producing the same bytes (checked here). Two chunkings: one feed per SSE
   event (what an upstream connection delivers) and the whole stream in one feed. Reports
   MB/s of Anthropic input and µs per upstream event, best of ``--repeat`` runs.
2. Latency through one gateway process to the sim, concurrency 1: the same prompt on the
   native ``/v1/messages`` and on ``/v1/chat/completions`` (streamed and not), rounds
   alternated so machine noise hits both alike; p50 and the chat route's added p50.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ethereal import _native
from httpload import Result, run_load

from tests.conftest import mint_into
from tests.procs import RECORDED, gateway_process
from tests.reference_chat_translator import ReferenceChatTranslator

ARGS = ("claude-sonnet-4-5-20250929", "chatcmpl-bench", 1760000000, True)


def load_streams() -> list[tuple[str, bytes, list[bytes]]]:
    """(name, stream, one chunk per SSE event)."""
    out = []
    for path in sorted(RECORDED.glob("*.sse")):
        data = path.read_bytes()
        events = [e + b"\n\n" for e in data.split(b"\n\n") if e]
        assert b"".join(events) == data, path.name
        out.append((path.stem, data, events))
    return out


def run(factory: Callable[..., Any], corpus: list[list[bytes]]) -> int:
    produced = 0
    for chunks in corpus:
        t = factory(*ARGS)
        for c in chunks:
            produced += len(t.feed(c))
        produced += len(t.finish())
    return produced


def best_times(factories: dict[str, Callable[..., Any]], corpus: list[list[bytes]], seconds: float,
               repeat: int) -> dict[str, float]:
    """Best wall time of one pass over the corpus per factory. Measurements alternate between
    the factories (passes batched to ~``seconds``), so load from elsewhere hits all alike."""
    passes = {}
    for label, factory in factories.items():
        t0 = time.perf_counter()
        run(factory, corpus)
        passes[label] = max(1, int(seconds / max(time.perf_counter() - t0, 1e-9)))
    best = dict.fromkeys(factories, float("inf"))
    for _ in range(repeat):
        for label, factory in factories.items():
            t0 = time.perf_counter()
            for _ in range(passes[label]):
                run(factory, corpus)
            best[label] = min(best[label], (time.perf_counter() - t0) / passes[label])
    return best


def bench_translation(seconds: float, repeat: int) -> dict[str, Any]:
    streams = load_streams()
    total_bytes = sum(len(d) for _, d, _ in streams)
    total_events = sum(len(e) for _, _, e in streams)
    for name, data, events in streams:  # same output, or the comparison means nothing
        native = _native.ChatTranslator(*ARGS)
        ref = ReferenceChatTranslator(*ARGS)
        a = b"".join(native.feed(c) for c in events) + native.finish()
        b = b"".join(ref.feed(c) for c in events) + ref.finish()
        assert a == b, f"native and reference differ on {name}"
    report: dict[str, Any] = {"streams": len(streams), "bytes": total_bytes, "events": total_events}
    print(f"corpus: {len(streams)} recorded streams, {total_bytes / 1e6:.3f} MB, {total_events} events")
    for mode, corpus in (("per-event chunks", [e for _, _, e in streams]), ("whole stream", [[d] for _, d, _ in streams])):
        row: dict[str, Any] = {}
        times = best_times({"native": _native.ChatTranslator, "python": ReferenceChatTranslator}, corpus, seconds,
                           repeat)
        for label, secs in times.items():
            row[label] = {"seconds": secs, "mb_per_s": total_bytes / secs / 1e6,
                          "us_per_event": secs / total_events * 1e6}
        row["speedup"] = row["python"]["seconds"] / row["native"]["seconds"]
        report[mode] = row
        n, p = row["native"], row["python"]
        print(f"{mode:17} native {n['mb_per_s']:8.1f} MB/s {n['us_per_event']:7.3f} µs/event | "
              f"python {p['mb_per_s']:6.2f} MB/s {p['us_per_event']:7.2f} µs/event | {row['speedup']:.1f}x", flush=True)
    return report


# ---- route latency ----------------------------------------------------------------------------

PROMPT = "Write a short note about gateways. sim:tokens=40"


def bodies(stream: bool) -> tuple[bytes, bytes]:
    native = {"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
              "messages": [{"role": "user", "content": PROMPT}]}
    chat: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
                            "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    return json.dumps(native).encode(), json.dumps(chat).encode()


def merged(results: list[Result]) -> dict[str, float]:
    out = Result()
    for r in results:
        out.latencies += r.latencies
        out.ttfb += r.ttfb
        out.errors += r.errors
        out.elapsed += r.elapsed
    return out.summary()


async def bench_routes(data_dir: Path, key: str, duration: float, rounds: int) -> list[dict[str, Any]]:
    from ethereal.sim.testing import start_sim_process

    rows = []
    with start_sim_process() as (_proc, sim_url), gateway_process(data_dir, sim_url) as gw:
        native_headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        chat_headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        for stream in (False, True):
            native_body, chat_body = bodies(stream)
            targets = {
                "direct sim": (sim_url + "/v1/messages", native_body, native_headers),
                "native route": (gw + "/v1/messages", native_body, native_headers),
                "chat route": (gw + "/v1/chat/completions", chat_body, chat_headers),
            }
            for url, body, headers in targets.values():  # warm every path
                await run_load(url, body, headers, concurrency=1, duration=0.5)
            results: dict[str, list[Result]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, (url, body, headers) in targets.items():
                    results[name].append(await run_load(url, body, headers, concurrency=1, duration=duration))
            summary = {name: merged(r) for name, r in results.items()}
            row = {"stream": stream, **summary,
                   "chat_minus_native_p50_ms": summary["chat route"]["p50_ms"] - summary["native route"]["p50_ms"],
                   "native_added_p50_ms": summary["native route"]["p50_ms"] - summary["direct sim"]["p50_ms"]}
            rows.append(row)
            kind = "stream    " if stream else "non-stream"
            print(f"{kind} c=1 p50: sim {summary['direct sim']['p50_ms']:.3f} ms | native route "
                  f"{summary['native route']['p50_ms']:.3f} ms | chat route {summary['chat route']['p50_ms']:.3f} "
                  f"ms | chat - native {row['chat_minus_native_p50_ms']:+.3f} ms "
                  f"(errors {summary['native route']['errors']}/{summary['chat route']['errors']}, "
                  f"n={summary['chat route']['requests']})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per throughput measurement")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per latency run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-routes", action="store_true")
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args()
    report: dict[str, Any] = {"translation": bench_translation(args.seconds, args.repeat)}
    if not args.skip_routes:
        import uvloop

        with tempfile.TemporaryDirectory() as tmp:
            key, _ = mint_into(Path(tmp), name="bench")  # before the event loop: it runs its own
            report["routes"] = uvloop.run(bench_routes(Path(tmp), key, args.duration, args.rounds))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
