"""Locust users that behave like ethereal's real clients.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 --api-key sk-ant-... [--admin-key ...]
    make loadtest            # headless, bounded, against a gateway + sim it starts (loadtest/locust_run.py)

User classes (weights with ``--agent-weight`` etc.; 0 leaves a class out):

* ``ClaudeCodeAgent``: a Claude Code session. Streamed ``POST /v1/messages?beta=true`` turns with
  the header set Claude Code 2.1 sends (captured from the real CLI: ``x-app: cli``, its
  ``anthropic-beta`` list, ``x-stainless-*``, ``x-claude-code-session-id``), a system prompt and a
  tool list like its own, ``cache_control`` on the last system block and on the last block of the
  last turn, adaptive thinking whose blocks (with signatures) are echoed back on later turns,
  ``tool_use``/``tool_result`` round trips until the model ends its turn, a ``count_tokens`` now
  and then, a 100K-token prompt one turn in ``--big-prompt-every``; a new session after
  ``--session-turns`` turns.
* ``OpenAIChatClient``: ``/v1/chat/completions`` with tools, streamed (``include_usage``) and not,
  tool-call round trips with ``tool`` messages.
* ``CodexResponsesClient``: ``/v1/responses`` as Codex CLI calls it (``store: false``, the whole
  history each turn, ``include: ["reasoning.encrypted_content"]``, function calls). While the
  route answers 404 the class stops at its first request with one clear message and counts
  nothing: a missing route is never a success.
* ``Operator``: polls ``/admin/api/usage`` and ``GET /v1/usage/{id}`` of requests other users made.

Stats: every entry is per route and per phase. A streamed request gives ``<route> · ttfb`` (to the
first body byte) and ``<route> · full`` (to the end of the stream); a non-streamed one gives
``<route>``. A stream is a success only when it ends as the protocol says (``message_stop``,
``data: [DONE]``, ``response.completed``); an ``event: error`` frame or a stream that just stops
is a failure, named so (``stream cut``, ``error event``) that a fault test can tell them apart.

``--p99-ms`` / ``--p99-full-ms`` fail the run (exit 1) when any entry's p99 is above them; any
failure fails the run too.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.exception import StopUser

log = logging.getLogger("ethereal.loadtest")

# Claude Code 2.1's request headers (besides x-api-key, content-type, host, content-length).
CLAUDE_CODE_HEADERS = {
    "accept": "application/json",
    "user-agent": "claude-cli/2.1.332 (external, sdk-cli)",
    "x-stainless-arch": "x64",
    "x-stainless-lang": "js",
    "x-stainless-os": "Linux",
    "x-stainless-package-version": "0.128.0",
    "x-stainless-retry-count": "0",
    "x-stainless-runtime": "node",
    "x-stainless-runtime-version": "v26.12.1",
    "x-stainless-timeout": "600",
    "anthropic-beta": (
        "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
        "thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,effort-2025-11-24"
    ),
    "anthropic-dangerous-direct-browser-access": "true",
    "anthropic-version": "2023-06-01",
    "x-app": "cli",
}
OPENAI_HEADERS = {
    "accept": "application/json",
    "user-agent": "OpenAI/Python 2.8.1",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "2.8.1",
    "x-stainless-retry-count": "0",
}
CODEX_HEADERS = {
    "accept": "text/event-stream",
    "user-agent": "codex_cli_rs/0.80.0 (Debian 12; x86_64)",
    "originator": "codex_cli_rs",
    "openai-beta": "responses=experimental",
}

_WORDS = [
    "the",
    "gateway",
    "forwards",
    "every",
    "request",
    "byte",
    "for",
    "byte",
    "while",
    "the",
    "meter",
    "records",
    "usage",
    "and",
    "the",
    "limiter",
    "holds",
    "budgets",
    "across",
    "replicas",
    "so",
    "that",
    "operators",
    "see",
    "each",
    "token",
    "and",
    "each",
    "cent",
    "spent",
    "by",
    "teams",
]

# Request ids answered recently, for the operator's GET /v1/usage/{id} (a few hundred is plenty).
RECENT_IDS: deque[str] = deque(maxlen=512)
_skip_lock = threading.Lock()
# ETHEREAL_LOAD_ID_LOG=path: one line per stream (name, request-id, ok/fail), to match usage rows
_ID_LOG = open(os.environ["ETHEREAL_LOAD_ID_LOG"], "a") if os.environ.get("ETHEREAL_LOAD_ID_LOG") else None  # noqa: SIM115
SKIPPED: dict[str, str] = {}


def words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _tool(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


CLAUDE_TOOLS = [
    _tool(
        "Bash",
        "Executes a bash command in a persistent shell session. " + words(120, random.Random(1)),
        {"command": {"type": "string"}, "timeout": {"type": "number"}, "description": {"type": "string"}},
        ["command"],
    ),
    _tool(
        "Read",
        "Reads a file from the local filesystem. " + words(80, random.Random(2)),
        {"file_path": {"type": "string"}, "offset": {"type": "number"}, "limit": {"type": "number"}},
        ["file_path"],
    ),
    _tool(
        "Edit",
        "Performs exact string replacements in files. " + words(90, random.Random(3)),
        {
            "file_path": {"type": "string"},
            "old_string": {"type": "string"},
            "new_string": {"type": "string"},
            "replace_all": {"type": "boolean"},
        },
        ["file_path", "old_string", "new_string"],
    ),
    _tool(
        "Grep",
        "A search tool built on ripgrep. " + words(70, random.Random(4)),
        {"pattern": {"type": "string"}, "path": {"type": "string"}, "glob": {"type": "string"}},
        ["pattern"],
    ),
    _tool(
        "Glob",
        "Fast file pattern matching. " + words(40, random.Random(5)),
        {"pattern": {"type": "string"}, "path": {"type": "string"}},
        ["pattern"],
    ),
    _tool(
        "TodoWrite",
        "Create and manage a structured task list. " + words(100, random.Random(6)),
        {
            "todos": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"content": {"type": "string"}, "status": {"type": "string"}},
                },
            }
        },
        ["todos"],
    ),
]
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the product documentation",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    },
]
CODEX_TOOLS = [
    {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command and returns its output.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "array", "items": {"type": "string"}},
                "workdir": {"type": "string"},
                "timeout_ms": {"type": "number"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
]


# ---------------------------------------------------------------------------- options
@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("ethereal")
    group.add_argument(
        "--api-key", env_var="ETHEREAL_LOAD_KEY", default="", help="a gateway key for the users"
    )
    group.add_argument(
        "--admin-key",
        env_var="ETHEREAL_LOAD_ADMIN_KEY",
        default="",
        help="the gateway's admin key (the operator user; without it, it polls only /v1/usage)",
    )
    group.add_argument("--model", env_var="ETHEREAL_LOAD_MODEL", default="claude-sonnet-4-6")
    group.add_argument("--agent-weight", type=int, env_var="ETHEREAL_LOAD_AGENT_WEIGHT", default=6)
    group.add_argument("--chat-weight", type=int, env_var="ETHEREAL_LOAD_CHAT_WEIGHT", default=3)
    group.add_argument("--responses-weight", type=int, env_var="ETHEREAL_LOAD_RESPONSES_WEIGHT", default=1)
    group.add_argument("--operator-weight", type=int, env_var="ETHEREAL_LOAD_OPERATOR_WEIGHT", default=1)
    group.add_argument(
        "--think-min",
        type=float,
        env_var="ETHEREAL_LOAD_THINK_MIN",
        default=0.5,
        help="seconds a user waits between turns, at least",
    )
    group.add_argument("--think-max", type=float, env_var="ETHEREAL_LOAD_THINK_MAX", default=2.0)
    group.add_argument(
        "--tool-time",
        type=float,
        env_var="ETHEREAL_LOAD_TOOL_TIME",
        default=0.05,
        help="seconds a client 'runs' a tool before sending its result",
    )
    group.add_argument("--session-turns", type=int, env_var="ETHEREAL_LOAD_SESSION_TURNS", default=12)
    group.add_argument(
        "--big-prompt-every",
        type=int,
        env_var="ETHEREAL_LOAD_BIG_EVERY",
        default=40,
        help="one agent turn in N carries a 100K-token prompt (0: never)",
    )
    group.add_argument("--count-tokens-every", type=int, env_var="ETHEREAL_LOAD_COUNT_EVERY", default=5)
    group.add_argument(
        "--directives",
        env_var="ETHEREAL_LOAD_DIRECTIVES",
        default="sim:tokens=60",
        help="text added to each user turn (the sim reads sim:tokens=N, sim:ttft=MS, ...)",
    )
    group.add_argument(
        "--p99-ms",
        type=float,
        env_var="ETHEREAL_LOAD_P99_MS",
        default=0.0,
        help="fail when any non-streamed or ttfb entry has a p99 above this (0: no check)",
    )
    group.add_argument(
        "--summary-json",
        env_var="ETHEREAL_LOAD_SUMMARY",
        default="",
        help="write every entry's counts and percentiles here at the end (locust's own final CSV"
        " is written before the users' last requests finish)",
    )
    group.add_argument(
        "--p99-full-ms",
        type=float,
        env_var="ETHEREAL_LOAD_P99_FULL_MS",
        default=0.0,
        help="fail when any full-stream entry has a p99 above this (0: no check)",
    )


@events.init.add_listener
def _weights(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    chosen = []
    for cls, weight in (
        (ClaudeCodeAgent, opts.agent_weight),
        (OpenAIChatClient, opts.chat_weight),
        (CodexResponsesClient, opts.responses_weight),
        (Operator, opts.operator_weight),
    ):
        cls.weight = weight
        if weight > 0:
            chosen.append(cls)
    if not chosen:
        raise SystemExit("every user class has weight 0")
    environment.user_classes = chosen
    if not opts.api_key:
        raise SystemExit("--api-key (or ETHEREAL_LOAD_KEY) is required: a key minted by the gateway")


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    """Exit 1 on any failure, or on a p99 above the thresholds."""
    opts = environment.parsed_options
    for cls, why in SKIPPED.items():
        log.warning("%s SKIPPED (not counted as success): %s", cls, why)
    if opts is None:
        return
    problems = []
    stats = environment.stats
    if opts.summary_json:
        summary = {
            f"{e.method} {e.name}": {
                "requests": e.num_requests,
                "failures": e.num_failures,
                "p50_ms": e.get_response_time_percentile(0.5),
                "p99_ms": e.get_response_time_percentile(0.99),
            }
            for e in stats.entries.values()
        }
        with open(opts.summary_json, "w") as fh:
            json.dump(summary, fh, indent=1)
    if stats.total.num_failures:
        problems.append(f"{stats.total.num_failures} failed request(s)")
    for entry in stats.entries.values():
        if not entry.num_requests:
            continue
        p99 = entry.get_response_time_percentile(0.99)
        limit = opts.p99_full_ms if entry.name.endswith("· full") else opts.p99_ms
        if limit and p99 > limit:
            problems.append(f"{entry.method} {entry.name}: p99 {p99:.0f} ms > {limit:.0f} ms")
    if problems:
        log.error("load test FAILED: %s", "; ".join(problems))
        environment.process_exit_code = 1
    else:
        log.info("load test passed: %d requests, no failure, p99 within limits", stats.total.num_requests)


# ---------------------------------------------------------------------------- SSE helpers
def sse_events(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body (any line ending)."""
    out = []
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for frame in text.split("\n\n"):
        event, data = "message", []
        for line in frame.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            out.append((event, "\n".join(data)))
    return out


