"""Meter settings: ``ETHEREAL_METER_*`` environment variables, or ``meter_*`` keys in the TOML file
(fields of ``Settings``, validated with everything else at start-up).

=================================  =========  =================================================
variable                           default    meaning
=================================  =========  =================================================
ETHEREAL_METER_BATCH_SIZE          1000       records per database write
ETHEREAL_METER_INTERVAL            0.2        seconds between flushes (sooner when a batch fills)
ETHEREAL_METER_QUEUE_MAX           200000     records held in memory at most (see on_full)
ETHEREAL_METER_RECENT_SIZE         10000      recent records kept for GET /v1/usage/{id}
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

from dataclasses import dataclass
from pathlib import Path

from ethereal.settings import Settings


@dataclass(frozen=True, slots=True)
class MeterConfig:
    batch_size: int = 1000
    interval: float = 0.2
    queue_max: int = 200_000
    recent_size: int = 10_000
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
        """From the validated settings (``ETHEREAL_METER_*`` / ``meter_*``: settings.py checks them)."""
        return cls(
            batch_size=settings.meter_batch_size,
            interval=settings.meter_interval,
            queue_max=settings.meter_queue_max,
            recent_size=settings.meter_recent_size,
            spool_dir=settings.meter_spool_dir or settings.data_dir / "spool",
            spool_max_bytes=settings.meter_spool_max_bytes,
            segment_bytes=settings.meter_segment_bytes,
            on_full=settings.meter_on_full,
            flush_timeout=settings.meter_flush_timeout,
            retry_max=settings.meter_retry_max,
            lookup_wait=settings.meter_lookup_wait,
        )
