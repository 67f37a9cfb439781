"""The native request path: Anthropic in, Anthropic out, bytes untouched.

auth → validate → admit → pick credential → forward (failover until the first
byte reaches the client) → stream back chunk by chunk through the native tap →
settle + record. Translating routes reuse ``open_upstream`` and ``finish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ethereal import _native
from ethereal.catalog import Model
from ethereal.errors import GatewayError, anthropic_sse_error, invalid_request
from ethereal.gateway import Gateway
from ethereal.keys import KeyRecord
from ethereal.limits import Admission
from ethereal.metering.pricing import Iteration, cost_micro, iteration_totals, price_model
from ethereal.metering.record import UsageRecord
from ethereal.metering.usage import StreamTail
from ethereal.metering.usage import extras as usage_extras
from ethereal.upstream.client import UpstreamConnectError, UpstreamResponse, UpstreamStreamError
from ethereal.upstream.pool import Credential

log = logging.getLogger("ethereal.proxy")

# Request headers never forwarded upstream: client credentials, hop-by-hop, and what the
# HTTP client sets itself.
_DROP_REQUEST = frozenset({
    b"x-api-key", b"authorization", b"host", b"content-length", b"connection", b"keep-alive",
    b"proxy-authorization", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"accept-encoding", b"cookie",
})
# Other request headers forwarded as they came, besides every anthropic-* header.
_FORWARD_REQUEST = frozenset({b"content-type", b"accept", b"user-agent", b"idempotency-key",
                              b"x-stainless-retry-count", b"x-stainless-timeout"})

UPSTREAM_STATUS_KIND = {429: "rate_limited", 529: "overloaded", 401: "auth", 403: "auth", 408: "timeout"}


def forward_headers(raw: list[tuple[bytes, bytes]], credential: Credential) -> dict[str, str]:
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
    headers["x-api-key"] = credential.api_key
    return headers


@dataclass(slots=True)
class Call:
    """One client request as it moves through the gateway."""

    request_id: str
    route: str
    key: KeyRecord | None = None
    model: Model | None = None
    model_name: str | None = None  # canonical id, or the client's name when the catalog does not know it
    stream: bool = False
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    ttfb_ms: float | None = None
    admission: Admission | None = None
    credential: Credential | None = None
    upstream_request_id: str | None = None
    record: UsageRecord | None = None  # set by finish(): one record per request


def parse_json_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid_request("request body is empty: expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid_request("request body must be a JSON object")
    return data


def validate_messages_body(data: dict[str, Any], *, need_max_tokens: bool) -> str:
    """Check what the gateway itself relies on; returns the client's model name."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("model: Field required" if model is None else "model: must be a non-empty string",
                              param="model")
    if need_max_tokens:
        max_tokens = data.get("max_tokens")
        if max_tokens is None:
            raise invalid_request("max_tokens: Field required", param="max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise invalid_request("max_tokens: must be a positive integer", param="max_tokens")
    messages = data.get("messages")
    if messages is None:
        raise invalid_request("messages: Field required", param="messages")
    if not isinstance(messages, list):
        raise invalid_request("messages: must be an array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise invalid_request(f"messages.{i}: each message needs a role and content", param=f"messages.{i}")
    return model


_MODEL_KEY = re.compile(rb'"model"\s*:\s*')


def splice_model(body: bytes, data: dict[str, Any], new_model: str) -> bytes:
    """Replace the top-level ``model`` value in the raw bytes, keeping every other byte.

    Candidates are checked by re-parsing: the splice is accepted only when the
    result is the same document with just the model changed. When no candidate
    passes (a pathological body), the body is re-serialised instead.
    """
    old = orjson.dumps(data["model"])
    new = orjson.dumps(new_model)
    for match in _MODEL_KEY.finditer(body):
        start = match.end()
        if body[start:start + len(old)] != old:
            continue
        candidate = body[:start] + new + body[start + len(old):]
        try:
            parsed = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and parsed.get("model") == new_model:
            parsed["model"] = data["model"]
            if parsed == data:
                return candidate
    return orjson.dumps({**data, "model": new_model})


def resolve_model(gw: Gateway, call: Call, name: str) -> None:
    model = gw.catalog.resolve(name)
    call.model = model
    call.model_name = model.id if model else name
    key = call.key
    if key is not None and key.allowed_models:
        allowed = key.allowed_models
        if call.model_name not in allowed and not (model and (model.family in allowed or name in allowed)):
            raise GatewayError(403, f"this API key may not use model {name!r}")


def _retry_after(resp: UpstreamResponse) -> float | None:
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def upstream_error(status: int, body: bytes, retry_after: float | None) -> GatewayError:
    """The client-facing error for an upstream error response (its own type and message)."""
    err_type, message = None, f"upstream returned HTTP {status}"
    try:
        parsed = orjson.loads(body)
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            err_type = err.get("type") or None
            message = err.get("message") or message
    except orjson.JSONDecodeError:
        pass
    if err_type == "forbidden":
        err_type = "permission_error"
    return GatewayError(status, message, type=err_type, retry_after=retry_after)


async def open_upstream(
    gw: Gateway,
    call: Call,
    path_qs: str,
    raw_headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    affinity: bytes | None = None,
    health: bool = True,
) -> UpstreamResponse:
    """Send to the best credential, failing over while the client has seen nothing.

    Returns a response with a 2xx status (an event stream already holding its first chunk,
    a JSON body already read: a cut before the client has seen anything fails over too),
    or a client error (4xx other than 401/403/408/429) that is the client's to see.
    Failover is bounded by ``max_attempts`` and ``failover_deadline``. When every attempt failed, the last upstream
    error is answered (retry-after = the pool's earliest recovery); with no usable
    credential at all, 503 overloaded_error with that retry-after. ``affinity`` (see
    ``upstream.affinity.cache_affinity``) keeps a cache prefix on one credential.
    ``health=False`` (count_tokens) keeps failures out of the credentials' health so they
    never cool a credential down for messages.
    """
    settings = gw.settings
    deadline = time.monotonic() + settings.failover_deadline
    tried: list[str] = []
    last: GatewayError | None = None
    pool = gw.pool
    for attempt in range(settings.max_attempts):
        if attempt and time.monotonic() >= deadline:
            break
        cred = await pool.acquire(call.model_name, affinity, tried, count_rpm=health)
        if cred is None:
            break
        tried.append(cred.name)
        try:
            resp = await gw.client.request("POST", cred.base_url + path_qs, forward_headers(raw_headers, cred), body,
                                           pool_key=cred.name)
            if resp.status == 200:
                if resp.is_event_stream:
                    await resp.prime(settings.first_byte_timeout)
                else:
                    await resp.buffer()
        except UpstreamConnectError as exc:
            pool.release(cred)
            log.warning("upstream %s failed before the first byte (attempt %d): %s", cred.name, attempt + 1, exc)
            if health:
                await pool.report_failure(cred, exc.kind, detail=str(exc))
            continue
        except BaseException:  # cancelled (the client went away) or a bug: give the slot back
            pool.release(cred)
            raise
        status = resp.status
        if status < 400 or (status < 500 and status not in UPSTREAM_STATUS_KIND):
            call.credential = cred
            call.upstream_request_id = resp.headers.get("request-id")
            if health:
                await pool.report_success(cred)
            return resp
        # a failure the client need not see yet: try another credential
        retry_after = _retry_after(resp)
        try:
            err_body = await resp.read()
        except UpstreamStreamError:
            err_body = b""
        pool.release(cred)
        kind = UPSTREAM_STATUS_KIND.get(status, "server_error")
        if health:
            await pool.report_failure(cred, kind, retry_after, detail=f"HTTP {status}")
        log.warning("upstream %s answered %d (%s), attempt %d", cred.name, status, kind, attempt + 1)
        if kind != "auth":
            last = upstream_error(status, err_body, retry_after)
    wait = max(1.0, pool.earliest_recovery(call.model_name))
    if last is not None:
        last.retry_after = max(last.retry_after or 0.0, wait)
        raise last
    raise GatewayError(503, "no healthy upstream credential can serve this request",
                       type="overloaded_error", retry_after=wait)


def response_headers(call: Call, content_type: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type.encode("latin-1")), (b"request-id", call.request_id.encode())]
    if call.upstream_request_id:
        headers.append((b"upstream-request-id", call.upstream_request_id.encode("latin-1")))
    if call.admission is not None:
        headers.extend(call.admission.headers)
    return headers


async def finish(gw: Gateway, call: Call, *, status: int, input_tokens: int = 0, output_tokens: int = 0,
                 cache_5m: int = 0, cache_1h: int = 0, cache_read: int = 0, exact: bool = True,
                 ttl_assumed: bool = False, error_type: str | None = None,
                 iterations: list[Iteration] | None = None, web_searches: int = 0,
                 batch: bool = False) -> UsageRecord:
    """Settle the reservation and record the usage: once per request, on every path.

    Idempotent: a second call returns the first record. With ``iterations``
    (compaction, advisor) the token counts are their sums and each iteration is
    priced at its own model; ``web_searches`` are billed per search. A model the
    catalog does not know is priced like the newest of its family (metering/pricing.py).
    """
    if call.record is not None:
        return call.record
    if iterations:
        input_tokens, output_tokens, cache_5m, cache_1h, cache_read, assumed = iteration_totals(iterations)
        ttl_assumed = ttl_assumed or assumed
    model = call.model or (price_model(gw.catalog, call.model_name) if call.model_name else None)
    cost = cost_micro(gw.catalog, model, input_tokens=input_tokens, output_tokens=output_tokens, cache_5m=cache_5m,
                      cache_1h=cache_1h, cache_read=cache_read, iterations=iterations, web_searches=web_searches,
                      batch=batch)
    cred = call.credential
    if cred is not None:
        gw.pool.release(cred, cost)  # in-flight count, and the spend toward its cap
        call.credential = None
        cred_name: str | None = cred.name
    else:
        cred_name = None
    if call.admission is not None:
        try:
            await gw.limiter.settle(call.admission, tokens=input_tokens + output_tokens + cache_5m + cache_1h
                                    + cache_read, cost_micro=cost)
        except Exception:  # noqa: BLE001 - a settle failure must not lose the usage record
            log.exception("settle failed for %s", call.request_id)
    now = time.time()
    rec = UsageRecord(
        request_id=call.request_id, key_id=call.key.id if call.key else None, credential=cred_name,
        route=call.route, model=call.model_name, status=status, stream=call.stream,
        input_tokens=input_tokens, output_tokens=output_tokens, cache_creation_5m=cache_5m,
        cache_creation_1h=cache_1h, cache_read=cache_read, exact=exact, cache_ttl_assumed=ttl_assumed,
        cost_micro=cost, ttfb_ms=call.ttfb_ms, duration_ms=(time.perf_counter() - call.t0) * 1000.0,
        started_at=call.started, ended_at=now, upstream_request_id=call.upstream_request_id,
        error_type=error_type, web_search_requests=web_searches,
    )
    call.record = rec
    if gw.meter is not None:
        gw.meter.record(rec)
    return rec


@contextlib.asynccontextmanager
async def recording(gw: Gateway, call: Call) -> AsyncIterator[Call]:
    """Records the request if the body fails before it calls ``finish`` itself.

    Wrap a handler's work after authentication: a refusal (400, 402, 403, 413,
    429), an upstream failure or a bug still leaves exactly one usage record.
    A handler that hands a stream to ``tap_stream`` exits normally and the
    stream records when it ends.
    """
    try:
        yield call
    except GatewayError as exc:
        if call.record is None:
            await finish(gw, call, status=exc.status, error_type=exc.type)
        raise
    except asyncio.CancelledError:
        # the client went away while the gateway waited (e.g. a non-streamed reply): counts unknown
        if call.record is None:
            await asyncio.shield(finish(gw, call, status=499, exact=False, error_type="client_disconnected"))
        raise
    except Exception:
        if call.record is None:
            await finish(gw, call, status=500, error_type="api_error")
        raise


def usage_from_message(usage: Any) -> tuple[int, int, int, int, int, bool]:
    """(input, output, cache_5m, cache_1h, cache_read, ttl_assumed) from a Message's ``usage``."""
    if not isinstance(usage, dict):
        return 0, 0, 0, 0, 0, False
    cc_total = int(usage.get("cache_creation_input_tokens") or 0)
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        c5 = int(split.get("ephemeral_5m_input_tokens") or 0)
        c1 = int(split.get("ephemeral_1h_input_tokens") or 0)
        assumed = False
    else:
        c5, c1, assumed = cc_total, 0, cc_total > 0
    return (int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0), c5, c1,
            int(usage.get("cache_read_input_tokens") or 0), assumed)


