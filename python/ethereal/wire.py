"""Reading a request off the wire, for the pipeline and the routes alike: the bounded body read.

It sits below both (the pipeline reads the body of every request it runs; admin routes read
theirs), so neither imports the other for it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from blacksheep import Request
from blacksheep.exceptions import MessageAborted

from ethereal.errors import GatewayError

# a body past this size is gathered in one growing buffer (one copy of it, never the chunks
# and their join side by side)
_BUFFER_AFTER = 1 << 20


def client_gone() -> GatewayError:
    """The client closed its connection before the whole body arrived: recorded as 499
    ``client_disconnected`` (its answer has nowhere to go), never as a gateway failure."""
    return GatewayError(
        499,
        "the client closed the connection before sending the whole request body",
        type="client_disconnected",
    )


async def read_body(request: Request, limit: int, grow: Callable[[int], None] | None = None) -> bytes:
    """The whole request body, refusing with 413 past ``limit`` bytes (declared or streamed).

    A client that goes away mid-body is a 499 ``client_disconnected`` (``client_gone``). ``grow``
    is told each chunk's size as it arrives (it may refuse by raising)."""
    declared = request.get_first_header(b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise GatewayError(413, f"request body exceeds the maximum size of {limit} bytes")
        except ValueError:
            raise GatewayError(400, "invalid content-length header") from None
    parts: list[bytes] = []
    buffer: io.BytesIO | None = None
    size = 0
    # the incoming body (BlackSheep's ASGI content: its stub lacks ``stream``, which it has)
    content: Any = request.content
    if content is None:  # no body at all
        return b""
    try:
        async for chunk in content.stream():
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"request body exceeds the maximum size of {limit} bytes")
            if grow is not None:
                grow(len(chunk))
            if buffer is not None:
                buffer.write(chunk)
            elif size > _BUFFER_AFTER:
                buffer = io.BytesIO()
                for part in parts:
                    buffer.write(part)
                parts.clear()
                buffer.write(chunk)
            else:
                parts.append(chunk)
    except MessageAborted:
        raise client_gone() from None
    if buffer is not None:
        # the buffer's own bytes (trimmed, not copied) once nothing else refers to them
        body = buffer.getvalue()
        buffer.close()
        return body
    return b"".join(parts) if len(parts) != 1 else parts[0]
