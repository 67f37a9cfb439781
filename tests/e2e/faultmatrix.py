"""The direct-vs-ethereal fault matrix: one sim fault script played to a real client twice,
once against the sim directly and once through the gateway, back to back.

The rule (issue 10): every scenario that succeeds directly succeeds through ethereal within the
direct time + 1 s; every one that fails directly fails (or succeeds) through ethereal no later
than the direct time + 1 s. Clients keep their default retry settings.

The SDKs' backoff jitter is seeded alike for both runs, so their times compare as they are.
Claude Code's cannot be seeded (up to a quarter of each wait, at random: seconds over a long
script), so its rows are judged on the wire, where every effect a gateway can have shows: the
attempts the client made and what each was answered (status, ``retry-after``, ``x-should-retry``)
through ethereal are no more and ask no longer waits than directly, the time the client spent
waiting for answers is within + 1 s, and the whole run is within what the client's own jitter
allows (``JITTER``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai
from ethereal.sim.testing import control

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "clients" / "node_modules"
CLAUDE = NODE_MODULES / ".bin" / "claude"
NODE_CLIENT = Path(__file__).with_name("fault_client.cjs")
MODEL = "claude-sonnet-4-6"
SLACK = 1.0  # seconds ethereal may add to the direct time
JITTER = 0.25  # Claude Code adds up to this share of each backoff wait at random
JITTER_SEED = 20261130
SDK_CLIENTS = ("python-anthropic", "python-openai", "node-anthropic", "node-openai")


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: tuple[dict[str, Any], ...]  # POST /_sim/faults specs, queued in order
    stream: bool = False
    concurrent: int = 1
    clients: tuple[str, ...] = SDK_CLIENTS

    @property
    def wire_judged(self) -> bool:
        return self.clients == ("claude-code",)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("429 retry-after: 1", ({"fault": "429", "retry_after": 1},)),
    Scenario("429 retry-after-ms: 100", ({"fault": "429", "retry_after": 1, "retry_after_ms": 100},)),
    Scenario("529", ({"fault": "529"},)),
    Scenario("529 ×3", ({"fault": "529", "count": 3},)),
    Scenario("529 then 500", ({"fault": "529"}, {"fault": "500"})),
    Scenario("500", ({"fault": "500"},)),
    Scenario("503", ({"fault": "503"},)),
    Scenario("500 x-should-retry: false", ({"fault": "500", "should_retry": False},)),
    Scenario("reset before the first byte", ({"fault": "reset"},)),
    Scenario("stream cut mid-way", ({"fault": "reset_mid", "after_events": 4},), stream=True),
    Scenario("2 concurrent streams, one 529", ({"fault": "529"},), stream=True, concurrent=2),
    # Claude Code (claude -p): its own retry policy; it fires side requests beside the main one
    Scenario("529", ({"fault": "529"},), clients=("claude-code",)),
    Scenario(
        "429 retry-after: 1, then 529",
        ({"fault": "429", "retry_after": 1}, {"fault": "529"}),
        clients=("claude-code",),
    ),
    Scenario(
        "500, 529, 500", ({"fault": "500"}, {"fault": "529"}, {"fault": "500"}), clients=("claude-code",)
    ),
    Scenario(
        "429 ×2, 529 ×3, 500",
        ({"fault": "429", "retry_after": 1, "count": 2}, {"fault": "529", "count": 3}, {"fault": "500"}),
        clients=("claude-code",),
    ),
)


@dataclass
class Attempt:
    """One request as a ``TimingRelay`` saw it: when it was sent, what answered it, when the
    answer's last byte arrived."""

    start: float
    request: str  # "POST /v1/messages?beta=true"
    status: int = 0  # 0: no answer (the connection closed first)
    asks: tuple[tuple[str, str], ...] = ()  # retry-after, retry-after-ms, x-should-retry as answered
    end: float = 0.0

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start) if self.end else 0.0

    def wait_asked(self) -> float:
        """Seconds the answer asked the client to wait (retry-after-ms before retry-after)."""
        asks = dict(self.asks)
        with contextlib.suppress(ValueError):
            if "retry-after-ms" in asks:
                return float(asks["retry-after-ms"]) / 1000
            if "retry-after" in asks:
                return float(asks["retry-after"])
        return 0.0


@dataclass
class Outcome:
    ok: bool
    seconds: float
    error: str | None = None
    attempts: tuple[Attempt, ...] = ()  # on the wire, for a client run through a TimingRelay

    def wire_seconds(self) -> float:
        """Time the client spent waiting for answers (its own backoff between them excluded)."""
        return sum(a.seconds for a in self.attempts)

    def cell(self) -> str:
        wire = (
            f", {len(self.attempts)} attempts, {self.wire_seconds():.2f} s answering" if self.attempts else ""
        )
        return f"{'ok' if self.ok else 'fail'} {self.seconds:.2f} s{wire}" + (
            f" ({self.error})" if self.error else ""
        )


