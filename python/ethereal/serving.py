"""Running the gateway under uvicorn: worker processes, graceful shutdown, file-descriptor limit.

Shutdown (SIGTERM, or SIGINT), in each worker:

1. **drain**: ``/healthz`` answers 503 at once, for ``ETHEREAL_DRAIN_DELAY`` seconds (default 3)
   while the worker keeps serving, so the load balancer marks it down (HAProxy: ``fall 2``
   checks at ``inter 1s``; Kubernetes: the readiness probe) and sends new requests elsewhere;
   responses sent meanwhile carry ``connection: close``.
2. **stop accepting**: the listening socket closes, idle keep-alive connections are closed.
3. **grace**: requests in flight, streams included, run to their end for up to
   ``ETHEREAL_SHUTDOWN_GRACE`` seconds (default 20).
4. **cut**: streams still open then are ended well-formed (an ``overloaded_error`` event in the
   route's dialect; see ``ethereal.lifecycle``), their usage settled and recorded.
5. **flush**: the app stops (the meter writes its queue to the database, or the spool), the
   process exits 0.

A second SIGTERM/SIGINT skips what is left of the drain delay. With ``--workers N`` the parent
process binds the socket, starts the workers (``spawn``), restarts one that dies unexpectedly,
and on SIGTERM passes the signal to every worker and waits for them all (exit 0 when they all
exited 0). Kubernetes' ``terminationGracePeriodSeconds`` must exceed drain + grace + a few
seconds for the flush (``deploy/k8s`` uses 40).

At start the soft limit on open files is raised to the hard limit: every stream holds two
descriptors (client and upstream), so the usual soft limit of 1,024 would cap a worker near 500
streams. When the hard limit itself is low, a message says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from ethereal.lifecycle import LIFECYCLE
from ethereal.settings import Settings

log = logging.getLogger("ethereal.serving")

STREAMS_PER_FD = 0.5  # a stream holds a client and an upstream socket
_WANT_FDS = 65536


def raise_nofile_limit(want: int = _WANT_FDS) -> tuple[int, int, str]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; returns (soft, hard, message)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return -1, -1, "file-descriptor limit: not adjustable on this platform"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            return (
                soft,
                hard,
                (
                    f"file-descriptor limit stays at {soft} (raising it to {target} failed: {exc}):"
                    f" about {int(soft * STREAMS_PER_FD)} concurrent streams per worker at most"
                ),
            )
    if soft < 4096:
        return (
            soft,
            hard,
            (
                f"file-descriptor limit is {soft} (hard limit {hard}): about"
                f" {int(soft * STREAMS_PER_FD)} concurrent streams per worker at most; raise the"
                " hard limit (ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=) for more"
            ),
        )
    return soft, hard, f"file-descriptor limit {soft} (hard {hard})"


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the drain → grace → cut → flush shutdown described above."""

    def __init__(self, config: uvicorn.Config, *, drain_delay: float, grace: float) -> None:
        super().__init__(config)
        self.drain_delay = drain_delay
        self.grace = grace
        self._drain_until: float | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after its shutdown, which ends the process with status
        # 143; a clean drain is a success and exits 0
        handled = (signal.SIGTERM, signal.SIGINT)
        try:
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        except ValueError:  # not the main thread: whoever runs us handles signals
            yield
            return
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain_until is None and self.drain_delay > 0 and self.started:
            self._drain_until = time.monotonic() + self.drain_delay
            LIFECYCLE.begin_drain()
            log.warning(
                "signal %d: draining (healthz 503) for %.1f s, then a %.1f s grace period for requests"
                " in flight",
                sig,
                self.drain_delay,
                self.grace,
            )
            return
        LIFECYCLE.begin_drain()
        self.should_exit = True  # a second signal (or no drain delay): stop accepting now

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        return should_exit or (self._drain_until is not None and time.monotonic() >= self._drain_until)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        LIFECYCLE.begin_drain()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # WebSockets (the Responses API): one with nothing in flight is closed now (1001), one
        # answering a response after that response, by the app itself; the rest is HTTP (idle
        # keep-alive connections close now, busy ones after their response)
        from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

        from ethereal.api.responses_ws import drain_sockets

        drain_sockets()
        for connection in list(self.server_state.connections):
            if isinstance(connection, WSProtocol) and connection.handshake_complete:
                continue
            connection.shutdown()
        await asyncio.sleep(0.1)
        deadline = time.monotonic() + self.grace
        while self._busy() and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        if self._busy():
            ended = await LIFECYCLE.end_streams()
            if ended:
                log.warning("grace period over: %d stream(s) ended with an overloaded_error event", ended)
            cutoff = time.monotonic() + 5.0
            while self._busy() and time.monotonic() < cutoff:
                await asyncio.sleep(0.05)
            for task in self.server_state.tasks:
                task.cancel()  # what is left is not a stream: a non-streamed reply still waiting
            for connection in list(self.server_state.connections):
                connection.shutdown()
        if not self.force_exit:
            await self.lifespan.shutdown()  # the app stops: the meter flushes

    def _busy(self) -> bool:
        return bool(self.server_state.tasks)  # one task per request being served


