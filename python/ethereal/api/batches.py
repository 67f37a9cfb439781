"""``/v1/messages/batches``: Anthropic's Message Batches routes, shapes unchanged (batches/service.py).

A key sees and touches only its own batches (404 otherwise, the same as for an unknown id);
the admin key sees every batch but creates none (a batch is billed to a key). The batch
control calls themselves are not usage rows; each item is one, written when the batch is
settled (docs/batches.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from blacksheep import Application, Request, Response, StreamedContent

from ethereal.admin.auth import is_admin
from ethereal.api.common import anthropic_route, header_map, json_response, raw_headers, read_body
from ethereal.batches.service import PATH, BatchService
from ethereal.errors import GatewayError, invalid_request
from ethereal.gateway import Gateway
from ethereal.keys import KeyRecord
from ethereal.proxy import Call, streamed
from ethereal.proxy import authenticate as proxy_authenticate
from ethereal.upstream.client import UpstreamResponse, UpstreamStreamError

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
        if value is not None and (not value.startswith("msgbatch_") or len(value) > 64):
            raise invalid_request(f"{name}: not a message batch id", param=name)
    return limit, after, before


def register(app: Application, gw: Gateway) -> None:
    service = gw.batches

    async def who(request: Request, request_id: str) -> KeyRecord | None:
        """The caller's key, or None for the admin key (every batch)."""
        headers = header_map(request)
        if is_admin(gw.settings, headers):
            return None
        call = Call(request_id=request_id, route="messages.batches")
        await proxy_authenticate(gw, headers, call)
        return call.key

    def ok(payload: object, request_id: str) -> Response:
        return json_response(200, orjson.dumps(payload), [(b"request-id", request_id.encode())])

    @anthropic_route
    async def create(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        if key is None:
            raise GatewayError(403, "batches are billed to a key: create them with an API key minted by the "
                               "gateway, not the admin key")
        body = await read_body(request, gw.settings.batch_max_body_bytes)
        rec = await service.create(key, body, raw_headers(request))
        return ok(BatchService.view(rec, base_url(gw, request)), request_id)

    @anthropic_route
    async def list_batches(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        limit, after, before = page_params(request)
        rows, more = await service.list(key, limit=limit, after_id=after, before_id=before)
        base = base_url(gw, request)
        data = [BatchService.view(r, base) for r in rows]
        return ok({"data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
                   "last_id": data[-1]["id"] if data else None}, request_id)

    @anthropic_route
    async def get_batch(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        rec = await service.get(key, request.route_values.get("batch_id", ""))
        return ok(BatchService.view(rec, base_url(gw, request)), request_id)

    @anthropic_route
    async def cancel(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        rec = await service.cancel(key, request.route_values.get("batch_id", ""), raw_headers(request))
        return ok(BatchService.view(rec, base_url(gw, request)), request_id)

    @anthropic_route
    async def delete(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        deleted = await service.delete(key, request.route_values.get("batch_id", ""), raw_headers(request))
        return ok({"id": deleted, "type": "message_batch_deleted"}, request_id)

    @anthropic_route
    async def results(request: Request, request_id: str) -> Response:
        key = await who(request, request_id)
        resp = await service.open_results(key, request.route_values.get("batch_id", ""), raw_headers(request))
        headers = [(b"request-id", request_id.encode())]
        return Response(200, headers, StreamedContent(JSONL, streamed(lambda: relay(resp), request)))

    async def relay(resp: UpstreamResponse) -> AsyncIterator[bytes]:
        """The upstream's JSONL chunk by chunk: never held whole, whatever its size."""
        done = False
        try:
            async for chunk in resp.iter_chunks():
                yield chunk
            done = True
        except UpstreamStreamError:
            # an error ends the chunked body without its last chunk: the client sees a broken
            # response and retries, never a short file that looks complete
            raise
        finally:
            if done:
                resp.release()
            else:
                resp.close()

    app.router.add_post(PATH, create)
    app.router.add_get(PATH, list_batches)
    app.router.add_get(PATH + "/:batch_id", get_batch)
    app.router.add_delete(PATH + "/:batch_id", delete)
    app.router.add_post(PATH + "/:batch_id/cancel", cancel)
    app.router.add_get(PATH + "/:batch_id/results", results)
