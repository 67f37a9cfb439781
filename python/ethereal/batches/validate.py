"""Checking a batch at create, item by item, as ``POST /v1/messages`` would check each request.

Everything the gateway can refuse is refused here, before anything goes upstream: the whole
batch is answered 400 (403 for a model the key may not use) naming the first bad item's index,
so a client never pays for a batch that was half its own mistakes. What passes goes upstream
as the client's bytes; the only edit is an aliased ``model`` spliced to its canonical id.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ethereal import _native
from ethereal.api.anthropic import Messages
from ethereal.errors import GatewayError, invalid_request
from ethereal.guards import estimate_args, with_margin
from ethereal.models import Model
from ethereal.models.registry import PICO

_MESSAGES = Messages()
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_MODEL_KEY = re.compile(rb'"model"\s*:\s*')


@dataclass(slots=True)
class CheckedBatch:
    """A batch that passed: its items' custom_ids, models, and the estimate held against the budget."""

    count: int = 0
    models: set[str] = field(default_factory=set)  # canonical ids (or the client's name when unknown)
    aliases: dict[str, str] = field(default_factory=dict)  # client name -> canonical id, to splice
    estimated_tokens: int = 0
    estimated_micro: int = 0


def _check_params(params: Any) -> str:
    """What the ``/v1/messages`` adapter checks of a body, plus no streaming (a batch has no stream)."""
    if not isinstance(params, dict):
        raise invalid_request("params: must be a Messages request object")
    model = _MESSAGES.validate(params)
    if "stream" in params and params["stream"] is not False:
        raise invalid_request("stream: streaming is not supported in batch requests")
    return model


def check_batch(data: Any, *, resolve: Callable[[str], tuple[str, Model | None]], max_requests: int) -> CheckedBatch:
    """Validate every item; the estimate is input (native estimate) + output allowance per item
    (its whole max_tokens: hard budgets assume no item outputs more; an allowance below it would
    break the bound), priced at the batch rate of each model's card. ``resolve`` maps a client's model
    name to (canonical id, model) or raises as the pipeline does (403 for a model the key may
    not use); it is called once per distinct name."""
    if not isinstance(data, dict):
        raise invalid_request("request body must be a JSON object")
    extra = set(data) - {"requests"}
    if extra:
        raise invalid_request(f"{min(extra)}: Extra inputs are not permitted")
    requests = data.get("requests")
    if requests is None:
        raise invalid_request("requests: Field required", param="requests")
    if not isinstance(requests, list):
        raise invalid_request("requests: must be an array", param="requests")
    if not requests:
        raise invalid_request("requests: a batch needs at least one request", param="requests")
    if len(requests) > max_requests:
        raise invalid_request(f"requests: a batch holds at most {max_requests} requests, got {len(requests)}",
                              param="requests")
    out = CheckedBatch(count=len(requests))
    seen: set[str] = set()
    resolved: dict[str, tuple[str, Model | None] | GatewayError] = {}
    est_tokens = 0
    est_micro = 0.0
    for i, item in enumerate(requests):
        try:
            if not isinstance(item, dict):
                raise invalid_request("must be an object with custom_id and params")
            unknown = set(item) - {"custom_id", "params"}
            if unknown:
                raise invalid_request(f"{min(unknown)}: Extra inputs are not permitted")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                raise invalid_request("custom_id: must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -")
            if custom_id in seen:
                raise invalid_request(f"custom_id: {custom_id!r} is used by another request of this batch; "
                                      "custom_id must be unique within a batch")
            seen.add(custom_id)
            if "params" not in item:
                raise invalid_request("params: Field required")
            params = item["params"]
            name = _check_params(params)
            found = resolved.get(name)
            if found is None:
                try:
                    found = resolve(name)
                except GatewayError as exc:
                    found = exc
                resolved[name] = found
            if isinstance(found, GatewayError):
                raise found
            canonical, model = found
            max_tokens = params["max_tokens"]
            if model is not None and max_tokens > model.max_output:
                raise invalid_request(f"max_tokens: {max_tokens} > {model.max_output}, which is the maximum "
                                      f"allowed number of output tokens for {model.id}")
        except GatewayError as exc:
            label = f"requests.{i}" + (f" (custom_id {item.get('custom_id')!r})"
                                       if isinstance(item, dict) and isinstance(item.get("custom_id"), str)
                                       and len(item["custom_id"]) <= 64 else "")
            raise GatewayError(exc.status, f"{label}: {exc.message}", type=exc.type,
                               param=f"requests.{i}") from None
        out.models.add(canonical)
        if canonical != name:
            out.aliases[name] = canonical
        if model is not None:
            try:
                inp = with_margin(_native.estimate_tokens(orjson.dumps(params), **estimate_args(model)))
            except orjson.JSONEncodeError:  # past the 254 levels orjson writes (it reads 1,024)
                raise invalid_request(f"requests.{i}: params: nested too deeply", param=f"requests.{i}") from None
            allowance = max_tokens
            est_tokens += inp + allowance
            card = model.current
            rates = card.dearest()
            est_micro += (inp * rates.input + allowance * rates.output) * card.batch / PICO
        else:
            est_tokens += max_tokens
    out.estimated_tokens = est_tokens
    out.estimated_micro = math.ceil(est_micro)
    return out


def splice_models(body: bytes, data: dict[str, Any], aliases: dict[str, str]) -> bytes:
    """The body with each item's aliased ``model`` value replaced in place, every other byte kept.

    Candidates are the ``"model": "<alias>"`` pairs of the raw bytes; the result is accepted
    only when it parses to the same document with exactly the items' models changed (a nested
    ``"model"`` key elsewhere with the same value would fail that check). Otherwise the body is
    re-serialised, which keeps the meaning but not the bytes.
    """
    if not aliases:
        return body
    wanted = {orjson.dumps(name): orjson.dumps(canonical) for name, canonical in aliases.items()}
    parts: list[bytes] = []
    last = 0
    for match in _MODEL_KEY.finditer(body):
        start = match.end()
        if body[start:start + 1] != b'"':
            continue
        end = body.find(b'"', start + 1)
        while end != -1 and body[end - 1:end] == b"\\":
            end = body.find(b'"', end + 1)
        if end == -1:
            break
        old = body[start:end + 1]
        new = wanted.get(old)
        if new is None:
            continue
        parts.append(body[last:start])
        parts.append(new)
        last = end + 1
    parts.append(body[last:])
    candidate = b"".join(parts)
    expected = {**data, "requests": [
        {**item, "params": {**item["params"], "model": aliases.get(item["params"]["model"], item["params"]["model"])}}
        for item in data["requests"]]}
    try:
        if orjson.loads(candidate) == expected:
            return candidate
    except orjson.JSONDecodeError:
        pass
    try:
        return orjson.dumps(expected)
    except orjson.JSONEncodeError:
        raise invalid_request("requests: nested too deeply to rewrite an aliased model; name the model itself",
                              param="requests") from None
