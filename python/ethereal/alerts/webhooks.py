"""Signed webhooks: events the gateway sends to the operator's receivers.

Registered through ``/admin/api/webhooks`` and the console (admin/webhooks.py): a URL (http or
https; loopback and private addresses allowed, only the admin registers one), a secret in the
Standard Webhooks form (``whsec_`` + base64; the HMAC key is the decoded bytes; generated and
shown once when omitted) and the events it wants (default: every one).

Every delivery is signed per the Standard Webhooks specification: ``webhook-id`` (the message
id, the same on every retry), ``webhook-timestamp`` (unix seconds of the attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. The body is
``{"type", "timestamp", "data"}``; no payload carries a secret, a key or a request body.

``Alerts.emit`` never blocks and never raises: the event goes into a bounded queue (a full queue
drops it, counted) and a background task delivers it to each subscribed webhook, retrying a
failure (an answer other than 2xx, or none) with backoff (``RETRY_DELAYS``), each attempt logged
in ``webhook_deliveries`` (the console shows the log). Events are per replica: each replica
reports what it sees (a budget crossing is checked by the replica that served the request).

Events:

- ``spend_limit.threshold`` / ``spend_limit.exceeded``: a person's (or pool's, or key's) spend
  crossed 50/80/100 % of a spend limit (emitted by enforcement);
- ``budget.threshold``: a key's lifetime budget (micro-USD or tokens) crossed 50/80/100 %
  (``BudgetWatch``);
- ``credential.disabled``, ``credential.cooling`` (an upstream credential cooled down for longer
  than a minute);
- ``model.provisional``: a model the registry does not describe was served and billed at a
  provisional price.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("ethereal.alerts")

EVENTS = (
    "spend_limit.threshold",
    "spend_limit.exceeded",
    "budget.threshold",
    "credential.disabled",
    "credential.cooling",
    "model.provisional",
)
THRESHOLDS = (50, 80, 100)
RETRY_DELAYS = (0.5, 2.0, 10.0, 60.0, 300.0)  # seconds before attempts 2..6
QUEUE_MAX = 1000
CONCURRENT_DELIVERIES = 16
ATTEMPT_TIMEOUT = 10.0
RECENT_MAX = 200


def generate_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64 part, decoded."""
    body = secret.removeprefix("whsec_")
    return base64.b64decode(body, validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: float = 300.0) -> bool:
    """A receiver's check (what a Standard Webhooks library does): signature and timestamp."""
    msg_id, ts, sigs = (
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
    )
    if not msg_id or not ts or not sigs:
        return False
    try:
        stamp = int(ts)
    except ValueError:
        return False
    if abs(time.time() - stamp) > tolerance:
        return False
    expected = sign(secret, msg_id, stamp, body).split(",", 1)[1]
    return any(
        hmac.compare_digest(s.split(",", 1)[-1], expected) for s in sigs.split() if s.startswith("v1,")
    )


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Alerts:
    """The webhook emitter: ``emit`` queues, a background task signs and delivers with retries."""

    def __init__(
        self,
        store: Any = None,
        *,
        secret_box: Any = None,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        queue_max: int = QUEUE_MAX,
        timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self.store = store
        self.box = secret_box  # decrypts stored secrets (secretbox.py) when ETHEREAL_SECRET_KEY is set
        self.retry_delays = retry_delays
        self.timeout = timeout
        self.hooks: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(queue_max)
        self.dropped = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_MAX)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(CONCURRENT_DELIVERIES)
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    @property
    def running(self) -> bool:
        return self._worker is not None

    async def start(self) -> None:
        await self.reload()
        self._worker = asyncio.create_task(self._run(), name="ethereal-webhooks")

    async def reload(self) -> None:
        if self.store is None:
            return
        try:
            rows = await self.store.list_webhooks()
        except NotImplementedError:
            return
        except Exception as exc:  # noqa: BLE001 - logged, never raised into a request
            log.warning("webhooks could not be loaded: %s", exc)
            return
        hooks = []
        for row in rows:
            secret = row["secret"]
            if self.box is not None and not secret.startswith("whsec_"):
                try:
                    secret = self.box.decrypt(secret)
                except Exception:  # noqa: BLE001 - logged, never raised into a request
                    log.error(
                        "webhook %s: its secret cannot be decrypted (ETHEREAL_SECRET_KEY changed?)", row["id"]
                    )
                    continue
            hooks.append({**row, "secret": secret})
        self.hooks = hooks

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(BaseException):
                await worker
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def listen(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``fn(event, data)`` on every event emitted (tests, metrics)."""
        self.listeners.append(fn)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Queue an event for every webhook that wants it. Never blocks, never raises."""
        for fn in self.listeners:
            with contextlib.suppress(Exception):
                fn(event, data)
        if not self.hooks or self._worker is None:
            return
        try:
            self.queue.put_nowait((event, data))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("webhook queue full: %d event(s) dropped", self.dropped)

    async def _run(self) -> None:
        while True:
            event, data = await self.queue.get()
            body = orjson.dumps({"type": event, "timestamp": _now_text(), "data": data})
            for hook in self.hooks:
                events = hook.get("events")
                if events and event not in events:
                    continue
                msg_id = "msg_" + uuid.uuid4().hex
                task = asyncio.create_task(self._deliver(hook, msg_id, event, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=CONCURRENT_DELIVERIES),
            )
        return self._session

    async def _deliver(self, hook: dict[str, Any], msg_id: str, event: str, body: bytes) -> None:
        created = time.time()
        entry: dict[str, Any] = {
            "id": msg_id,
            "webhook_id": hook["id"],
            "event": event,
            "created_at": created,
            "attempts": 0,
            "status": "pending",
            "last_status": None,
            "last_error": None,
            "updated_at": created,
        }
        self.recent.appendleft(entry)
        for attempt in range(len(self.retry_delays) + 1):
            if attempt:
                await asyncio.sleep(self.retry_delays[attempt - 1])
            stamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": "ethereal-webhooks/1",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(hook["secret"], msg_id, stamp, body),
            }
            status: int | None = None
            error: str | None = None
            async with self._slots:
                try:
                    async with self._client().post(
                        hook["url"], data=body, headers=headers, allow_redirects=False
                    ) as resp:
                        status = resp.status
                        await resp.read()
                except Exception as exc:  # noqa: BLE001 - any failure is retried, then logged
                    error = f"{type(exc).__name__}: {exc}"[:200]
            delivered = status is not None and 200 <= status < 300
            last = attempt == len(self.retry_delays)
            entry.update(
                attempts=attempt + 1,
                last_status=status,
                last_error=None if delivered else (error or f"HTTP {status}"),
                status="delivered" if delivered else ("failed" if last else "pending"),
                updated_at=time.time(),
            )
            await self._log(entry)
            if delivered:
                return
        log.warning(
            "webhook %s: %s not delivered after %d attempts (%s)",
            hook["id"],
            event,
            entry["attempts"],
            entry["last_error"],
        )

    async def _log(self, entry: dict[str, Any]) -> None:
        if self.store is None:
            return
        try:
            await self.store.save_delivery(dict(entry))
        except NotImplementedError:
            return
        except Exception as exc:  # the log is best effort: never holds a delivery back  # noqa: BLE001 - logged, never raised into a request
            log.warning("webhook delivery log not written: %s", exc)

    # ------------------------------------------------------------------ sources of events
    def observe(self, event: str, data: dict[str, Any]) -> None:
        """An observer of the upstream pool: the events a webhook can want are sent (a credential
        disabled or cooling), the others (``credential.failure``, for the metrics) are not."""
        if event in EVENTS:
            self.emit(event, data)

    def model_provisional(self, model: str, card: str) -> None:
        self.emit("model.provisional", {"model": model[:256], "priced_at": card})


