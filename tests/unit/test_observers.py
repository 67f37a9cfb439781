"""One way to observe a service: the pool, the limiter and the meter each call an ``observers`` list
with what they decided; the metrics and the alerts subscribe (no method is replaced)."""

from __future__ import annotations

from typing import Any

import pytest
from ethereal.alerts import Alerts
from ethereal.errors import GatewayError
from ethereal.keys import KeyRecord
from ethereal.limits.local import LocalLimiter
from ethereal.models import Registry
from ethereal.observability.metrics import Metrics, watch_limiter, watch_pool
from ethereal.upstream.pool import Credential, FailureKind, Pool


async def test_the_pool_tells_each_failure_and_whether_it_began_a_cooldown() -> None:
    now = [100.0]
    cred = Credential(name="a", base_url="http://a", api_key="k")
    pool = Pool([cred], clock=lambda: now[0], rate_limit_cap=300.0)
    seen: list[tuple[str, dict[str, Any]]] = []
    pool.observers.append(lambda event, data: seen.append((event, data)))
    await pool.report_failure(cred, FailureKind.SERVER_ERROR)
    await pool.report_failure(cred, "server_error")  # cooling already: not a new cooldown
    await pool.report_failure(cred, FailureKind.RATE_LIMITED, retry_after=120.0)
    assert seen == [
        ("credential.failure", {"credential": "a", "kind": "server_error", "cooled": True}),
        ("credential.failure", {"credential": "a", "kind": "server_error", "cooled": False}),
        (
            "credential.cooling",
            {"credential": "a", "seconds": 120.0, "cause": "rate_limited", "rate_limit_group": None},
        ),
        ("credential.failure", {"credential": "a", "kind": "rate_limited", "cooled": False}),
    ]


async def test_an_observer_that_fails_never_fails_the_pool() -> None:
    cred = Credential(name="a", base_url="http://a", api_key="k")
    pool = Pool([cred])

    def broken(event: str, data: dict[str, Any]) -> None:
        raise RuntimeError("observer")

    pool.observers.append(broken)
    await pool.report_failure(cred, FailureKind.SERVER_ERROR)
    assert cred.last_error == "server_error"


def test_alerts_send_only_the_events_a_webhook_can_want() -> None:
    alerts = Alerts()
    sent: list[str] = []
    alerts.listen(lambda event, data: sent.append(event))
    alerts.observe("credential.failure", {"credential": "a", "kind": "server_error", "cooled": True})
    alerts.observe("credential.disabled", {"credential": "a", "reason": "401"})
    assert sent == ["credential.disabled"]


async def test_the_limiter_tells_each_admission_its_time_and_refusal() -> None:
    limiter = LocalLimiter(window_seconds=60.0)
    key = KeyRecord(id="k1", key_hash="h", display="e...1", rpm=1)
    seen: list[tuple[float, GatewayError | None]] = []
    limiter.observers.append(lambda seconds, refused: seen.append((seconds, refused)))
    await limiter.admit(key, model="m", input_tokens=1, max_tokens=1)
    with pytest.raises(GatewayError) as refused:
        await limiter.admit(key, model="m", input_tokens=1, max_tokens=1)
    assert [r for _, r in seen] == [None, refused.value]
    assert all(seconds >= 0 for seconds, _ in seen)


async def test_an_unobserved_limiter_times_nothing() -> None:
    limiter = LocalLimiter(window_seconds=60.0)
    assert limiter.observers == []
    key = KeyRecord(id="k1", key_hash="h", display="e...1", rpm=5)
    assert (await limiter.admit(key, model="m", input_tokens=1, max_tokens=1)).key_id == "k1"


async def test_metrics_count_what_the_pool_and_the_limiter_tell() -> None:
    metrics = Metrics(Registry())
    cred = Credential(name="a", base_url="http://a", api_key="k")
    pool = Pool([cred])
    limiter = LocalLimiter(window_seconds=60.0)
    watch_pool(pool, metrics)
    watch_limiter(limiter, metrics)
    await pool.report_failure(cred, FailureKind.SERVER_ERROR)
    await pool.report_failure(cred, FailureKind.SERVER_ERROR)
    key = KeyRecord(id="k1", key_hash="h", display="e...1", rpm=1)
    await limiter.admit(key, model="m", input_tokens=1, max_tokens=1)
    with pytest.raises(GatewayError):
        await limiter.admit(key, model="m", input_tokens=1, max_tokens=1)
    metrics.flush()
    text = metrics.render().decode()
    assert 'ethereal_upstream_failures_total{credential="a",kind="server_error"} 2.0' in text
    assert 'ethereal_upstream_cooldowns_total{credential="a",kind="server_error"} 1.0' in text
    assert 'ethereal_limiter_decisions_total{outcome="admitted",reason=""} 1.0' in text
    assert 'ethereal_limiter_decisions_total{outcome="refused",reason="requests"} 1.0' in text
    assert "ethereal_limiter_admit_seconds_count 2.0" in text