class StreamFailure(Exception):
    pass


def _text(resp: Any) -> str:
    try:
        return (resp.text or "")[:200] or str(getattr(resp, "error", "") or "")[:200]
    except Exception as exc:  # noqa: BLE001 - a body that cannot be read is described by its error
        return str(exc)[:200]


class _Base(FastHttpUser):
    abstract = True
    connection_timeout = 10.0
    network_timeout = 600.0

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.opts = opts
        self.rng = random.Random()
        self.key = opts.api_key if opts else ""

    def wait_time(self) -> float:  # type: ignore[override]
        opts = self.opts
        return self.rng.uniform(opts.think_min, opts.think_max) if opts else 1.0

    def _fire(
        self, name: str, method: str, started: float, ms: float, length: int, exc: Exception | None
    ) -> None:
        self.environment.events.request.fire(
            request_type=method,
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
            start_time=started,
            url=name,
        )

    def stream(
        self,
        name: str,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        done: str,
        skip_on_404: bool = False,
    ) -> tuple[list[tuple[str, str]], str | None]:
        """POST a streamed request; report ``name · ttfb`` and ``name · full``; returns (events, request-id).

        ``done``: the event (or ``[DONE]`` data) that ends a complete stream. ``skip_on_404``: a
        route this gateway does not serve stops the user class with one message, counted nowhere."""
        started = time.time()
        t0 = time.perf_counter()
        payload = json.dumps(body).encode()
        # catch_response without a with-block: locust fires nothing itself; the two phases are ours
        resp = self.client.request(
            "POST", path, data=payload, headers=headers, stream=True, name=name, catch_response=True
        )
        rid = resp.headers.get("request-id") if resp.headers else None
        if resp.status_code == 404 and skip_on_404:
            cls = type(self).__name__
            with _skip_lock:
                if cls not in SKIPPED:
                    SKIPPED[cls] = f"POST {path} answered 404 (route not served by this gateway)"
                    log.warning(
                        "%s: POST %s answers 404 on this gateway; the class stops and none of its"
                        " requests count as successes",
                        cls,
                        path,
                    )
            raise StopUser()
        if resp.status_code != 200:
            exc = StreamFailure(f"HTTP {resp.status_code}: {_text(resp)}")
            self._fire(f"{name} · ttfb", "SSE", started, (time.perf_counter() - t0) * 1000, 0, exc)
            raise exc
        chunks: list[bytes] = []
        ttfb = None
        cut: Exception | None = None
        try:
            # one byte first: geventhttpclient's read(n) waits for n bytes, which would put the
            # first byte's time at the end of a short stream
            first = resp._response.read(1)
            if first:
                ttfb = (time.perf_counter() - t0) * 1000
                chunks.append(first)
                chunks.extend(resp.iter_content(65536, decode_content=False))
        except Exception as exc:  # noqa: BLE001 - the connection dropped mid-stream
            cut = exc
        full = (time.perf_counter() - t0) * 1000
        raw = b"".join(chunks)
        self._fire(
            f"{name} · ttfb",
            "SSE",
            started,
            ttfb if ttfb is not None else full,
            0,
            StreamFailure(f"stream cut before the first byte: {cut}") if ttfb is None and cut else None,
        )
        evs = sse_events(raw)
        failure: StreamFailure | None = None
        errors = [d for e, d in evs if e == "error"]
        if errors:
            try:
                etype = json.loads(errors[0]).get("error", {}).get("type", "?")
            except ValueError:
                etype = "malformed"
            failure = StreamFailure(f"error event: {etype}")
        elif not any(e == done or d == done for e, d in evs):
            failure = StreamFailure(f"stream cut: no {done} ({type(cut).__name__ if cut else 'closed'})")
        self._fire(f"{name} · full", "SSE", started, full, len(raw), failure)
        if _ID_LOG is not None:
            _ID_LOG.write(f"{name}\t{rid}\t{'fail' if failure else 'ok'}\n")
            _ID_LOG.flush()
        if failure is not None:
            raise failure
        if rid:
            RECENT_IDS.append(rid)
        return evs, rid

    def post_json(
        self, name: str, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        with self.client.request(
            "POST", path, data=json.dumps(body).encode(), headers=headers, name=name, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                raise StreamFailure(f"HTTP {resp.status_code}")
            try:
                data = json.loads(resp.content or b"")
            except ValueError:
                resp.failure("response is not JSON")
                raise StreamFailure("not JSON") from None
            rid = resp.headers.get("request-id")
            if rid:
                RECENT_IDS.append(rid)
            return data  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- Claude Code
class ClaudeCodeAgent(_Base):
    """One Claude Code session per user: turns of tool round trips over a growing conversation."""

    weight = 6

    def on_start(self) -> None:
        super().on_start()
        self.new_session()

    def new_session(self) -> None:
        self.session = str(uuid.uuid4())
        self.headers = {
            **CLAUDE_CODE_HEADERS,
            "x-api-key": self.key,
            "content-type": "application/json",
            "x-claude-code-session-id": self.session,
        }
        # Claude Code's system prompt is a few thousand tokens; a per-session tail keeps caches apart
        self.system = [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {
                "type": "text",
                "text": words(1500, self.rng) + f" session {self.session}",
                "cache_control": {"type": "ephemeral"},
            },
        ]
        self.messages: list[dict[str, Any]] = []
        self.turns = 0

    def _body(self, extra_text: str = "") -> dict[str, Any]:
        # cache_control only on the last block of the last message (plus the system prompt): at
        # most 4 breakpoints are allowed, and the moving one is what makes a conversation cache
        msgs = json.loads(json.dumps(self.messages))
        for m in msgs:
            if isinstance(m["content"], list):
                for block in m["content"]:
                    block.pop("cache_control", None)
        last = msgs[-1]["content"]
        if isinstance(last, list) and last:
            last[-1]["cache_control"] = {"type": "ephemeral"}
        return {
            "model": self.opts.model,
            "max_tokens": 32000,
            "stream": True,
            "messages": msgs,
            "system": self.system,
            "tools": CLAUDE_TOOLS,
            "thinking": {"type": "adaptive"},
            "output_config": {"effort": "medium"},
            "metadata": {"user_id": f"user_{self.session}"},
        }

    @task
    def turn(self) -> None:
        opts = self.opts
        if self.turns >= opts.session_turns:
            self.new_session()
        self.turns += 1
        text = f"{words(self.rng.randint(8, 40), self.rng)} {opts.directives}"
        if opts.big_prompt_every and self.rng.randrange(opts.big_prompt_every) == 0:
            # a pasted log or a large file: ~100K tokens (4 characters a token)
            text = words(80_000, self.rng) + " " + text
        self.messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
        try:
            if opts.count_tokens_every and self.rng.randrange(opts.count_tokens_every) == 0:
                body = self._body()
                for k in ("max_tokens", "stream", "metadata"):
                    body.pop(k)
                self.post_json("count_tokens", "/v1/messages/count_tokens?beta=true", body, self.headers)
            for _ in range(8):  # tool round trips until the model ends its turn
                evs, _rid = self.stream(
                    "messages?beta=true", "/v1/messages?beta=true", self._body(), self.headers, "message_stop"
                )
                content, stop = assemble_anthropic(evs)
                self.messages.append({"role": "assistant", "content": content})
                if stop != "tool_use":
                    break
                time.sleep(opts.tool_time)
                results = [
                    {"type": "tool_result", "tool_use_id": b["id"], "content": words(60, self.rng)}
                    for b in content
                    if b["type"] == "tool_use"
                ]
                results.append({"type": "text", "text": opts.directives})
                self.messages.append({"role": "user", "content": results})
        except StreamFailure:
            self.new_session()  # as a user would: start over after an error
        if len(json.dumps(self.messages)) > 600_000:
            self.new_session()  # a 100K prompt once per session is enough (the real CLI compacts)


def assemble_anthropic(evs: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], str | None]:
    """The assistant content blocks of a Messages stream (thinking with its signature), stop_reason."""
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    stop = None
    for event, data in evs:
        if event == "ping":
            continue
        d = json.loads(data)
        if event == "content_block_start":
            blocks[d["index"]] = dict(d["content_block"])
        elif event == "content_block_delta":
            i, delta = d["index"], d["delta"]
            kind = delta["type"]
            if kind == "text_delta":
                blocks[i]["text"] = blocks[i].get("text", "") + delta["text"]
            elif kind == "thinking_delta":
                blocks[i]["thinking"] = blocks[i].get("thinking", "") + delta["thinking"]
            elif kind == "signature_delta":
                blocks[i]["signature"] = delta["signature"]
            elif kind == "input_json_delta":
                partial[i] = partial.get(i, "") + delta["partial_json"]
        elif event == "message_delta":
            stop = d["delta"].get("stop_reason")
    for i, raw in partial.items():
        blocks[i]["input"] = json.loads(raw) if raw else {}
    return [blocks[i] for i in sorted(blocks)], stop


# ---------------------------------------------------------------------------- OpenAI chat
class OpenAIChatClient(_Base):
    """An OpenAI SDK app: chat completions with tools, mostly streamed."""

    weight = 3

    def on_start(self) -> None:
        super().on_start()
        self.headers = {
            **OPENAI_HEADERS,
            "authorization": f"Bearer {self.key}",
            "content-type": "application/json",
        }

    @task
    def conversation(self) -> None:
        opts = self.opts
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a helpful assistant. " + words(200, self.rng)},
            {"role": "user", "content": f"{words(20, self.rng)} {opts.directives}"},
        ]
        try:
            for _ in range(4):
                body = {"model": opts.model, "messages": messages, "tools": OPENAI_TOOLS, "max_tokens": 1024}
                if self.rng.random() < 0.8:
                    body.update(stream=True, stream_options={"include_usage": True})
                    evs, _ = self.stream(
                        "chat/completions", "/v1/chat/completions", body, self.headers, "[DONE]"
                    )
                    message, finish = assemble_chat(evs)
                else:
                    data = self.post_json(
                        "chat/completions (no stream)", "/v1/chat/completions", body, self.headers
                    )
                    message, finish = data["choices"][0]["message"], data["choices"][0]["finish_reason"]
                messages.append({k: v for k, v in message.items() if v is not None})
                if finish != "tool_calls":
                    break
                time.sleep(opts.tool_time)
                for call in message.get("tool_calls") or []:
                    messages.append(
                        {
                            "role": "tool",
                            "tool_call_id": call["id"],
                            "content": json.dumps({"result": words(20, self.rng)}),
                        }
                    )
        except StreamFailure:
            pass


