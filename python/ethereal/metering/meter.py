"""Records usage off the request path, and never loses it to a database outage.

``record`` is synchronous and cheap (a deque append and a dict insert, ~1 µs):
the request path never waits for the database. A background task writes the
queue in batches (SQLite: ``executemany``; PostgreSQL: binary ``COPY`` into a
staging table, then ``INSERT … ON CONFLICT (request_id) DO NOTHING``).

When a write fails because the database is unreachable, the batch and every
record after it go to the on-disk spool (``spool.py``) instead, in order, and
requests keep flowing. Once a ping succeeds the spool is replayed oldest first,
then the meter goes back to writing straight to the database. A replay may
resend rows a timed-out write had in fact committed: ``insert_usage`` ignores
request_ids already stored, so a row is never duplicated. A write that fails
while the database answers pings is bad data, not an outage: the batch is
bisected, good rows are written and the offending ones are set aside in
``<spool>/quarantine.jsonl`` (counted, logged) so one bad row cannot block the
spool forever.

Spool full (``ETHEREAL_METER_SPOOL_MAX_BYTES``, default 1 GiB, ~2.5 M records:
about 40 minutes of a 1,000 req/s outage): records then wait in memory up to
``queue_max`` (default 200,000). Past that the policy decides:

- ``drop`` (default): the oldest queued records are dropped. Every drop is
  counted (``dropped_records``, ``dropped_cost_micro`` in ``stats()``) and
  logged at ERROR at least every 10 s with the running totals. Why this is the
  default: budgets and rate limits are enforced by the limiter (Redis or
  in-process), not by these rows, so spend stays bounded while records are
  lost; refusing traffic would turn a database incident into a full outage for
  every client, and the operator has had ~40 minutes of loud errors to act.
- ``reject``: when the spool is full and memory is 80% full, new requests are
  refused with 503 ``overloaded_error`` (``retry-after``) until there is room:
  nothing served goes unrecorded, at the price of availability. For
  deployments that bill every request to customers.

A process killed with SIGKILL loses at most the records of the last flush
interval (0.2 s) still in memory; a graceful stop flushes or spools them.

Multiple workers: each process has its own meter, queue and spool directory.
``get`` (``GET /v1/usage/{id}``) answers from this process's recent records,
then the database; a request served by another worker may not be flushed yet,
so ``get`` polls the database for up to ``lookup_wait`` (default 1 s, five
flush intervals) and, when the database is unreachable, scans the spool
directories of every worker on the host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from ethereal.metering.config import MeterConfig
from ethereal.metering.spool import Spool, SpoolFull
from ethereal.storage.base import Store
from ethereal.storage.records import UsageRecord

log = logging.getLogger("ethereal.metering")

T = TypeVar("T")

_MAX_TEXT = 256  # longest string kept in a record field (client-chosen model names can be anything)
_LOG_EVERY = 10.0
# a recent record is answered from memory for this long after its request ended (ten flush
# intervals: the database may not have it yet), from the database after that
_RECENT_TRUSTED = 2.0


def _clean_text(value: str | None) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:_MAX_TEXT]


class Meter:
    def __init__(
        self,
        store: Store,
        config: MeterConfig | None = None,
        *,
        batch_size: int | None = None,
        interval: float | None = None,
        recent_size: int | None = None,
    ) -> None:
        config = config or MeterConfig()
        self.store = store
        self.config = config
        self.batch_size = batch_size or config.batch_size
        self.interval = interval if interval is not None else config.interval
        self.queue_max = max(config.queue_max, self.batch_size)
        self._recent_size = recent_size or config.recent_size
        self._queue: deque[UsageRecord] = deque()
        self._recent: OrderedDict[str, UsageRecord] = OrderedDict()
        # called with every record as it is queued (metrics, the console's live view, the request log);
        # each must be cheap and synchronous: it runs on the request path
        self.observers: list[Callable[[UsageRecord], None]] = []
        self._wake = asyncio.Event()
        self._cycle_lock = asyncio.Lock()  # one flush/spill/replay at a time (flusher, flush(), close())
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ethereal-spool")
        self.spool: Spool | None = None
        if config.spool_dir is not None:
            self.spool = Spool(
                config.spool_dir, max_bytes=config.spool_max_bytes, segment_bytes=config.segment_bytes
            )
        # state
        self._degraded = False
        self._spool_full = False
        self._backoff = config.retry_min
        self._next_retry = 0.0
        self._next_adopt = time.monotonic() + config.adopt_every
        self._last_drop_log = 0.0
        self._last_fail_log = 0.0
        # counters (stats())
        self.recorded = 0
        self.flushed_rows = 0  # rows the database took
        self.flushed_records = 0  # records acknowledged (inserted or already there)
        self.flush_batches = 0
        self.flush_failures = 0
        self.last_flush_at: float | None = None
        self.last_flush_ms: float | None = None
        self.last_error: str | None = None
        self.dropped_records = 0
        self.dropped_cost_micro = 0
        self.quarantined = 0
        self.spool_errors = 0
        self.unauthenticated = 0
        self.refused = 0
        self.lookups_waited = 0
        self.late_records = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ethereal-meter")

    async def close(self) -> None:
        """Flush what can be flushed, spool the rest; never hangs on a dead database for long."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2 * self.config.flush_timeout + 10)
            except TimeoutError:
                log.error("meter flusher did not finish in time; spooling what is left")
                self._task.cancel()
            self._task = None
        if self._queue:
            async with self._cycle_lock:
                if self.spool is not None:
                    self._degraded = True
                    await self._spill()
                else:
                    await self._flush_direct()
        if self._queue:
            log.error(
                "meter closing with %d usage record(s) that could not be written anywhere", len(self._queue)
            )
        if self.spool is not None:
            await self._run_io(self.spool.close)
        self._io.shutdown(wait=True)
        self._closed = True

    # ------------------------------------------------------------------ request path
    def record(self, rec: UsageRecord) -> None:
        """Queue one record. Synchronous, no I/O: safe and cheap on the request path."""
        if self._closed:
            self.late_records += 1
            log.error("usage record %s arrived after the meter closed: not stored", rec.request_id)
            return
        model = rec.model
        if model is not None and (len(model) > _MAX_TEXT or "\x00" in model):
            rec.model = _clean_text(model)
        if rec.error_type is not None and (len(rec.error_type) > _MAX_TEXT or "\x00" in rec.error_type):
            rec.error_type = _clean_text(rec.error_type)
        if rec.error_message is not None and (
            len(rec.error_message) > _MAX_TEXT or "\x00" in rec.error_message
        ):
            rec.error_message = _clean_text(rec.error_message)
        queue = self._queue
        queue.append(rec)
        recent = self._recent
        recent[rec.request_id] = rec
        if len(recent) > self._recent_size:
            recent.popitem(last=False)
        self.recorded += 1
        for observe in self.observers:
            try:
                observe(rec)
            except Exception:
                log.exception("usage observer failed")
        n = len(queue)
        if n >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        if n > self.queue_max:
            self._overflow()

    @property
    def accepting(self) -> bool:
        """False only under ``on_full = reject`` while spool and memory are full."""
        if self.config.on_full != "reject" or (self.spool is not None and not self._spool_full):
            return True
        return len(self._queue) < self.queue_max * 0.8

    def refuse(self) -> None:
        self.refused += 1

    def count_unauthenticated(self) -> None:
        """A request refused before a key was known: counted, not recorded (see docs/metering.md)."""
        self.unauthenticated += 1

    def _overflow(self) -> None:
        queue = self._queue
        dropped = 0
        cost = 0
        while len(queue) > self.queue_max:
            rec = queue.popleft()
            dropped += 1
            cost += rec.cost_micro
        self.dropped_records += dropped
        self.dropped_cost_micro += cost
        now = time.monotonic()
        if now - self._last_drop_log >= _LOG_EVERY:
            self._last_drop_log = now
            log.error(
                "USAGE RECORDS LOST: database unreachable, spool full (%d bytes) and %d records queued in"
                " memory; %d record(s) worth %d micro-USD dropped so far (policy ETHEREAL_METER_ON_FULL=%s)",
                self.spool.bytes if self.spool else 0,
                len(queue),
                self.dropped_records,
                self.dropped_cost_micro,
                self.config.on_full,
            )

    # ------------------------------------------------------------------ lookups
    def recent_records(self) -> list[UsageRecord]:
        """This process's recent records, oldest first (tests, the live view)."""
        return list(self._recent.values())

    async def get(self, request_id: str, *, wait: float | None = None) -> UsageRecord | None:
        """The record of a request: this process's recent records, the database, then the spools.

        Waits up to ``wait`` (default ``lookup_wait``) for a record that another
        worker has recorded but not flushed yet.
        """
        rec = self._recent.get(request_id)
        if rec is not None:
            if time.time() - rec.ended_at < _RECENT_TRUSTED:
                return rec
            # flushed by now: the stored row, which a price correction may have changed since
            # (metering/reprice.py); this process's copy when the database has not got it
            try:
                stored = await asyncio.wait_for(self.store.get_usage(request_id), 2.0)
            except Exception:  # noqa: BLE001 - database down: the copy is what there is
                stored = None
            return stored or rec
        deadline = time.monotonic() + (self.config.lookup_wait if wait is None else wait)
        delay = 0.05
        waited = False
        while True:
            store_ok = True
            try:
                rec = await asyncio.wait_for(self.store.get_usage(request_id), 2.0)
            except Exception:  # noqa: BLE001 - database down: look in the spools
                rec, store_ok = None, False
            if rec is not None:
                return rec
            last = time.monotonic() >= deadline
            if self.spool is not None and (not store_ok or last or self._degraded):
                rec = await self._run_io(self.spool.find, request_id)
                if rec is not None:
                    return rec
            if last:
                return None
            if not waited:
                waited = True
                self.lookups_waited += 1
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)
            rec = self._recent.get(request_id)
            if rec is not None:
                return rec

    # ------------------------------------------------------------------ flushing
    async def flush(self) -> None:
        """Write everything queued now (tests, benchmarks, the admin aggregates, shutdown)."""
        await self._cycle(force_retry=True)

    @property
    def degraded(self) -> bool:
        return self._degraded

    async def _run(self) -> None:
        while True:
            if not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self._cycle(force_retry=self._closing)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("meter flush cycle failed")
                await asyncio.sleep(self.interval)
            if self._closing:
                return

    async def _cycle(self, *, force_retry: bool = False) -> None:
        async with self._cycle_lock:
            await self._cycle_locked(force_retry)

    async def _cycle_locked(self, force_retry: bool) -> None:
        now = time.monotonic()
        spool = self.spool
        if spool is not None and now >= self._next_adopt:
            self._next_adopt = now + self.config.adopt_every
            await self._run_io(spool.adopt_orphans)
        if spool is not None and (self._degraded or not spool.empty):
            # Order: while anything is spooled, new records queue behind it on disk.
            await self._spill()
            if force_retry or now >= self._next_retry:
                await self._replay()
            if not self._degraded and spool.empty:
                await self._flush_direct()
            return
        if self._degraded and not (force_retry or now >= self._next_retry):
            return  # no spool: records wait in memory until the retry
        await self._flush_direct()

    async def _flush_direct(self) -> None:
        queue = self._queue
        while queue:
            n = min(len(queue), self.batch_size)
            batch = [queue.popleft() for _ in range(n)]
            try:
                left = await self._insert(batch)
            except asyncio.CancelledError:
                queue.extendleft(reversed(batch))  # maybe written, maybe not: a replay is harmless
                raise
            if left:
                self._failed()
                if self.spool is not None:
                    await self._spill(first=left)
                else:
                    queue.extendleft(reversed(left))
                return
        if self._degraded and self.spool is None:
            self._recovered(0)

    async def _insert(self, batch: list[UsageRecord], *, careful: bool = True) -> list[UsageRecord]:
        """Write a batch; returns the records NOT written because the database is unreachable."""
        t0 = time.perf_counter()
        try:
            inserted = await asyncio.wait_for(self.store.insert_usage(batch), self.config.flush_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            # A timeout or a network error is an outage, never bad data; anything else while the
            # database still answers pings may be a row it refuses: find it.
            if (
                careful
                and not isinstance(exc, (TimeoutError, asyncio.TimeoutError, OSError))
                and await self._reachable()
            ):
                return await self._insert_bisect(batch)
            now = time.monotonic()
            if now - self._last_fail_log >= _LOG_EVERY:
                self._last_fail_log = now
                log.error(
                    "usage flush failed (%s); %d record(s) go to the %s",
                    self.last_error,
                    len(batch),
                    "spool" if self.spool is not None else "retry queue",
                )
            return batch
        self.flushed_rows += int(inserted or 0)
        self.flushed_records += len(batch)
        self.flush_batches += 1
        self.last_flush_at = time.time()
        self.last_flush_ms = (time.perf_counter() - t0) * 1000.0
        return []

    async def _insert_bisect(self, batch: list[UsageRecord]) -> list[UsageRecord]:
        """The database answers but refused the batch: find and quarantine the bad rows."""
        if len(batch) == 1:
            left = await self._insert(batch, careful=False)
            if not left:
                return []
            await asyncio.sleep(0.05)  # one more try: a deadlock or a blip is not bad data
            left = await self._insert(batch, careful=False)
            if not left:
                return []
            if not await self._reachable():
                return left
            await self._quarantine(batch[0])
            return []
        mid = len(batch) // 2
        halves = (batch[:mid], batch[mid:])
        for i, half in enumerate(halves):
            left = await self._insert(half, careful=False)
            if not left:
                continue
            if not await self._reachable():
                return left + (halves[1] if i == 0 else [])
            left = await self._insert_bisect(half)
            if left:
                return left + (halves[1] if i == 0 else [])
        return []

    async def _quarantine(self, rec: UsageRecord) -> None:
        self.quarantined += 1
        log.error(
            "usage record %s refused by the database (%s): set aside in quarantine.jsonl",
            rec.request_id,
            self.last_error,
        )
        if self.spool is None:
            return
        line = orjson.dumps({"error": self.last_error, "record": rec.to_dict()}) + b"\n"
        path = self.spool.root / "quarantine.jsonl"

        def write() -> None:
            with open(path, "ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

        try:
            await self._run_io(write)
        except OSError:
            log.exception("could not write quarantine file")

    async def _reachable(self) -> bool:
        try:
            await asyncio.wait_for(self.store.ping(), min(5.0, self.config.flush_timeout))
            return True
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            return False

    def _failed(self) -> None:
        self.flush_failures += 1
        if not self._degraded:
            log.error(
                "database unreachable for usage records: %s; spooling to %s and retrying",
                self.last_error,
                self.spool.dir if self.spool else "memory",
            )
        self._degraded = True
        self._next_retry = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.retry_max)

    def _recovered(self, replayed: int) -> None:
        if self._degraded:
            log.warning(
                "database reachable again: usage writes resumed (%d spooled record(s) replayed)", replayed
            )
        self._degraded = False
        self._backoff = self.config.retry_min
        self._next_retry = 0.0

    async def _spill(self, first: list[UsageRecord] | None = None) -> None:
        """Move queued records (``first`` ahead of them) to the spool, as many as fit."""
        assert self.spool is not None
        queue = self._queue
        records = list(first) if first else []
        records.extend(queue)
        queue.clear()
        step = max(self.batch_size, 1000)
        for i in range(0, len(records), step):
            chunk = records[i : i + step]
            try:
                await self._run_io(self.spool.append, chunk)
            except asyncio.CancelledError:
                queue.extendleft(reversed(records[i:]))  # the write may still land: duplicates are ignored
                raise
            except (SpoolFull, OSError) as exc:
                if isinstance(exc, OSError):
                    self.spool_errors += 1
                    log.error("spool write failed: %s", exc)
                if not self._spool_full:
                    log.error(
                        "USAGE SPOOL FULL (%d of %d bytes): records now wait in memory (max %d),"
                        " then policy %r applies",
                        self.spool.bytes,
                        self.spool.max_bytes,
                        self.queue_max,
                        self.config.on_full,
                    )
                self._spool_full = True
                queue.extendleft(reversed(records[i:]))
                if len(queue) > self.queue_max:
                    self._overflow()
                return
        if records:
            self._spool_full = False

    async def _replay(self) -> None:
        assert self.spool is not None
        if not await self._reachable():
            self._failed()
            return
        replayed = 0
        step = max(self.batch_size, 5000)
        while True:
            segment = await self._run_io(self.spool.next_segment)
            if segment is None:
                break
            records = await self._run_io(self.spool.read, segment)
            for i in range(0, len(records), step):
                left = await self._insert(records[i : i + step])
                if left:
                    self._failed()
                    return
            await self._run_io(self.spool.done, segment, len(records))
            replayed += len(records)
            self._spool_full = False
            if len(self._queue) >= self.batch_size:
                await self._spill()
        self._recovered(replayed)

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # ------------------------------------------------------------------ metrics
    def stats(self) -> dict[str, Any]:
        """Counters for the dashboard and metrics (cheap: no I/O)."""
        spool = self.spool
        return {
            "worker_pid": os.getpid(),
            "queue_depth": len(self._queue),
            "queue_max": self.queue_max,
            "recent_records": len(self._recent),
            "recorded": self.recorded,
            "flushed_rows": self.flushed_rows,
            "flushed_records": self.flushed_records,
            "duplicates_ignored": self.flushed_records - self.flushed_rows,
            "flush_batches": self.flush_batches,
            "flush_failures": self.flush_failures,
            "last_flush_at": self.last_flush_at,
            "last_flush_ms": self.last_flush_ms,
            "last_error": self.last_error,
            "degraded": self._degraded,
            "accepting": self.accepting,
            "on_full": self.config.on_full,
            "spool_bytes": spool.bytes if spool else 0,
            "spool_max_bytes": spool.max_bytes if spool else 0,
            "spool_segments": (len(spool.pending) + (1 if spool.open_records else 0)) if spool else 0,
            "spool_full": self._spool_full,
            "spooled_records": spool.stats.spooled_records if spool else 0,
            "replayed_records": spool.stats.replayed_records if spool else 0,
            "spool_torn_lines": spool.stats.torn_lines if spool else 0,
            "spool_errors": self.spool_errors,
            "spool_adopted_dirs": spool.stats.adopted_dirs if spool else 0,
            "dropped_records": self.dropped_records,
            "dropped_cost_micro": self.dropped_cost_micro,
            "quarantined": self.quarantined,
            "unauthenticated": self.unauthenticated,
            "refused": self.refused,
            "lookups_waited": self.lookups_waited,
            "late_records": self.late_records,
        }
