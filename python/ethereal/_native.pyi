"""Type stub for ``ethereal._native`` (Rust: rust/ethereal-py). Keep in sync by hand."""

from typing import final

@final
class StreamTap:
    """Usage tap over an Anthropic Messages SSE stream.

    Feed every network chunk with ``feed``, call ``finish`` at upstream EOF,
    then read what to bill.
    """

    def __init__(self) -> None: ...
    def feed(self, chunk: bytes) -> int:
        """Parse one chunk; returns the number of events it completed."""
    def finish(self) -> None:
        """Upstream EOF: an unterminated trailing event is discarded."""
    def usage(self) -> tuple[int, int, int, int, int, bool]:
        """``(input, output, cache_creation_5m, cache_creation_1h, cache_read, exact)``."""
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int:
        """``message_delta``'s count, or the content estimate if it never came."""
    @property
    def estimated_output_tokens(self) -> int: ...
    @property
    def cache_creation_input_tokens(self) -> int:
        """All cache writes (5m + 1h)."""
    @property
    def cache_creation_5m(self) -> int:
        """5-minute cache writes; all writes when the split was not reported."""
    @property
    def cache_creation_1h(self) -> int: ...
    @property
    def cache_read_input_tokens(self) -> int: ...
    @property
    def cache_split_reported(self) -> bool:
        """The upstream sent the ``cache_creation {5m, 1h}`` object."""
    @property
    def stop_reason(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def saw_message_start(self) -> bool: ...
    @property
    def saw_message_delta(self) -> bool: ...
    @property
    def saw_message_stop(self) -> bool: ...
    @property
    def events(self) -> int:
        """Events parsed so far, pings and unknown kinds included."""
    @property
    def malformed_events(self) -> int:
        """Events whose data was not JSON of the expected shape."""
    @property
    def truncated(self) -> bool:
        """``finish()`` found an unterminated line or event (the stream was cut)."""

def estimate_tokens(body: bytes) -> int:
    """Estimated input tokens of a raw Messages request body.

    Raises ``ValueError`` when the body is not a JSON object.
    """

def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of a piece of text (English ≈ chars / 4)."""

def parse_sse(data: bytes) -> list[tuple[str, str]]:
    """Decode a whole SSE stream into ``(event, data)`` pairs (for tests)."""
