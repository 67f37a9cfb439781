"""Real processes for tests: the gateway and the simulated upstream on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from ethereal.sim.testing import terminate

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("ETHEREAL_FIXTURES", REPO / "fixtures"))
RECORDED = FIXTURES / "anthropic" / "recorded" / "sse-extracted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving {url}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    terminate(proc, 10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):  # an unclosed pipe is a ResourceWarning (a failure)
        if pipe is not None:
            pipe.close()


@contextlib.contextmanager
def gateway_process(
    data_dir: Path,
    upstream_url: str | None,
    *,
    upstream_key: str = "sim-upstream-key",
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[str]:
    """``ethereal serve`` in a child process; yields its base URL."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    child_env.update(
        {
            "ETHEREAL_DATA_DIR": str(data_dir),
            "ETHEREAL_KEY_CACHE_TTL": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if upstream_url:
        child_env["ETHEREAL_UPSTREAM_URL"] = upstream_url
        child_env["ETHEREAL_UPSTREAM_KEY"] = upstream_key
    child_env.update(env or {})
    if workers > 1 and "ETHEREAL_REDIS_URL" not in child_env:
        child_env.setdefault("ETHEREAL_LIMITS_PER_WORKER", "true")  # settings.validate refuses it otherwise
    log_path = data_dir / f"gateway-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ethereal",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", proc)
        yield base
    finally:
        stop(proc)