@dataclass
class Row:
    scenario: Scenario
    client: str
    direct: Outcome
    ethereal: Outcome
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.broken()

    def broken(self) -> str | None:
        """Why the row breaks the rule, or None."""
        direct, through = self.direct, self.ethereal
        if direct.ok and not through.ok:
            return "fails where direct succeeds"
        if not self.scenario.wire_judged:
            return None if through.seconds <= direct.seconds + SLACK else "slower than direct + slack"
        if not direct.attempts or not through.attempts:
            return "no attempt seen on the wire"
        if len(through.attempts) > len(direct.attempts):
            return f"{len(through.attempts)} attempts, {len(direct.attempts)} directly"
        asked = sum(a.wait_asked() for a in through.attempts)
        if asked > sum(a.wait_asked() for a in direct.attempts) + SLACK:
            return f"answers asked for {asked:.2f} s of waiting, more than directly"
        if through.wire_seconds() > direct.wire_seconds() + SLACK:
            return "answers slower than direct + slack"
        if through.seconds > direct.seconds * (1 + JITTER) + SLACK:
            return "slower than the client's own jitter allows"
        return None


def median(outcomes: list[Outcome]) -> Outcome:
    """The middle run: the majority outcome, the median time, the majority's error."""
    ok = sum(o.ok for o in outcomes) * 2 > len(outcomes)
    times = sorted(o.seconds for o in outcomes)
    errors = [o.error for o in outcomes if o.ok == ok and o.error]
    return Outcome(ok, times[len(times) // 2], errors[0] if errors else None)


def play(sim_url: str, scenario: Scenario) -> None:
    control(
        sim_url, "/_sim/faults", {"clear": True, "faults": [{**f, "paths": "*"} for f in scenario.faults]}
    )


def _error(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' {status}' if status else ''}"


def _python_once(client: str, base: str, key: str, stream: bool) -> None:
    messages = [{"role": "user", "content": "hello from python"}]
    if client == "python-anthropic":
        with anthropic.Anthropic(base_url=base, api_key=key, timeout=60) as sdk:
            if stream:
                with sdk.messages.stream(model=MODEL, max_tokens=64, messages=messages) as s:  # type: ignore[arg-type]
                    assert s.get_final_message().content
            else:
                assert sdk.messages.create(model=MODEL, max_tokens=64, messages=messages).content  # type: ignore[arg-type]
        return
    with openai.OpenAI(base_url=base + "/v1", api_key=key, timeout=60) as oa:
        if stream:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in oa.chat.completions.create(
                    model=MODEL, max_tokens=64, messages=messages, stream=True
                )
                if c.choices
            )  # type: ignore[arg-type]
            assert text
        else:
            assert (
                oa.chat.completions.create(model=MODEL, max_tokens=64, messages=messages)
                .choices[0]
                .message.content
            )  # type: ignore[arg-type]


def run_python(client: str, base: str, key: str, scenario: Scenario) -> Outcome:
    # the SDKs' backoff jitter comes from the random module: the same seed for the direct run and
    # the run through the gateway, so the two differ by what the gateway does, not by the dice
    random.seed(JITTER_SEED)
    t0 = time.perf_counter()
    errors: list[str] = []

    def once() -> None:
        try:
            _python_once(client, base, key, scenario.stream)
        except Exception as exc:  # noqa: BLE001 - the outcome is what we measure
            errors.append(_error(exc))

    with ThreadPoolExecutor(scenario.concurrent) as pool:
        for future in [pool.submit(once) for _ in range(scenario.concurrent)]:
            future.result()
    return Outcome(not errors, time.perf_counter() - t0, errors[0] if errors else None)


def run_node(client: str, base: str, key: str, scenario: Scenario) -> Outcome:
    spec = {
        "sdk": client.removeprefix("node-"),
        "base": base,
        "key": key,
        "stream": scenario.stream,
        "concurrent": scenario.concurrent,
        "model": MODEL,
        "seed": JITTER_SEED,
    }
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run(
        ["node", str(NODE_CLIENT), json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
    out = json.loads(line)
    if out.get("seconds") is None:
        raise AssertionError(f"node client failed to run: {done.stdout} {done.stderr[-2000:]}")
    return Outcome(bool(out["ok"]), float(out["seconds"]), out.get("error"))


def claude_env(home: Path, base: str, key: str, *, bearer: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(
        {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": base,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }
    )
    env["ANTHROPIC_AUTH_TOKEN" if bearer else "ANTHROPIC_API_KEY"] = key
    return env


def claude(
    workdir: Path,
    home: Path,
    base: str,
    key: str,
    prompt: str,
    *extra: str,
    bearer: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(CLAUDE), "-p", prompt, *extra],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**claude_env(home, base, key, bearer=bearer), **(env or {})},
        timeout=timeout,
        check=False,
    )
    return done, time.perf_counter() - t0


class TimingRelay:
    """A TCP relay in front of the target that times what the client sees on the wire: from its
    first POST to the last byte it received. Claude Code's own start-up (seconds, and varying by
    seconds on a busy machine) happens before that and is no part of what a gateway can change."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.first_post: float | None = None
        self.last_byte: float | None = None
        self.attempts: list[Attempt] = []  # each request and its answer, in the order sent
        self._loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def reset(self) -> None:
        self.first_post = self.last_byte = None
        self.attempts = []

    def seconds(self) -> float | None:
        if self.first_post is None or self.last_byte is None:
            return None
        return max(0.0, self.last_byte - self.first_post)

    def _sent(self, chunk: bytes, now: float, connection: list[Attempt]) -> None:
        """A chunk from the client: a new request when it starts with a request line (HTTP/1.1,
        one request at a time per connection, as the clients measured send them)."""
        method, _, rest = chunk.partition(b" ")
        if method in (b"POST", b"GET", b"HEAD", b"PUT", b"DELETE", b"PATCH") and b" HTTP/1." in rest[:2048]:
            attempt = Attempt(now, method.decode() + " " + rest.split(b" ", 1)[0].decode(errors="replace"))
            connection.append(attempt)
            self.attempts.append(attempt)
            if method == b"POST" and self.first_post is None:
                self.first_post = now

    def _answered(self, chunk: bytes, now: float, connection: list[Attempt]) -> None:
        """A chunk to the client: the status line and retry headers of the answer to the
        connection's last request when it starts one; its last byte's time in any case."""
        self.last_byte = now
        if not connection:
            return
        attempt = connection[-1]
        if chunk.startswith(b"HTTP/1.") and not attempt.status:
            head = chunk.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            with contextlib.suppress(IndexError, ValueError):
                attempt.status = int(head[0].split(" ", 2)[1])
            fields = (line.split(":", 1) for line in head[1:] if ":" in line)
            attempt.asks = tuple(
                sorted(
                    (k.strip().lower(), v.strip())
                    for k, v in fields
                    if k.strip().lower() in ("retry-after", "retry-after-ms", "x-should-retry")
                )
            )
        attempt.end = now

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: bool,
        connection: list[Attempt],
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                now = time.perf_counter()
                if upstream:
                    self._sent(chunk, now, connection)
                else:
                    self._answered(chunk, now, connection)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        connection: list[Attempt] = []
        await asyncio.gather(
            self._pipe(reader, up_writer, True, connection), self._pipe(up_reader, writer, False, connection)
        )

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock)

    @contextlib.contextmanager
    def running(self) -> Iterator[TimingRelay]:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        try:
            yield self
        finally:

            async def stop() -> None:
                if self._server is not None:
                    self._server.close()

            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()  # its self-pipe (a socket pair) is closed with it


def run_claude_code(workdir: Path, home: Path, relay: TimingRelay, key: str, scenario: Scenario) -> Outcome:
    """``claude -p`` to the end, through a ``TimingRelay`` to the target (the sim or the gateway)."""
    relay.reset()
    done, wall = claude(workdir, home, relay.url, key, "say hi sim:tool=none", "--output-format", "json")
    seconds = relay.seconds()
    attempts = tuple(relay.attempts)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Outcome(
            False,
            seconds if seconds is not None else wall,
            f"exit {done.returncode}: {done.stdout[-200:]} {done.stderr[-200:]}",
            attempts,
        )
    ok = done.returncode == 0 and not result.get("is_error") and bool(result.get("result"))
    return Outcome(
        ok,
        seconds if seconds is not None else wall,
        None if ok else str(result.get("result") or result.get("subtype"))[:80],
        attempts,
    )


def timeline(outcome: Outcome) -> str:
    """The attempts of a run, one per line: when sent (from the first), the answer, how long it took."""
    if not outcome.attempts:
        return "    (nothing seen on the wire)"
    t0 = outcome.attempts[0].start
    return "\n".join(
        f"    {a.start - t0:7.2f} s {a.request} -> {a.status or 'no answer'}"
        f" {' '.join(f'{k}: {v}' for k, v in a.asks)} ({a.seconds * 1000:.1f} ms)"
        for a in outcome.attempts
    )


def available() -> str | None:
    """Why the matrix cannot run here (None when it can): the clients come from `make clients`."""
    if not CLAUDE.exists() or not (NODE_MODULES / "@anthropic-ai" / "sdk").exists():
        return "clients/node_modules is missing: run `make clients`"
    if shutil.which("node") is None:
        return "node is not installed"
    return None


def table(rows: list[Row]) -> str:
    lines = ["| scenario | client | direct | through ethereal | rule |", "|---|---|---|---|---|"]
    for r in rows:
        runs = f" ({r.extra['judged']} of {r.extra['runs']})" if r.extra.get("runs") else ""
        lines.append(
            f"| {r.scenario.name}{' (stream)' if r.scenario.stream and r.scenario.concurrent == 1 else ''}"
            f" | {r.client} | {r.direct.cell()} | {r.ethereal.cell()} | {'pass' if r.passed else 'FAIL'}{runs} |"
        )
    return "\n".join(lines) + "\n"
