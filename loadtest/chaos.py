"""Chaos run: load through the gateway while the upstream credentials die and come back.

    python loadtest/chaos.py [--sims 4] [--duration 60] [--concurrency 16] [--kill-every 2.0]
                             [--down 0.5:3.0] [--faults] [--seed 1] [--json]

N simulated upstreams (``ethereal sim`` processes on fixed ports) are stored credentials
of one gateway. Clients send a mix of streaming and non-streaming requests (raw HTTP, so
every byte on the wire is checked) while a chaos loop SIGKILLs a random sim every
``--kill-every`` seconds (± 50 %) and restarts it on the same port after a random down
time; with ``--faults`` it also queues random faults (429 with retry-after, 529, 500,
reset before the first byte, reset mid-stream, slow first byte) on live sims.

Checked, and reported:

* every request either succeeded (a JSON Message; a stream ending in ``message_stop``) or
  got a well-formed error: an Anthropic error body with ``request-id`` (and
  ``retry-after`` on 429/503/529), or a stream ending in a well-formed ``event: error``.
  Anything else (a connection dropped by the gateway, a truncated stream, bad JSON) is
  *malformed* and fails the run;
* the usage record of every request (``GET /v1/usage/{id}`` and the store's rows) matches
  what the client saw: status, and for successes the exact token counts of the response;
* the client-visible error rate.

Exit status 0 when nothing was malformed and every usage record matched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ethereal.sim.testing import sim_command

from tests.conftest import mint_into
from tests.procs import free_port, gateway_process
from tests.upstreams import ADMIN, SECRET, seed_credentials

MODEL = "claude-sonnet-4-6"
RETRYABLE = {429, 503, 529}


# ---------------------------------------------------------------------------- sims
class Sim:
    """One ``ethereal sim`` process on a fixed port, killable and restartable."""

    def __init__(self, name: str, port: int, knobs: dict[str, Any]) -> None:
        self.name, self.port, self.knobs = name, port, knobs
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False  # started and not killed since (the chaos loop only kills ready sims)

    def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            sim_command(port=self.port, **self.knobs),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/", timeout=0.5)
                self.ready = True
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sim {self.name} exited with {self.proc.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError(f"sim {self.name} did not start")

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        self.ready = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    stream: bool
    status: int = 0
    request_id: str | None = None
    kind: str = "ok"  # ok | error_response | error_event | malformed
    detail: str = ""
    error_type: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    latency: float = 0.0
    retry_after: float = 0.0


def _check_error_body(resp_status: int, headers: httpx.Headers, body: bytes, out: Outcome) -> None:
    try:
        data = json.loads(body)
        err = data["error"]
        assert data["type"] == "error" and isinstance(err["type"], str) and isinstance(err["message"], str)
        assert data.get("request_id") == headers.get("request-id")
    except Exception as exc:  # noqa: BLE001
        out.kind, out.detail = "malformed", f"bad error body ({exc!r}): {body[:200]!r}"
        return
    # a retryable answer tells the client so: a 429 with its wait, a 503/529 with the wait or
    # x-should-retry (an upstream 529 is relayed with the hints it came with, nothing added)
    if (
        resp_status in RETRYABLE
        and not (headers.get("retry-after") or headers.get("retry-after-ms"))
        and (resp_status == 429 or headers.get("x-should-retry") != "true")
    ):
        out.kind, out.detail = "malformed", f"{resp_status} without retry-after or x-should-retry"
        return
    out.kind, out.error_type = "error_response", err["type"]
    if (
        resp_status in RETRYABLE
    ):  # the wait as given; an upstream 529 relayed with x-should-retry alone has none
        if headers.get("retry-after"):
            out.retry_after = float(headers["retry-after"])
        elif headers.get("retry-after-ms"):
            out.retry_after = float(headers["retry-after-ms"]) / 1000.0


def _parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if name is None and not data:
            continue
        payload = json.loads("\n".join(data)) if data else None
        events.append((name or "message", payload))
    return events


async def one_request(http: httpx.AsyncClient, base: str, key: str, rng: random.Random, i: int) -> Outcome:
    stream = rng.random() < 0.6
    tokens = rng.randint(20, 120)
    body = {
        "model": MODEL,
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": f"chaos {i} sim:tokens={tokens}"}],
    }
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    out = Outcome(stream=stream)
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await http.post(f"{base}/v1/messages", json=body, headers=headers)
            out.status, out.request_id = r.status_code, r.headers.get("request-id")
            if out.request_id is None:
                out.kind, out.detail = "malformed", "no request-id header"
            elif r.status_code == 200:
                msg = r.json()
                assert msg["type"] == "message" and msg["stop_reason"], msg
                u = msg["usage"]
                out.usage = {"input_tokens": u["input_tokens"], "output_tokens": u["output_tokens"]}
            else:
                _check_error_body(r.status_code, r.headers, r.content, out)
        else:
            async with http.stream("POST", f"{base}/v1/messages", json=body, headers=headers) as r:
                out.status, out.request_id = r.status_code, r.headers.get("request-id")
                raw = await r.aread()
            if out.request_id is None:
                out.kind, out.detail = "malformed", "no request-id header"
            elif out.status != 200:
                _check_error_body(out.status, r.headers, raw, out)
            else:
                events = _parse_sse(raw.decode())
                names = [n for n, _ in events]
                if names and names[-1] == "message_stop":
                    start = next(p for n, p in events if n == "message_start")
                    delta = [p for n, p in events if n == "message_delta"][-1]
                    out.usage = {
                        "input_tokens": start["message"]["usage"]["input_tokens"],
                        "output_tokens": delta["usage"]["output_tokens"],
                    }
                elif names and names[-1] == "error":
                    err = events[-1][1]
                    if not (
                        isinstance(err, dict)
                        and err.get("type") == "error"
                        and isinstance(err.get("error", {}).get("type"), str)
                    ):
                        out.kind, out.detail = "malformed", f"bad error event {err!r}"
                    else:
                        out.kind, out.error_type = "error_event", err["error"]["type"]
                else:
                    out.kind, out.detail = (
                        "malformed",
                        f"stream ended after {names[-3:]} without stop or error",
                    )
    except (
        httpx.HTTPError,
        json.JSONDecodeError,
        AssertionError,
        KeyError,
        StopIteration,
        IndexError,
    ) as exc:
        out.kind, out.detail = "malformed", f"{type(exc).__name__}: {exc}"
    out.latency = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------- chaos
FAULTS = [
    {"fault": "429", "retry_after": 1},
    {"fault": "529"},
    {"fault": "500"},
    {"fault": "reset"},
    {"fault": "reset_mid", "after_events": 4},
    {"fault": "slow", "delay_ms": 300},
]


async def chaos_loop(
    sims: list[Sim],
    stop: asyncio.Event,
    rng: random.Random,
    kill_every: float,
    down: tuple[float, float],
    faults: bool,
    log: Counter,
) -> None:
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Task[None]] = []

    async def restart_later(sim: Sim, delay: float) -> None:
        await asyncio.sleep(delay)
        await loop.run_in_executor(None, sim.start)
        log["restarts"] += 1

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), kill_every * rng.uniform(0.5, 1.5))
            break
        except TimeoutError:
            pass
        alive = [s for s in sims if s.ready]
        if len(alive) > 1:  # keep at least one alive... most of the time: it may still be faulted
            victim = rng.choice(alive)
            victim.kill()
            log["kills"] += 1
            pending.append(loop.create_task(restart_later(victim, rng.uniform(*down))))
        if faults:
            for _ in range(2):
                target = rng.choice([s for s in sims if s.ready] or sims)
                spec = dict(rng.choice(FAULTS), count=rng.randint(1, 3))
                try:
                    await loop.run_in_executor(
                        None, lambda t=target, f=spec: httpx.post(t.url + "/_sim/faults", json=f, timeout=2)
                    )
                    log[f"fault_{spec['fault']}"] += spec["count"]
                except httpx.HTTPError:
                    pass
    for task in pending:
        await task


# ---------------------------------------------------------------------------- verification
def verify_usage(base: str, data_dir: Path, key_id: str, outcomes: list[Outcome]) -> dict[str, Any]:
    """Usage records (API and store rows) against what the clients saw."""
    problems: list[str] = []
    with_id = [o for o in outcomes if o.request_id]
    api = httpx.Client(base_url=base, headers={"x-api-key": ADMIN}, timeout=10)
    try:
        for o in with_id:
            r = api.get(f"/v1/usage/{o.request_id}")
            if r.status_code != 200:
                problems.append(f"{o.request_id}: GET /v1/usage -> {r.status_code}")
                continue
            problems.extend(_compare(o, r.json(), "api"))
    finally:
        api.close()
    # the store (the meter flushes in the background)
    deadline = time.monotonic() + 15
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        db = sqlite3.connect(data_dir / "ethereal.sqlite3")
        db.row_factory = sqlite3.Row
        try:
            rows = {
                r["request_id"]: dict(r)
                for r in db.execute(
                    "SELECT * FROM usage_records WHERE key_id = ? AND route = 'messages'", (key_id,)
                )
            }
        finally:
            db.close()
        if len(rows) >= len(with_id):
            break
        time.sleep(0.3)
    for o in with_id:
        row = rows.get(o.request_id)  # type: ignore[arg-type]
        if row is None:
            problems.append(f"{o.request_id}: no row in the store")
            continue
        problems.extend(_compare(o, row, "store"))
    extra = set(rows) - {o.request_id for o in with_id}
    if extra:
        problems.append(f"{len(extra)} store rows for requests no client saw")
    return {
        "checked": len(with_id),
        "store_rows": len(rows),
        "mismatches": len(problems),
        "examples": problems[:10],
    }


def _compare(o: Outcome, rec: dict[str, Any], where: str) -> list[str]:
    rid = o.request_id
    if o.kind == "ok":
        bad = []
        if rec["status"] != 200:
            bad.append(f"{where} {rid}: status {rec['status']} for a success")
        for k, v in o.usage.items():
            if rec[k] != v:
                bad.append(f"{where} {rid}: {k} {rec[k]} != {v} in the response")
        if not rec["exact"]:
            bad.append(f"{where} {rid}: success recorded as estimated")
        return bad
    if o.kind == "error_response":
        if rec["status"] != o.status or rec["error_type"] != o.error_type:
            return [
                f"{where} {rid}: recorded {rec['status']}/{rec['error_type']}, client saw {o.status}/{o.error_type}"
            ]
        return []
    if o.kind == "error_event":
        if not rec["error_type"]:
            return [f"{where} {rid}: a stream that ended in an error event recorded without error_type"]
        return []
    return []


# ---------------------------------------------------------------------------- run
async def drive(
    base: str, key: str, sims: list[Sim], args: argparse.Namespace
) -> tuple[list[Outcome], Counter]:
    stop = asyncio.Event()
    log: Counter = Counter()
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as http:
        counter = iter(range(10**9))

        async def worker(seed: int) -> None:
            wrng = random.Random(seed)
            while not stop.is_set():
                out = await one_request(http, base, key, wrng, next(counter))
                outcomes.append(out)
                if out.retry_after:  # a well-behaved client (the SDKs) waits as told
                    await asyncio.sleep(min(out.retry_after, args.max_backoff))

        chaos = asyncio.get_running_loop().create_task(
            chaos_loop(sims, stop, random.Random(args.seed + 1), args.kill_every, args.down, args.faults, log)
        )
        workers = [
            asyncio.get_running_loop().create_task(worker(args.seed * 1000 + i))
            for i in range(args.concurrency)
        ]
        await asyncio.sleep(args.duration)
        stop.set()
        await asyncio.gather(*workers)
        await chaos
    return outcomes, log


def summarize(
    outcomes: list[Outcome], log: Counter, usage: dict[str, Any], gateway_log: str, args: argparse.Namespace
) -> dict[str, Any]:
    kinds = Counter(o.kind for o in outcomes)
    total = len(outcomes)
    visible = kinds["error_response"] + kinds["error_event"]
    lat = sorted(o.latency for o in outcomes if o.kind == "ok")
    errors = Counter(
        f"{o.status} {o.error_type}" if o.kind == "error_response" else f"event {o.error_type}"
        for o in outcomes
        if o.kind in ("error_response", "error_event")
    )
    return {
        "duration_s": args.duration,
        "sims": args.sims,
        "concurrency": args.concurrency,
        "requests": total,
        "requests_per_s": round(total / args.duration, 1),
        "succeeded": kinds["ok"],
        "client_visible_errors": visible,
        "client_visible_error_rate": round(visible / total, 4) if total else 0.0,
        "errors": dict(errors.most_common()),
        "malformed": kinds["malformed"],
        "malformed_examples": [o.detail for o in outcomes if o.kind == "malformed"][:5],
        "streams": sum(o.stream for o in outcomes),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
        "chaos": dict(log),
        "gateway_failovers": gateway_log.count("failed before the first byte")
        + gateway_log.count("answered"),
        "gateway_stream_cuts": gateway_log.count("stream from"),
        "usage": usage,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    knobs = {"tokens_per_second": args.tps, "ttft_ms": args.ttft_ms}
    sims = [Sim(f"s{i}", free_port(), knobs) for i in range(args.sims)]
    with tempfile.TemporaryDirectory(prefix="ethereal-chaos-") as tmp:
        data_dir = Path(tmp)
        try:
            for sim in sims:
                sim.start()
            seed_credentials(data_dir, [{"name": s.name, "base_url": s.url} for s in sims])
            key, record = mint_into(data_dir, name="chaos")
            env = {
                "ETHEREAL_SECRET_KEY": SECRET,
                "ETHEREAL_ADMIN_KEY": ADMIN,
                "ETHEREAL_FIRST_BYTE_TIMEOUT": "5",
                "ETHEREAL_CONNECT_TIMEOUT": "2",
                "ETHEREAL_IDLE_STREAM_TIMEOUT": "5",
                "ETHEREAL_UPSTREAM_BACKOFF_CAP": "5",
            }
            with gateway_process(data_dir, None, env=env, workers=args.workers) as base:
                outcomes, log = asyncio.run(drive(base, key, sims, args))
                for sim in sims:  # everyone back up for the checks
                    if not sim.up:
                        sim.start()
                usage = verify_usage(base, data_dir, record.id, outcomes)
            gateway_log = "".join(p.read_text(errors="replace") for p in data_dir.glob("gateway-*.log"))
            return summarize(outcomes, log, usage, gateway_log, args)
        finally:
            for sim in sims:
                sim.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sims", type=int, default=4)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--kill-every", dest="kill_every", type=float, default=2.0)
    p.add_argument(
        "--down",
        type=lambda s: tuple(float(x) for x in s.split(":")),
        default=(0.5, 3.0),
        help="min:max seconds a killed sim stays down",
    )
    p.add_argument("--faults", action="store_true", help="also inject random faults through the control API")
    p.add_argument("--tps", type=float, default=400.0, help="sim tokens per second (streams take a while)")
    p.add_argument("--ttft-ms", dest="ttft_ms", type=float, default=50.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--max-backoff",
        dest="max_backoff",
        type=float,
        default=2.0,
        help="clients wait retry-after (at most this long) after a 429/503/529",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:28} {v}")
    ok = report["malformed"] == 0 and report["usage"]["mismatches"] == 0
    print("CHAOS: PASS" if ok else "CHAOS: FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