class BudgetWatch:
    """``budget.threshold`` when a key's spend crosses 50/80/100 % of its lifetime budget.

    ``observe(key)`` (after a request of a budgeted key is recorded) marks the key; a background
    check every ``interval`` seconds reads the marked keys' spend from the store (the meter writes
    records within its flush interval) and emits each threshold crossed once per process.
    """

    def __init__(
        self, alerts: Alerts, store: Any, *, interval: float = 0.5, settle_delay: float = 0.3
    ) -> None:
        self.alerts = alerts
        self.store = store
        self.interval = interval
        self.settle_delay = settle_delay  # the meter's flush interval: let the last records land
        self._dirty: dict[str, Any] = {}
        self._fired: dict[tuple[str, str, int], int] = {}  # (key, kind, budget) -> highest threshold sent
        self._task: asyncio.Task[None] | None = None

    def observe(self, key: Any) -> None:
        if key is None or (key.budget_micro_usd is None and key.budget_tokens is None):
            return
        if not self.alerts.hooks and not self.alerts.listeners:
            return
        self._dirty[key.id] = key

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ethereal-budget-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._dirty:
                continue
            await asyncio.sleep(self.settle_delay)
            keys, self._dirty = self._dirty, {}
            try:
                await self.check(list(keys.values()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, never raised into a request
                log.warning("budget check failed: %s", exc)

    async def check(self, keys: list[Any]) -> None:
        spend = await self.store.spend_by_key([k.id for k in keys])
        for key in keys:
            used = spend.get(key.id, {})
            for kind, budget, spent in (
                ("micro_usd", key.budget_micro_usd, int(used.get("cost_micro", 0))),
                ("tokens", key.budget_tokens, int(used.get("tokens", 0))),
            ):
                if not budget:
                    continue
                pct = spent * 100 // budget
                crossed = [t for t in THRESHOLDS if pct >= t]
                if not crossed:
                    continue
                mark = (key.id, kind, budget)
                if self._fired.get(mark, 0) >= crossed[-1]:
                    continue
                self._fired[mark] = crossed[-1]
                self.alerts.emit(
                    "budget.threshold",
                    {
                        "key_id": key.id,
                        "key_name": key.name,
                        "owner": key.owner or None,
                        "budget_kind": kind,
                        "budget": budget,
                        "spent": spent,
                        "threshold": crossed[-1],
                        "utilization": round(spent / budget, 4),
                    },
                )
