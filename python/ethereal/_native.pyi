"""Type stub for ``ethereal._native`` (Rust: rust/ethereal-py). Checked against the extension by
``mypy.stubtest`` in ``make lint``."""

from typing import Self, final

from ethereal.usage import Usage

__all__ = [
    "MARK_CACHE_CONTROL",
    "MARK_DOCUMENT",
    "MARK_ESCAPED",
    "MARK_GEO",
    "MARK_SPEED",
    "MARK_WEB",
    "MAX_JSON_DEPTH",
    "ChatTranslator",
    "ResponsesTranslator",
    "StreamState",
    "StreamTap",
    "estimate_text_tokens",
    "estimate_tokens",
    "json_shape",
    "parse_sse",
    "reserve_markers",
]

@final
class StreamState:
    """How a stream went, besides its usage."""

    @property
    def message_id(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def stop_reason(self) -> str | None: ...
    @property
    def error_type(self) -> str | None:
        """An upstream ``error`` event's type."""
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
    def estimated_output_tokens(self) -> int:
        """Output estimated from the streamed content alone."""
    @property
    def cache_split_reported(self) -> bool:
        """The upstream sent the ``cache_creation {5m, 1h}`` object."""
    @property
    def truncated(self) -> bool:
        """``finish()`` found an unterminated line or event (the stream was cut)."""

@final
class StreamTap:
    """Usage tap over an Anthropic Messages SSE stream.

    Feed every network chunk with ``feed``, call ``finish`` at upstream EOF, then read
    what to bill (``usage``) and how the stream went (``state``).
    """

    def __new__(cls) -> Self: ...
    def feed(self, chunk: bytes) -> int:
        """Parse one chunk; returns the number of events it completed."""
    def finish(self) -> None:
        """Upstream EOF: an unterminated trailing event is discarded."""
    def usage(self) -> Usage:
        """What to bill: ``message_delta``'s counts, or estimates where the stream was cut."""
    def state(self) -> StreamState: ...

@final
class ChatTranslator:
    """Anthropic Messages SSE → OpenAI ``chat.completion.chunk`` SSE (``data: {json}\\n\\n``).

    ``feed`` every upstream chunk and send what it returns (possibly ``b""``); call
    ``finish`` at upstream EOF or when the upstream connection failed, and send that too:
    an error frame when the stream had not ended, else nothing. The output is a role
    chunk, content / ``reasoning_content`` / tool-call deltas (a stable ``index`` and
    ``id`` per call), the ``finish_reason`` chunk (carrying ``reasoning_signature`` when
    the reply had thinking), a usage chunk with ``choices: []`` when ``include_usage``,
    then ``data: [DONE]``. An upstream ``error`` event becomes ``data: {"error": {...}}``
    and ends the stream. ``json_tool`` names the tool a ``response_format`` became (its
    input is streamed as ``content``); ``legacy_functions`` answers with ``function_call``.

    ``usage()`` and ``state()`` are StreamTap's, computed from the same events.
    """

    def __new__(
        cls,
        model: str,
        completion_id: str,
        created: int,
        include_usage: bool,
        *,
        json_tool: str | None = None,
        legacy_functions: bool = False,
    ) -> Self: ...
    def feed(self, chunk: bytes) -> bytes:
        """Translate one chunk; returns the OpenAI SSE bytes it completed."""
    def finish(self) -> bytes:
        """Upstream EOF: an error frame if neither ``[DONE]`` nor an error went out. Idempotent."""
    @property
    def done(self) -> bool:
        """``[DONE]`` or an error frame was emitted."""
    @property
    def tool_calls(self) -> int:
        """Client tool calls emitted so far."""
    def usage(self) -> Usage: ...
    def state(self) -> StreamState: ...

@final
class ResponsesTranslator:
    """Anthropic Messages SSE → OpenAI Responses API stream events (``event: T\\ndata: {json}\\n\\n``).

    ``feed`` every upstream chunk and send what it returns (possibly ``b""``); call ``finish``
    at upstream EOF or when the upstream connection failed, and send that too:
    ``response.failed`` when the stream had not ended, else nothing. Every event carries
    ``type`` and ``sequence_number``; ``response.created``/``in_progress``/``completed``/
    ``incomplete``/``failed`` carry the response object under ``response``, built from
    ``head`` (its request-derived members as JSON without braces) plus status, error,
    incomplete_details, output and usage. ``custom_tools`` names the Claude tools that stand
    for custom (freeform) tools, ``namespaced`` maps flattened names to (namespace, name),
    ``json_tool`` is the tool ``text.format`` became (its input streams as output text).

    ``usage()`` and ``state()`` are StreamTap's, computed from the same events.
    """

    def __new__(
        cls,
        response_id: str,
        head: str,
        *,
        custom_tools: list[str] = ...,
        namespaced: list[tuple[str, str, str]] = ...,
        json_tool: str | None = None,
    ) -> Self: ...
    def feed(self, chunk: bytes) -> bytes:
        """Translate one chunk; returns the Responses SSE bytes it completed."""
    def finish(self) -> bytes:
        """Upstream EOF: ``response.failed`` if the stream had not ended. Idempotent."""
    @property
    def done(self) -> bool:
        """The final event (completed, incomplete or failed) was emitted."""
    @property
    def items(self) -> int:
        """Output items emitted so far."""
    def usage(self) -> Usage: ...
    def state(self) -> StreamState: ...

def estimate_tokens(
    body: bytes,
    tokenizer: int = 1,
    image_tier: int = 1,
    tool_prompt: tuple[int, int] | None = None,
    keep_thinking: bool = False,
) -> int:
    """Estimated input tokens of a raw Messages request body, for a model of tokenizer
    generation ``tokenizer`` (2: the newer one, its text about 1.15x the tokens), image tier
    ``image_tier`` and a tool-use system prompt of ``tool_prompt = (auto, any)`` tokens
    (Anthropic's documented 346 / 313 when omitted); ``keep_thinking``: the model keeps earlier
    turns' thinking in context (else only a tool-use turn in progress counts its thinking). Pass the
    registry's rules for the model (``guards.estimate_args``).

    Raises ``ValueError`` when the body is not a JSON object or is nested deeper than
    ``MAX_JSON_DEPTH``.
    """

def estimate_text_tokens(text: str) -> int:
    """Estimated tokens of a piece of text (English ≈ chars / 4)."""

def parse_sse(data: bytes) -> list[tuple[str, str]]:
    """Decode a whole SSE stream into ``(event, data)`` pairs (for tests)."""

MAX_JSON_DEPTH: int
"""The deepest nesting the gateway accepts (orjson's own limit)."""

def json_shape(body: bytes, locate: str | None = None) -> tuple[int, str | None, tuple[int, int] | None]:
    """``(max_depth, first duplicate top-level key or None, span)`` in one iterative pass;
    ``span`` is the ``(start, end)`` byte range of the top-level ``locate`` key's value.

    Raises ``ValueError`` when brackets or strings do not balance.
    """

MARK_ESCAPED: int
"""``reserve_markers``: a ``\\u`` escape (it could spell any name below)."""
MARK_DOCUMENT: int
MARK_CACHE_CONTROL: int
MARK_SPEED: int
MARK_GEO: int
"""``"inference_geo"``."""
MARK_WEB: int
"""A string starting ``web_`` (a web search or fetch tool's type)."""

def reserve_markers(body: bytes) -> int:
    """The ``MARK_*`` bits of what a request body may ask that its reservation prices: each
    ``"document"``, ``"cache_control"``, ``"speed"``, ``"inference_geo"`` or ``"web_…`` string,
    and any ``\\u`` escape, in one pass (a bit set only sends the caller to look)."""
