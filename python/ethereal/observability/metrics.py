"""Prometheus metrics, correct across uvicorn workers.

``ethereal serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the
workers start; each worker then writes its samples to memory-mapped files there and
whichever worker answers ``GET /metrics`` (or the ``--metrics-port`` listener in the
supervising process) merges them all. Without that variable (an app built in-process)
the samples live in this process's own registry.

Label values are bounded whatever clients send: ``model`` is a registry id or ``other``
(a client may name any model), ``route`` and ``kind`` come from the code, ``status``
is an HTTP status, ``credential`` names are the operator's.

Where the numbers come from:
- requests, latency, TTFB, tokens, spend: every usage record (``Meter.observers``);
- in flight: the live rings' headers (the edge, ``Lifecycle.serve``, counts every request, refused and admin ones too);
- upstream attempts and failovers: each credential's counters (``Credential.attempts``), read at
  the flush; failures and cooldowns: ``Pool.report_failure`` (its observers);
- limiter decisions and latency: ``Limiter.admit`` (its observers);
- meter queue depth, spool bytes, dropped records: ``Meter.stats()`` once a second.

The request path only appends: the usage record and the response status go to two lists
(``records``, ``statuses``) that the flush turns into counts; a counter's increments and a
histogram's bucket counts are summed in memory and written to the shared files at most
every ``FLUSH_SECONDS`` (and before this worker renders a scrape, and when it stops), one
write per series instead of one per observation. A scrape can therefore miss the last
quarter second of another worker's traffic, well inside any scrape interval. In flight
is not a stored sample at all: it is read from the live rings' headers when scraped.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prom_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ethereal.errors import GatewayError
from ethereal.models import Registry
from ethereal.observability import live
from ethereal.storage.records import UsageRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ADMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_DB_FILE = re.compile(r"_(\d+)\.db$")
FLUSH_SECONDS = 0.25


def multiproc_dir() -> str | None:
    # the lowercase name is prometheus_client's older spelling, which it still honours
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None  # noqa: SIM112


def refusal_reason(exc: GatewayError) -> str:
    """Why the limiter refused, from the refusal it raised (limits/__init__.py ``refusal``)."""
    if exc.status == 402:
        return "budget"
    if exc.status == 503:
        return "unavailable"
    message = exc.message
    if "concurrent" in message:
        return "concurrency"
    if "requests per" in message:
        return "requests"
    if "tokens per" in message:
        return "tokens"
    return "other"


class InFlight(Collector):
    """``ethereal_in_flight_requests`` read at scrape time from the workers' live rings."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "ethereal_in_flight_requests", "HTTP requests being served now", value=self.count()
        )


class ProvisionalModels(Collector):
    """``ethereal_model_provisional{model}``: 1 for each model served or listed by an upstream that
    the registry does not describe (billed at a provisional card), as this worker knows them
    (bounded by the registry: at most ``MAX_SEEN``). Read at the scrape, never stored."""

    def __init__(self, models: Registry) -> None:
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ethereal_model_provisional",
            "Models the upstream serves that the registry does not describe "
            "(billed at a provisional card; add them to ETHEREAL_MODELS_FILE)",
            labels=("model",),
        )
        for m in self.models.provisional_models():
            family.add_metric((m.id,), 1.0)
        yield family


