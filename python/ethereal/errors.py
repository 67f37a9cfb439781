"""Errors that carry their HTTP status, and the two wire shapes they render to.

Anthropic routes answer ``{"type":"error","error":{"type","message"},"request_id"}``;
OpenAI routes answer ``{"error":{"message","type","param","code"}}``. Every 429,
503 and 529 the gateway answers itself carries ``retry-after``, ``retry-after-ms`` and
``x-should-retry``; an upstream's error carries the upstream's own, as sent (a 429 without any
wait gets ``retry-after: 1``: Codex CLI gives up at once without one; a 503/529 is left as sent,
so clients keep their own shorter backoff).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson

STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# OpenAI's own vocabulary for the same situations (what its SDKs and clients expect).
OPENAI_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ("invalid_request_error", "model_not_allowed"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
    "timeout_error": ("server_error", "timeout"),
}

RETRYABLE_STATUSES = frozenset({429, 503, 529})


class GatewayError(Exception):
    """An error answered to the client with its own status and type."""

    __slots__ = ("headers", "message", "param", "retry_after", "status", "type", "upstream_hints")

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        retry_after: float | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        param: str | None = None,
        upstream_hints: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type or STATUS_TYPES.get(status, "api_error")
        self.message = message
        if retry_after is None and status in RETRYABLE_STATUSES:
            retry_after = 1.0
        self.retry_after = retry_after
        self.headers = headers or []
        self.param = param
        # the upstream's own retry-after / retry-after-ms / x-should-retry, answered as sent
        self.upstream_hints = upstream_hints

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = list(self.headers)
        if self.upstream_hints is not None:
            headers.extend(self.upstream_hints)
        elif self.retry_after is not None:
            wait = max(0.0, self.retry_after)
            headers.append((b"retry-after", str(max(1, math.ceil(wait))).encode()))
            headers.append((b"retry-after-ms", str(max(1, math.ceil(wait * 1000))).encode()))
            headers.append((b"x-should-retry", b"true"))
        return headers


# Retry hints a client's retry logic reads; an upstream's are passed through untouched.
RETRY_HINTS = ("retry-after", "retry-after-ms", "x-should-retry")


def upstream_error(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> GatewayError:
    """The client-facing error for an upstream error response: its status, type, message and
    retry hints as the upstream sent them (a client must see what it would see calling it)."""
    err_type, message = None, f"upstream returned HTTP {status}"
    try:
        parsed = orjson.loads(body)
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            raw_type, raw_message = err.get("type"), err.get("message")
            err_type = raw_type[:64] if isinstance(raw_type, str) and raw_type else None
            message = raw_message[:4096] if isinstance(raw_message, str) and raw_message else message
    except orjson.JSONDecodeError:
        pass
    if err_type == "forbidden":
        err_type = "permission_error"
    hints: list[tuple[bytes, bytes]] = []
    retry_after: float | None = None
    if headers is not None:
        for name in RETRY_HINTS:
            value = headers.get(name)
            if value is not None:
                hints.append((name.encode(), value.encode("latin-1", "replace")[:64]))
        raw = headers.get("retry-after")
        if raw is not None:
            try:
                retry_after = max(0.0, float(raw))
            except ValueError:
                retry_after = None
    exc = GatewayError(status, message, type=err_type, retry_after=retry_after, upstream_hints=hints)
    if status == 429 and not any(name in (b"retry-after", b"retry-after-ms") for name, _ in hints):
        # a 429 without a wait makes Codex CLI give up at once: add one. A 503/529 keeps exactly
        # what the upstream sent: an added wait replaces the clients' own shorter first backoff
        # (Claude Code reads whole-second retry-after: 1 s per 529 instead of ~0.5 s, measured in
        # the fault matrix), so they would retry later than calling the upstream directly.
        hints.append((b"retry-after", b"1"))
    return exc


def invalid_request(message: str, *, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param)


def anthropic_error_body(error_type: str, message: str, request_id: str | None) -> bytes:
    body: dict[str, object] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def openai_error_body(error_type: str, message: str, param: str | None = None) -> bytes:
    oa_type, code = OPENAI_TYPES.get(error_type, ("server_error", None))
    return orjson.dumps({"error": {"message": message, "type": oa_type, "param": param, "code": code}})


def anthropic_sse_error(error_type: str, message: str, request_id: str | None) -> bytes:
    """An in-stream failure: an ``event: error`` frame, after which the stream closes."""
    return b"event: error\ndata: " + anthropic_error_body(error_type, message, request_id) + b"\n\n"
