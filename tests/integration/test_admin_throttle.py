"""Admin-key guessing is throttled per client address: after ETHEREAL_ADMIN_AUTH_FAILURES wrong keys
a minute (the admin API and the console's sign-in counted together), every attempt from that
address is a 429 with a retry-after, the right key included; other addresses are not affected;
the address is the one ETHEREAL_TRUSTED_PROXIES lets a proxy forward."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ethereal.guards import FailureThrottle

from tests.procs import gateway_process

ADMIN = "throttle-admin-key-0123456789abcdef"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    env = {
        "ETHEREAL_ADMIN_KEY": ADMIN,
        "ETHEREAL_ADMIN_AUTH_FAILURES": "3",
        "ETHEREAL_TRUSTED_PROXIES": "127.0.0.1",
    }
    with gateway_process(tmp_path, None, env=env) as base:
        yield base


def keys(url: str, key: str | None, client: str) -> httpx.Response:
    headers = {"x-forwarded-for": client, **({"x-api-key": key} if key else {})}
    return httpx.get(url + "/admin/api/keys", headers=headers)


def sign_in(url: str, key: str, client: str) -> httpx.Response:
    return httpx.post(
        url + "/dashboard/login",
        data={"admin_key": key},
        follow_redirects=False,
        headers={"x-forwarded-for": client},
    )


def test_wrong_admin_keys_are_throttled_per_address(url: str) -> None:
    assert [keys(url, f"wrong-{i}", "203.0.113.7").status_code for i in range(2)] == [401, 401]
    assert sign_in(url, "wrong-again", "203.0.113.7").status_code == 401  # the console's sign-in counts too
    for attempt in (
        keys(url, "wrong-3", "203.0.113.7"),
        keys(url, ADMIN, "203.0.113.7"),
        sign_in(url, ADMIN, "203.0.113.7"),
    ):
        assert attempt.status_code == 429, attempt.text[:200]
        assert 1 <= float(attempt.headers["retry-after"]) <= 61
    assert keys(url, ADMIN, "203.0.113.7").json()["error"]["type"] == "rate_limit_error"
    # another address (forwarded by the trusted proxy) is not held back, nor is a request with no key
    # counted as a guess
    assert keys(url, ADMIN, "198.51.100.9").status_code == 200
    assert [keys(url, None, "198.51.100.10").status_code for _ in range(5)] == [401] * 5
    assert keys(url, ADMIN, "198.51.100.10").status_code == 200
    assert sign_in(url, ADMIN, "198.51.100.11").status_code == 303


def test_the_throttle_forgets_and_stays_bounded() -> None:
    now = [0.0]
    throttle = FailureThrottle(3, 60.0, max_clients=100, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.wait("a") == 0
        throttle.fail("a")
    assert throttle.wait("a") == pytest.approx(60.0)
    now[0] = 30.0
    assert throttle.wait("a") == pytest.approx(30.0)
    now[0] = 60.5  # the oldest failures left the window
    assert throttle.wait("a") == 0
    for i in range(10_000):  # hostile addresses: the oldest are forgotten, memory stays bounded
        throttle.fail(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
