"""What every route needs: bounded body reads, header maps, error responses."""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from blacksheep import Content, Request, Response
from blacksheep.exceptions import MessageAborted

from ethereal import ids
from ethereal.auth import key_hash_of
from ethereal.errors import GatewayError, anthropic_error_body, openai_error_body
from ethereal.guards import clip

log = logging.getLogger("ethereal.api")

JSON = b"application/json"


def header_map(request: Request) -> dict[bytes, bytes]:
    return dict(request.scope["headers"])


def is_openai_client(headers: dict[bytes, bytes]) -> bool:
    """An OpenAI-style client: Bearer auth and no ``anthropic-version`` header.

    Every Anthropic SDK (and Claude Code) sends ``anthropic-version``, the newest ones with
    Bearer auth; OpenAI SDKs and OpenAI-compatible tools never send it. Shared routes such
    as ``GET /v1/models`` answer in the caller's shape by this rule.
    """
    return (
        b"anthropic-version" not in headers
        and b"x-api-key" not in headers
        and headers.get(b"authorization", b"")[:7].lower() == b"bearer "
    )


def raw_headers(request: Request) -> list[tuple[bytes, bytes]]:
    return request.scope["headers"]


def path_with_query(request: Request) -> str:
    query = request.scope.get("query_string") or b""
    path = request.scope["path"]
    return f"{path}?{query.decode('latin-1')}" if query else path


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


def json_response(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(status, headers, Content(JSON, body))


def anthropic_error(exc: GatewayError, request_id: str) -> Response:
    headers = [(b"request-id", request_id.encode()), *exc.response_headers()]
    return Response(
        exc.status, headers, Content(JSON, anthropic_error_body(exc.type, exc.message, request_id))
    )


def openai_error(exc: GatewayError, request_id: str) -> Response:
    headers = [
        (b"x-request-id", request_id.encode()),
        (b"request-id", request_id.encode()),
        *exc.response_headers(),
    ]
    openai_body = getattr(
        exc, "openai_body", None
    )  # a spent spend limit: the body Codex reads as a usage limit
    body = (
        orjson.dumps(openai_body())
        if openai_body is not None
        else openai_error_body(exc.type, exc.message, exc.param)
    )
    return Response(exc.status, headers, Content(JSON, body))


Handler = Callable[[Request, str], Awaitable[Response]]


def anthropic_route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Gives the handler a request id and renders any failure in Anthropic's shape."""

    async def route(request: Request) -> Response:
        request_id = ids.request_id(key_hash_of(request.scope["headers"]))  # tagged: see ids.py
        try:
            return await handler(request, request_id)
        except GatewayError as exc:
            return anthropic_error(exc, request_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s", clip(request.method, 16), clip(request.url.path.decode("latin-1"))
            )
            return anthropic_error(GatewayError(500, "internal error in the gateway"), request_id)

    route.__name__ = handler.__name__
    return route