def _config(settings: Settings) -> uvicorn.Config:
    from ethereal.app import Ethereal
    from ethereal.server import ConnectionLimits, protocol_class

    # the app object (settings included) is pickled into each spawned worker, where the edge
    # wrapper (health, stream tracking, in-flight count, request log line: lifecycle.py) binds
    # to that worker's own LIFECYCLE; httptools behind a protocol that caps header size/count,
    # times out slow clients and bounds open connections per worker (server.py); the workers
    # die with this process (parent_pid), so a SIGKILLed replica leaves nothing behind
    app = Ethereal(settings, parent_pid=os.getpid()).observed()
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=protocol_class(ConnectionLimits.from_settings(settings)),
        log_level="warning",
        access_log=False,
        backlog=2048,
        lifespan="on",
        # no proxy-header layer on every request: the one route that needs a
        # client's address reads X-Forwarded-For itself (guards.client_address)
        proxy_headers=False,
        # WebSocket (the Responses API on /v1/responses, api/responses_ws.py): wsproto,
        # whose server supports refusing an upgrade with a plain HTTP answer; messages
        # bounded; no per-message deflate (a small compressed frame could inflate
        # past any bound before it is counted); pings find peers that went away
        ws="wsproto",
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]  # a float works
    )


def _worker(config: uvicorn.Config, sock: socket.socket, drain_delay: float, grace: float) -> None:
    config.configure_logging()
    server = GatewayServer(config, drain_delay=drain_delay, grace=grace)
    server.run(sockets=[sock])
    sys.exit(0 if server.started else 3)


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean shutdown."""
    _, _, message = raise_nofile_limit()
    print(f"ethereal: {message}", file=sys.stderr, flush=True)
    config = _config(settings)
    drain, grace = settings.drain_delay, settings.shutdown_grace
    if settings.workers <= 1:
        server = GatewayServer(config, drain_delay=drain, grace=grace)
        server.run()
        return 0 if server.started else 3
    return Supervisor(config, settings.workers, drain, grace).run()


class Supervisor:
    """The parent of N workers sharing one listening socket."""

    def __init__(self, config: uvicorn.Config, workers: int, drain_delay: float, grace: float) -> None:
        self.config = config
        self.count = workers
        self.drain_delay = drain_delay
        self.grace = grace
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.signals: list[int] = []

    def _start(self, sock: socket.socket) -> Any:
        proc = self.ctx.Process(
            target=_worker, args=(self.config, sock, self.drain_delay, self.grace), name="ethereal-worker"
        )
        proc.start()
        return proc

    def run(self) -> int:
        sock = self.config.bind_socket()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: self.signals.append(s))
        self.procs = [self._start(sock) for _ in range(self.count)]
        started = time.monotonic()
        while not self.signals:
            time.sleep(0.2)
            for i, proc in enumerate(self.procs):
                if proc.is_alive() or self.signals:
                    continue
                if proc.exitcode == 3 and time.monotonic() - started < 60:
                    log.error("worker %s failed to start (exit 3): stopping", proc.pid)
                    self.signals.append(signal.SIGTERM)
                    break
                log.error("worker %s died (exit %s): starting another", proc.pid, proc.exitcode)
                self.procs[i] = self._start(sock)
        self._forward(self.signals[0])
        sock.close()  # the workers hold their own copies until they stop accepting
        forwarded = 1
        deadline = time.monotonic() + self.drain_delay + self.grace + 20.0
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            if len(self.signals) > forwarded:  # a second signal: the workers skip what is left of the drain
                self._forward(self.signals[-1])
                forwarded = len(self.signals)
            time.sleep(0.1)
        for proc in self.procs:
            if proc.is_alive():
                log.error("worker %s did not stop in time: killed", proc.pid)
                proc.kill()
            proc.join()
        return 0 if all(p.exitcode == 0 for p in self.procs) else 1

    def _forward(self, sig: int) -> None:
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
