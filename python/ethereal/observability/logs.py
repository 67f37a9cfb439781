"""Logging setup: ``--log-format text|json`` and ``--log-level``, one line per request.

The request line (logger ``ethereal.access``, level info) carries the request id, method,
path (never the query string), status, latency and, when the request was metered, its key
id, model, route, tokens, cost, time to first byte and upstream credential name. Never a
body, a key, a credential's secret or a header value: nothing a client sends is copied
into the line except the path, truncated.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any, TextIO

import orjson

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
_STD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


class AccessLog:
    """The request line, formatted and written without the ``logging`` machinery.

    It is the one line written per request, and through ``logging`` it costs a record, a
    caller lookup, a lock and a write each time (measured: more than the rest of the
    observability layer together). Here the line is formatted directly, in exactly the
    format ``JsonFormatter``/``TextFormatter`` give, and lines are written together every
    ``INTERVAL`` seconds (at once past 64 KiB; at exit and when the gateway stops), one
    write for many requests. A request line may therefore follow by up to ``INTERVAL`` a
    line other loggers wrote after it (each carries its own timestamp), and a worker
    killed with SIGKILL loses at most that interval's request lines.
    """

    LIMIT = 64 * 1024
    INTERVAL = 0.2

    def __init__(self, log_format: str, stream: TextIO) -> None:
        self.json = log_format == "json"
        self.stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._pending: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                if self.json
                else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            )
        millis = int((now - second) * 1000)
        return f"{self._stamp}.{millis:03d}Z" if self.json else f"{self._stamp},{millis:03d}"

    def write_text(self, fields_text: str) -> None:
        """A text-format line from its ``key=value`` part (``http.text_of``)."""
        self._add(f"{self._timestamp(time.time())} INFO ethereal.access: request {fields_text}\n")

    def write_json(self, fields: dict[str, Any]) -> None:
        """A JSON-format line from the request's fields (``http.fields_of``)."""
        data = {
            "ts": self._timestamp(time.time()),
            "level": "info",
            "logger": "ethereal.access",
            "msg": "request",
        }
        data.update(fields)
        self._add(orjson.dumps(data, default=str).decode() + "\n")

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.LIMIT:
            self.flush()
        elif self._pending is None:
            try:
                self._pending = asyncio.get_running_loop().call_later(self.INTERVAL, self.flush)
            except RuntimeError:  # no event loop: nothing would flush later
                self.flush()

    def flush(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if not self._lines:
            return
        data = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: as logging does, never fail a request
            pass


_access: AccessLog | None = None


def access_log() -> AccessLog | None:
    """The request-line writer ``configure`` installed, if any (else the line goes through ``logging``)."""
    return _access


def configure(log_format: str = "text", level: str = "info") -> None:
    """Replace the root handlers with one stderr handler in the chosen format."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    global _access
    if _access is not None:
        _access.flush()
    else:
        atexit.register(_flush_at_exit)
    _access = AccessLog(log_format, sys.stderr)


def _flush_at_exit() -> None:
    if _access is not None:
        _access.flush()
