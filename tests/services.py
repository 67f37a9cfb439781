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
            [
                _pg_bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
            capture_output=True,
        )
        return self.url(name)

    def stop(self, data_dir: str) -> None:
        subprocess.run(
            _as_pg_user([_pg_bin("pg_ctl"), "-D", data_dir, "-m", "fast", "-w", "stop"]),
            capture_output=True,
            check=False,
        )


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[PostgresServer, str]]:
    """A fresh cluster on a free port; yields (server, data_dir)."""
    root = tempfile.mkdtemp(prefix="ethereal-pg-")
    os.chmod(root, 0o777)
    data_dir = os.path.join(root, "data")
    port = free_port()
    subprocess.run(
        _as_pg_user(
            [_pg_bin("initdb"), "-D", data_dir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    server = PostgresServer(port=port, socket_dir=root)
    start_postgres(server, data_dir)
    try:
        yield server, data_dir
    finally:
        server.stop(data_dir)
        shutil.rmtree(root, ignore_errors=True)


def start_postgres(server: PostgresServer, data_dir: str) -> None:
    opts = (
        f"-p {server.port} -k {server.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_pg_user(
            [
                _pg_bin("pg_ctl"),
                "-D",
                data_dir,
                "-o",
                opts,
                "-l",
                os.path.join(server.socket_dir, "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
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
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


def _redis_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisCluster:
    """A throwaway Redis Cluster of masters only, on loopback: own ports, own temp dirs."""

    ports: list[int]
    bus_ports: list[int]
    root: str
    full_coverage: bool
    procs: list[subprocess.Popen[bytes] | None]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_url(self, i: int) -> str:
        return f"redis://127.0.0.1:{self.ports[i]}/0"

    def start(self, i: int) -> None:
        """Start node ``i`` (again): same port and directory, so its nodes.conf brings it back into the cluster."""
        workdir = os.path.join(self.root, str(i))
        os.makedirs(workdir, exist_ok=True)
        proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.ports[i]),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(self.bus_ports[i]),
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "yes" if self.full_coverage else "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs[i] = proc
        deadline = time.monotonic() + 20
        while not _redis_ping(self.ports[i]):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server (cluster node {i}) did not start")
            time.sleep(0.05)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a master failing under load)."""
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
            self.procs[i] = None

    def cli(self, i: int, *args: str) -> str:
        out = subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(self.ports[i]), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports cluster_state:ok and sees all slots assigned."""
        deadline = time.monotonic() + timeout
        while True:
            states = [self.cli(i, "CLUSTER", "INFO") for i, p in enumerate(self.procs) if p is not None]
            if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not converge: {states}")
            time.sleep(0.1)

    def flush(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                self.cli(i, "FLUSHALL")

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


@contextlib.contextmanager
def redis_cluster(masters: int = 3, *, full_coverage: bool = True) -> Iterator[RedisCluster]:
    """A ``masters``-node Redis Cluster (no replicas), created with ``redis-cli --cluster create``.

    ``full_coverage=False`` sets ``cluster-require-full-coverage no``: when a master fails, the others
    keep serving their slots (the default stops the whole cluster until every slot is covered again).
    """
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are not installed (apt-get install redis-server)")
    ports: list[int] = []
    while len(ports) < 2 * masters:  # client and cluster-bus ports, all distinct
        port = free_port()
        if port not in ports:
            ports.append(port)
    cluster = RedisCluster(
        ports=ports[:masters],
        bus_ports=ports[masters:],
        root=tempfile.mkdtemp(prefix="ethereal-rc-"),
        full_coverage=full_coverage,
        procs=[None] * masters,
    )
    try:
        for i in range(masters):
            cluster.start(i)
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in cluster.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster.wait_ok()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
