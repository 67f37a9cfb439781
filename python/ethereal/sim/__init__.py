"""``ethereal sim``: a fast, faithful stand-in for the Anthropic Messages API.

A raw asyncio ``Protocol`` HTTP/1.1 server (httptools parser, uvloop) that answers like
api.anthropic.com: keep-alive and pipelining, Content-Length and chunked request bodies,
JSON responses with ``content-length``, SSE with ``transfer-encoding: chunked``. Every
response carries ``request-id: req_011C…`` and ``anthropic-organization-id``; errors carry
``x-should-retry`` (``true`` on 408/409/429/5xx/529, ``false`` otherwise).

Endpoints
---------
``POST /v1/messages`` (``stream`` true/false), ``POST /v1/messages/count_tokens``, the Message
Batches API under ``/v1/messages/batches`` (see ``_batches.py``),
``GET /v1/models`` (``limit``/``after_id``/``before_id``), ``GET /v1/models/{id}``.
Query strings are ignored (``/v1/messages?beta=true``). ``GET /`` answers 200.

Models
------
The sim serves what the model registry (``ethereal.models``, ``models/models.toml``) lists:
every model not retired, by id or alias, plus ids added at runtime (``POST /_sim/models``).
``GET /v1/models`` items are ``Model.to_anthropic()`` (with ``capabilities``), newest first.
A retired id, or any name it does not serve, answers 404 ``not_found_error`` with the
registry's ``errors.not_found`` text (``model: <name>``) on ``/v1/messages``, ``count_tokens``
and batch items.

Checks, in order: body over 32 MiB → 413 ``{"error":{"type":"request_too_large",…}}`` (edge
shape, no ``type``/``request_id``); key from ``x-api-key`` or ``Authorization: Bearer`` (any
non-empty key unless ``api_keys`` is set) → 401; missing ``anthropic-version`` → 400; bad JSON,
missing ``model``/``max_tokens``/``messages`` → 400; a ``role: "system"`` message without the
``per-turn-control-2026-07-01`` beta → 400; a model it does not serve → 404; ``max_tokens``
above the model's maximum output → 400; the model's request rules (``_rules.py``: thinking
types, effort, turning thinking off, display, sampling parameters, forced ``tool_choice``,
prefill, fast mode, ``inference_geo``) → 400 ``invalid_request_error`` with the registry's
error texts; thinking budget rules → 400. ``count_tokens`` applies the same rules except those
about ``max_tokens``.

Generated responses
-------------------
Deterministic given the request body bytes and ``seed`` (ids are random). Text is made of
tokens averaging exactly 4 characters including the leading space; output length is
``min(max_tokens, 20 + crc % 41)`` tokens unless ``sim:tokens=N`` says otherwise.

* ``output_tokens`` = Σ over blocks of ``ceil(len(text|thinking|tool-input-json) / 4)``, plus
  the thinking a ``display: "omitted"`` block does not show (billed, as the API does).
* ``input_tokens`` (and ``count_tokens``) = ``max(1, T(C))``, C = characters of system text,
  text/thinking blocks, string contents (system-role messages included), tool_result contents,
  tool_use inputs (compact JSON), tool definitions (compact JSON) and other blocks (compact
  JSON; an image counts 6400 chars). T depends on the model's tokenizer generation (the
  registry's ``tokenizer``): ``ceil(C / 4)`` for generation 1, ``ceil(C × 1.3 / 4)`` (exactly
  ``ceil(13 C / 40)``) for generation 2 (Opus 4.7 and later, Sonnet 5+, Haiku 5.5, Fable/Mythos),
  which counts about 30% more tokens for the same text. Output tokens stay ``/4`` on every
  model. With prompt caching the cached part is moved out of ``input_tokens`` (see below).
* ``usage`` carries ``cache_creation`` (5m/1h split), ``server_tool_use``
  (``web_search_requests``, ``web_fetch_requests``: the ``sim:web_search=N`` /
  ``sim:web_fetch=N`` counts when such a server tool is offered, else 0), ``service_tier``
  (``batch`` in batch results), ``inference_geo`` (the requested region, else ``"global"``),
  ``speed`` (``standard``/``fast``) and, when an ``advisor_*`` tool is offered, ``iterations``
  (the ``message`` pass, whose counts are the top-level ones, then an ``advisor_message``):
  in a Message, and in a stream's ``message_start`` and ``message_delta`` alike.
* Tools: with custom ``tools`` (and ``tool_choice`` not ``none``) and a last user turn without
  ``tool_result``, the reply is an optional short text then ``tool_use`` block(s) whose input is
  generated from ``input_schema`` (required properties, typed values); ``stop_reason: tool_use``.
  ``sim:tools=N`` asks for N parallel calls unless ``disable_parallel_tool_use``. After a
  ``tool_result`` turn the reply is text (``end_turn``).
* Thinking (``thinking.type`` enabled/adaptive, or left out on a model that thinks by default:
  the registry's ``thinking_default = "adaptive"``): a thinking block (``thinking_delta``s, then
  one ``signature_delta``) before the answer; capped by ``budget_tokens``. ``display`` defaults
  per model; ``omitted`` gives an empty thinking block with its signature. As the API does, a
  tool loop with thinking asked for needs its assistant turn to start with the thinking block
  sent back (else 400).
* ``stop_sequences``: the text is cut where one occurs (``stop_reason: stop_sequence``); the
  directive ``sim:stop`` forces a hit on the first entry.
* Prompt caching: breakpoints are blocks with ``cache_control`` (tools → system → messages, or
  a top-level ``cache_control`` = last block). Prefix hashes (model + blocks) are remembered
  for their TTL (5m, or 1h with ``"ttl":"1h"``); the longest remembered prefix is
  ``cache_read_input_tokens``, the tokens from there up to the last breakpoint are
  ``cache_creation_input_tokens`` split into ``ephemeral_5m``/``ephemeral_1h`` by the ttl of the
  breakpoint closing each segment; the rest stays in ``input_tokens``. Prefix tokens =
  ``chars_before_breakpoint // 4`` (``13 × chars // 40`` on tokenizer 2); a breakpoint under the
  model's minimum cacheable prompt (the registry's ``min_cache_tokens``: 512 to 4,096) caches
  nothing and is no error (``cache_min_tokens`` / ``--cache-min-tokens`` overrides it for every
  model; 0: no minimum).

Streams follow the recorded framing exactly: ``event: X\\ndata: {compact json}\\n\\n``, 0–15
spaces of padding before the final ``}`` of every non-ping data line, ``event: ping`` right
after the first ``content_block_start``, tool_use starting with ``input:{}`` and a first empty
``partial_json``, cumulative usage in ``message_delta``, nothing after ``message_stop``.

Directives (anywhere in the text of the last user message)
----------------------------------------------------------
``sim:replay NAME``   stream the recorded ``NAME.sse`` byte for byte (stream=false: the
                      Message assembled from it). Looked up in ``$ETHEREAL_FIXTURES``
                      (itself, ``anthropic/recorded/sse-extracted``, and the SDK's
                      ``anthropic/stream-fixtures-sdk-python/*.txt``), then the bundled
                      ``recorded/`` copies. Names: ``GET /_sim/fixtures``.
``sim:tokens=N``      output length in tokens (still capped by max_tokens).
``sim:tools=N``       N parallel tool_use blocks (0: a text answer even with tools).
``sim:tool=NAME``     the (first) call is to tool NAME.
``sim:input=B64``     the first call's input: a JSON object in unpadded base64url (a scripted call).
``sim:thinking=N``    thinking length in tokens.
``sim:stop``          force ``stop_reason: stop_sequence`` (needs ``stop_sequences``).
``sim:web_search=N`` ``sim:web_fetch=N``   usage.server_tool_use counts (with such a tool offered).
``sim:searches=N``    with a ``web_search_*`` tool: ``usage.server_tool_use.web_search_requests`` = N,
                      at most the tool's ``max_uses`` (the searches themselves are not simulated).
``sim:ttft=MS`` ``sim:tps=N`` ``sim:latency=MS``   per-request timing.
``sim:fault=KIND[,retry_after=S][,after_events=K][,delay_ms=MS]``   inject a fault.

Faults
------
KIND: ``429`` (rate_limit_error + ``retry-after``, default 1), ``529`` (overloaded_error),
``500`` (api_error), ``401``, ``403``, ``400``, ``503``, ``504``, ``reset`` (connection aborted
before any byte), ``reset_mid`` (abort after K events, default 3; non-streaming: after half the
body), ``error_mid`` (``event: error`` overloaded_error after K events then end of stream;
non-streaming: 529), ``slow`` (``delay_ms`` before the first byte, default 1000). ``delay_ms``
can be combined with any kind.

Control API (same port, no auth)
--------------------------------
``POST /_sim/faults`` ``{"fault":"429","count":N,"retry_after":2,"after_events":K,"delay_ms":…,
"paths":["/v1/messages"]}`` queues a fault for the next N matching requests (default path
``/v1/messages``; ``"*"`` = every /v1 path); ``{"faults":[…]}`` queues several;
``{"clear":true}`` clears. ``GET /_sim/faults``, ``GET /_sim/stats`` (counts by path and
status), ``GET /_sim/requests`` (``received``: API requests read, counted on arrival; ``replies``:
request-id → the usage each of the last 1,024 generated Messages replies reported),
``POST /_sim/reset`` (stats, faults, prompt cache, that log), ``GET|POST /_sim/config``
(``latency_ms``, ``ttft_ms``, ``tokens_per_second``, ``events_per_write`` at runtime),
``GET /_sim/fixtures``, ``GET /_sim/seen`` (``requests``: path, ``model`` as named and request-id of
the last 1,024 Messages and count_tokens requests; ``POST /_sim/reset`` clears it).
``POST /_sim/models`` ``{"id":"claude-nova-6"}`` serves and lists a
model the registry does not describe (optional ``like`` (a served id whose rules and limits it
takes; default: what the gateway's registry assumes for the name, its family's dearest model),
``display_name``, ``max_tokens``, ``max_input_tokens``; ``{"models":[…]}`` or ``{"add":[id, …]}``
adds several); ``{"remove":"id"}``, ``{"clear":true}``; ``GET /_sim/models`` lists the added ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["SimConfig", "SimServer", "main", "run", "serve"]


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    api_keys: set[str] | None = None  # None: any non-empty key is accepted
    latency_ms: float = 0.0  # before response headers
    ttft_ms: float = 0.0  # before the first content event (streams); added to latency otherwise
    tokens_per_second: float = 0.0  # 0: as fast as possible
    events_per_write: int = 4  # SSE events per socket write (one HTTP chunk each)
    seed: int = 0
    fixtures_dir: str | None = None  # default: $ETHEREAL_FIXTURES, then the bundled copies
    cache_min_tokens: int | None = None  # None: each model's minimum cacheable prompt (512-4096); N overrides
    organization_id: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    backlog: int = 2048
    batch_processing_ms: float = 2000.0  # simulated time a Message Batch takes to end (see _batches.py)


class SimServer:
    """A running sim: ``host``, ``port``, ``base_url``, ``state`` (stats, faults, cache)."""

    def __init__(self, server: asyncio.Server, state: Any, config: SimConfig) -> None:
        self.server = server
        self.state = state
        self.config = config
        sock = server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        host = self.host if ":" not in self.host else f"[{self.host}]"
        self.base_url = f"http://{host}:{self.port}"

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()

    async def serve_forever(self) -> None:
        await self.server.serve_forever()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def serve(config: SimConfig | None = None) -> SimServer:
    """Starts listening on the running loop and returns at once (``port=0`` picks a free port)."""
    from ._server import SimState, make_protocol_factory

    config = config or SimConfig()
    state = SimState(config)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        make_protocol_factory(state), config.host, config.port, reuse_address=True, backlog=config.backlog
    )
    for sock in server.sockets:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return SimServer(server, state, config)


def run(config: SimConfig | None = None) -> None:
    """Blocking entry point: serves on uvloop until SIGINT/SIGTERM."""
    config = config or SimConfig()

    async def _main() -> None:
        sim = await serve(config)
        print(f"ethereal sim listening on {sim.base_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
        sim.close()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency, but stay usable
        asyncio.run(_main())
    else:
        uvloop.run(_main())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ethereal sim", description="Simulated Anthropic Messages API.")
    p.add_argument("--host", default=os.environ.get("ETHEREAL_SIM_HOST", "127.0.0.1"))
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("ETHEREAL_SIM_PORT", "8090")),
        help="0 picks a free port (printed on start)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted key (repeatable); default: any non-empty key",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before response headers")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first content event")
    p.add_argument(
        "--tokens-per-second",
        "--tps",
        type=float,
        default=0.0,
        dest="tokens_per_second",
        help="stream pacing; 0 = as fast as possible",
    )
    p.add_argument("--events-per-write", type=int, default=4, help="SSE events per socket write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fixtures-dir",
        default=None,
        help="recorded .sse files (default $ETHEREAL_FIXTURES, then the bundled copies)",
    )
    p.add_argument(
        "--cache-min-tokens",
        type=int,
        default=None,
        help="minimum cacheable prefix in tokens for every model (default: each model's own)",
    )
    p.add_argument("--organization-id", default=None)
    p.add_argument(
        "--batch-processing-ms",
        type=float,
        default=2000.0,
        help="simulated time a Message Batch takes from create to ended",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = SimConfig(
        host=args.host,
        port=args.port,
        api_keys=set(args.api_keys) if args.api_keys else None,
        latency_ms=args.latency_ms,
        ttft_ms=args.ttft_ms,
        tokens_per_second=args.tokens_per_second,
        events_per_write=max(1, args.events_per_write),
        seed=args.seed,
        fixtures_dir=args.fixtures_dir,
        cache_min_tokens=args.cache_min_tokens,
        organization_id=args.organization_id,
        batch_processing_ms=args.batch_processing_ms,
    )
    try:
        run(config)
    except OSError as exc:
        print(f"ethereal sim: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
