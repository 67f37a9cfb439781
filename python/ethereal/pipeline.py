"""The request pipeline: the one place that owns the order of a request's steps.

Every route that reaches the upstream is an ``Adapter`` plugged into ``Pipeline.route``;
the pipeline runs the same sequence for all of them and keeps its invariants:

1. **authenticate** the key (401 before anything else; not recorded, see docs/metering.md);
2. **read** the body (bounded: 413), parse it (400), let the adapter **validate** it and name
   the model, **resolve** the model (aliases, the key's allowed models: 403);
3. the adapter **builds** the Anthropic request (body bytes, path, forwarded headers);
4. **admit**: reserve budget and rate-window room (402/429, or 503 when the limiter cannot
   decide); keys without limits skip it;
5. **open** the upstream on the best credential, failing over to another one while the
   client has seen nothing (``open_upstream``);
6. **relay** a stream chunk by chunk through the adapter's native object (a tap that
   leaves the bytes alone, or a translator), or **read** a whole reply and let the
   adapter translate it;
7. **settle and record exactly once, whatever happens**: a refusal, an upstream failure,
   a bug, a client that goes away, a stream whose body the server never iterates. The
   last case is covered by ``Cleanup``: the ASGI entry (app.py) runs every pending
   cleanup after the response is over, so a credential's in-flight count, the limiter's
   reservation and the usage record never leak.

An adapter decides only what differs between wire formats: how its request becomes an
Anthropic body, how a reply goes back, which native object translates its stream, and the
shape of its errors.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson
from blacksheep import Request, Response, StreamedContent

from ethereal import _native, ids
from ethereal.auth import key_hash_of
from ethereal.errors import GatewayError, anthropic_sse_error, invalid_request, upstream_error
from ethereal.gateway import Gateway
from ethereal.guards import (
    admission_input_tokens,
    check_body_shape,
    check_model_name,
    clip,
    estimate_args,
    splice_top_level,
)
from ethereal.keys import KeyRecord, teams_label
from ethereal.limits import Admission
from ethereal.metering.record import usage_record
from ethereal.metering.reserve import ReserveConfig, reserve
from ethereal.models import Model
from ethereal.storage.records import UsageRecord
from ethereal.upstream.client import UpstreamConnectError, UpstreamResponse, UpstreamStreamError
from ethereal.upstream.hints import retry_after_seconds
from ethereal.upstream.pool import FailureKind, Refusal, Refused
from ethereal.usage import Usage
from ethereal.wire import read_body

log = logging.getLogger("ethereal.pipeline")

# scope key under which the ASGI entry keeps the cleanups of the current request: each returns
# the work still to do once the response is over (awaited, shielded), or None when there is none
CLEANUP_SCOPE_KEY = "ethereal.cleanup"
Cleanup = Callable[[], Awaitable[None] | None]


# what a record says of failures that are not a GatewayError (the client sees these words too, or nothing)
CLIENT_GONE = "the client closed the connection before the response was complete"
INTERNAL_ERROR = "internal error in the gateway"
STREAM_CUT = "the upstream connection was interrupted"

# Request headers never forwarded upstream: client credentials, hop-by-hop, and what the
# HTTP client sets itself.
_DROP_REQUEST = frozenset(
    {
        b"x-api-key",
        b"authorization",
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"accept-encoding",
        b"cookie",
    }
)
# Other request headers forwarded as they came, besides every anthropic-* header.
_FORWARD_REQUEST = frozenset(
    {
        b"content-type",
        b"accept",
        b"user-agent",
        b"idempotency-key",
        b"x-stainless-retry-count",
        b"x-stainless-timeout",
    }
)


@dataclass(slots=True)
class Call:
    """One client request as it moves through the pipeline."""

    request_id: str
    route: str
    key: KeyRecord | None = None
    model: Model | None = None
    model_name: str | None = (
        None  # the registry's id, or the client's name when the registry does not know it
    )
    stream: bool = False
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    ttfb_ms: float | None = None
    admission: Admission | None = None
    credential: Any = None  # upstream.pool.Credential while one is held
    upstream_request_id: str | None = None
    record: UsageRecord | None = None  # set by Pipeline.finish: one record per request
    notes: list[tuple[bytes, bytes]] = field(
        default_factory=list
    )  # headers saying what a translation changed

    def first_byte(self) -> None:
        if self.ttfb_ms is None:
            self.ttfb_ms = (time.perf_counter() - self.t0) * 1000.0


@dataclass(slots=True)
class Outbound:
    """The Anthropic request an adapter built: what goes upstream."""

    body: bytes
    data: dict[str, Any]  # the parsed Anthropic body (cache affinity, limits)
    path: str  # upstream path with its query string
    headers: list[tuple[bytes, bytes]]  # client headers offered for forwarding (forward_headers filters)
    stream: bool
    max_tokens: int  # output allowance to reserve
    affinity: bytes | None = None  # cache-affinity key (upstream.affinity)
    account: str | None = None  # only credentials of this upstream account (account-bound thinking replayed)
    context: Any = None  # the adapter's own state for the reply side (e.g. the translated request)
    # prompt-cache breakpoints the adapter added itself ("5m" or "1h"): the input is reserved at
    # that cache-write rate (metering/reserve.py) even when the client asked for no caching
    cache_ttl: str | None = None


class Relay(Protocol):
    """What the stream relay needs of a native stream object (StreamTap or a translator)."""

    def feed(self, chunk: bytes) -> Any: ...
    def finish(self) -> Any: ...
    def usage(self) -> Usage: ...
    def state(self) -> _native.StreamState: ...


class Adapter:
    """A wire format plugged into the pipeline. Subclasses override what differs.

    ``route``: the usage record's route name. ``metered=False`` (count_tokens): free, its
    upstream failures never touch a credential's health, and the admission counts only
    requests and concurrency.
    """

    route = "messages"
    metered = True
    gw: Gateway | None = (
        None  # the started gateway, bound by Pipeline.route (adapters that read its registry)
    )
    #: the deepest body accepted: a route that echoes or re-serialises what it reads asks for less
    max_depth = _native.MAX_JSON_DEPTH

    def validate(self, data: dict[str, Any]) -> str:
        """Check the parsed client body; return the client's model name."""
        raise NotImplementedError

    def build(self, call: Call, raw: bytes, data: dict[str, Any], request: Request) -> Outbound:
        """The Anthropic request, after the model is resolved (``call.model``/``call.model_name``)."""
        raise NotImplementedError

    def stream_relay(self, call: Call, out: Outbound) -> tuple[Relay, bool]:
        """The native object for a 200 event stream and whether it translates (True) or taps (False)."""
        return _native.StreamTap(), False

    def reply(self, call: Call, out: Outbound, payload: bytes, message: dict[str, Any]) -> Response:
        """A whole 2xx upstream reply, translated for the client."""
        raise NotImplementedError

    def headers(self, call: Call) -> list[tuple[bytes, bytes]]:
        """Response headers besides content-type (set by the body itself)."""
        return response_headers(call)

    def error(self, exc: GatewayError, request_id: str) -> Response:
        raise NotImplementedError

    def may_reshape(self, call: Call) -> bool:
        """A 400 from the upstream may be corrected and sent again (translated routes only)."""
        return False

    def reshape(
        self, call: Call, out: Outbound, payload: bytes, raw: bytes, data: dict[str, Any], request: Request
    ) -> Outbound | None:
        """The request in the shape an upstream 400 (``payload``) asks for, or None: the 400 stands."""
        return None

    def unavailable(self, call: Call, out: Outbound, exc: GatewayError) -> Response | None:
        """An answer of the gateway's own when no upstream could serve (None: answer ``exc``)."""
        return None


