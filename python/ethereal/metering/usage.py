"""The end of a stream, for the billing details the native tap does not carry.

The native ``StreamTap`` gives token totals (including the sum over
``usage.iterations``). Two things it does not give are priced here from the
stream's final ``message_delta``:

- the model of each iteration (an ``advisor_message`` runs on another model,
  billed at that model's price);
- ``server_tool_use.web_search_requests`` (web search is billed per search).

``StreamTail`` keeps references to the last chunks of a stream (no copying per
chunk, bounded to ~64 KiB) and, at the end, parses the one ``message_delta``
event in Python only when it mentions ``iterations`` or web searches: one
orjson parse per such stream, nothing for the others.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

import orjson


_TAIL_BYTES = 64 * 1024
_DELTA = re.compile(rb"event:[ \t]*message_delta\r?\ndata:[ \t]?([^\r\n]*)")


class StreamTail:
    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, chunk: bytes) -> None:
        chunks = self._chunks
        chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(chunks[0]) >= _TAIL_BYTES:
            self._size -= len(chunks.popleft())

    def final_usage(self) -> dict[str, Any] | None:
        """``usage`` of the last ``message_delta`` when it needs more than token totals, else None."""
        if not self._chunks:
            return None
        data = b"".join(self._chunks)
        if b'"iterations"' not in data and b'"web_search_requests"' not in data:
            return None
        last = None
        for last in _DELTA.finditer(data):
            pass
        if last is None:
            return None
        try:
            event = orjson.loads(last.group(1))
        except orjson.JSONDecodeError:
            return None
        usage = event.get("usage") if isinstance(event, dict) else None
        return usage if isinstance(usage, dict) else None