def assemble_chat(evs: list[tuple[str, str]]) -> tuple[dict[str, Any], str | None]:
    content, finish = "", None
    calls: dict[int, dict[str, Any]] = {}
    for _, data in evs:
        if data == "[DONE]":
            break
        d = json.loads(data)
        for choice in d.get("choices") or []:
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    tc["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, finish


# ---------------------------------------------------------------------------- Codex (Responses)
class CodexResponsesClient(_Base):
    """Codex CLI on ``/v1/responses``: the whole history every turn, reasoning carried encrypted."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.headers = {
            **CODEX_HEADERS,
            "authorization": f"Bearer {self.key}",
            "content-type": "application/json",
            "session_id": str(uuid.uuid4()),
        }
        self.history: list[dict[str, Any]] = []

    @task
    def turn(self) -> None:
        opts = self.opts
        if len(self.history) > 40:
            self.history = []
        self.history.append(
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": f"{words(20, self.rng)} {opts.directives}"}],
            }
        )
        for _ in range(4):
            body = {
                "model": opts.model,
                "instructions": "You are Codex, a coding agent. " + words(300, self.rng),
                "input": self.history,
                "tools": CODEX_TOOLS,
                "tool_choice": "auto",
                "parallel_tool_calls": False,
                "reasoning": {"effort": "medium", "summary": "auto"},
                "store": False,
                "stream": True,
                "include": ["reasoning.encrypted_content"],
                "prompt_cache_key": self.headers["session_id"],
            }
            try:
                evs, _ = self.stream(
                    "responses", "/v1/responses", body, self.headers, "response.completed", skip_on_404=True
                )
            except StreamFailure:
                self.history = []
                return
            items, calls = assemble_responses(evs)
            self.history.extend(items)
            if not calls:
                break
            time.sleep(opts.tool_time)
            for call in calls:
                self.history.append(
                    {
                        "type": "function_call_output",
                        "call_id": call["call_id"],
                        "output": json.dumps({"output": words(30, self.rng), "exit_code": 0}),
                    }
                )


def assemble_responses(evs: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Output items of a Responses stream (reasoning with encrypted_content included) and its function calls."""
    items: list[dict[str, Any]] = []
    for _, data in evs:
        d = json.loads(data)
        if d.get("type") == "response.output_item.done":
            items.append(d["item"])
    return items, [i for i in items if i.get("type") == "function_call"]


# ---------------------------------------------------------------------------- operator
class Operator(_Base):
    """The operator's dashboard: aggregates, and the usage of single requests."""

    weight = 1

    def wait_time(self) -> float:  # type: ignore[override]
        return self.rng.uniform(2.0, 5.0)

    def on_start(self) -> None:
        super().on_start()
        admin = self.opts.admin_key if self.opts else ""
        self.admin_headers = {"x-api-key": admin, "anthropic-version": "2023-06-01"} if admin else None
        self.key_headers = {"x-api-key": self.key, "anthropic-version": "2023-06-01"}

    @task(2)
    def usage_totals(self) -> None:
        if self.admin_headers is None:
            return
        group = self.rng.choice(("key_id", "model", "route"))
        with self.client.get(
            f"/admin/api/usage?group_by={group}",
            headers=self.admin_headers,
            name="/admin/api/usage",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")

    @task(3)
    def one_request(self) -> None:
        if not RECENT_IDS:
            return
        rid = self.rng.choice(list(RECENT_IDS))
        with self.client.get(
            f"/v1/usage/{rid}",
            headers=self.admin_headers or self.key_headers,
            name="/v1/usage/{id}",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            elif json.loads(resp.content or b"{}").get("request_id") != rid:
                resp.failure("usage record of another request")


__all__ = ["ClaudeCodeAgent", "CodexResponsesClient", "OpenAIChatClient", "Operator", "between"]
