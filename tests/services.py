"""Throwaway PostgreSQL and Redis servers for tests: own ports, own temp dirs, cleaned up.

Nothing here touches the machine's long-running instances. PostgreSQL refuses to
run as root, so when the tests run as root the cluster is owned by the
``postgres`` system user (``runuser``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.procs import free_port


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return candidates[-1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass
class PostgresServer:
    port: int
    socket_dir: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run(
            [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-q", "-c", f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True,
        )
        return self.url(name)

    def stop(self, data_dir: str) -> None:
        subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "-D", data_dir, "-m", "fast", "-w", "stop"]),
                       capture_output=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[PostgresServer, str]]:
    """A fresh cluster on a free port; yields (server, data_dir)."""
    root = tempfile.mkdtemp(prefix="ethereal-pg-")
    os.chmod(root, 0o777)
    data_dir = os.path.join(root, "data")
    port = free_port()
    subprocess.run(
        _as_pg_user([_pg_bin("initdb"), "-D", data_dir, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--no-sync"]),
        check=True, capture_output=True,
    )
    server = PostgresServer(port=port, socket_dir=root)
    start_postgres(server, data_dir)
    try:
        yield server, data_dir
    finally:
        server.stop(data_dir)
        shutil.rmtree(root, ignore_errors=True)


def start_postgres(server: PostgresServer, data_dir: str) -> None:
    opts = (f"-p {server.port} -k {server.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run(
        _as_pg_user([_pg_bin("pg_ctl"), "-D", data_dir, "-o", opts, "-l", os.path.join(server.socket_dir, "log"),
                     "-w", "-t", "60", "start"]),
        check=True, capture_output=True,
    )


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="ethereal-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    import socket

    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    try:
        yield RedisServer(port=port, proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
