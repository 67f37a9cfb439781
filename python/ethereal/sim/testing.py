"""Helpers for tests: run the sim as a subprocess (or in-process) on a free port.

    from ethereal.sim.testing import start_sim_process

    with start_sim_process(latency_ms=5, api_keys={"sk-test"}) as (proc, base_url):
        ...

Knobs are the ``SimConfig`` field names; they become ``python -m ethereal.sim`` flags.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

_PYTHON_DIR = str(Path(__file__).resolve().parents[2])  # .../python

_FLAG = {
    "latency_ms": "--latency-ms",
    "ttft_ms": "--ttft-ms",
    "tokens_per_second": "--tokens-per-second",
    "events_per_write": "--events-per-write",
    "seed": "--seed",
    "fixtures_dir": "--fixtures-dir",
    "cache_min_tokens": "--cache-min-tokens",
    "organization_id": "--organization-id",
    "batch_processing_ms": "--batch-processing-ms",
}


def sim_command(host: str = "127.0.0.1", port: int = 0, **knobs: Any) -> list[str]:
    cmd = [sys.executable, "-m", "ethereal.sim", "--host", host, "--port", str(port)]
    for key, value in knobs.items():
        if value is None:
            continue
        if key == "api_keys":
            for k in sorted(value):
                cmd += ["--api-key", k]
        elif key in _FLAG:
            cmd += [_FLAG[key], str(value)]
        else:
            raise TypeError(f"unknown sim knob {key!r}")
    return cmd


@contextlib.contextmanager
def start_sim_process(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    cpu: int | None = None,
    **knobs: Any,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Starts ``python -m ethereal.sim`` and yields ``(process, base_url)`` once it listens.

    ``cpu`` pins the process to one core (Linux). The process is terminated on exit."""
    full_env = dict(os.environ)
    old_path = full_env.get("PYTHONPATH")
    full_env["PYTHONPATH"] = _PYTHON_DIR + (os.pathsep + old_path if old_path else "")
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    proc = subprocess.Popen(
        sim_command(host, port, **knobs),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=full_env,
        text=True,
    )
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(proc.pid, {cpu})
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    base_url = None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while base_url is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("ethereal sim did not start in time:\n" + "".join(seen))
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"ethereal sim exited with {proc.wait()}:\n" + "".join(seen))
            seen.append(line)
            if "ethereal sim listening on " in line:
                base_url = line.strip().rsplit(" ", 1)[-1]
        yield proc, base_url
    finally:
        terminate(proc, 5)
        pumper.join(timeout=5)  # the pipe reaches EOF once the process is gone
        if proc.stdout is not None:
            proc.stdout.close()


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """End ``proc``: SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def control(base_url: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """Calls the control API (``/_sim/...``) with the standard library; returns the parsed JSON."""
    import urllib.request

    data = orjson.dumps(payload) if payload is not None else None
    req = urllib.request.Request(
        base_url + path,
        data=data,
        method="POST" if data is not None else "GET",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return orjson.loads(resp.read())


def inject_fault(base_url: str, fault: str, count: int = 1, **params: Any) -> Any:
    """Queues ``fault`` for the next ``count`` requests (see ``POST /_sim/faults``)."""
    return control(base_url, "/_sim/faults", {"fault": fault, "count": count, **params})


def sim_stats(base_url: str) -> Any:
    return control(base_url, "/_sim/stats")


def reset_sim(base_url: str) -> Any:
    return control(base_url, "/_sim/reset", {})
