"""Settings from the environment (``ETHEREAL_`` prefix), optionally a TOML file.

Everything is validated once at start-up; a bad value stops the process with a
message naming the variable, never a traceback from deep inside a request.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


def _env(name: str, *fallbacks: str) -> str | None:
    for candidate in (f"ETHEREAL_{name}", *fallbacks):
        value = os.environ.get(candidate)
        if value is not None and value != "":
            return value
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # storage: "sqlite:///path" or "postgresql://..."; None → SQLite file in data_dir
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path("./data")
    admin_key: str | None = None
    # a read-only admin key (#22): the organization's reports and spend limits, reads only (give a
    # FinOps tool this one, not the key that mints keys); writes answer 403
    admin_read_key: str | None = None
    secret_key: str | None = None
    key_prefix: str = "sk-ant-api03-"
    base_path: str = ""  # mount every route under this prefix (e.g. /api/proxy); see paths.py
    # a single upstream credential for the simplest deployment
    upstream_url: str | None = None
    upstream_key: str | None = None
    # request bounds (Anthropic's own: 32 MB for messages and count_tokens)
    max_body_bytes: int = 32 * 1024 * 1024
    # upstream timeouts, seconds
    connect_timeout: float = 10.0
    first_byte_timeout: float = 600.0
    idle_stream_timeout: float = 300.0
    # upstream connections per worker and credential (each open stream holds one; 10,000 streams
    # through one gateway need room for them)
    upstream_connections: int = 10000
    # failover
    max_attempts: int = 3
    failover_deadline: float = 30.0
    # upstream credential pool (seconds): store reload, Redis health poll, spend-cap refresh,
    # cooldown after a 429 without retry-after, exponential backoff base and cap
    upstream_reload_interval: float = 2.0
    upstream_health_poll: float = 0.5
    upstream_spend_refresh: float = 15.0
    upstream_default_retry_after: float = 5.0
    upstream_backoff_base: float = 0.5
    upstream_backoff_cap: float = 30.0
    upstream_probe_interval: float = 30.0  # at most one credential probe (after a 401/403) per credential
    # longest cooldown one upstream 429 causes (for the models of its rate-limit group), whatever
    # its retry-after says; the client that got the 429 still sees the upstream's own hints
    upstream_429_cooldown_cap: float = 60.0
    # how often each credential's GET /v1/models is read (seconds; 0: only at start-up)
    upstream_models_interval: float = 3 * 3600.0
    limits_fail_open: bool = False
    # automatic prompt caching on /v1/chat/completions and /v1/responses (adapters/claude_request.py);
    # a key's metadata "auto_cache": false|true overrides it for that key
    auto_cache: bool = True
    # without Redis each worker keeps its own budget and window counters (N workers = N x every
    # budget): more than one worker without Redis needs this set, to say the operator knows
    limits_per_worker: bool = False
    # limits: length of the RPM/TPM sliding window (60 = per minute; shorter only for tests),
    # how long an unsettled reservation holds budget/concurrency (a crashed replica's requests),
    # plan table overrides (TOML [plans.NAME] tables, or JSON in ETHEREAL_PLANS; see limits/plans.py)
    limits_window_seconds: float = 60.0
    limits_reservation_ttl: float = 900.0
    plans: dict[str, Any] | None = None
    # hard budgets reserve what a request does not say at these ceilings (metering/reserve.py):
    # web searches (and fetches) of a server tool without max_uses, the pages of a url/file
    # document, and tokens per PDF page (Anthropic quotes 1,500-3,000)
    reserve_web_searches: int = 10
    reserve_document_pages: int = 100
    reserve_pdf_page_tokens: int = 3000
    key_cache_ttl: float = 1.0
    # Message Batches (docs/batches.md): how often each replica polls pending batches upstream
    # (seconds), the request and size limits of one batch, and the gateway's public base URL for
    # results_url (default: the scheme and Host of the request asking)
    batch_poll_interval: float = 30.0
    batch_max_requests: int = 100_000
    batch_max_body_bytes: int = 256 * 1024 * 1024
    # bytes of batch creates one worker reads and checks at once (beyond it: 429 with a
    # retry-after; a create alone is always taken): a create holds about twice its body at most
    batch_create_bytes: int = 512 * 1024 * 1024
    public_url: str | None = None
    # how long the last known key record is served while the key store is down (seconds)
    key_cache_stale_max: float = 300.0
    # deadline (seconds) of every store call on a request's path (key lookup, budget seed): a
    # store that hangs is treated as down after this long (docs/limits.md); also the asyncpg
    # pool's acquire and connect timeouts
    store_timeout: float = 2.0
    # client connections (per worker; see server.py and docs/security.md)
    max_header_bytes: int = 64 * 1024
    max_header_fields: int = 200
    header_timeout: float = 10.0
    body_idle_timeout: float = 30.0
    body_min_rate: int = 1024
    keepalive_timeout: float = 5.0
    max_connections: int = 1024
    # the Responses API over WebSocket (api/responses_ws.py): live sockets per key and worker, the
    # largest message a client may send (a full response.create carries the whole conversation, as
    # an HTTP body does), seconds a socket may sit with nothing in flight before it is closed, and
    # the protocol's ping interval (a peer that does not answer within it is dropped)
    ws_max_sockets_per_key: int = 16
    ws_max_message_bytes: int = 32 * 1024 * 1024
    ws_idle_timeout: float = 600.0
    ws_ping_interval: float = 20.0
    # shutdown (ethereal/serving.py): seconds /healthz answers 503 before the listener closes, then
    # seconds requests in flight may take to finish before open streams are ended with an error event
    drain_delay: float = 3.0
    shutdown_grace: float = 20.0
    log_level: str = "info"
    # observability and the console (#14): log line format, /metrics bearer token, an open
    # metrics listener on its own port, console session lifetime, estimator requests per
    # minute per client address
    log_format: str = "text"
    metrics_token: str | None = None
    metrics_port: int | None = None
    console_session_hours: float = 12.0
    estimator_rpm: int = 20
    # wrong admin keys (admin API, console sign-in) per client address per minute in each worker;
    # past it, 429 with a retry-after until the minute is over
    admin_auth_failures: int = 10
    # peers whose X-Forwarded-For names the client (comma-separated addresses, or "*"): where the
    # gateway needs a client's address (the estimator's per-address limit), a request from one of
    # these is counted against the address it forwarded for
    trusted_proxies: str = "127.0.0.1"
    models_file: Path | None = None
    # metering (metering/config.py has the meaning of each)
    meter_batch_size: int = 1000
    meter_interval: float = 0.2
    meter_queue_max: int = 200_000
    meter_recent_size: int = 10_000
    meter_spool_dir: Path | None = None  # default: <data_dir>/spool
    meter_spool_max_bytes: int = 1024 * 1024 * 1024
    meter_segment_bytes: int = 8 * 1024 * 1024
    meter_on_full: str = "drop"
    meter_flush_timeout: float = 15.0
    meter_retry_max: float = 5.0
    meter_lookup_wait: float = 1.0

    @property
    def storage_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ethereal.sqlite3').resolve()}"

    @property
    def is_postgres(self) -> bool:
        return self.storage_url.startswith(("postgres://", "postgresql://"))

    def with_overrides(self, **kwargs: Any) -> Settings:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


_INT_FIELDS = {
    "port": 0,
    "workers": 1,
    "max_body_bytes": 1024,
    "max_attempts": 1,
    "meter_batch_size": 1,
    "meter_queue_max": 1,
    "meter_recent_size": 1,
    "meter_spool_max_bytes": 1024 * 1024,
    "meter_segment_bytes": 4096,
    "batch_max_requests": 1,
    "batch_max_body_bytes": 1024,
    "batch_create_bytes": 1024,
    "max_header_bytes": 1024,
    "max_header_fields": 8,
    "body_min_rate": 0,
    "max_connections": 1,
    "metrics_port": 1,
    "estimator_rpm": 1,
    "admin_auth_failures": 1,
    "upstream_connections": 1,
    "ws_max_sockets_per_key": 1,
    "ws_max_message_bytes": 1024,
    "reserve_web_searches": 0,
    "reserve_document_pages": 0,
    "reserve_pdf_page_tokens": 1,
}
_FLOAT_FIELDS = {
    "connect_timeout": 0.1,
    "first_byte_timeout": 0.1,
    "idle_stream_timeout": 0.1,
    "failover_deadline": 0.1,
    "key_cache_ttl": 0.0,
    "upstream_reload_interval": 0.05,
    "upstream_health_poll": 0.05,
    "upstream_spend_refresh": 0.1,
    "upstream_default_retry_after": 0.0,
    "upstream_backoff_base": 0.0,
    "upstream_backoff_cap": 0.0,
    "upstream_probe_interval": 0.0,
    "upstream_429_cooldown_cap": 0.0,
    "upstream_models_interval": 0.0,
    "limits_window_seconds": 0.05,
    "limits_reservation_ttl": 1.0,
    "meter_interval": 0.001,
    "meter_flush_timeout": 0.1,
    "meter_retry_max": 0.01,
    "meter_lookup_wait": 0.0,
    "batch_poll_interval": 0.05,
    "key_cache_stale_max": 0.0,
    "store_timeout": 0.05,
    "header_timeout": 0.1,
    "body_idle_timeout": 0.1,
    "keepalive_timeout": 0.1,
    "console_session_hours": 0.001,
    "drain_delay": 0.0,
    "shutdown_grace": 0.0,
    "ws_idle_timeout": 0.1,
    "ws_ping_interval": 0.1,
}
_BOOL_FIELDS = {"limits_fail_open", "limits_per_worker", "auto_cache"}
_PATH_FIELDS = {"data_dir", "models_file", "meter_spool_dir"}
_STR_FIELDS = {
    "host",
    "database_url",
    "redis_url",
    "admin_key",
    "admin_read_key",
    "secret_key",
    "key_prefix",
    "base_path",
    "upstream_url",
    "upstream_key",
    "log_level",
    "meter_on_full",
    "public_url",
    "log_format",
    "metrics_token",
    "trusted_proxies",
}


def _coerce(name: str, raw: Any, source: str) -> Any:
    """One value from the environment (a string) or the TOML file (typed), checked the same way."""
    label = f"ETHEREAL_{name.upper()}" if source == "env" else f"{name} (in {source})"
    if name in _INT_FIELDS:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise SettingsError(f"{label} must be an integer, got {raw!r}")
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{label} must be an integer, got {raw!r}") from None
        if value < _INT_FIELDS[name]:
            raise SettingsError(f"{label} must be >= {_INT_FIELDS[name]}, got {value}")
        return value
    if name in _FLOAT_FIELDS:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise SettingsError(f"{label} must be a number, got {raw!r}")
        try:
            number = float(raw)
        except ValueError:
            raise SettingsError(f"{label} must be a number, got {raw!r}") from None
        if not math.isfinite(number):
            raise SettingsError(f"{label} must be a finite number, got {raw!r}")
        if number < _FLOAT_FIELDS[name]:
            raise SettingsError(f"{label} must be >= {_FLOAT_FIELDS[name]}, got {number}")
        return number
    if name in _BOOL_FIELDS:
        if isinstance(raw, bool):
            return raw
        if not isinstance(raw, str):
            raise SettingsError(f"{label} must be a boolean (true/false), got {raw!r}")
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{label} must be a boolean (true/false), got {raw!r}")
    if name in _PATH_FIELDS:
        if not isinstance(raw, str | Path):
            raise SettingsError(f"{label} must be a path, got {raw!r}")
        return Path(raw)
    if name == "plans":
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise SettingsError("ETHEREAL_PLANS must be a JSON object of plan tables") from None
        if not isinstance(raw, dict):
            raise SettingsError(f"{label} must be a table of plan tables")
        return raw
    if name in _STR_FIELDS and not isinstance(raw, str):
        raise SettingsError(f"{label} must be a string, got {raw!r}")
    return raw


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from (lowest to highest) defaults, a TOML file, the environment, overrides.

    Every value, from wherever it came, goes through the same checks; a TOML key the gateway
    does not know is refused by name (a typo must not silently leave a default in force).
    """
    values: dict[str, Any] = {}
    path = config_file or _env("CONFIG")
    known = {f.name for f in fields(Settings)}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        section = dict(data.get("ethereal", data))
        if "ethereal" in data:
            for name, value in data.items():  # [plans.NAME] tables may sit beside [ethereal]
                if name != "ethereal":
                    section.setdefault(name, value)
        for key, value in section.items():
            if key not in known:
                raise SettingsError(f"unknown setting {key!r} in {path}")
            values[key] = _coerce(key, value, str(path))
    fallbacks = {
        "database_url": ("DATABASE_URL",),
        "redis_url": ("REDIS_URL",),
    }
    for name in known:
        raw = _env(name.upper(), *fallbacks.get(name, ()))
        if raw is not None:
            values[name] = _coerce(name, raw, "env")
    if "upstream_key" not in values and "upstream_url" not in values:
        anthropic_key = os.environ.get("ANTHROPIC_API_KEY")
        if anthropic_key:
            values["upstream_key"] = anthropic_key
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value, "arguments")
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    url = settings.storage_url
    if not url.startswith(("sqlite:///", "postgres://", "postgresql://")):
        raise SettingsError(
            f"ETHEREAL_DATABASE_URL must be a postgresql:// URL or sqlite:///path, got {url.split('@')[-1]!r}"
        )
    if settings.redis_url:
        from ethereal.redisconn import validate as validate_redis_url

        try:
            validate_redis_url(settings.redis_url)
        except ValueError as exc:
            raise SettingsError(f"ETHEREAL_REDIS_URL {exc}") from None
    if settings.workers > 1 and not settings.redis_url and not settings.limits_per_worker:
        raise SettingsError(
            f"--workers {settings.workers} without ETHEREAL_REDIS_URL: each worker would keep its own budget, "
            f"rate-window and concurrency counters, so every key could spend {settings.workers}x its budget. "
            "Set ETHEREAL_REDIS_URL (shared, exact limits), run one worker, or set ETHEREAL_LIMITS_PER_WORKER=true "
            "to accept per-worker limits"
        )
    if settings.upstream_url and not settings.upstream_url.startswith(("http://", "https://")):
        raise SettingsError(f"ETHEREAL_UPSTREAM_URL must be an http(s) URL, got {settings.upstream_url!r}")
    if settings.public_url and not settings.public_url.startswith(("http://", "https://")):
        raise SettingsError(f"ETHEREAL_PUBLIC_URL must be an http(s) URL, got {settings.public_url!r}")
    if settings.admin_key is not None and len(settings.admin_key) < 16:
        raise SettingsError("ETHEREAL_ADMIN_KEY must be at least 16 characters")
    if settings.admin_read_key is not None:
        if len(settings.admin_read_key) < 16:
            raise SettingsError("ETHEREAL_ADMIN_READ_KEY must be at least 16 characters")
        if settings.admin_read_key == settings.admin_key:
            raise SettingsError("ETHEREAL_ADMIN_READ_KEY must differ from ETHEREAL_ADMIN_KEY")
    if settings.log_format not in ("text", "json"):
        raise SettingsError(f"ETHEREAL_LOG_FORMAT must be text or json, got {settings.log_format!r}")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise SettingsError(
            f"ETHEREAL_LOG_LEVEL must be debug, info, warning, error or critical, got {settings.log_level!r}"
        )
    if settings.metrics_token is not None and len(settings.metrics_token) < 16:
        raise SettingsError("ETHEREAL_METRICS_TOKEN must be at least 16 characters")
    from ethereal.paths import normalize_base_path

    try:
        object.__setattr__(settings, "base_path", normalize_base_path(settings.base_path))  # frozen
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if not settings.key_prefix or len(settings.key_prefix) > 32:
        raise SettingsError("ETHEREAL_KEY_PREFIX must be 1 to 32 characters")
    if settings.meter_on_full not in ("drop", "reject"):
        raise SettingsError(
            f"ETHEREAL_METER_ON_FULL must be 'drop' or 'reject', got {settings.meter_on_full!r}"
        )
    if settings.meter_queue_max < settings.meter_batch_size:
        raise SettingsError("ETHEREAL_METER_QUEUE_MAX must be >= ETHEREAL_METER_BATCH_SIZE")
    if settings.plans is not None:
        from ethereal.limits.plans import Plans

        if not isinstance(settings.plans, dict):
            raise SettingsError("plans must be a table of plan tables")
        try:
            Plans(settings.plans)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
