"""SIGTERM: /healthz turns 503 first, streams in flight finish within the grace period, the ones
still open after it end with a well-formed error event, every request is recorded, exit 0.

A real ``ethereal serve`` (1 and 2 workers) in front of the sim streaming at a set pace."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import mint_into
from tests.procs import free_port, wait_http

DRAIN = 1.5
GRACE = 2.5


def parse_frames(raw: bytes) -> list[tuple[str, Any]]:
    """Every SSE frame as (event, parsed data): raises if any frame is not whole, valid JSON."""
    text = raw.decode()
    assert text.endswith("\n\n"), f"stream does not end at a frame boundary: {text[-80:]!r}"
    frames = []
    for block in text.split("\n\n")[:-1]:
        event, data = "message", None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        assert data is not None, f"frame without data: {block!r}"
        frames.append((event, data if data == "[DONE]" else json.loads(data)))
    return frames


class Stream(threading.Thread):
    def __init__(self, url: str, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.headers, self.body = url, path, headers, body
        self.first_byte = threading.Event()
        self.raw = b""
        self.status = 0
        self.request_id: str | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=60) as client,
                client.stream("POST", self.url + self.path, headers=self.headers, json=self.body) as resp,
            ):
                self.status = resp.status_code
                self.request_id = resp.headers.get("request-id")
                for chunk in resp.iter_raw():
                    self.raw += chunk
                    self.first_byte.set()
        except Exception as exc:  # noqa: BLE001 - asserted by the test
            self.error = exc
        finally:
            self.first_byte.set()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_then_ends_streams_cleanly(workers: int, sim_url: str, tmp_path: Path) -> None:
    key, _ = mint_into(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    env.update(
        ETHEREAL_DATA_DIR=str(tmp_path),
        ETHEREAL_UPSTREAM_URL=sim_url,
        ETHEREAL_UPSTREAM_KEY="k",
        ETHEREAL_DRAIN_DELAY=str(DRAIN),
        ETHEREAL_SHUTDOWN_GRACE=str(GRACE),
        PYTHONUNBUFFERED="1",
        ETHEREAL_LIMITS_PER_WORKER="true",
    )
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "ethereal", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", proc)
        anthropic = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        openai = {"authorization": f"Bearer {key}"}

        def msg(tokens: int) -> dict[str, Any]:
            return {
                "model": "claude-sonnet-4-6",
                "max_tokens": 4096,
                "stream": True,
                "messages": [{"role": "user", "content": f"hello sim:tokens={tokens} sim:tps=40"}],
            }

        short = [Stream(base, "/v1/messages", anthropic, msg(40)) for _ in range(3)]  # ~1 s: within the grace
        long = [Stream(base, "/v1/messages?beta=true", anthropic, msg(2000)) for _ in range(3)]  # ~50 s: cut
        chat = Stream(
            base,
            "/v1/chat/completions",
            openai,
            {
                "model": "claude-sonnet-4-6",
                "stream": True,
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": "hi sim:tokens=2000 sim:tps=40"}],
            },
        )
        responses = Stream(
            base,
            "/v1/responses",
            openai,
            {
                "model": "claude-sonnet-4-6",
                "stream": True,
                "max_output_tokens": 4096,
                "input": "hi sim:tokens=2000 sim:tps=40",
            },
        )
        every = [*short, *long, chat, responses]
        for s in every:
            s.start()
        for s in every:
            assert s.first_byte.wait(20)
        t_signal = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        # 1. health turns 503 at once, while requests are still served (and told to go elsewhere)
        with httpx.Client(timeout=5) as client:
            deadline = time.monotonic() + 1.0
            while client.get(base + "/healthz").status_code != 503:
                assert time.monotonic() < deadline, "healthz did not turn 503 after SIGTERM"
                time.sleep(0.02)
            reply = client.post(
                base + "/v1/messages",
                headers=anthropic,
                json={
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert reply.status_code == 200 and reply.headers.get("connection") == "close"
            late_id = reply.headers["request-id"]
        assert time.monotonic() - t_signal < DRAIN

        # 2. after the drain delay, no new connection is taken
        time.sleep(max(0.0, t_signal + DRAIN + 0.5 - time.monotonic()))
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/healthz", timeout=2)

        # 3. exit 0 once the grace is over and the meter flushed
        assert proc.wait(timeout=DRAIN + GRACE + 20) == 0
        for s in every:
            s.join(10)
            assert s.error is None and s.status == 200, (s.error, s.status)
        for s in short:
            frames = parse_frames(s.raw)
            assert frames[-1][0] == "message_stop", frames[-1]
        for s in long:
            frames = parse_frames(s.raw)
            event, data = frames[-1]
            assert event == "error" and data["error"]["type"] == "overloaded_error", frames[-1]
            assert data["request_id"] == s.request_id
            assert not any(e == "message_stop" for e, _ in frames)
        frames = parse_frames(chat.raw)
        assert frames[-1][1]["error"]["code"] == "overloaded", frames[-1]
        # the Responses stream ends with response.failed naming the response its first frame announced
        frames = parse_frames(responses.raw)
        assert frames[0][0] == "response.created", frames[0]
        announced = frames[0][1]["response"]["id"]
        event, data = frames[-1]
        assert event == "response.failed" and data["response"]["status"] == "failed", frames[-1]
        assert data["response"]["id"] == announced, (data["response"]["id"], announced)
        assert not any(e == "response.completed" for e, _ in frames)

        # 4. every request recorded exactly once, the cut ones included
        db = sqlite3.connect(tmp_path / "ethereal.sqlite3")
        rows = dict(db.execute("SELECT request_id, status FROM usage_records").fetchall())
        for s in every:
            assert s.request_id in rows
        assert late_id in rows
        for s in short:
            assert rows[s.request_id] == 200
        counts = db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_records").fetchone()
        assert counts[0] == counts[1] == len(every) + 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "gateway.log").read_text()[-3000:])
