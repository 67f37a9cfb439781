"""Meter settings: ``ETHEREAL_METER_*`` environment variables, or ``meter_*`` keys in the TOML file.

=================================  =========  =================================================
variable                           default    meaning
=================================  =========  =================================================
ETHEREAL_METER_BATCH_SIZE          1000       records per database write
ETHEREAL_METER_INTERVAL            0.2        seconds between flushes (sooner when a batch fills)
ETHEREAL_METER_QUEUE_MAX           200000     records held in memory at most (see on_full)
ETHEREAL_METER_RECENT_SIZE         50000      recent records kept for GET /v1/usage/{id}
ETHEREAL_METER_SPOOL_DIR           <data_dir>/spool
ETHEREAL_METER_SPOOL_MAX_BYTES     1 GiB      bound of the on-disk spool (all segments)
ETHEREAL_METER_SEGMENT_BYTES       8 MiB      spool segment size
ETHEREAL_METER_ON_FULL             drop       spool and memory full: ``drop`` the oldest queued
                                              records (counted, logged) or ``reject`` new
                                              requests with 503 until there is room
ETHEREAL_METER_FLUSH_TIMEOUT       15         seconds before a database write is given up
ETHEREAL_METER_RETRY_MAX           5          longest pause between reconnection attempts (s)
ETHEREAL_METER_LOOKUP_WAIT         1.0        GET /v1/usage/{id}: how long to wait for a record
                                              another worker has not flushed yet (s)
=================================  =========  =================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ethereal.settings import Settings, SettingsError


@dataclass(frozen=True, slots=True)
class MeterConfig:
    batch_size: int = 1000
    interval: float = 0.2
    queue_max: int = 200_000
    recent_size: int = 50_000
    spool_dir: Path | None = None  # None: no spool (tests, tools)
    spool_max_bytes: int = 1024 * 1024 * 1024
    segment_bytes: int = 8 * 1024 * 1024
    on_full: str = "drop"
    flush_timeout: float = 15.0
    retry_min: float = 0.25
    retry_max: float = 5.0
    lookup_wait: float = 1.0
    adopt_every: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MeterConfig:
        values: dict[str, Any] = {"spool_dir": settings.data_dir / "spool"}
        for f in fields(cls):
            raw = os.environ.get(f"ETHEREAL_METER_{f.name.upper()}")
            if raw is None or raw == "":
                raw = settings.extra.get(f"meter_{f.name}") if settings.extra else None
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, raw)
        config = cls(**values)
        if config.on_full not in ("drop", "reject"):
            raise SettingsError(f"ETHEREAL_METER_ON_FULL must be 'drop' or 'reject', got {config.on_full!r}")
        if config.batch_size < 1 or config.queue_max < config.batch_size:
            raise SettingsError("ETHEREAL_METER_QUEUE_MAX must be >= ETHEREAL_METER_BATCH_SIZE >= 1")
        return config


_INTS = {"batch_size", "queue_max", "recent_size", "spool_max_bytes", "segment_bytes"}
_FLOATS = {"interval", "flush_timeout", "retry_min", "retry_max", "lookup_wait", "adopt_every"}


def _coerce(name: str, raw: Any) -> Any:
    try:
        if name in _INTS:
            return int(raw)
        if name in _FLOATS:
            return float(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"ETHEREAL_METER_{name.upper()} must be a number, got {raw!r}") from None
    if name == "spool_dir":
        return Path(raw)
    return str(raw)
