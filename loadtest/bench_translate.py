"""OpenAI translations (Chat Completions and Responses): each native translator against its
Python reference, and the translated routes' added latency next to the native route, in one run.

    python loadtest/bench_translate.py [--seconds 1.0] [--duration 4] [--rounds 3] [--json out.json]

1. Throughput over every recorded Anthropic stream (fixtures/.../sse-extracted):
   ``_native.ChatTranslator`` and ``_native.ResponsesTranslator`` (Rust, called from Python
   once per chunk, as the routes do) against ``tests/reference_chat_translator.py`` and
   ``tests/reference_responses_translator.py`` (straightforward pure Python, json stdlib),
   each pair producing the same bytes (checked here). Two chunkings: one feed per SSE
   event (what an upstream connection delivers) and the whole stream in one feed. Reports
   MB/s of Anthropic input and µs per upstream event, best of ``--repeat`` runs.
2. Latency through one gateway process to the sim, concurrency 1: the same prompt on the
   native ``/v1/messages``, ``/v1/chat/completions`` and ``/v1/responses`` (streamed and
   not), rounds alternated so machine noise hits all alike; p50 and each translated route's
   added p50.
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
from tests.reference_responses_translator import ReferenceResponsesTranslator

ARGS = ("claude-sonnet-4-6", "chatcmpl-bench", 1760000000, True)
RESPONSE_ID = "resp_bench"
# what the route's adapter passes: the response object's request-derived members
HEAD = (
    '"id":"resp_bench","object":"response","created_at":1760000000,"model":"claude-sonnet-4-6",'
    '"instructions":null,"max_output_tokens":null,"parallel_tool_calls":true,"previous_response_id":null,'
    '"reasoning":{"effort":null,"summary":null},"store":false,"temperature":1.0,'
    '"text":{"format":{"type":"text"},"verbosity":"medium"},"tool_choice":"auto","tools":[],"top_p":1.0,'
    '"truncation":"disabled","metadata":{}}'
)
FACTORIES: dict[str, dict[str, Callable[[], Any]]] = {
    "chat": {
        "native": lambda: _native.ChatTranslator(*ARGS),
        "python": lambda: ReferenceChatTranslator(*ARGS),
    },
    "responses": {
        "native": lambda: _native.ResponsesTranslator(RESPONSE_ID, HEAD),
        "python": lambda: ReferenceResponsesTranslator(RESPONSE_ID, HEAD),
    },
}


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
        t = factory()
        for c in chunks:
            produced += len(t.feed(c))
        produced += len(t.finish())
    return produced


def best_times(
    factories: dict[str, Callable[..., Any]], corpus: list[list[bytes]], seconds: float, repeat: int
) -> dict[str, float]:
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
    for kind, pair in FACTORIES.items():  # same output, or the comparison means nothing
        for name, _data, events in streams:
            native, ref = pair["native"](), pair["python"]()
            a = b"".join(native.feed(c) for c in events) + native.finish()
            b = b"".join(ref.feed(c) for c in events) + ref.finish()
            assert a == b, f"{kind}: native and reference differ on {name}"
    report: dict[str, Any] = {"streams": len(streams), "bytes": total_bytes, "events": total_events}
    print(f"corpus: {len(streams)} recorded streams, {total_bytes / 1e6:.3f} MB, {total_events} events")
    for mode, corpus in (
        ("per-event chunks", [e for _, _, e in streams]),
        ("whole stream", [[d] for _, d, _ in streams]),
    ):
        factories = {f"{kind} {impl}": f for kind, pair in FACTORIES.items() for impl, f in pair.items()}
        times = best_times(factories, corpus, seconds, repeat)
        rows: dict[str, Any] = {}
        for kind in FACTORIES:
            row: dict[str, Any] = {}
            for impl in ("native", "python"):
                secs = times[f"{kind} {impl}"]
                row[impl] = {
                    "seconds": secs,
                    "mb_per_s": total_bytes / secs / 1e6,
                    "us_per_event": secs / total_events * 1e6,
                }
            row["speedup"] = row["python"]["seconds"] / row["native"]["seconds"]
            rows[kind] = row
            n, p = row["native"], row["python"]
            print(
                f"{kind:9} {mode:17} native {n['mb_per_s']:8.1f} MB/s {n['us_per_event']:7.3f} µs/event | "
                f"python {p['mb_per_s']:6.2f} MB/s {p['us_per_event']:7.2f} µs/event | {row['speedup']:.1f}x",
                flush=True,
            )
        report[mode] = rows
    return report


# ---- route latency ----------------------------------------------------------------------------

PROMPT = "Write a short note about gateways. sim:tokens=40"


def bodies(stream: bool) -> tuple[bytes, bytes, bytes]:
    native = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    chat: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        chat["stream_options"] = {"include_usage": True}
    responses = {"model": "claude-sonnet-4-6", "max_output_tokens": 256, "stream": stream, "input": PROMPT}
    return json.dumps(native).encode(), json.dumps(chat).encode(), json.dumps(responses).encode()


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
        native_headers = {
            "x-api-key": key,
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
        }
        chat_headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        for stream in (False, True):
            native_body, chat_body, responses_body = bodies(stream)
            targets = {
                "direct sim": (sim_url + "/v1/messages", native_body, native_headers),
                "native route": (gw + "/v1/messages", native_body, native_headers),
                "chat route": (gw + "/v1/chat/completions", chat_body, chat_headers),
                "responses route": (gw + "/v1/responses", responses_body, chat_headers),
            }
            for url, body, headers in targets.values():  # warm every path
                await run_load(url, body, headers, concurrency=1, duration=0.5)
            results: dict[str, list[Result]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, (url, body, headers) in targets.items():
                    results[name].append(await run_load(url, body, headers, concurrency=1, duration=duration))
            summary = {name: merged(r) for name, r in results.items()}
            row = {
                "stream": stream,
                **summary,
                "chat_minus_native_p50_ms": summary["chat route"]["p50_ms"]
                - summary["native route"]["p50_ms"],
                "responses_minus_native_p50_ms": (
                    summary["responses route"]["p50_ms"] - summary["native route"]["p50_ms"]
                ),
                "native_added_p50_ms": summary["native route"]["p50_ms"] - summary["direct sim"]["p50_ms"],
            }
            rows.append(row)
            kind = "stream    " if stream else "non-stream"
            print(
                f"{kind} c=1 p50: sim {summary['direct sim']['p50_ms']:.3f} ms | native route "
                f"{summary['native route']['p50_ms']:.3f} ms | chat route {summary['chat route']['p50_ms']:.3f} "
                f"ms | responses route {summary['responses route']['p50_ms']:.3f} ms | chat - native "
                f"{row['chat_minus_native_p50_ms']:+.3f} ms | responses - native "
                f"{row['responses_minus_native_p50_ms']:+.3f} ms (errors {summary['native route']['errors']}/"
                f"{summary['chat route']['errors']}/{summary['responses route']['errors']}, "
                f"n={summary['responses route']['requests']})",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
