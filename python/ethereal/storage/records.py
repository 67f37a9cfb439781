"""Rows the stores keep besides keys: usage records, upstream credentials, and the shape of usage sums."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any


@dataclass(slots=True)
class StoredCredential:
    """An upstream credential as stored: the API key only in encrypted form."""

    name: str
    base_url: str
    api_key_enc: str
    weight: float = 1.0
    models: list[str] | None = None
    rpm: int | None = None
    spend_cap_micro: int | None = None
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


CREDENTIAL_COLUMNS = (
    "name", "base_url", "api_key_enc", "weight", "models", "rpm", "spend_cap_micro", "enabled",
    "disabled_reason", "created_at", "updated_at",
)


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
    web_search_requests: int = 0  # server-side web searches, billed per use

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_api(self) -> dict[str, Any]:
        """The shape of ``GET /v1/usage/{request_id}``.

        Token fields use the Messages API's names (``cache_read_input_tokens``,
        ``cache_creation{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}``).
        ``exact: false`` means the counts were estimated (a stream cut before its
        final ``message_delta``); ``cache_ttl_assumed: true`` means the upstream
        reported only a cache-write total, billed as 5-minute writes.
        """
        return {
            "type": "usage",
            "request_id": self.request_id,
            "key_id": self.key_id,
            "model": self.model,
            "route": self.route,
            "status": self.status,
            "stream": self.stream,
            "error_type": self.error_type,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_creation_5m + self.cache_creation_1h,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_5m,
                "ephemeral_1h_input_tokens": self.cache_creation_1h,
            },
            "server_tool_use": {"web_search_requests": self.web_search_requests},
            "cache_ttl_assumed": self.cache_ttl_assumed,
            "exact": self.exact,
            "cost_micro": self.cost_micro,
            "cost_usd": f"{self.cost_micro / 1_000_000:.6f}",
            "timing": {
                "started_at": _rfc3339(self.started_at),
                "ended_at": _rfc3339(self.ended_at),
                "ttfb_ms": None if self.ttfb_ms is None else round(self.ttfb_ms, 3),
                "duration_ms": round(self.duration_ms, 3),
            },
            "upstream_request_id": self.upstream_request_id,
        }


def _rfc3339(ts: float) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


USAGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))


# the sums every store's usage_totals returns, per group
SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cache_creation_5m", "cache_creation_1h",
        "cache_read", "web_search_requests", "cost_micro")
HOUR = 3600.0


def hour_ranges(since: float | None, until: float | None) -> tuple[
        tuple[float | None, float | None] | None, list[tuple[float | None, float | None]]]:
    """Split ``[since, until)`` into whole hours (rollup) and the partial edges (raw rows).

    Returns ``(rollup_range, raw_ranges)``; a bound of None is open.
    """
    lo = None if since is None else math.ceil(since / HOUR) * HOUR
    hi = None if until is None else math.floor(until / HOUR) * HOUR
    raw: list[tuple[float | None, float | None]] = []
    if lo is not None and hi is not None and lo >= hi:
        # the whole range sits inside one or two partial hours
        return None, [(since, until)]
    if since is not None and lo is not None and since < lo:
        raw.append((since, lo))
    if until is not None and hi is not None and hi < until:
        raw.append((hi, until))
    return (lo, hi), raw