class Metrics:
    def __init__(
        self, models: Registry, in_flight: Callable[[], int] = lambda: 0, ring: live.Ring | None = None
    ) -> None:
        self.models = models
        self.ring = ring  # the live ring gets each record at the flush too
        self.in_flight = InFlight(in_flight)
        self.provisional_models = ProvisionalModels(models)
        self.directory = multiproc_dir()
        if self.directory is not None and prom_values.ValueClass is prom_values.MutexValue:
            # prometheus_client picked its value class when first imported; make sure it is the
            # file-backed one even if something imported it before the variable was set
            prom_values.ValueClass = prom_values.MultiProcessValue()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "ethereal_requests",
            "Requests with a usage record, by route, status and model",
            ("route", "status", "model"),
            registry=r,
        )
        self.latency = Histogram(
            "ethereal_request_duration_seconds",
            "Time from request to last byte",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "ethereal_time_to_first_byte_seconds",
            "Time from request to the first upstream byte",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("ethereal_tokens", "Tokens by model and kind", ("model", "kind"), registry=r)
        self.cost = Counter("ethereal_cost_micro_usd", "Spend in micro-USD by model", ("model",), registry=r)
        r.register(self.in_flight)
        r.register(self.provisional_models)
        self.http = Counter(
            "ethereal_http_responses", "Every HTTP response, by status class", ("status_class",), registry=r
        )
        self.attempts = Counter(
            "ethereal_upstream_attempts",
            "Requests sent to an upstream credential",
            ("credential",),
            registry=r,
        )
        self.failovers = Counter(
            "ethereal_upstream_failovers",
            "Retries on another credential after a failure",
            ("credential",),
            registry=r,
        )
        self.failures = Counter(
            "ethereal_upstream_failures",
            "Upstream failures by credential and kind",
            ("credential", "kind"),
            registry=r,
        )
        self.cooldowns = Counter(
            "ethereal_upstream_cooldowns",
            "Cooldowns started (or auth disables) by kind",
            ("credential", "kind"),
            registry=r,
        )
        self.admits = Counter(
            "ethereal_limiter_decisions",
            "Limiter decisions by outcome and reason",
            ("outcome", "reason"),
            registry=r,
        )
        self.admit_latency = Histogram(
            "ethereal_limiter_admit_seconds",
            "Time to admit or refuse a request",
            buckets=ADMIT_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "ethereal_meter_queue_depth",
            "Usage records waiting to be written",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.spool_bytes = Gauge(
            "ethereal_meter_spool_bytes",
            "Bytes in the on-disk usage spool",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.dropped = Counter(
            "ethereal_meter_dropped_records", "Usage records lost (spool and memory full)", registry=r
        )
        # the model registry: replicas on different data show different versions; a record priced at a
        # stand-in card is counted by model (a registry id, a provisional model the registry listed, or
        # "other": bounded); a model with no card in force is an alert
        self.provisional = Counter(
            "ethereal_provisional_priced_requests",
            "Requests priced at a provisional rate card, by model",
            ("model",),
            registry=r,
        )
        self.registry_info = Gauge(
            "ethereal_models_registry_info",
            "The model registry data this worker serves",
            ("version",),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.registry_info.labels(models.version).set(1)
        self.expired = Gauge(
            "ethereal_models_expired",
            "1 for each model whose last rate card has expired with no successor",
            ("model",),
            registry=r,
            multiprocess_mode="livemax",
        )
        self._expired: set[str] = set()
        self._expired_checked = -math.inf
        self.check_models()
        self._dropped_seen = 0
        self._children: dict[tuple[Any, ...], Any] = {}
        self._models: dict[str | None, str] = {}
        self._counts: dict[Any, float] = {}  # counter child -> increments not written yet
        self._observed: dict[
            Any, tuple[list[float], list[int]]
        ] = {}  # histogram child -> ([sum], bucket counts)
        self._timer: asyncio.TimerHandle | None = None
        self.records: list[UsageRecord] = []  # appended by the meter (an observer), counted at the flush
        self.statuses: list[int] = []  # every HTTP response's status (``response``), counted at the flush
        self.pool: Any = None  # the pool whose credentials' attempt counters are read at the flush
        self._attempts_seen: dict[str, tuple[Any, int, int]] = {}

    # ------------------------------------------------------------------ usage records
    def _model(self, name: str | None) -> str:
        label = self._models.get(name)
        if label is None:
            found = self.models.get(name) if name is not None else None
            label = name if (found is not None and name is not None) else "other"
            if len(self._models) < 1000 and found is not None:  # not "other": the name may be learnt later
                self._models[name] = label
        return label

    def child(self, metric: Any, *labels: Any) -> Any:
        """The labelled child of ``metric``, made once."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            self._children[key] = child
        return child

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """Add to a counter (a labelled child or an unlabelled counter), written at the next flush."""
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount
        if self._timer is None:
            self._schedule()

    def observe_value(self, child: Any, value: float) -> None:
        """Observe into a histogram (a labelled child or an unlabelled histogram), written at the next flush."""
        self.observe_values(child, [value])

    def observe_values(self, child: Any, values: list[float]) -> None:
        entry = self._observed.get(child)
        if entry is None:
            entry = self._observed[child] = ([0.0], [0] * len(child._upper_bounds))
        total, buckets = entry
        bounds = child._upper_bounds
        for value in values:
            total[0] += value
            buckets[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value, as observe()
        if self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside an event loop (a script, a unit test): write at once
            self.flush()
            return
        self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Count the appended records and statuses, then write what was added since the last
        flush: one write per series touched."""
        if self.records:
            records = self.records.copy()
            self.records.clear()
            ring = self.ring
            groups: dict[tuple[str, int, str | None], list[UsageRecord]] = {}
            for rec in records:
                key = (rec.route, rec.status, rec.model)
                group = groups.get(key)
                if group is None:
                    groups[key] = [rec]
                else:
                    group.append(rec)
                if ring is not None:
                    ring.add(rec)
            for (route, status, model), group in groups.items():
                self._observe_group(route, status, model, group)
        if self.statuses:
            classes: dict[int, int] = {}
            for status in self.statuses:
                classes[status // 100] = classes.get(status // 100, 0) + 1
            self.statuses.clear()
            for cls, n in classes.items():
                self.inc(self.child(self.http, f"{cls}xx"), n)
        if self.pool is not None:
            self._read_attempts()
        if self._timer is not None:  # everything summed so far is written now
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, (total, buckets) in observed.items():
            child._sum.inc(total[0])
            for value, n in zip(child._buckets, buckets, strict=True):
                if n:
                    value.inc(n)

    def _read_attempts(self) -> None:
        seen = self._attempts_seen
        for cred in self.pool.credentials:
            last = seen.get(cred.name)
            attempts, failovers = cred.attempts, cred.failovers
            if last is not None and last[0] is cred:  # the same credential object: count what is new
                attempts, failovers = attempts - last[1], failovers - last[2]
            if attempts:
                self.inc(self.child(self.attempts, cred.name), attempts)
            if failovers:
                self.inc(self.child(self.failovers, cred.name), failovers)
            seen[cred.name] = (cred, cred.attempts, cred.failovers)

    def observe(self, rec: UsageRecord) -> None:
        self._observe_group(rec.route, rec.status, rec.model, [rec])

    def _observe_group(
        self, route: str, status: int, model_name: str | None, recs: list[UsageRecord]
    ) -> None:
        """Records of one route, status and model: one increment per series for all of them."""
        model = self._model(model_name)
        inc = self.inc
        inc(self.child(self.requests, route, str(status), model), len(recs))
        self.observe_values(self.child(self.latency, route), [r.duration_ms / 1000.0 for r in recs])
        ttfb = [r.ttfb_ms / 1000.0 for r in recs if r.ttfb_ms is not None]
        if ttfb:
            self.observe_values(self.child(self.ttfb, route), ttfb)
        for kind, value in (
            ("input", sum(r.input_tokens for r in recs)),
            ("output", sum(r.output_tokens for r in recs)),
            ("cache_read", sum(r.cache_read for r in recs)),
            ("cache_write_5m", sum(r.cache_creation_5m for r in recs)),
            ("cache_write_1h", sum(r.cache_creation_1h for r in recs)),
        ):
            if value:
                inc(self.child(self.tokens, model, kind), value)
        cost = sum(r.cost_micro for r in recs)
        if cost:
            inc(self.child(self.cost, model), cost)
        provisional = sum(1 for r in recs if r.priced_provisional)
        if provisional:
            inc(self.child(self.provisional, model), provisional)

    def response(self, status: int) -> None:
        self.statuses.append(status)  # counted at the flush

    # ------------------------------------------------------------------ registry
    def check_models(self, every: float = 60.0) -> list[str]:
        """Set the expired-card gauge (at most every ``every`` seconds: a card ends at a day's
        boundary); returns the models with no card in force."""
        now = time.monotonic()
        if now - self._expired_checked < every:
            return sorted(self._expired)
        self._expired_checked = now
        expired = {m.id for m in self.models.expired()}
        for model_id in expired | self._expired:
            self.expired.labels(model_id).set(1 if model_id in expired else 0)
        self._expired = expired
        return sorted(expired)

    # ------------------------------------------------------------------ meter
    def meter_stats(self, stats: dict[str, Any]) -> None:
        self.queue_depth.set(stats.get("queue_depth", 0))
        self.spool_bytes.set(stats.get("spool_bytes", 0))
        dropped = int(stats.get("dropped_records", 0))
        if dropped > self._dropped_seen:
            self.dropped.inc(dropped - self._dropped_seen)
            self._dropped_seen = dropped

    # ------------------------------------------------------------------ scrape
    def render(self) -> bytes:
        self.flush()
        if self.directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        registry.register(self.in_flight)
        registry.register(self.provisional_models)
        return generate_latest(registry)

    def registry_text(self) -> bytes:
        """This process's own samples as written so far (no flush): what a test compares."""
        return generate_latest(self.registry)

    def forget_dead_workers(self) -> None:
        """Drop the live gauges of workers that died (in flight, queue depth) so they stop counting."""
        if self.directory is None:
            return
        pids = set()
        for path in Path(self.directory).glob("gauge_live*_*.db"):
            match = _DB_FILE.search(path.name)
            if match:
                pids.add(int(match.group(1)))
        for pid in pids:
            if pid != os.getpid() and not _alive(pid):
                mark_process_dead(pid, self.directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def registry_for_directory(directory: str) -> CollectorRegistry:
    """What the ``--metrics-port`` listener serves: every worker's samples."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    registry.register(InFlight(lambda: live.in_flight(directory)))
    return registry


# ---------------------------------------------------------------------- observers
def watch_pool(pool: Any, metrics: Metrics) -> None:
    """Count failures and cooldowns where the pool decides them (its ``credential.failure``
    events); attempts and failovers are the credentials' own counters, read at each flush
    (nothing observes ``acquire``, the hot call)."""
    metrics.pool = pool
    failures, cooldowns, child, inc = metrics.failures, metrics.cooldowns, metrics.child, metrics.inc

    def pool_event(event: str, data: dict[str, Any]) -> None:
        if event != "credential.failure":
            return
        name, kind = data["credential"], data["kind"]
        inc(child(failures, name, kind))
        if data["cooled"]:
            inc(child(cooldowns, name, kind))

    pool.observers.append(pool_event)


def watch_limiter(limiter: Any, metrics: Metrics) -> None:
    """Each admission's latency and outcome (refusals by reason), told by the limiter."""
    admitted = metrics.admits.labels("admitted", "")
    admits, latency, child, inc, observe_value = (
        metrics.admits,
        metrics.admit_latency,
        metrics.child,
        metrics.inc,
        metrics.observe_value,
    )

    def admit_event(seconds: float, refused: GatewayError | None) -> None:
        observe_value(latency, seconds)
        inc(admitted if refused is None else child(admits, "refused", refusal_reason(refused)))

    limiter.observers.append(admit_event)
