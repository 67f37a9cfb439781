"""What the two pure-Python reference translators share (as the native ones share
rust/ethereal-core/src/translate.rs): the SSE line splitter, ``json.loads`` per event, the
usage bookkeeping, and the end of the stream (``message_stop``, an ``error`` event, EOF).

A wire format subclasses ``ReferenceSseDriver`` and renders the events of a live stream:
``_message_start``, ``_block_start``, ``_block_delta``, ``_block_stop``, ``_message_stop`` and
``_error``. After ``_message_stop`` or ``_error`` the driver sends it nothing more.
"""

from __future__ import annotations

import json
from typing import Any

INTERRUPTED = "the upstream connection was interrupted before the response was complete"
_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def dumps(obj: Any) -> str:
    """Compact JSON, non-ASCII raw (what the native JSON writers write)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def usage_counts(usage: dict[str, Any]) -> dict[str, int | None]:
    """One event's counts (summed over ``iterations`` when present); None = not reported."""
    iterations = usage.get("iterations")
    rows = iterations if isinstance(iterations, list) and iterations else None
    counts: dict[str, int | None] = {}
    if rows is None:
        for name in _USAGE_FIELDS:
            counts[name] = usage.get(name)
        split = usage.get("cache_creation")
    else:
        for name in _USAGE_FIELDS:
            counts[name] = sum(r.get(name) or 0 for r in rows)
        splits = [r["cache_creation"] for r in rows if isinstance(r.get("cache_creation"), dict)]
        split = None
        if splits:
            split = {
                k: sum(s.get(k) or 0 for s in splits)
                for k in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
            }
    if isinstance(split, dict):
        counts["split_5m"] = split.get("ephemeral_5m_input_tokens") or 0
        counts["split_1h"] = split.get("ephemeral_1h_input_tokens") or 0
    return counts


class ReferenceSseDriver:
    def __init__(self) -> None:
        self.buffer = b""
        self.event_name = ""
        self.data_lines: list[str] = []
        self.done = False
        self.stop_reason: str | None = None
        self.saw_delta = False
        self.start_usage: dict[str, int | None] = {}
        self.delta_usage: dict[str, int | None] = {}

    # ---- what a wire format renders -------------------------------------------------------

    def _message_start(self, out: list[str]) -> None:
        raise NotImplementedError

    def _block_start(self, index: int, block: dict[str, Any], out: list[str]) -> None:
        raise NotImplementedError

    def _block_delta(self, index: int, delta: dict[str, Any], out: list[str]) -> None:
        raise NotImplementedError

    def _block_stop(self, index: int, out: list[str]) -> None:
        raise NotImplementedError

    def _message_stop(self, out: list[str]) -> None:
        raise NotImplementedError

    def _error(self, out: list[str], kind: str, message: str) -> None:
        """The stream failed: an upstream ``error`` (its Anthropic type) or EOF (``api_error``)."""
        raise NotImplementedError

    # ---- SSE ------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        self.buffer += chunk
        out: list[str] = []
        lines = self.buffer.splitlines(keepends=True)  # bytes split on \n, \r\n and \r only
        # the last line is kept when unterminated, or when it ends in \r (its \n may follow)
        keep = 1 if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")) else 0
        for raw in lines[: len(lines) - keep]:
            self._line(raw.rstrip(b"\r\n").decode("utf-8", "replace"), out)
        self.buffer = lines[-1] if keep else b""
        return "".join(out).encode()

    def _line(self, line: str, out: list[str]) -> None:
        if line == "":
            if self.data_lines:
                self._event("\n".join(self.data_lines), out)
            self.event_name, self.data_lines = "", []
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self.data_lines.append(value)
        elif field == "event":
            self.event_name = value

    def finish(self) -> bytes:
        if self.buffer.endswith(b"\r"):
            self.buffer = self.buffer[:-1]
            self._line(self.buffer.decode("utf-8", "replace"), [])
        self.buffer = b""
        if self.done:
            return b""
        out: list[str] = []
        self._error(out, "api_error", INTERRUPTED)
        self.done = True
        return "".join(out).encode()

    # ---- events ---------------------------------------------------------------------------

    def _event(self, data: str, out: list[str]) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type", self.event_name)
        if kind == "message_start":
            usage = (event.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self._merge(self.start_usage, usage)
        elif kind == "message_delta":
            self.saw_delta = True
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            if isinstance(event.get("usage"), dict):
                self._merge(self.delta_usage, event["usage"])
        if self.done:
            return
        if kind == "message_start":
            self._message_start(out)
        elif kind == "content_block_start":
            self._block_start(event.get("index", 0), event.get("content_block") or {}, out)
        elif kind == "content_block_delta":
            self._block_delta(event.get("index", 0), event.get("delta") or {}, out)
        elif kind == "content_block_stop":
            self._block_stop(event.get("index", 0), out)
        elif kind == "message_stop":
            self._message_stop(out)
            self.done = True
        elif kind == "error":
            err = event.get("error") or {}
            self._error(out, err.get("type") or "api_error", err.get("message") or "upstream error")
            self.done = True

    # ---- usage ----------------------------------------------------------------------------

    def _merge(self, into: dict[str, int | None], usage: dict[str, Any]) -> None:
        for name, value in usage_counts(usage).items():
            if value is not None:
                into[name] = max(into.get(name) or 0, value) if into.get(name) is not None else value

    def _latest(self, name: str) -> int:
        value = self.delta_usage.get(name)
        if value is None:
            value = self.start_usage.get(name)
        return value or 0

    def _totals(self) -> tuple[int, int, int, int]:
        """``(input with cache reads and writes, cache reads, cache writes, output)``."""
        writes = max(
            self._latest("cache_creation_input_tokens"), self._latest("split_5m") + self._latest("split_1h")
        )
        reads = self._latest("cache_read_input_tokens")
        return self._latest("input_tokens") + writes + reads, reads, writes, self._latest("output_tokens")
