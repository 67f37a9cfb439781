"""A tiny pure-Python reference for the native SSE decoder and usage tap.

Deliberately naive (whole stream at once, ``json.loads`` per event) so it is
easy to check by eye against the WHATWG rules and the Anthropic usage fields.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_LINE = re.compile(r"\r\n|\r|\n")


def parse_sse(data: bytes) -> list[tuple[str, str]]:
    """WHATWG event-stream interpretation of a complete stream: ``(event, data)`` pairs."""
    text = data.decode("utf-8", errors="replace")
    text = text.removeprefix("\ufeff")
    lines = _LINE.split(text)
    lines.pop()  # the text after the last terminator is an unterminated line
    events: list[tuple[str, str]] = []
    event, buf = "", ""
    for line in lines:
        if line == "":
            if buf:
                events.append((event or "message", buf[:-1]))
            event, buf = "", ""
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            buf += value + "\n"
        elif field == "event":
            event = value
    return events


@dataclass
class Usage:
    input: int = 0
    output: int = 0
    cache_5m: int = 0
    cache_1h: int = 0
    cache_read: int = 0
    exact: bool = False
    split_reported: bool = False
    stop_reason: str | None = None
    error_type: str | None = None

    def as_tuple(self) -> tuple[int, int, int, int, int, bool]:
        return (self.input, self.output, self.cache_5m, self.cache_1h, self.cache_read, self.exact)


def _counts(usage: dict[str, Any]) -> dict[str, int | None]:
    """One event's usage; with ``iterations`` (compaction, advisor) the sum over them."""
    its = usage.get("iterations") or None
    rows = its if its else [usage]

    def total(key: str) -> int | None:
        vals = [r.get(key) for r in rows]
        if its is None and vals[0] is None:
            return None
        return sum(v or 0 for v in vals)

    splits = [r["cache_creation"] for r in rows if isinstance(r.get("cache_creation"), dict)]
    return {
        "input": total("input_tokens"),
        "cache_creation": total("cache_creation_input_tokens"),
        "cache_read": total("cache_read_input_tokens"),
        "output": total("output_tokens"),
        "5m": sum(s.get("ephemeral_5m_input_tokens") or 0 for s in splits) if splits else None,
        "1h": sum(s.get("ephemeral_1h_input_tokens") or 0 for s in splits) if splits else None,
    }


def usage(data: bytes) -> Usage:
    """What to bill for a stream that ran to its ``message_delta``."""
    start: dict[str, int | None] = {}
    delta: dict[str, int | None] = {}
    out = Usage()
    for name, payload in parse_sse(data):
        if name == "ping":
            continue
        obj = json.loads(payload)
        if name == "message_start":
            start = _counts(obj["message"].get("usage") or {})
        elif name == "message_delta":
            delta = {k: v for k, v in _counts(obj.get("usage") or {}).items() if v is not None}
            out.stop_reason = (obj.get("delta") or {}).get("stop_reason")
        elif name == "error":
            out.error_type = obj["error"]["type"]

    def pick(key: str) -> int:
        v = delta.get(key, start.get(key))
        return v or 0

    out.input = pick("input")
    out.cache_read = pick("cache_read")
    out.split_reported = start.get("1h") is not None or delta.get("1h") is not None
    one_hour = pick("1h")
    total = max(pick("cache_creation"), pick("5m") + one_hour)
    out.cache_1h = min(one_hour, total)
    out.cache_5m = total - out.cache_1h
    out.exact = "output" in delta
    out.output = (delta["output"] if out.exact else start.get("output")) or 0
    return out
