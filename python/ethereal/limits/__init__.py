"""Admission control: budgets, rate windows, concurrency (one Redis round trip)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ethereal.keys import KeyRecord


@dataclass(slots=True)
class Admission:
    """What admit reserved, and the numbers the ``anthropic-ratelimit-*`` headers need."""

    key_id: str
    reserved_tokens: int = 0
    reserved_micro: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    token: str = ""  # reservation handle for settle


class Limiter:
    """No limits: every key is admitted. The Redis and in-process limiters override."""

    enabled = False

    async def admit(self, key: KeyRecord, *, model: str | None, input_tokens: int, max_tokens: int,
                    price_in: float, price_out: float) -> Admission:
        return Admission(key_id=key.id)

    async def settle(self, admission: Admission, *, tokens: int, cost_micro: int) -> None:
        return None

    async def close(self) -> None:
        return None
