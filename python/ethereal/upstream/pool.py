"""The upstream credential pool.

This first version keeps credentials in memory, orders them by least in-flight
per weight, and puts a credential on cooldown when it answers 429/529/5xx or
cannot be reached. Health shared across replicas and cache-affinity routing
build on the same interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Credential:
    name: str
    base_url: str
    api_key: str = field(repr=False)
    weight: float = 1.0
    models: list[str] | None = None  # canonical ids served; None = all
    rpm: int | None = None
    spend_cap_micro: int | None = None
    enabled: bool = True
    # live state
    in_flight: int = 0
    cooldown_until: float = 0.0
    failures: int = 0
    last_error: str | None = None

    def serves(self, model: str | None) -> bool:
        return self.models is None or model is None or model in self.models

    def healthy(self, now: float) -> bool:
        return self.enabled and now >= self.cooldown_until


class Pool:
    def __init__(self, credentials: list[Credential] | None = None) -> None:
        self.credentials: list[Credential] = list(credentials or [])

    def add(self, credential: Credential) -> None:
        self.credentials = [c for c in self.credentials if c.name != credential.name] + [credential]

    def candidates(self, model: str | None, affinity: bytes | None = None) -> list[Credential]:
        """Healthy credentials serving ``model``, best first."""
        now = time.monotonic()
        usable = [c for c in self.credentials if c.healthy(now) and c.serves(model)]
        usable.sort(key=lambda c: c.in_flight / (c.weight or 1.0))
        return usable

    def serving(self, model: str | None) -> list[Credential]:
        return [c for c in self.credentials if c.enabled and c.serves(model)]

    def earliest_recovery(self, model: str | None) -> float:
        """Seconds until some credential serving ``model`` leaves cooldown."""
        now = time.monotonic()
        waits = [max(0.0, c.cooldown_until - now) for c in self.serving(model)]
        return min(waits) if waits else 30.0

    def report_success(self, credential: Credential) -> None:
        credential.failures = 0

    def report_failure(self, credential: Credential, kind: str, retry_after: float | None = None) -> None:
        """``kind``: "rate_limited", "overloaded", "server_error", "connect", "auth"."""
        credential.failures += 1
        credential.last_error = kind
        now = time.monotonic()
        if kind == "auth":
            credential.enabled = False
            return
        if kind == "rate_limited":
            delay = retry_after if retry_after is not None else 5.0
        else:
            delay = min(0.5 * 2 ** (credential.failures - 1), 30.0)
        credential.cooldown_until = max(credential.cooldown_until, now + delay)