def streamed(source: Callable[[], AsyncIterator[bytes]], request: Any = None) -> Callable[[], AsyncIterator[bytes]]:
    """An async generator *function* over ``source()`` (BlackSheep's StreamedContent wants one).

    The inner generator is closed explicitly when the response ends or the client goes
    away, so its ``finally`` (cancel the upstream request, settle, record) runs at once.
    With the ``request``, a watcher waits for the ASGI ``http.disconnect``: some servers
    (granian) silently drop writes to a closed connection, so without it a stream whose
    client left would keep pulling from the upstream until the end.
    """
    receive = getattr(getattr(request, "content", None), "receive", None)

    async def provider() -> AsyncIterator[bytes]:
        gen = source()
        task = asyncio.current_task()
        gone = False
        watcher: asyncio.Task[None] | None = None
        if receive is not None and task is not None:
            async def watch() -> None:
                nonlocal gone
                try:
                    while True:
                        message = await receive()
                        if message.get("type") == "http.disconnect":
                            gone = True
                            task.cancel()
                            return
                except Exception:  # noqa: BLE001 - no way to watch: the stream just runs to its end
                    return

            watcher = asyncio.get_running_loop().create_task(watch())
        try:
            async for chunk in gen:
                yield chunk
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # type: ignore[union-attr]  # our own cancel: end quietly
        finally:
            if watcher is not None:
                watcher.cancel()
            await gen.aclose()  # type: ignore[attr-defined]

    return provider


