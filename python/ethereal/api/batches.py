"""``/v1/messages/batches``: Anthropic's Message Batches routes, shapes unchanged (batches/service.py).

A key sees and touches only its own batches (404 otherwise, the same as for an unknown id);
the admin key sees every batch but creates none (a batch is billed to a key). The batch
control calls themselves are not usage rows; each item is one, written when the batch is
settled (docs/batches.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from blacksheep import Application, Request, Response, StreamedContent

from ethereal.api.common import anthropic_route, header_map, json_response, raw_headers
from ethereal.auth import is_admin
from ethereal.batches.service import PATH, BatchService
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.guards import well_formed_id
from ethereal.keys import KeyRecord
from ethereal.pipeline import CLEANUP_SCOPE_KEY, Call, Pipeline
from ethereal.upstream.client import UpstreamResponse
from ethereal.wire import read_body

JSONL = b"application/x-jsonl"


def base_url(gw: Gateway, request: Request) -> str:
    """Where clients reach this gateway: ETHEREAL_PUBLIC_URL, else the request's own scheme and host."""
    if gw.settings.public_url:
        return gw.settings.public_url.rstrip("/")
    headers = header_map(request)
    host = headers.get(b"x-forwarded-host") or headers.get(b"host") or b"localhost"
    scheme = headers.get(b"x-forwarded-proto") or request.scope.get("scheme", "http").encode()
    root = request.scope.get("root_path", "") or ""
    return f"{scheme.decode('latin-1').split(',')[0].strip()}://{host.decode('latin-1').split(',')[0].strip()}{root}"


def declared_length(request: Request, limit: int) -> int | None:
    """The body's declared length (None when it declares none); 413 past ``limit``, 400 when unreadable."""
    declared = request.get_first_header(b"content-length")
    if declared is None:
        return None
    try:
        size = int(declared)
    except ValueError:
        raise GatewayError(400, "invalid content-length header") from None
    if size > limit:
        raise GatewayError(413, f"request body exceeds the maximum size of {limit} bytes")
    return max(0, size)


def page_params(request: Request) -> tuple[int, str | None, str | None]:
    params = request.query
    try:
        limit = int(params.get("limit", ["20"])[0])
    except ValueError:
        raise invalid_request("limit: must be an integer", param="limit") from None
    if not 1 <= limit <= 1000:
        raise invalid_request("limit: must be between 1 and 1000", param="limit")
    after = params.get("after_id", [None])[0]
    before = params.get("before_id", [None])[0]
    if after is not None and before is not None:
        raise invalid_request("before_id and after_id cannot both be set")
    for name, value in (("after_id", after), ("before_id", before)):
        if value is not None and not well_formed_id(value, "msgbatch_", 64):
            raise invalid_request(f"{name}: not a message batch id", param=name)
    return limit, after, before


def register(app: Application, gw: Gateway, pipeline: Pipeline) -> BatchService:
    """The routes, and the service behind them (its poller runs while the app runs)."""
    service = BatchService(gw, pipeline)

    async def start_poller(application: Application) -> None:
        service.start()

    async def stop_poller(application: Application) -> None:
        await service.stop()

    app.on_start += start_poller
    app.on_stop += stop_poller

    async def who(request: Request, request_id: str) -> KeyRecord | None:
        """The caller's key, or None for the admin key (every batch)."""
        headers = header_map(request)
        if is_admin(gw.settings, headers):
            return None
        call = Call(request_id=request_id, route="messages.batches")
        await pipeline.authenticate(headers, call)
        return call.key

    def ok(payload: object, request_id: str) -> Response:
        return json_response(200, orjson.dumps(payload), [(b"request-id", request_id.encode())])

    @anthropic_route
    async def create(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        if key is None:
            raise GatewayError(
                403,
                "batches are billed to a key: create them with an API key minted by the "
                "gateway, not the admin key",
            )
        limit = gw.settings.batch_max_body_bytes
        declared = declared_length(request, limit)
        async with service.creating(key, declared) as slot:
            # the body goes straight to the service, which keeps its only reference (and lets it
            # go once a spliced copy replaces it)
            rec = await service.create(
                key,
                await read_body(request, limit, None if declared is not None else slot.grow),
                raw_headers(request),
            )
        return ok(BatchService.view(rec, base_url(gw, request)), request_id)

    @anthropic_route
    async def list_batches(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        limit, after, before = page_params(request)
        rows, more = await service.list_batches(key, limit=limit, after_id=after, before_id=before)
        base = base_url(gw, request)
        data = [BatchService.view(r, base) for r in rows]
        return ok(
            {
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
            request_id,
        )

    @anthropic_route
    async def get_batch(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        rec = await service.get(key, batch_of(request))
        return ok(BatchService.view(rec, base_url(gw, request)), request_id)

    @anthropic_route
    async def cancel(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        rec = await service.cancel(key, batch_of(request), raw_headers(request))
        return ok(BatchService.view(rec, base_url(gw, request)), request_id)

    @anthropic_route
    async def delete(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        deleted = await service.delete(key, batch_of(request), raw_headers(request))
        return ok({"id": deleted, "type": "message_batch_deleted"}, request_id)

    @anthropic_route
    async def results(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        resp = await service.open_results(key, batch_of(request), raw_headers(request))
        relay = ResultsRelay(resp, getattr(getattr(request, "content", None), "receive", None))
        pending = request.scope.get(CLEANUP_SCOPE_KEY)
        if isinstance(pending, list):
            pending.append(relay.abandon)  # a body never iterated still gives the connection back
        return Response(200, [(b"request-id", request_id.encode())], StreamedContent(JSONL, relay.body))

    app.router.add_post(PATH, create)
    app.router.add_get(PATH, list_batches)
    app.router.add_get(PATH + "/:batch_id", get_batch)
    app.router.add_delete(PATH + "/:batch_id", delete)
    app.router.add_post(PATH + "/:batch_id/cancel", cancel)
    app.router.add_get(PATH + "/:batch_id/results", results)
    return service


def batch_of(request: Request) -> str:
    return request.route_values.get("batch_id") or ""


class ResultsRelay:
    """The upstream's results JSONL to the client chunk by chunk: never held whole, whatever its size.

    A client that goes away (the ASGI ``http.disconnect``) closes the upstream read at once; an
    upstream cut ends the chunked body without its last chunk, so the client sees a broken
    response and retries, never a short file that looks complete."""

    __slots__ = ("done", "receive", "resp", "watcher")

    def __init__(
        self, resp: UpstreamResponse, receive: Callable[[], Awaitable[dict[str, Any]]] | None
    ) -> None:
        self.resp = resp
        self.receive = receive
        self.done = False
        self.watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        if self.receive is None:
            return
        try:
            while True:
                message = await self.receive()
                if message.get("type") == "http.disconnect":
                    self.resp.close()
                    return
        except Exception:  # noqa: BLE001 - no way to watch: the body runs to its end
            return

    async def body(self) -> AsyncIterator[bytes]:
        if self.receive is not None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())
        try:
            async for chunk in self.resp.iter_chunks():
                yield chunk
            self.done = True
        finally:
            await self.abandon()

    async def abandon(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.done:
            self.resp.release()
        else:
            self.resp.close()
