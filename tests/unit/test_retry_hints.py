"""Retry hints: the upstream's as sent, the gateway's own accurate, and the wait the pool reads."""

from __future__ import annotations

import email.utils
import time

import pytest
from ethereal.errors import GatewayError, upstream_error
from ethereal.upstream.hints import retry_after_seconds
from multidict import CIMultiDict

BODY = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "100", "retry-after": "1"}, 0.1),  # the finer one wins, as in the SDKs
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
        ({}, None),
    ],
)
def test_the_wait_the_upstream_asked_for(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(CIMultiDict(headers)) == (
        pytest.approx(seconds) if seconds is not None else None
    )


def test_an_http_date_retry_after() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds(CIMultiDict({"retry-after": when})) <= 30  # type: ignore[operator]


def names(exc: GatewayError) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in exc.response_headers()]


def test_upstream_errors_keep_their_hints_exactly() -> None:
    sent = CIMultiDict(
        {"retry-after-ms": "100", "retry-after": "1", "x-should-retry": "false", "request-id": "r"}
    )
    exc = upstream_error(529, BODY, sent)
    assert (exc.status, exc.type, exc.message) == (529, "overloaded_error", "Overloaded")
    assert names(exc) == [("retry-after", "1"), ("retry-after-ms", "100"), ("x-should-retry", "false")]
    # a 529 or 503 without a wait stays without one: an added wait would replace the clients' own
    # shorter first backoff and slow every retry down (the fault matrix measures it with Claude Code)
    assert names(upstream_error(529, BODY, CIMultiDict({"x-should-retry": "true"}))) == [
        ("x-should-retry", "true")
    ]
    assert names(upstream_error(503, BODY, CIMultiDict())) == []
    # a 429 without any wait gets one (Codex CLI gives up at once without it); with -ms only, nothing added
    assert names(upstream_error(429, b"", CIMultiDict())) == [("retry-after", "1")]
    assert names(upstream_error(429, b"", CIMultiDict({"retry-after-ms": "250"}))) == [
        ("retry-after-ms", "250")
    ]


def test_the_gateways_own_refusals_carry_accurate_hints() -> None:
    exc = GatewayError(429, "wait", retry_after=0.2501)
    assert names(exc) == [("retry-after", "1"), ("retry-after-ms", "251"), ("x-should-retry", "true")]
    assert names(GatewayError(503, "none", retry_after=60)) == [
        ("retry-after", "60"),
        ("retry-after-ms", "60000"),
        ("x-should-retry", "true"),
    ]
    assert names(GatewayError(400, "bad")) == []