async def authenticate(gw: Gateway, headers: dict[bytes, bytes], call: Call) -> None:
    """The key, or 401. Refusals before a key is known are counted by the meter, not recorded:
    no key means nothing billable and no owner, and rows written for junk requests would let
    anyone fill the usage table (see docs/metering.md)."""
    assert gw.auth is not None
    try:
        call.key = await gw.auth.authenticate(headers)
    except GatewayError:
        if gw.meter is not None:
            gw.meter.count_unauthenticated()
        raise
    if gw.meter is not None and not gw.meter.accepting:
        # ETHEREAL_METER_ON_FULL=reject: nothing is served that cannot be recorded
        gw.meter.refuse()
        raise GatewayError(503, "usage metering is saturated (database unreachable and spool full); retry later",
                           type="overloaded_error", retry_after=30.0)


async def admit(gw: Gateway, call: Call, body: bytes, max_tokens: int) -> None:
    """Reserve budget and rate-window room for the Anthropic body about to go upstream.

    A key without limits skips both the native estimate and the limiter round trip."""
    if not gw.limiter.governs(call.key):
        return
    model = call.model
    call.admission = await gw.limiter.admit(
        call.key,  # type: ignore[arg-type]
        model=call.model_name,
        input_tokens=_native.estimate_tokens(body),
        max_tokens=min(max_tokens, gw.settings.output_allowance_cap),
        price_in=model.input_price if model else 0.0,
        price_out=model.output_price if model else 0.0,
    )


