"""One request's usage record: who asked, how it ended, and its usage priced at the model served.

The one place a ``UsageRecord`` is built from a ``Usage``: ``Pipeline.finish`` (every route) and
the batch settle (one record per item, ``batches/service.py``) both call ``usage_record``, so a
batch item records what the same usage on ``/v1/messages`` records, at the batch price.
"""

from __future__ import annotations

from ethereal.metering.pricing import model_for, price
from ethereal.models import Model, Registry
from ethereal.storage.records import UsageRecord, error_message_of
from ethereal.usage import PLAIN_LABELS, Usage


def usage_record(
    registry: Registry,
    usage: Usage,
    *,
    request_id: str,
    key_id: str | None,
    credential: str | None,
    route: str,
    model: Model | None,
    model_name: str | None,
    status: int,
    stream: bool,
    started_at: float,
    ended_at: float,
    duration_ms: float,
    ttfb_ms: float | None = None,
    upstream_request_id: str | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    batch: bool = False,
    priced_at: float | None = None,
    owner: str | None = None,
    teams: str | None = None,
) -> UsageRecord:
    """The record of one request (or batch item) that used ``usage``.

    ``model``/``model_name``: what was asked for (``model_name`` is what the record names).
    Priced by the registry's card in force at ``started_at``, at the model the upstream reports
    serving when it differs from the one asked for; a model the registry does not describe at a
    provisional card (metering/pricing.py); ``priced_at`` when the card's time is not the start
    (a batch item: counted when its result is settled, priced at the batch's create).
    ``error_message``: what the client was told, clipped and escaped for operators
    (``error_message_of``); ``owner``/``teams``: the key's, for reports and spend limits."""
    if usage.served_model and (model is None or usage.served_model != model.id):
        model = model_for(registry, usage.served_model, model)
    elif model is None and model_name:
        model = model_for(registry, model_name)
    priced = price(registry, model, usage, at=started_at if priced_at is None else priced_at, batch=batch)
    # positional, in UsageRecord's field order: every request builds one, and a call naming 31
    # keywords costs twice as much (tests/unit/test_usage_record.py holds each field to its source)
    return UsageRecord(
        request_id,
        key_id,
        credential,
        route,
        model_name,
        status,
        stream,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_5m,  # cache_creation_5m
        usage.cache_1h,  # cache_creation_1h
        usage.cache_read,
        usage.exact,
        usage.ttl_assumed,  # cache_ttl_assumed
        priced.cost_micro,
        ttfb_ms,
        duration_ms,
        started_at,
        ended_at,
        upstream_request_id,
        error_type,
        usage.web_searches,  # web_search_requests
        batch,
        priced.rate_card,
        priced.provisional,  # priced_provisional
        # the usual labels as one shared string each (a process keeps its recent records: 10,000
        # of them would otherwise hold three strings apiece)
        PLAIN_LABELS.get(usage.speed, usage.speed),
        PLAIN_LABELS.get(usage.inference_geo, usage.inference_geo),
        PLAIN_LABELS.get(usage.service_tier, usage.service_tier),
        None if error_message is None else error_message_of(error_message),
        owner,
        teams,
    )
