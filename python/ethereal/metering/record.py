"""The usage record: one per request, on every route. Never a body."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    key_id: str | None
    credential: str | None  # upstream credential name
    route: str  # e.g. "messages", "count_tokens", "chat.completions"
    model: str | None  # canonical id
    status: int
    stream: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0
    cache_read: int = 0
    exact: bool = True  # False: counts were estimated (stream cut, upstream silent)
    cache_ttl_assumed: bool = False  # upstream gave only the 5m/1h total; 5m was assumed
    cost_micro: int = 0
    ttfb_ms: float | None = None
    duration_ms: float = 0.0
    started_at: float = 0.0  # unix seconds
    ended_at: float = 0.0
    upstream_request_id: str | None = None
    error_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_api(self) -> dict[str, Any]:
        """The shape of ``GET /v1/usage/{request_id}``."""
        return {
            "type": "usage",
            "request_id": self.request_id,
            "model": self.model,
            "route": self.route,
            "status": self.status,
            "stream": self.stream,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_creation_5m + self.cache_creation_1h,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_5m,
                "ephemeral_1h_input_tokens": self.cache_creation_1h,
            },
            "cache_ttl_assumed": self.cache_ttl_assumed,
            "exact": self.exact,
            "cost_micro": self.cost_micro,
            "ttfb_ms": self.ttfb_ms,
            "duration_ms": self.duration_ms,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error_type": self.error_type,
        }


USAGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))
