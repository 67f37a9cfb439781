"""Message Batches: create, poll, settle, results, cancel, delete (docs/batches.md).

A batch lives on the upstream credential that created it (the upstream keeps it in that
account); the gateway's row (``message_batches``) maps its own id to the upstream's and is the
only state, so any replica serves any batch and a restart loses nothing.

Money: at create the batch's estimated cost at the batch price is charged to the key's budget
(``Limiter.charge``, refused with 402 when it does not fit) and remembered as the row's hold;
when the batch has ended its results are read once, one usage row per item is written with the
item's exact usage at the batch price under a derived id (``ids.item_request_id``), the row is
flipped to settled (once, whoever gets there first), and the key's spend is moved from the
estimate to the real cost. Replays write the same ids, which the stores ignore, so nothing is
billed twice; a settle cut short is simply done again.

Polling: every replica runs ``poll_forever``; a batch is polled and settled by the replica
holding its lease (``Store.claim_batch``), so N replicas cost the upstream one poll per batch
per interval. A client's ``GET`` of an unfinished batch refreshes it too (at most once a
second), and the first results fetch settles an ended batch that the poller has not reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

import orjson

from ethereal.batches.ids import batch_id, item_request_id
from ethereal.batches.validate import CheckedBatch, check_batch, splice_models
from ethereal.errors import STATUS_TYPES, GatewayError, upstream_error
from ethereal.guards import well_formed_id
from ethereal.keys import KeyRecord, teams_label
from ethereal.limits import Admission
from ethereal.metering.pricing import model_for
from ethereal.metering.record import usage_record
from ethereal.pipeline import Call, forward_headers
from ethereal.storage.records import BatchRecord, UsageRecord
from ethereal.upstream.client import UpstreamConnectError, UpstreamResponse, UpstreamStreamError
from ethereal.upstream.hints import retry_after_seconds
from ethereal.upstream.pool import Credential, FailureKind
from ethereal.usage import Usage

if TYPE_CHECKING:
    from ethereal.gateway import Gateway
    from ethereal.models import Model
    from ethereal.pipeline import Pipeline

log = logging.getLogger("ethereal.batches")

PATH = "/v1/messages/batches"
ROUTE = "messages.batches"  # the usage rows' route
DAY = 24 * 3600.0
CREATING_STALE = 600.0  # a row still "creating" after this died with its replica mid-create
REFRESH_ON_GET = 1.0  # a client polling GET refreshes from the upstream at most this often
INSERT_CHUNK = 1000
SETTLE_WAIT = 60.0  # a delete waits this long for a settlement in progress elsewhere
OFFLOAD_BYTES = 1 << 20  # bodies larger than this are parsed and checked in a thread
CREATE_RETRY_AFTER = 2.0  # seconds: a create refused for room held by others in flight retries after this
MAX_LINE = 64 * 1024 * 1024  # one result line (a Message) is far smaller; bounds a broken upstream

_TYPE_STATUS = {v: k for k, v in reversed(list(STATUS_TYPES.items()))}
_TYPE_STATUS["overloaded_error"] = 529
_COUNTS = ("processing", "succeeded", "errored", "canceled", "expired")


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def not_found(batch: str) -> GatewayError:
    return GatewayError(404, f"message_batch {batch[:80]!r} not found")


class BatchService:
    def __init__(self, gw: Gateway, pipeline: Pipeline) -> None:
        self.gw = gw
        self.pipeline = pipeline
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._settling: set[str] = set()
        self._create_bytes = 0  # bytes of the creates in flight in this worker (``creating``)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.poll_forever(), name="ethereal-batches")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await task
        self._task = None

    @property
    def store(self) -> Any:
        return self.gw.store

    # ------------------------------------------------------------------ the client-facing shape
    @staticmethod
    def view(rec: BatchRecord, base_url: str) -> dict[str, Any]:
        ended = rec.status == "ended"
        return {
            "id": rec.id,
            "type": "message_batch",
            "processing_status": "in_progress" if rec.status == "creating" else rec.status,
            "request_counts": {name: getattr(rec, name) for name in _COUNTS},
            "ended_at": _rfc3339(rec.ended_at),
            "created_at": _rfc3339(rec.created_at),
            "expires_at": _rfc3339(rec.expires_at),
            "archived_at": _rfc3339(rec.archived_at),
            "cancel_initiated_at": _rfc3339(rec.cancel_initiated_at),
            "results_url": f"{base_url}{PATH}/{rec.id}/results" if ended else None,
        }

    # ------------------------------------------------------------------ upstream calls
    @staticmethod
    def _headers(cred: Credential, raw: list[tuple[bytes, bytes]] | None) -> dict[str, str]:
        """The client's forwardable headers (the pipeline's rule) on its own calls; the poller's
        calls carry only the version."""
        return forward_headers(raw or [], cred.api_key)

    async def _call(
        self,
        cred: Credential,
        method: str,
        path: str,
        body: bytes | None = None,
        raw: list[tuple[bytes, bytes]] | None = None,
    ) -> tuple[int, bytes, UpstreamResponse]:
        resp = await self.gw.client.request(
            method, cred.base_url + path, self._headers(cred, raw), body, pool_key=cred.name
        )
        try:
            payload = await resp.read()
        except UpstreamStreamError as exc:
            raise UpstreamConnectError(f"body cut: {exc}") from exc
        return resp.status, payload, resp

    def _credential(self, rec: BatchRecord) -> Credential:
        """The credential the batch lives on, enabled or not: its pending batches are still read."""
        cred = self.gw.pool.get(rec.credential)
        if cred is None:
            raise GatewayError(
                503,
                f"the upstream credential this batch lives on ({rec.credential!r}) is not "
                "configured; its results are fetched once it is back",
                type="overloaded_error",
                retry_after=30.0,
            )
        return cred

    async def _upstream_error(
        self, cred: Credential, status: int, payload: bytes, resp: UpstreamResponse
    ) -> GatewayError:
        """An upstream error answer to one of the service's calls, counted against the credential
        as the pipeline counts it on /v1/messages (``FailureKind.for_status``: 503 overloaded, 504
        a timeout, the client's own errors nothing), and the error the client is given."""
        kind = FailureKind.for_status(status)
        if kind is not None:
            await self.gw.pool.report_failure(
                cred, kind, retry_after_seconds(resp.headers), detail=f"HTTP {status}"
            )
        return upstream_error(status, payload, resp.headers)

    async def _unreachable(self, cred: Credential, exc: UpstreamConnectError) -> GatewayError:
        """A call that got nothing back: counted against the credential as on /v1/messages."""
        await self.gw.pool.report_failure(cred, FailureKind(exc.kind), detail=str(exc))
        return GatewayError(502, f"the upstream could not be reached: {exc}")

    # ------------------------------------------------------------------ create
    def creating(self, key: KeyRecord, declared: int | None) -> Creating:
        """``async with service.creating(key, content_length) as slot``: what a create holds while its
        body is read, checked and sent (docs/batches.md, "Creating a big batch"):

        * its bytes against this worker's ``ETHEREAL_BATCH_CREATE_BYTES`` (the declared length up
          front; a body without one grows its share through ``slot.grow`` as it arrives): beyond
          it, 429 ``rate_limit_error`` with a retry-after, unless nothing else is in flight;
        * one of the key's concurrent requests (its concurrency cap) and one of its requests per
          minute, for as long as the create lasts."""
        return Creating(self, key, declared)

    def _take_bytes(self, slot: Creating, size: int) -> None:
        others = self._create_bytes - slot.bytes
        if others > 0 and self._create_bytes + size > self.gw.settings.batch_create_bytes:
            mib = 1024 * 1024
            raise GatewayError(
                429,
                f"this gateway worker is busy creating other batches ({others // mib} MiB in "
                f"flight, at most {self.gw.settings.batch_create_bytes // mib} MiB): retry shortly",
                type="rate_limit_error",
                retry_after=CREATE_RETRY_AFTER,
            )
        self._create_bytes += size
        slot.bytes += size

    async def create(self, key: KeyRecord, body: bytes, raw: list[tuple[bytes, bytes]]) -> BatchRecord:
        """Check, hold the estimate against the budget, send upstream. ``body`` is the only copy of
        the client's bytes (the caller keeps none): what goes upstream is that very object, or,
        when an item's model is an alias, its spliced copy, and the original is let go."""
        gw = self.gw

        def resolve(name: str) -> tuple[str, Any]:
            # the pipeline's own resolution: aliases, the key's allowed models (403)
            call = Call(request_id="", route=ROUTE, key=key)
            self.pipeline.resolve_model(call, name)
            return call.model_name or name, call.model

        def check() -> CheckedBatch:
            return check_batch(
                body,
                resolve=resolve,
                max_requests=gw.settings.batch_max_requests,
                max_item_bytes=gw.settings.max_body_bytes,
                registry=gw.registry,
                config=self.pipeline.reserve_config,
            )

        if len(body) > OFFLOAD_BYTES:
            # reading 10,000 items is ~0.3 s of CPU (a 250 MB batch, seconds): off the event loop,
            # so the worker's other requests (streams in flight, /healthz) keep moving meanwhile
            checked = await asyncio.to_thread(check)
        else:
            checked = check()
        body = splice_models(body, checked)
        held = gw.limiter.budgeted(key)
        new_id = batch_id()
        if held:
            try:
                await gw.limiter.charge(
                    key, tokens=checked.estimated_tokens, cost_micro=checked.estimated_micro, check=True
                )
            except GatewayError as exc:
                if exc.status == 402:
                    raise await self._does_not_fit(key, checked) from None
                raise
        # spend limits: the estimate is held on the caps under the batch's id until it settles
        try:
            await gw.limiter.charge_caps(key, cost_micro=checked.estimated_micro, check=True, hold=new_id)
        except BaseException:
            await self._refund(key, checked, held)
            raise
        candidates = [c for c in gw.pool.candidates(None) if all(c.serves(m) for m in checked.models)]
        if not candidates:
            # a cooldown is a preference, not a wall: every serving credential cooling down, the
            # one that recovers first gets the batch (its own answer, retry hints included, is
            # what the client would have had calling it directly)
            candidates = sorted(
                (
                    c
                    for c in gw.pool.credentials
                    if c.enabled and not c.over_spend() and all(c.serves(m) for m in checked.models)
                ),
                key=lambda c: c.cooldown_until,
            )
        if not candidates:
            await self._refund(key, checked, held, new_id)
            raise GatewayError(
                503,
                "no healthy upstream credential can serve every model of this batch",
                type="overloaded_error",
                retry_after=max(1.0, gw.pool.earliest_recovery(None)),
            )
        now = time.time()
        rec = BatchRecord(
            id=new_id,
            key_id=key.id,
            credential=candidates[0].name,
            status="creating",
            request_count=checked.count,
            processing=checked.count,
            created_at=now,
            expires_at=now + DAY,
            estimated_tokens=checked.estimated_tokens,
            estimated_micro=checked.estimated_micro,
            held_tokens=checked.estimated_tokens if held else 0,
            held_micro=checked.estimated_micro if held else 0,
            polled_at=now,
        )
        # the row exists before the upstream call: a replica dying mid-create leaves a row the
        # poller finds and refunds (CREATING_STALE), never a hold nobody knows about
        await self.store.insert_batch(rec)
        # a client that hangs up from here on does not stop the create half way: the batch is
        # made (and listed) or refused and refunded, never left "creating" with a hold
        return await asyncio.shield(self._send_create(key, checked, held, rec, candidates, body, raw))

    async def _send_create(
        self,
        key: KeyRecord,
        checked: CheckedBatch,
        held: bool,
        rec: BatchRecord,
        candidates: list[Credential],
        body: bytes,
        raw: list[tuple[bytes, bytes]],
    ) -> BatchRecord:
        gw = self.gw
        last: GatewayError | None = None
        for cred in candidates[: max(1, gw.settings.max_attempts)]:
            if cred.name != rec.credential:
                await self.store.update_batch(rec.id, {"credential": cred.name})
                rec.credential = cred.name
            try:
                status, payload, resp = await self._call(cred, "POST", PATH, body, raw)
            except UpstreamConnectError as exc:
                last = await self._unreachable(cred, exc)
                continue
            if status == 200:
                await gw.pool.report_success(cred)
                try:
                    upstream = orjson.loads(payload)
                    up_id = upstream["id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    last = GatewayError(502, "the upstream answered a batch without an id")
                    break
                changes = self._changes(upstream)
                changes["upstream_id"] = up_id
                updated = await self.store.update_batch(rec.id, changes)
                return updated or rec
            last = await self._upstream_error(cred, status, payload, resp)
            if FailureKind.for_status(status) is not None:
                continue  # counted against this credential: another may take it
            break  # the client's own mistake: no other credential will think otherwise
        await self.store.delete_batch(rec.id)
        await self._refund(key, checked, held, rec.id)
        raise last or GatewayError(503, "no upstream credential accepted the batch", type="overloaded_error")

    async def _does_not_fit(self, key: KeyRecord, checked: CheckedBatch) -> GatewayError:
        """Why a batch's hold was refused: 402 when what the key has really spent (its usage rows)
        plus this batch's estimate is over the budget, else 429 with a retry-after: the budget is
        held by its other batches (until they settle) or by requests in flight, not spent."""
        what = (
            f"this batch's estimated cost ({checked.estimated_micro / 1e6:.6f} USD at the batch price, "
            f"{checked.estimated_tokens} tokens)"
        )
        spend = (await self.store.spend_by_key([key.id])).get(key.id) or {}
        spent_tokens, spent_micro = int(spend.get("tokens") or 0), int(spend.get("cost_micro") or 0)
        over_tokens = (
            key.budget_tokens is not None and spent_tokens + checked.estimated_tokens > key.budget_tokens
        )
        over_micro = (
            key.budget_micro_usd is not None and spent_micro + checked.estimated_micro > key.budget_micro_usd
        )
        if over_tokens or over_micro:
            return GatewayError(
                402, f"{what} does not fit what is left of this API key's budget", type="billing_error"
            )
        held_tokens, held_micro = await self.store.batch_holds(key.id)
        if held_tokens or held_micro:
            # a hold changes when its batch settles: the poller looks at every interval
            wait = min(300.0, max(1.0, self.gw.settings.batch_poll_interval))
            return GatewayError(
                429,
                f"{what} fits this API key's budget, but not beside what its other unsettled "
                "batches hold until they settle (and its requests in flight): retry later",
                type="rate_limit_error",
                retry_after=wait,
            )
        return GatewayError(
            429,
            f"{what} fits this API key's budget, but not beside what its requests in "
            "flight hold: retry when they end",
            type="rate_limit_error",
            retry_after=CREATE_RETRY_AFTER,
        )

    async def _refund(self, key: KeyRecord, checked: CheckedBatch, held: bool, hold: str = "") -> None:
        if hold:
            await self.gw.limiter.charge_caps(key, cost_micro=0, check=False, hold=hold, release=True)
        if held:
            await self.gw.limiter.charge(
                key, tokens=-checked.estimated_tokens, cost_micro=-checked.estimated_micro, check=False
            )

    @staticmethod
    def _changes(upstream: dict[str, Any]) -> dict[str, Any]:
        """Row columns from an upstream ``message_batch``."""
        changes: dict[str, Any] = {}
        status = upstream.get("processing_status")
        if status in ("in_progress", "canceling", "ended"):
            changes["status"] = status
        counts = upstream.get("request_counts")
        if isinstance(counts, dict):
            for name in _COUNTS:
                value = counts.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    changes[name] = value
        for name in ("ended_at", "cancel_initiated_at", "archived_at", "expires_at"):
            ts = _epoch(upstream.get(name))
            if ts is not None:
                changes[name] = ts
        return changes

    # ------------------------------------------------------------------ reading
    async def owned(self, key: KeyRecord | None, batch: str) -> BatchRecord:
        """The batch when ``key`` may see it (its own, or any for the admin: ``key`` None); else 404."""
        if not well_formed_id(batch, "msgbatch_", 64):
            raise not_found(batch)
        rec = await self.store.get_batch(batch)
        if rec is None or (key is not None and rec.key_id != key.id):
            raise not_found(batch)  # the same answer for "not yours" and "unknown"
        return rec

    async def get(self, key: KeyRecord | None, batch: str) -> BatchRecord:
        rec = await self.owned(key, batch)
        if rec.status not in ("ended", "creating") and time.time() - rec.polled_at >= REFRESH_ON_GET:
            try:
                rec = await self.refresh(rec)
            except GatewayError as exc:  # the last known state is still the right answer
                log.info("refreshing batch %s failed: %s", rec.id, exc.message)
        return rec

    async def list_batches(
        self, key: KeyRecord | None, *, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[BatchRecord], bool]:
        return await self.store.list_batches(
            key_id=key.id if key else None, limit=limit, after_id=after_id, before_id=before_id
        )

    async def refresh(self, rec: BatchRecord) -> BatchRecord:
        """The upstream's view of the batch into the row. Raises GatewayError when it cannot be had."""
        if rec.upstream_id is None:
            return rec
        cred = self._credential(rec)
        now = time.time()
        try:
            status, payload, resp = await self._call(cred, "GET", f"{PATH}/{rec.upstream_id}")
        except UpstreamConnectError as exc:
            await self._poll_failed(rec, f"upstream unreachable: {exc}")
            raise await self._unreachable(cred, exc) from None
        if status == 200:
            try:
                changes = self._changes(orjson.loads(payload))
            except (orjson.JSONDecodeError, AttributeError):
                await self._poll_failed(rec, "the upstream answered a malformed batch")
                raise GatewayError(502, "the upstream answered a malformed batch") from None
            changes.update(polled_at=now, poll_failures=0, last_error=None)
            return await self.store.update_batch(rec.id, changes) or rec
        if status == 404:
            # the upstream no longer has it (deleted there, or past its retention): nothing more
            # will come; the batch ends here and its hold is released when it settles (no rows)
            log.error(
                "batch %s (upstream %s on %s) is gone upstream", rec.id, rec.upstream_id, rec.credential
            )
            changes = {
                "status": "ended",
                "ended_at": rec.ended_at or now,
                "polled_at": now,
                "last_error": "the upstream no longer has this batch",
            }
            return await self.store.update_batch(rec.id, changes) or rec
        err = await self._upstream_error(cred, status, payload, resp)
        await self._poll_failed(rec, f"upstream answered {status}: {err.message}")
        raise err

    async def _poll_failed(self, rec: BatchRecord, why: str) -> None:
        await self.store.update_batch(
            rec.id,
            {"polled_at": time.time(), "poll_failures": rec.poll_failures + 1, "last_error": why[:500]},
        )

    # ------------------------------------------------------------------ cancel and delete
    async def cancel(self, key: KeyRecord | None, batch: str, raw: list[tuple[bytes, bytes]]) -> BatchRecord:
        rec = await self.owned(key, batch)
        if rec.status == "creating" or rec.upstream_id is None:
            raise GatewayError(
                409, "the batch is still being created; retry in a moment", type="invalid_request_error"
            )
        if rec.status == "ended":
            return rec
        cred = self._credential(rec)
        try:
            status, payload, resp = await self._call(
                cred, "POST", f"{PATH}/{rec.upstream_id}/cancel", b"", raw
            )
        except UpstreamConnectError as exc:
            raise await self._unreachable(cred, exc) from None
        if status != 200:
            raise await self._upstream_error(cred, status, payload, resp)
        changes = self._changes(orjson.loads(payload))
        changes.setdefault("cancel_initiated_at", time.time())
        changes["polled_at"] = time.time()
        return await self.store.update_batch(rec.id, changes) or rec

    async def delete(self, key: KeyRecord | None, batch: str, raw: list[tuple[bytes, bytes]]) -> str:
        rec = await self.owned(key, batch)
        if rec.status != "ended":
            rec = await self.get(key, batch)
        if rec.status != "ended":
            raise GatewayError(
                400,
                f"message_batch {rec.id} is still processing ({rec.status}): a batch can be "
                "deleted once it has ended; cancel it first",
            )
        if not rec.settled:
            # its items are billed before its results can go away upstream
            rec = await self._settled(rec)
        if rec.upstream_id is not None and rec.last_error != "the upstream no longer has this batch":
            cred = self._credential(rec)
            try:
                status, payload, resp = await self._call(
                    cred, "DELETE", f"{PATH}/{rec.upstream_id}", None, raw
                )
            except UpstreamConnectError as exc:
                raise await self._unreachable(cred, exc) from None
            if status not in (200, 404):
                raise await self._upstream_error(cred, status, payload, resp)
        await self.store.delete_batch(rec.id)
        return rec.id

    # ------------------------------------------------------------------ results
    async def open_results(
        self, key: KeyRecord | None, batch: str, raw: list[tuple[bytes, bytes]]
    ) -> UpstreamResponse:
        """The upstream's results response, ready to stream; starts settling when not done yet."""
        rec = await self.owned(key, batch)
        if rec.status != "ended":
            rec = await self.get(key, batch)
        if rec.status != "ended":
            raise GatewayError(
                404,
                f"message_batch {rec.id} has not ended ({rec.status}): its results are "
                "available once processing has ended",
            )
        cred = self._credential(rec)
        try:
            resp = await self.gw.client.request(
                "GET",
                f"{cred.base_url}{PATH}/{rec.upstream_id}/results",
                self._headers(cred, raw),
                None,
                pool_key=cred.name,
            )
        except UpstreamConnectError as exc:
            raise await self._unreachable(cred, exc) from None
        if resp.status != 200:
            payload = await resp.read()
            raise await self._upstream_error(cred, resp.status, payload, resp)
        if not rec.settled:
            self._spawn(self.settle(rec))
        return resp

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ settle
    async def _settled(self, rec: BatchRecord) -> BatchRecord:
        """The batch once settled: by this call, or by whoever is settling it now (this process's
        poller or results fetch, another replica), waiting for them up to SETTLE_WAIT seconds."""
        deadline = time.monotonic() + SETTLE_WAIT
        while True:
            await self.settle(rec)
            found = await self.store.get_batch(rec.id)
            if found is None or found.settled:
                return found or rec
            if time.monotonic() > deadline:
                raise GatewayError(
                    503,
                    "the batch's usage is still being recorded; retry shortly",
                    type="overloaded_error",
                    retry_after=5.0,
                )
            rec = found
            await asyncio.sleep(0.1)

    async def settle(self, rec: BatchRecord) -> bool:
        """Meter an ended batch's items and release its hold; True when this call settled it.

        Takes the batch's lease first, so two replicas never read the same results together
        (they would write the same rows, harmlessly, but the upstream would serve them twice)."""
        if rec.settled or rec.id in self._settling:
            return False
        now = time.time()
        lease = max(60.0, 4 * self.gw.settings.batch_poll_interval)
        if not await self.store.claim_batch(rec.id, self.owner, now + lease, now):
            return False
        self._settling.add(rec.id)
        try:
            if rec.upstream_id is None or rec.last_error == "the upstream no longer has this batch":
                tokens = micro = items = 0
            else:
                tokens, micro, items = await self._meter(rec)
            flipped = await self.store.settle_batch(rec.id, tokens=tokens, micro=micro, items=items)
            if flipped:
                await self._move_spend(rec, tokens, micro)
                log.info(
                    "batch %s settled: %d items, %d tokens, %d micro-USD (held %d)",
                    rec.id,
                    items,
                    tokens,
                    micro,
                    rec.held_micro,
                )
            return flipped
        finally:
            self._settling.discard(rec.id)
            await self.store.update_batch(rec.id, {"lease_until": 0.0})

    async def _move_spend(self, rec: BatchRecord, tokens: int, micro: int) -> None:
        if rec.key_id is None:
            return
        key = await self.store.get_key(rec.key_id)
        if key is None:
            return
        try:
            await self.gw.limiter.charge(
                key, tokens=tokens - rec.held_tokens, cost_micro=micro - rec.held_micro, check=False
            )
        except Exception:
            log.exception("moving the spend of batch %s failed", rec.id)
        try:
            # spend limits: the estimate given back where it was held, the real cost counted now
            await self.gw.limiter.charge_caps(key, cost_micro=micro, check=False, hold=rec.id, release=True)
        except Exception:
            log.exception("moving the spend-limit counters of batch %s failed", rec.id)

    async def _meter(self, rec: BatchRecord) -> tuple[int, int, int]:
        """Read the results once, line by line, writing one usage row per item (chunks of 1,000)."""
        cred = self._credential(rec)
        try:
            resp = await self.gw.client.request(
                "GET",
                f"{cred.base_url}{PATH}/{rec.upstream_id}/results",
                self._headers(cred, None),
                None,
                pool_key=cred.name,
            )
        except UpstreamConnectError as exc:
            raise await self._unreachable(cred, exc) from None
        if resp.status != 200:
            raise await self._upstream_error(cred, resp.status, await resp.read(), resp)
        tokens = micro = items = 0
        pending: list[UsageRecord] = []
        # every item counts in the period its result is settled (reports, spend limits): the
        # rows start now; each is still priced at the card in force when the batch was created
        settled_at = time.time()
        key = await self.store.get_key(rec.key_id) if rec.key_id else None
        try:
            async for line in _lines(resp.iter_chunks()):
                row = self._usage_row(rec, line, settled_at=settled_at, key=key)
                if row is None:
                    continue
                items += 1
                tokens += (
                    row.input_tokens
                    + row.output_tokens
                    + row.cache_creation_5m
                    + row.cache_creation_1h
                    + row.cache_read
                )
                micro += row.cost_micro
                pending.append(row)
                if len(pending) >= INSERT_CHUNK:
                    await self.store.insert_usage(pending)
                    pending = []
            if pending:
                await self.store.insert_usage(pending)
        except UpstreamStreamError as exc:
            raise GatewayError(502, f"the upstream cut the results: {exc}") from None
        finally:
            resp.release()
        return tokens, micro, items

    def _usage_row(
        self, rec: BatchRecord, line: bytes, *, settled_at: float | None = None, key: KeyRecord | None = None
    ) -> UsageRecord | None:
        try:
            item = orjson.loads(line)
            custom_id = item["custom_id"]
            result = item["result"]
            kind = result["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("batch %s: a result line could not be read (%d bytes)", rec.id, len(line))
            return None
        if not isinstance(custom_id, str) or len(custom_id) > 64:
            return None
        # the one record builder (metering.record, Pipeline.finish's too), at the batch price
        ended_at = rec.ended_at or time.time()
        fields: dict[str, Any] = {}
        model: Model | None = None
        usage = Usage()
        if kind == "succeeded":
            message = result.get("message") if isinstance(result, dict) else None
            name = message.get("model") if isinstance(message, dict) else None
            model = model_for(self.gw.registry, name) if isinstance(name, str) else None
            msg_id = message.get("id") if isinstance(message, dict) else None
            fields["upstream_request_id"] = msg_id[:128] if isinstance(msg_id, str) else None
            # the same reading of a Message's usage as /v1/messages: every token kind, iterations
            # (each at its own model), web searches
            usage = Usage.from_message(
                message.get("usage") if isinstance(message, dict) else None, served_model=name
            )
            status = 200
        elif kind == "errored":
            error = result.get("error") if isinstance(result, dict) else None
            inner = error.get("error") if isinstance(error, dict) else None
            etype = inner.get("type") if isinstance(inner, dict) else None
            fields["error_type"] = etype if isinstance(etype, str) else "api_error"
            status = _TYPE_STATUS.get(fields["error_type"], 500)
            message_text = inner.get("message") if isinstance(inner, dict) else None
            fields["error_message"] = message_text if isinstance(message_text, str) else None
        else:  # canceled, expired: never processed, never billed
            fields["error_type"] = kind if kind in ("canceled", "expired") else "unknown"
            status = 499 if kind == "canceled" else 408
            fields["error_message"] = (
                f"the batch item was {kind}" if kind in ("canceled", "expired") else None
            )
        # counted in the period its result is settled in (reports, spend limits), priced at the card
        # in force when the batch was created
        started_at = rec.created_at if settled_at is None else settled_at
        return usage_record(
            self.gw.registry,
            usage,
            request_id=item_request_id(rec.id, custom_id),
            key_id=rec.key_id,
            credential=rec.credential,
            route=ROUTE,
            model=model,
            model_name=model.id if model is not None else None,
            status=status,
            stream=False,
            started_at=started_at,
            ended_at=max(ended_at, started_at),
            duration_ms=max(0.0, (ended_at - rec.created_at) * 1000.0),
            batch=True,
            priced_at=rec.created_at,
            owner=(key.owner or None) if key else None,
            teams=teams_label(key.teams) if key else None,
            **fields,
        )

    # ------------------------------------------------------------------ the poller
    async def poll_forever(self) -> None:
        interval = self.gw.settings.batch_poll_interval
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch poll failed")
            await asyncio.sleep(interval)

    async def poll_once(self) -> None:
        now = time.time()
        interval = self.gw.settings.batch_poll_interval
        for rec in await self.store.unsettled_batches():
            if rec.status == "creating":
                if now - rec.created_at > CREATING_STALE:
                    await self._abandon(rec)
                continue
            if rec.status != "ended" and now - rec.polled_at < interval * min(8, 1 + rec.poll_failures):
                continue  # polled recently (by any replica), or backing off after failures
            lease = max(60.0, 4 * interval)
            if not await self.store.claim_batch(rec.id, self.owner, now + lease, now):
                continue  # another replica has it
            try:
                if rec.status != "ended":
                    rec = await self.refresh(rec)
                if rec.status == "ended":
                    await self.settle(rec)
            except GatewayError as exc:
                log.warning("batch %s: %s (will retry)", rec.id, exc.message)
            finally:
                await self.store.update_batch(rec.id, {"lease_until": 0.0})

    async def _abandon(self, rec: BatchRecord) -> None:
        """A create its replica never finished: release the hold, forget the row."""
        if not await self.store.settle_batch(rec.id, tokens=0, micro=0, items=0):
            return
        await self._move_spend(rec, 0, 0)
        await self.store.delete_batch(rec.id)
        log.error("batch %s was left mid-create by a replica that stopped; its hold is released", rec.id)


class Creating:
    """What one create holds (``BatchService.creating``); released on exit, whatever happened."""

    __slots__ = ("admission", "bytes", "declared", "key", "service")

    def __init__(self, service: BatchService, key: KeyRecord, declared: int | None) -> None:
        self.service, self.key, self.declared = service, key, declared
        self.bytes = 0
        self.admission: Admission | None = None

    def grow(self, size: int) -> None:
        """A chunk of a body that declared no length arrived: its bytes join the create's share."""
        self.service._take_bytes(self, size)

    async def __aenter__(self) -> Self:
        service = self.service
        if self.declared:
            service._take_bytes(self, self.declared)
        limiter = service.gw.limiter
        if limiter.governs(self.key):
            try:
                # no tokens: RPM counts the batch as one request, and the create holds one of the
                # key's concurrent requests until it is answered; no token enters the TPM windows
                self.admission = await limiter.admit(
                    self.key, model=None, input_tokens=0, max_tokens=0, price_in=0.0, price_out=0.0
                )
            except BaseException:
                self._release_bytes()
                raise
        return self

    def _release_bytes(self) -> None:
        self.service._create_bytes -= self.bytes
        self.bytes = 0

    async def __aexit__(self, *exc: object) -> None:
        self._release_bytes()
        admission, self.admission = self.admission, None
        if admission is not None:
            await asyncio.shield(self.service.gw.limiter.settle(admission, tokens=0, cost_micro=0))


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete lines from a chunked body, whatever the splits; a line is never held twice."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end == -1:
                break
            if end > start:
                yield bytes(buf[start:end])
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            raise UpstreamStreamError(f"a result line longer than {MAX_LINE} bytes")
    if buf.strip():
        yield bytes(buf)