def response_headers(call: Call) -> list[tuple[bytes, bytes]]:
    headers = [(b"request-id", call.request_id.encode())]
    if call.upstream_request_id:
        headers.append((b"upstream-request-id", call.upstream_request_id.encode("latin-1")))
    if call.admission is not None:
        headers.extend(call.admission.headers)
    headers.extend(call.notes)
    return headers


def forward_headers(raw: list[tuple[bytes, bytes]], api_key: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        lname = name.lower()
        if lname in _DROP_REQUEST:
            continue
        if lname.startswith(b"anthropic-") or lname in _FORWARD_REQUEST:
            key = lname.decode("latin-1")
            val = value.decode("latin-1")
            # repeated anthropic-beta headers are joined, as the API accepts a comma list
            headers[key] = f"{headers[key]},{val}" if key in headers else val
    headers.setdefault("anthropic-version", "2023-06-01")
    headers.setdefault("content-type", "application/json")
    headers["x-api-key"] = api_key
    return headers


def parse_json_body(body: bytes, max_depth: int = _native.MAX_JSON_DEPTH) -> dict[str, Any]:
    if not body:
        raise invalid_request("request body is empty: expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid_request("request body must be a JSON object")
    check_body_shape(body, max_depth, data)  # a repeated top-level key, too deep: 400 (guards.py)
    return data


def splice_model(body: bytes, data: dict[str, Any], new_model: str) -> bytes:
    """Replace the top-level ``model`` value in the raw bytes, keeping every other byte
    (located by one native pass: no re-parse, no recursion, any depth; guards.py)."""
    spliced = splice_top_level(body, "model", orjson.dumps(new_model))
    return spliced if spliced is not None else orjson.dumps({**data, "model": new_model})


class Pipeline:
    """Runs adapters. Built once per worker from the started gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.reserve_config = reserve_config(gw.settings)

    def route(self, adapter: Adapter) -> Callable[[Request], Awaitable[Response]]:
        """The BlackSheep handler serving ``adapter``."""
        adapter.gw = self.gw

        async def handler(request: Request) -> Response:
            return await self.handle(adapter, request)

        handler.__name__ = type(adapter).__name__
        return handler

    async def handle(self, adapter: Adapter, request: Request) -> Response:
        headers = dict(request.scope["headers"])
        call = Call(request_id="", route=adapter.route)
        try:
            # the id is tagged with the key's hash, so /v1/usage/{id} knows a foreign id at once
            # (ids.py): the authenticated key's stored hash, or, refused, the hash of what was sent
            try:
                await self.authenticate(headers, call)
            finally:
                key = call.key
                call.request_id = ids.request_id(key.key_hash if key is not None else key_hash_of(headers))
            async with self.recording(call):  # exactly one usage record, whatever happens below
                return await self._serve(adapter, request, call)
        except GatewayError as exc:
            return adapter.error(exc, call.request_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s", clip(request.method, 16), clip(request.url.path.decode("latin-1"))
            )
            return adapter.error(GatewayError(500, "internal error in the gateway"), call.request_id)

    def recording(self, call: Call) -> Recording:
        """Records the request when the work inside fails before it recorded itself: a refusal
        (400, 402, 403, 413, 429), an upstream failure, a client gone, or a bug."""
        return Recording(self, call)

    async def _serve(self, adapter: Adapter, request: Request, call: Call) -> Response:
        raw = await read_body(request, self.settings.max_body_bytes)
        data = parse_json_body(raw, adapter.max_depth)
        out = self.prepare(adapter, call, raw, data, request)
        await self.admit(call, out, metered=adapter.metered)
        try:
            resp = await self.open_upstream(call, out, health=adapter.metered)
            if resp.status == 400 and adapter.may_reshape(call):
                resp, out = await self.reshaped(adapter, call, out, resp, raw, data, request)
        except GatewayError as exc:
            fallback = adapter.unavailable(call, out, exc)
            if fallback is None:
                raise
            await self.finish(call, 200, Usage(exact=False))
            return fallback
        if resp.is_event_stream and resp.status == 200:
            try:
                return self._stream(adapter, request, call, out, resp)
            # the upstream is generating: whatever failed, billed at the reservation, never at 0
            except Exception as exc:  # noqa: BLE001 - recorded and answered by served_failure
                resp.close()
                raise await self.served_failure(
                    call, reserved_usage(call, out, metered=adapter.metered), exc
                ) from None
        try:
            payload = await resp.read()
        except UpstreamStreamError as exc:
            raise GatewayError(502, "the upstream connection was interrupted") from exc
        if resp.status >= 400:
            raise upstream_error(resp.status, payload, resp.headers)
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            raise await self.served_failure(
                call,
                reserved_usage(call, out, metered=adapter.metered),
                GatewayError(502, "the upstream answered with a body that is not JSON"),
            )
        usage = Usage.from_message(message.get("usage"), served_model=message.get("model"))
        try:
            response = adapter.reply(call, out, payload, message)
        # served and not answerable: billed what the upstream reported
        except Exception as exc:  # noqa: BLE001 - recorded and answered by served_failure
            raise await self.served_failure(call, usage if adapter.metered else Usage(), exc) from None
        call.first_byte()
        await self.finish(call, resp.status, usage if adapter.metered else Usage())
        return response

    async def reshaped(
        self,
        adapter: Adapter,
        call: Call,
        out: Outbound,
        resp: UpstreamResponse,
        raw: bytes,
        data: dict[str, Any],
        request: Request,
    ) -> tuple[UpstreamResponse, Outbound]:
        """A 400 the adapter can correct (a translated request to a model the registry does not
        describe, refused with one of the API's documented texts): sent once more in the shape
        the refusal asks for. Otherwise the 400 stands, as the upstream sent it."""
        try:
            payload = await resp.read()
        except UpstreamStreamError as exc:
            raise GatewayError(502, "the upstream connection was interrupted") from exc
        again = adapter.reshape(call, out, payload, raw, data, request)
        if again is None:
            raise upstream_error(resp.status, payload, resp.headers)
        cred = call.credential
        call.credential = None
        if cred is not None:
            self.gw.pool.release(cred)
        return await self.open_upstream(call, again, health=adapter.metered), again

    def prepare(
        self, adapter: Adapter, call: Call, raw: bytes, data: dict[str, Any], request: Request
    ) -> Outbound:
        """Steps 2 and 3 for a parsed body: validate, resolve the model, build the Anthropic
        request; the caller then admits it (``admit``, step 4). Shared by every transport (the
        Responses WebSocket too)."""
        self.resolve_model(call, check_model_name(adapter.validate(data)))
        out = adapter.build(call, raw, data, request)
        call.stream = out.stream
        return out

    def _stream(
        self, adapter: Adapter, request: Request, call: Call, out: Outbound, resp: UpstreamResponse
    ) -> Response:
        native, translate = adapter.stream_relay(call, out)
        receive = getattr(getattr(request, "content", None), "receive", None)
        relay = StreamRelay(self, call, resp, native, translate=translate, receive=receive)
        pending = cast("list[Cleanup] | None", request.scope.get(CLEANUP_SCOPE_KEY))
        if pending is not None:
            pending.append(relay.abandon)
        headers = adapter.headers(call)
        headers.append((b"cache-control", b"no-cache"))
        return Response(200, headers, StreamedContent(b"text/event-stream; charset=utf-8", relay.body))

    async def served_failure(self, call: Call, usage: Usage, exc: Exception) -> GatewayError:
        """The upstream answered but its answer cannot reach the client (a reply the adapter
        cannot translate, a body that is not JSON, a stream relay that cannot be built):
        records the request at ``usage`` (what the upstream reported, else the reservation:
        ``reserved_usage``), settling the key's budget, and returns the error to answer."""
        if isinstance(exc, GatewayError):
            err = exc
        else:
            log.error("answering %s failed after the upstream served it", call.request_id, exc_info=exc)
            err = GatewayError(500, "internal error in the gateway")
        await self.finish(call, err.status, usage, error_type="api_error")
        return err

    # -- the steps -------------------------------------------------------------------------

    async def authenticate(self, headers: dict[bytes, bytes], call: Call) -> None:
        """The key, or 401. Refusals before a key is known are counted by the meter, not recorded:
        no key means nothing billable and no owner, and rows written for junk requests would let
        anyone fill the usage table (see docs/metering.md)."""
        meter = self.gw.meter
        try:
            call.key = await self.gw.auth.authenticate(headers)
        except GatewayError:
            meter.count_unauthenticated()
            raise
        if not meter.accepting:
            # ETHEREAL_METER_ON_FULL=reject: nothing is served that cannot be recorded
            meter.refuse()
            raise GatewayError(
                503,
                "usage metering is saturated (database unreachable and spool full); retry later",
                type="overloaded_error",
                retry_after=30.0,
            )

    def resolve_model(self, call: Call, name: str) -> None:
        """The registry's model for ``name`` (ids, aliases, short names: ``opus`` is today's Opus).

        A name the registry does not describe is never refused here: it goes upstream as named
        (without a provider prefix), and the upstream's own answer decides. Served, it is billed
        at a provisional card (the dearest of its family, else of the table) and flagged; a
        retired or unknown id gets the upstream's own 404, unchanged."""
        registry = self.gw.registry
        model = registry.resolve(name)
        if model is None:
            model = registry.provisional(registry.canonical_name(name))
        call.model = model
        call.model_name = model.id
        key = call.key
        if key is not None and key.allowed_models:
            allowed = key.allowed_models
            if (
                model.id not in allowed
                and name not in allowed
                and model.family not in allowed
                and model.series not in allowed
            ):
                raise GatewayError(403, f"this API key may not use model {name!r}")

    async def admit(self, call: Call, out: Outbound, *, metered: bool = True) -> None:
        """Reserve budget and rate-window room for the request about to go upstream.

        A key without limits skips both the native estimate and the limiter round trip. An
        unmetered request (count_tokens: free) counts against the key's requests per minute
        and concurrency only, never its budgets or token windows."""
        limiter = self.gw.limiter
        if call.key is None:
            return
        if not metered:
            if limiter.governs_count(call.key):
                call.admission = await limiter.admit_count(call.key)
            return
        key = call.key
        if not limiter.governs(key):
            return
        # the dearest the request can cost: cache writes, tiers, fast mode, geo, server-tool fees at
        # their max_uses, documents by their pages (priced only for a key with a money budget)
        held = reserve(
            self.gw.registry,
            call.model,
            out.data,
            out.body,
            at=call.started,
            # the estimate for this model plus its margin (guards.py); unreadable: a 400
            input_tokens=admission_input_tokens(out.body, call.model),
            max_tokens=out.max_tokens,  # the whole ceiling: no request outputs more
            money=key.budget_micro_usd is not None or limiter.spend_limited(key),
            config=self.reserve_config,
            caches=out.cache_ttl,
        )
        call.admission = await limiter.admit(
            key,
            model=call.model_name,
            input_tokens=held.input_tokens,
            max_tokens=held.output_tokens,
            input_micro=held.input_micro,
            output_micro=held.output_micro,
            request_id=call.request_id,
        )

    async def open_upstream(self, call: Call, out: Outbound, *, health: bool = True) -> UpstreamResponse:
        """Send to the best credential, failing over while the client has seen nothing.

        Returns a response with a 2xx status (an event stream already holding its first chunk,
        a JSON body already read: a cut before the client has seen anything fails over too),
        or a client error (a 4xx that ``FailureKind.for_status`` does not count) that is the
        client's to see. Failover is bounded by ``max_attempts`` and ``failover_deadline``. When
        every attempt failed, the last upstream error is answered as the upstream sent it
        (status, type, message, retry headers), so a client's retry logic sees what it would
        calling directly. When the pool refuses before any attempt (``Refusal``): 429 inside an
        upstream 429's retry-after, 503 when nothing enabled serves the model, each with the
        real wait. ``health=False`` (count_tokens) keeps failures out of the credentials' health
        so they never cool a credential down for messages (a 401/403 still asks for a probe).
        """
        settings = self.settings
        gw = self.gw
        pool = gw.pool
        deadline = time.monotonic() + settings.failover_deadline
        tried: list[str] = []
        last: GatewayError | None = None
        for attempt in range(settings.max_attempts):
            if attempt and time.monotonic() >= deadline:
                break
            cred = await pool.acquire(
                call.model_name, out.affinity, tried, count_rpm=health, account=out.account
            )
            if isinstance(cred, Refusal):
                if last is None and cred.reason is not Refused.EXHAUSTED:
                    raise GatewayError(cred.status, cred.message, type=cred.error_type, retry_after=cred.wait)
                break
            tried.append(cred.name)
            try:
                resp = await gw.client.request(
                    "POST",
                    cred.base_url + out.path,
                    forward_headers(out.headers, cred.api_key),
                    out.body,
                    pool_key=cred.name,
                )
                if resp.status == 200:
                    if resp.is_event_stream:
                        await resp.prime(settings.first_byte_timeout)
                    else:
                        await resp.buffer()
            except UpstreamConnectError as exc:
                pool.release(cred)
                log.warning(
                    "upstream %s failed before the first byte (attempt %d): %s", cred.name, attempt + 1, exc
                )
                if health:
                    await pool.report_failure(
                        cred, FailureKind(exc.kind), detail=str(exc), model=call.model_name
                    )
                # what a client calling the upstream directly meets: a connection failure it retries
                last = GatewayError(
                    502,
                    "the upstream connection failed before a response",
                    type="api_error",
                    upstream_hints=[(b"x-should-retry", b"true")],
                )
                continue
            except BaseException:  # cancelled (the client went away) or a bug: give the slot back
                pool.release(cred)
                raise
            status = resp.status
            org = resp.headers.get("anthropic-organization-id")
            if org and cred.account != org:
                cred.account = org[
                    :128
                ]  # the upstream account this credential belongs to (upstream/binding.py)
            kind = FailureKind.for_status(status) if status >= 400 else None
            if kind is None:  # a success, or the client's own error (400, 404, 413, ...): the client's to see
                call.credential = cred
                call.upstream_request_id = resp.headers.get("request-id")
                if status < 400:
                    if call.model is not None and call.model.provisional:
                        gw.registry.mark_served(call.model)  # the upstream serves it: listed from now on
                    if health:
                        await pool.report_success(cred, call.model_name)
                return resp
            # a failure the client need not see yet: try another credential
            try:
                err_body = await resp.read()
            except UpstreamStreamError:
                err_body = b""
            pool.release(cred)
            if health or kind is FailureKind.AUTH:  # a 401/403 asks for a probe even on count_tokens
                await pool.report_failure(
                    cred,
                    kind,
                    retry_after_seconds(resp.headers),
                    detail=f"HTTP {status}",
                    model=call.model_name,
                )
            log.warning(
                "upstream %s answered %d (%s), attempt %d", cred.name, status, kind.value, attempt + 1
            )
            last = upstream_error(status, err_body, resp.headers)
        if last is not None:
            raise last
        raise GatewayError(
            503,
            "no upstream credential can serve this request",
            type="overloaded_error",
            retry_after=pool.earliest_recovery(call.model_name),
        )

    async def finish(
        self,
        call: Call,
        status: int,
        usage: Usage,
        *,
        error_type: str | None = None,
        error_message: str | None = None,
        batch: bool = False,
    ) -> UsageRecord:
        """Release the credential, settle the reservation and record the usage: once per request.

        ``error_message``: what the client was told (a ``GatewayError``'s message, the upstream's),
        clipped and escaped for operators (``error_message_of``). Idempotent: a second call
        returns the first record. The record is built by ``metering.record.usage_record`` (the
        one builder, the batch settle's too): priced by the registry's card in force when the
        request started, at the model the upstream reports serving.
        """
        if call.record is not None:
            return call.record
        gw = self.gw
        now = time.time()
        cred = call.credential
        call.credential = None
        key = call.key
        rec = usage_record(
            gw.registry,
            usage,
            request_id=call.request_id,
            key_id=key.id if key else None,
            credential=cred.name if cred is not None else None,
            route=call.route,
            model=call.model,
            model_name=call.model_name,
            status=status,
            stream=call.stream,
            started_at=call.started,
            ended_at=now,
            duration_ms=(time.perf_counter() - call.t0) * 1000.0,
            ttfb_ms=call.ttfb_ms,
            upstream_request_id=call.upstream_request_id,
            error_type=error_type,
            error_message=error_message,
            batch=batch,
            owner=(key.owner or None) if key else None,
            teams=teams_label(key.teams) if key else None,
        )
        cost = rec.cost_micro
        call.record = rec  # before any await: a concurrent cleanup sees the request as finished
        if cred is not None:
            gw.pool.release(cred, cost)  # in-flight count, and the spend toward its cap
        if call.admission is not None:
            try:
                await gw.limiter.settle(
                    call.admission, tokens=usage.total_tokens, cost_micro=cost, ended_at=now
                )
            except Exception:
                log.exception("settle failed for %s", call.request_id)
        gw.meter.record(rec)
        gw.budget_watch.observe(call.key)  # budget.threshold webhooks (a dict write when budgeted)
        return rec


def reserved_usage(call: Call, out: Outbound | None, *, metered: bool = True) -> Usage:
    """What a request the upstream answered is billed when its usage cannot be read: the
    admission's reservation (the input estimate and the whole output allowance), else the same
    estimate made from ``out``. Only on failure paths."""
    if not metered:
        return Usage()
    admission = call.admission
    if admission is not None and admission.limited:
        return Usage(
            input_tokens=admission.input_tokens,
            output_tokens=max(0, admission.reserved_tokens - admission.input_tokens),
            exact=False,
        )
    if out is None:
        return Usage(exact=False)
    try:
        input_tokens = _native.estimate_tokens(out.body, **estimate_args(call.model))
    except ValueError:
        input_tokens = 0
    return Usage(input_tokens=input_tokens, output_tokens=out.max_tokens, exact=False)


def reserve_config(settings: Any) -> ReserveConfig:
    return ReserveConfig(
        web_searches=settings.reserve_web_searches,
        remote_document_pages=settings.reserve_document_pages,
        pdf_page_tokens=settings.reserve_pdf_page_tokens,
    )


class Recording:
    """``async with pipeline.recording(call)``: a plain class, not a generator-based context
    manager (it is on every request's path)."""

    __slots__ = ("call", "pipeline")

    def __init__(self, pipeline: Pipeline, call: Call) -> None:
        self.pipeline = pipeline
        self.call = call

    async def __aenter__(self) -> Call:
        return self.call

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:  # never swallows: what was raised goes on
        if exc is None:
            return
        finish, call = self.pipeline.finish, self.call
        if isinstance(exc, GatewayError):
            await finish(call, exc.status, Usage(), error_type=exc.type, error_message=exc.message)
        elif isinstance(exc, asyncio.CancelledError):
            # the client went away while the gateway waited (e.g. a non-streamed reply): counts unknown
            await asyncio.shield(
                finish(
                    call, 499, Usage(exact=False), error_type="client_disconnected", error_message=CLIENT_GONE
                )
            )
        elif isinstance(exc, Exception):
            # a credential still held: the upstream answered, so the request is billed at its reservation
            usage = reserved_usage(call, None) if call.credential is not None else Usage()
            await finish(call, 500, usage, error_type="api_error", error_message=INTERNAL_ERROR)


def _usage_so_far(call: Call, native: Relay) -> Usage:
    """A failed relay's usage: what the native object saw, else the reservation."""
    try:
        return native.usage()
    except Exception:  # noqa: BLE001 - a broken native object still leaves the reservation to bill
        return reserved_usage(call, None)


class StreamRelay:
    """Upstream SSE to the client, metered by one native object called once per network chunk.

    ``translate=False`` (a StreamTap): the upstream bytes go out unchanged. ``translate=True``
    (a translator): what ``feed`` returns goes out instead, and ``finish`` writes the closing
    frames. A cut after the first byte ends the stream with an error frame (Anthropic's
    ``event: error`` here, the translator's own otherwise). A client that goes away (the
    ASGI ``http.disconnect``, watched while the body streams: a server may accept writes to
    a closed connection without complaint) closes the upstream request at once. Whatever
    happens, the usage is settled and recorded from what the native object saw: by the
    body's own ``finally``, or by ``abandon`` when the body was never iterated to its end.
    """

    __slots__ = (
        "call",
        "gone",
        "native",
        "pipeline",
        "receive",
        "resp",
        "translate",
        "watch_timer",
        "watcher",
    )

    WATCH_AFTER = 0.05  # seconds: a stream that ends sooner never needs a task watching its client

    def __init__(
        self,
        pipeline: Pipeline,
        call: Call,
        resp: UpstreamResponse,
        native: Relay,
        *,
        translate: bool,
        receive: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.call = call
        self.resp = resp
        self.native = native
        self.translate = translate
        self.receive = receive
        self.gone = False
        self.watcher: asyncio.Task[None] | None = None
        self.watch_timer: asyncio.TimerHandle | None = None

    def abandon(self) -> Awaitable[None] | None:
        """The response is over: if the body did not record (never iterated, or left suspended
        when a send failed), the work that closes the upstream and records now; None when the
        body recorded (the common case: no task is spent on it). The body's own ``finally``,
        should it run later, finds the request recorded and does nothing twice."""
        if self.call.record is not None:
            return None
        return self._abandon()

    async def _abandon(self) -> None:
        if self.call.record is not None:
            return
        self._stop_watching()
        self.resp.close()
        await self.pipeline.finish(
            self.call, 499, self.native.usage(), error_type="client_disconnected", error_message=CLIENT_GONE
        )

    def _start_watching(self) -> None:
        self.watch_timer = None
        self.watcher = asyncio.get_running_loop().create_task(self._watch())

    def _stop_watching(self) -> None:
        if self.watch_timer is not None:
            self.watch_timer.cancel()
            self.watch_timer = None
        if self.watcher is not None:
            self.watcher.cancel()

    async def _watch(self) -> None:
        receive = self.receive
        if receive is None:
            return
        try:
            while True:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    self.gone = True
                    self.resp.close()  # the pending upstream read ends at once
                    return
        except Exception:  # noqa: BLE001 - no way to watch: the stream just runs to its end
            return

    async def body(self) -> AsyncIterator[bytes]:
        """The response body (an async generator function, as BlackSheep's StreamedContent wants)."""
        call, native, resp, pipeline = self.call, self.native, self.resp, self.pipeline
        pool = pipeline.gw.pool
        if self.receive is not None:  # watched for a disconnect once it outlives WATCH_AFTER
            self.watch_timer = asyncio.get_running_loop().call_later(self.WATCH_AFTER, self._start_watching)
        status = 200
        error_type: str | None = None
        error_message: str | None = None
        cut: str | None = None
        completed = failed = False
        try:
            try:
                limiter = pipeline.gw.limiter
                admission = call.admission
                # a stream longer than the reservation ttl keeps its reservation and concurrency slot
                refresh_at = (
                    time.monotonic() + limiter.refresh_interval if admission is not None else math.inf
                )
                async for chunk in resp.iter_chunks():
                    call.first_byte()
                    if time.monotonic() >= refresh_at and admission is not None:
                        refresh_at = time.monotonic() + limiter.refresh_interval
                        await limiter.refresh(admission)
                    if self.translate:
                        out = native.feed(chunk)
                        if out:
                            yield out
                    else:
                        native.feed(chunk)
                        yield chunk
            except UpstreamStreamError as exc:
                cut = str(exc)
            except Exception:  # a gateway bug (a translator, the limiter): the client gets an error frame
                log.exception("relaying the stream of %s failed", call.request_id)
                failed = True
            if failed:
                error_type, status = "api_error", 500
                closing = None
                if self.translate:
                    try:
                        closing = (
                            native.finish()
                        )  # the translator's own error frame, if it can still give one
                    except Exception:  # noqa: BLE001 - the error frame is best effort
                        closing = None
                else:
                    closing = anthropic_sse_error(
                        "api_error", "internal error in the gateway", call.request_id
                    )
                if closing and not self.gone:
                    yield closing
            elif not self.gone:
                closing = native.finish()  # a translator's closing frames; None for a tap
                state = native.state()
                if cut is None and not state.saw_message_stop and state.error_type is None:
                    cut = "upstream closed the stream before message_stop"
                if cut is not None:
                    log.warning(
                        "upstream stream from %s cut: %s",
                        call.credential.name if call.credential else "?",
                        cut,
                    )
                    error_type, status = "api_error", 502
                    error_message = STREAM_CUT
                    if call.credential is not None:
                        await pool.report_failure(
                            call.credential, FailureKind.STREAM, detail=cut, model=call.model_name
                        )
                    if not self.translate:
                        closing = anthropic_sse_error("api_error", STREAM_CUT, call.request_id)
                if closing:
                    yield closing
                completed = True
        finally:
            self._stop_watching()
            if call.record is None and failed:  # billed what the stream reported so far
                resp.close()
                finish = pipeline.finish(call, status, _usage_so_far(call, native), error_type=error_type)
                await (asyncio.shield(finish) if call.admission is not None else finish)
            elif call.record is None:  # else abandon() recorded already
                state = native.state()
                # a client that hangs up right after the stream's last event (an SDK closes on an
                # error event) did see how it ended: that outcome is recorded, not a disconnect
                ended = completed or state.saw_message_stop or state.error_type is not None
                if not ended:  # the client went away (or the body was closed early)
                    resp.close()
                    status, error_type, error_message = 499, "client_disconnected", CLIENT_GONE
                else:
                    if completed:
                        resp.release()
                    else:
                        resp.close()
                    upstream_error_type = state.error_type
                    if upstream_error_type is not None:
                        error_type, status = upstream_error_type, 200
                        error_message = (
                            state.error_message or f"the upstream stream ended with {upstream_error_type}"
                        )
                        if call.credential is not None and upstream_error_type in (
                            "overloaded_error",
                            "api_error",
                        ):
                            kind = (
                                FailureKind.OVERLOADED
                                if upstream_error_type == "overloaded_error"
                                else FailureKind.SERVER_ERROR
                            )
                            await pool.report_failure(
                                call.credential, kind, detail="error event", model=call.model_name
                            )
                finish = pipeline.finish(
                    call, status, native.usage(), error_type=error_type, error_message=error_message
                )
                # only settling a reservation waits on anything: without one there is nothing to shield
                await (asyncio.shield(finish) if call.admission is not None else finish)
