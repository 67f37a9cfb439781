"""Codex CLI's wall time through the gateway: its built-in provider (a WebSocket to /v1/responses)
against a custom provider on HTTP (``wire_api = "responses"``, SSE), same task, same sim.

    python loadtest/bench_codex_ws.py [--runs 5] [--codex clients/node_modules/.bin/codex]

Each run is one ``codex exec`` doing a shell-tool round trip (the sim scripts the call: a
warm-up on the socket, the turn calling the tool, the turn after its output). The two
transports alternate run by run so drift on a shared machine hits both alike. Before the
WebSocket route existed, the built-in provider met a 500 on the upgrade, retried about seven
times ("high demand", ~6 s) and then fell back to HTTP; the goal is the two within 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from ethereal.keys import mint
from ethereal.sim.testing import start_sim_process

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mint_key(data_dir: Path) -> str:
    from ethereal.storage.sqlite import SQLiteStore

    plaintext, record = mint("sk-ant-api03-", name="bench-codex")

    async def go() -> None:
        store = await SQLiteStore.open(str(data_dir / "ethereal.sqlite3"))
        try:
            await store.migrate()
            await store.insert_keys([record])
        finally:
            await store.close()

    asyncio.run(go())
    return plaintext


def write_homes(root: Path, url: str) -> dict[str, Path]:
    homes = {"websocket": root / "home-ws", "http": root / "home-http"}
    for home in homes.values():
        home.mkdir()
    (homes["websocket"] / "config.toml").write_text(
        f'model = "claude-sonnet-4-5"\nmodel_reasoning_effort = "medium"\nopenai_base_url = "{url}/v1"\n'
    )
    (homes["http"] / "config.toml").write_text(
        'model = "claude-sonnet-4-5"\nmodel_provider = "ethereal"\nmodel_reasoning_effort = "medium"\n'
        '[model_providers.ethereal]\nname = "ethereal"\n'
        f'base_url = "{url}/v1"\nenv_key = "CODEX_API_KEY"\nwire_api = "responses"\n'
    )
    return homes


def run_codex(codex: Path, home: Path, work: Path, key: str) -> float:
    call = base64.urlsafe_b64encode(json.dumps({"cmd": "printf ethereal > bench.txt"}).encode()).decode()
    prompt = f"Write the marker file. sim:tool=exec_command sim:input={call.rstrip('=')}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_", "ANTHROPIC_"))}
    env.update({"CODEX_HOME": str(home), "CODEX_API_KEY": key, "NO_COLOR": "1"})
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            str(codex),
            "exec",
            "--skip-git-repo-check",
            "--json",
            "-C",
            str(work),
            "-s",
            "workspace-write",
            prompt,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=180,
        check=False,
    )
    wall = time.perf_counter() - t0
    out = proc.stdout.decode() + proc.stderr.decode()
    if proc.returncode != 0 or '"command_execution"' not in out:
        raise SystemExit(f"codex failed ({proc.returncode}):\n{out[-3000:]}")
    if "high demand" in out.lower() or "reconnecting" in out.lower():
        print("  (a retry notice appeared in this run)", file=sys.stderr)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per transport (default 5)")
    parser.add_argument("--codex", type=Path, default=REPO / "clients" / "node_modules" / ".bin" / "codex")
    args = parser.parse_args()
    if not args.codex.exists():
        raise SystemExit(f"Codex CLI not found at {args.codex}: run `make clients`")
    with tempfile.TemporaryDirectory(prefix="bench-codex-") as tmp, start_sim_process() as (_sim, sim_url):
        root = Path(tmp)
        data_dir = root / "gateway"
        data_dir.mkdir()
        key = mint_key(data_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
        env.update(
            {
                "ETHEREAL_DATA_DIR": str(data_dir),
                "ETHEREAL_UPSTREAM_URL": sim_url,
                "ETHEREAL_UPSTREAM_KEY": "sim-upstream-key",
                "ETHEREAL_LOG_LEVEL": "warning",
            }
        )
        with open(root / "gateway.log", "wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "ethereal", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.1)
            homes = write_homes(root, url)
            times: dict[str, list[float]] = {name: [] for name in homes}
            for home in homes.values():  # one untimed run each: Codex's first start is slower
                run_codex(args.codex, home, root, key)
            for i in range(args.runs):
                for name, home in homes.items():
                    work = root / f"work-{name}-{i}"
                    work.mkdir()
                    times[name].append(run_codex(args.codex, home, work, key))
                    print(f"run {i + 1} {name:9s} {times[name][-1]:.2f} s", flush=True)
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    print(
        f"\nCodex CLI exec, shell-tool round trip, {args.runs} runs each (median / mean / min / max, seconds):"
    )
    for name, values in times.items():
        print(
            f"  {name:9s} {statistics.median(values):.2f} / {statistics.mean(values):.2f} / {min(values):.2f}"
            f" / {max(values):.2f}"
        )
    diff = statistics.median(times["websocket"]) - statistics.median(times["http"])
    print(f"  websocket − http (medians): {diff:+.2f} s")


if __name__ == "__main__":
    main()
