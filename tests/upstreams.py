"""Helpers for tests that run the gateway over several simulated upstream credentials."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from ethereal.sim.testing import control

SECRET = "test-secret-key-for-upstream-credentials"
ADMIN = "admin-key-0123456789abcdef"

T = TypeVar("T")


def seed_credentials(data_dir: Path, specs: list[dict[str, Any]], secret: str = SECRET) -> None:
    """Write credentials straight into the gateway's SQLite store (API keys encrypted)."""
    from ethereal.secretbox import SecretBox
    from ethereal.storage.records import StoredCredential
    from ethereal.storage.sqlite import SQLiteStore

    box = SecretBox(secret)

    async def go() -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        store = await SQLiteStore.open(str(data_dir / "ethereal.sqlite3"))
        try:
            await store.migrate()
            for spec in specs:
                spec = dict(spec)
                key = spec.pop("api_key", f"sim-key-{spec['name']}")
                await store.upsert_credential(StoredCredential(api_key_enc=box.encrypt(key), **spec))
        finally:
            await store.close()

    asyncio.run(go())


def served(sim_url: str, status: str = "200", path: str = "/v1/messages") -> int:
    """How many requests a sim answered with ``status`` on ``path``."""
    return int(control(sim_url, "/_sim/stats")["requests"].get(path, {}).get(status, 0))


class Admin:
    def __init__(self, base: str, key: str = ADMIN) -> None:
        self.http = _Calls(base + "/admin/api/upstreams", {"x-api-key": key})

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, **kwargs)

    def get(self, name: str) -> dict[str, Any]:
        r = self._call("GET", f"/{name}")
        r.raise_for_status()
        return r.json()

    def list(self) -> list[dict[str, Any]]:
        r = self._call("GET", "")
        r.raise_for_status()
        return r.json()["data"]

    def patch(self, name: str, **changes: Any) -> dict[str, Any]:
        r = self._call("PATCH", f"/{name}", json=changes)
        r.raise_for_status()
        return r.json()

    def enable(self, name: str) -> dict[str, Any]:
        r = self._call("POST", f"/{name}/enable")
        r.raise_for_status()
        return r.json()

    def disable(self, name: str, reason: str | None = None) -> dict[str, Any]:
        r = self._call("POST", f"/{name}/disable", json={"reason": reason} if reason else None)
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        return None  # nothing held open: a connection per call


class _Calls:
    """``get``/``post``/``patch``/``delete`` on a base URL, a connection per call, so a test leaves
    no socket open (the suite fails on a ResourceWarning)."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base, self.headers = base, headers

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return httpx.request(
            method, self.base + path, headers={**self.headers, **(headers or {})}, timeout=10, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def eventually(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Eventually-consistent state (a Redis counter a settle sent without waiting updates, a row
    the meter flushes, a metric, a log line): ``read()`` until ``done(value)`` or the deadline.
    Returns the last value read, for the caller to assert on (a timeout then shows what was read)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


def eventually_sync(
    read: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0, interval: float = 0.05
) -> T:
    """``eventually`` for synchronous reads."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval)
