"""What every route needs: header maps, JSON and error responses (bounded body reads: wire.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from blacksheep import Content, Request, Response

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
