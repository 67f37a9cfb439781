"""The request log line the edge (``app.Ethereal``, ``lifecycle.Lifecycle.serve``) writes per request.

The usage record of a metered request reaches the log line through a context variable:
``Meter.record`` runs inside the same task as the request.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import orjson

from ethereal.observability import logs
from ethereal.observability.live import Ring
from ethereal.observability.metrics import Metrics
from ethereal.storage.records import UsageRecord, error_message_of

access = logging.getLogger("ethereal.access")
# the request's usage record, for its log line: set by the edge wrapper (lifecycle.py) around
# each request, filled by ``note_record`` (a meter observer: ``Meter.record`` runs in the request's task)
RECORD: contextvars.ContextVar[list[UsageRecord | None] | None] = contextvars.ContextVar(
    "ethereal_usage_record", default=None
)
Parts = Callable[[], tuple[Ring | None, Metrics | None]]
_PATH_MAX = 200


def note_record(rec: UsageRecord) -> None:
    """Meter observer: hand the record to the request's log line."""
    slot = RECORD.get()
    if slot is not None:
        slot[0] = rec


def plain(value: str) -> bool:
    """Nothing in ``value`` that ``escape`` would change. Each test is per character, so a text
    joined from several values is plain exactly when every one of them is."""
    return value.isascii() and value.isprintable() and " " not in value and "\\" not in value


def escape(value: str) -> str:
    """A client-controlled value as the text log writes it: control characters (C0, DEL, C1,
    line and paragraph separators), spaces and backslashes as ``\\xNN`` (``\\uNNNN`` above
    0xFF), so no value can end a line, start a forged one, or blur ``key=value`` pairs."""
    if plain(value):
        return value  # the common case: C-level scans
    return "".join(
        c
        if (c.isprintable() and c not in " \\")
        else (f"\\x{ord(c):02x}" if ord(c) <= 0xFF else f"\\u{ord(c):04x}")
        for c in value
    )


def error_message_in(body: bytes) -> str | None:
    """The message of an error response body (OpenAI's or Anthropic's shape), for the log line:
    only that string, clipped and escaped (``error_message_of``), never the body itself."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    return error_message_of(err.get("message")) if isinstance(err, dict) else None


def fields_of(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    request_id: str | None,
    rec: UsageRecord | None,
    error_message: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": request_id,
        "method": method,
        "path": path[:_PATH_MAX],
        "status": status,
        "duration_ms": round(duration_ms, 2),
    }
    message = rec.error_message if rec is not None and rec.error_message is not None else error_message
    if message is not None:
        out["error_message"] = message
    if rec is not None:
        out.update(
            {
                "key_id": rec.key_id,
                "route": rec.route,
                "model": rec.model,
                "credential": rec.credential,
                "input_tokens": rec.input_tokens,
                "output_tokens": rec.output_tokens,
                "cache_read": rec.cache_read,
                "cache_write": rec.cache_creation_5m + rec.cache_creation_1h,
                "cost_micro": rec.cost_micro,
                "ttfb_ms": None if rec.ttfb_ms is None else round(rec.ttfb_ms, 2),
                "stream": rec.stream,
                "exact": rec.exact,
                "error_type": rec.error_type,
            }
        )
    return out


def text_of(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    request_id: str | None,
    rec: UsageRecord | None,
    error_message: str | None = None,
) -> str:
    """``fields_of`` as the text format writes it (``key=value``, None left out; the error message
    last, as a JSON string), in one go. Client-controlled values are escaped (``escape``)."""
    path = path[:_PATH_MAX]
    model = cred = err = None
    if rec is not None:
        model, cred, err = rec.model, rec.credential, rec.error_type
    # the common case, every client-controlled value plain: one check of them joined (``plain``)
    if not plain(f"{method}{path}{model or ''}{cred or ''}{err or ''}"):
        method, path = escape(method), escape(path)
        model = None if model is None else escape(model)
        cred = None if cred is None else escape(cred)
        err = None if err is None else escape(err)
    line = f"method={method} path={path} status={status} duration_ms={round(duration_ms, 2)}"
    if request_id is not None:
        line = f"request_id={request_id} {line}"
    message = rec.error_message if rec is not None and rec.error_message is not None else error_message
    said = "" if message is None else " error_message=" + orjson.dumps(message).decode()
    if rec is None:
        return line + said
    key = "" if rec.key_id is None else f" key_id={rec.key_id}"
    model = "" if model is None else f" model={model}"
    cred = "" if cred is None else f" credential={cred}"
    ttfb = "" if rec.ttfb_ms is None else f" ttfb_ms={round(rec.ttfb_ms, 2)}"
    error = "" if err is None else f" error_type={err}"
    return (
        f"{line}{key} route={rec.route}{model}{cred} input_tokens={rec.input_tokens}"
        f" output_tokens={rec.output_tokens} cache_read={rec.cache_read}"
        f" cache_write={rec.cache_creation_5m + rec.cache_creation_1h} cost_micro={rec.cost_micro}{ttfb}"
        f" stream={rec.stream} exact={rec.exact}{error}{said}"
    )


def log_request(
    scope: dict[str, Any] | Any,
    status: int,
    duration_ms: float,
    request_id: str | None,
    rec: UsageRecord | None,
    error_message: str | None = None,
) -> None:
    """The request's log line: through the fast writer ``logs.configure`` installed, else ``logging``.
    ``error_message`` (already clipped) stands in when the request has no record that carries one."""
    if not access.isEnabledFor(logging.INFO):
        return
    method, path = scope.get("method", ""), scope.get("path", "")
    writer = logs.access_log()
    if writer is None:  # logging as the embedding application configured it
        access.info(
            "request",
            extra={"fields": fields_of(method, path, status, duration_ms, request_id, rec, error_message)},
        )
    elif writer.json:
        writer.write_json(fields_of(method, path, status, duration_ms, request_id, rec, error_message))
    else:
        writer.write_text(text_of(method, path, status, duration_ms, request_id, rec, error_message))
