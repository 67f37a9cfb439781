"""Records usage off the request path.

``record`` is synchronous and cheap: it appends to an in-memory queue and a
bounded map of recent records (so ``GET /v1/usage/{id}`` answers before the
flush). A background task writes batches to the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from ethereal.metering.record import UsageRecord
from ethereal.storage.base import Store

log = logging.getLogger("ethereal.metering")


class Meter:
    def __init__(self, store: Store, *, batch_size: int = 1000, interval: float = 0.2,
                 recent_size: int = 50_000) -> None:
        self.store = store
        self.batch_size = batch_size
        self.interval = interval
        self._queue: list[UsageRecord] = []
        self._recent: OrderedDict[str, UsageRecord] = OrderedDict()
        self._recent_size = recent_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ethereal-meter")

    def record(self, rec: UsageRecord) -> None:
        self._queue.append(rec)
        self._recent[rec.request_id] = rec
        if len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    async def get(self, request_id: str) -> UsageRecord | None:
        rec = self._recent.get(request_id)
        if rec is not None:
            return rec
        return await self.store.get_usage(request_id)

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
            try:
                await self.store.insert_usage(batch)
            except Exception:  # noqa: BLE001 - the store is down: keep the rows, try again later
                log.exception("usage flush failed; %d records kept for retry", len(batch))
                self._queue[:0] = batch
                return

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