class _Relay(Protocol):
    """What ``relay_stream`` needs of a native stream object (StreamTap or ChatTranslator)."""

    error_type: str | None
    saw_message_stop: bool
    cache_split_reported: bool

    def feed(self, chunk: bytes) -> Any: ...
    def finish(self) -> Any: ...
    def usage(self) -> tuple[int, int, int, int, int, bool]: ...


async def relay_stream(gw: Gateway, call: Call, resp: UpstreamResponse, native: _Relay, *,
                       translate: bool) -> AsyncIterator[bytes]:
    """Upstream SSE to the client, metered by one native object called once per network chunk.

    ``translate=False`` (a StreamTap): the upstream bytes go out unchanged. ``translate=True``
    (a ChatTranslator): what ``feed`` returns goes out instead, and ``finish`` writes the
    closing frames. A cut after the first byte ends the stream with an error frame (Anthropic's
    ``event: error`` here, the translator's own otherwise); a client that goes away cancels the
    upstream request. Either way the usage is settled and recorded from what the native object saw.
    """
    tail = StreamTail()  # the final message_delta, for per-iteration models and web searches
    status = 200
    error_type: str | None = None
    cut: str | None = None
    client_gone = True
    try:
        try:
            async for chunk in resp.iter_chunks():
                if call.ttfb_ms is None:
                    call.ttfb_ms = (time.perf_counter() - call.t0) * 1000.0
                tail.add(chunk)
                if translate:
                    out = native.feed(chunk)
                    if out:
                        yield out
                else:
                    native.feed(chunk)
                    yield chunk
        except UpstreamStreamError as exc:
            cut = str(exc)
        closing = native.finish()  # a translator's closing frames; None for a tap
        if cut is None and not native.saw_message_stop and native.error_type is None:
            cut = "upstream closed the stream before message_stop"
        if cut is not None:
            log.warning("upstream stream from %s cut: %s", call.credential.name if call.credential else "?", cut)
            error_type, status = "api_error", 502
            if call.credential is not None:
                await gw.pool.report_failure(call.credential, "stream", detail=cut)
            if not translate:
                closing = anthropic_sse_error("api_error", "the upstream connection was interrupted",
                                              call.request_id)
        if closing:
            yield closing
        client_gone = False
    finally:
        if client_gone:
            resp.close()
            status, error_type = 499, error_type or "client_disconnected"
        else:
            resp.release()
            if native.error_type is not None:
                error_type, status = native.error_type, 200
                if call.credential is not None and native.error_type in ("overloaded_error", "api_error"):
                    await gw.pool.report_failure(call.credential, "overloaded" if native.error_type ==
                                                 "overloaded_error" else "server_error", detail="error event")
        inp, out_tokens, c5, c1, cr, exact = native.usage()
        iterations, searches = usage_extras(tail.final_usage()) if exact else (None, 0)
        await finish(gw, call, status=status, input_tokens=inp, output_tokens=out_tokens, cache_5m=c5,
                     cache_1h=c1, cache_read=cr, exact=exact,
                     ttl_assumed=(c5 + c1 > 0 and not native.cache_split_reported),
                     error_type=error_type, iterations=iterations, web_searches=searches)


def tap_stream(gw: Gateway, call: Call, resp: UpstreamResponse) -> AsyncIterator[bytes]:
    """The native route: upstream bytes unchanged, metered by the native tap."""
    return relay_stream(gw, call, resp, _native.StreamTap(), translate=False)
