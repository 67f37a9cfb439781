"""Rows the stores keep besides keys: usage records, upstream credentials, and the shape of usage sums."""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
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
    "name",
    "base_url",
    "api_key_enc",
    "weight",
    "models",
    "rpm",
    "spend_cap_micro",
    "enabled",
    "disabled_reason",
    "created_at",
    "updated_at",
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
    batch: bool = False  # a Message Batches item, billed at the batch price (batches/)
    # what the record was priced with (migration 0006): the rate card's id (``<model>@<date>``,
    # ``provisional:<card>`` for a stand-in card; None: nothing priced, or a record written before
    # cards were kept) and whether that price is provisional; the usage labels that moved it
    rate_card: str | None = None
    priced_provisional: bool = False
    speed: str | None = None
    inference_geo: str | None = None
    service_tier: str | None = None
    # why a 4xx/5xx (or a stream that ended in an error) failed: the message the client was
    # given, the gateway's own or the upstream's, clipped and escaped (error_message_of); never a body
    error_message: str | None = None
    # who spent (migration 0009): the key's owner (a person, the user id of spend limits) and its
    # teams, sorted and joined by "," (team names hold no comma); None for none
    owner: str | None = None
    teams: str | None = None

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
        reported only a cache-write total, billed as 5-minute writes. ``rate_card``
        names the card the cost was computed with; ``priced`` is ``"provisional"``
        when that card is a stand-in (a model the registry does not describe: the
        cost is re-priced once it does, docs/models.md), else ``"exact"``.
        """
        return {
            "type": "usage",
            "request_id": self.request_id,
            "key_id": self.key_id,
            "model": self.model,
            "route": self.route,
            "status": self.status,
            "stream": self.stream,
            "batch": self.batch,
            "error_type": self.error_type,
            "error_message": self.error_message,
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
            "rate_card": self.rate_card,
            "priced": "provisional" if self.priced_provisional else "exact",
            "speed": self.speed,
            "inference_geo": self.inference_geo,
            "service_tier": self.service_tier,
            "timing": {
                "started_at": _rfc3339(self.started_at),
                "ended_at": _rfc3339(self.ended_at),
                "ttfb_ms": None if self.ttfb_ms is None else round(self.ttfb_ms, 3),
                "duration_ms": round(self.duration_ms, 3),
            },
            "upstream_request_id": self.upstream_request_id,
            "owner": self.owner,
            "teams": self.teams.split(",") if self.teams else [],
        }


ERROR_MESSAGE_MAX = 200  # characters of an error message kept in a record and a log line
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_ESCAPES |= {c: f"\\u{c:04x}" for c in (0x2028, 0x2029, 0x85)}


def error_message_of(message: object) -> str | None:
    """An error message as operators see it (record, log line, console): control characters
    escaped (a message cannot forge a log line or hide text), at most ``ERROR_MESSAGE_MAX``
    characters (an ellipsis marks a cut). None for anything but a non-empty string."""
    if not isinstance(message, str) or not message:
        return None
    text = message[: ERROR_MESSAGE_MAX * 2]
    if not text.isprintable():
        text = text.translate(_ESCAPES)
    if len(text) > ERROR_MESSAGE_MAX or len(message) > ERROR_MESSAGE_MAX * 2:
        text = text[: ERROR_MESSAGE_MAX - 1] + "…"
    return text


def _rfc3339(ts: float) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


USAGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))
# a record's values in USAGE_COLUMNS order, as a tuple (one C call per record: every request writes one row)
usage_row: Callable[[UsageRecord], tuple[Any, ...]] = operator.attrgetter(*USAGE_COLUMNS)


# the sums every store's usage_totals returns, per group
SUMS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_creation_5m",
    "cache_creation_1h",
    "cache_read",
    "web_search_requests",
    "cost_micro",
)


def add_sums(out: dict[Any, dict[str, int]], key: Any, row: Mapping[str, Any], names: Sequence[str]) -> None:
    """Add ``row``'s ``names`` columns (a NULL as 0) into ``out[key]``, started at zeros."""
    acc = out.get(key)
    if acc is None:
        acc = out[key] = dict.fromkeys(names, 0)
    for name in names:
        acc[name] += int(row[name] or 0)


HOUR = 3600.0


def hour_ranges(
    since: float | None, until: float | None
) -> tuple[tuple[float | None, float | None] | None, list[tuple[float | None, float | None]]]:
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


@dataclass(slots=True)
class BatchRecord:
    """A Message Batch as the gateway keeps it (``message_batches``, migration 0004).

    ``id`` is the gateway's own (what the client sees); ``upstream_id`` the upstream's, on
    ``credential``. ``held_*`` is what was charged against the key's budget at create (0 when
    the key has no budget), released when the batch is ``settled`` (its items metered, one
    usage row each, at ``settled_*``). ``status``: ``creating`` (upstream call in flight),
    ``in_progress``, ``canceling``, ``ended``.
    """

    id: str
    key_id: str | None
    credential: str
    status: str
    request_count: int
    upstream_id: str | None = None
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0
    created_at: float = field(default_factory=time.time)
    expires_at: float = 0.0
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    archived_at: float | None = None
    estimated_tokens: int = 0
    estimated_micro: int = 0
    held_tokens: int = 0
    held_micro: int = 0
    settled: bool = False
    settled_tokens: int = 0
    settled_micro: int = 0
    metered_items: int = 0
    lease_owner: str | None = None
    lease_until: float = 0.0
    polled_at: float = 0.0
    poll_failures: int = 0
    last_error: str | None = None
    updated_at: float = field(default_factory=time.time)


BATCH_COLUMNS: tuple[str, ...] = tuple(BatchRecord.__dataclass_fields__)
# what update_batch may change (the identity and owner never move; the credential only while
# the batch is being created, when a failover sends it to another one)
BATCH_MUTABLE = frozenset(BATCH_COLUMNS) - {"id", "key_id", "created_at", "request_count"}
