"""What a request costs: Anthropic's billing rules on top of the model table.

The model table (``catalog.py``) holds input/output prices in USD per million
tokens, which is the same number as micro-USD per token. On top of it:

- cache writes cost 1.25x input (5-minute TTL) or 2x input (1-hour TTL), cache
  reads 0.1x input, batch requests 0.5x of everything (``catalog.cost_micro``);
- ``usage.iterations`` (compaction, advisor and other multi-sampling features):
  the top-level usage then covers only the ``message`` iterations; what is
  billed is the sum over *all* iterations, each at its own model's price (an
  ``advisor_message`` names its model). Compaction can be most of a request's
  cost, so the record counts every iteration's tokens;
- server tools: web search is billed per search (``server_tool_use.web_search_requests``).

A model the table does not know exactly (``claude-opus-4-8``) is priced like the
newest known model of its family (tier + major version), or of its tier for a
newer generation (``claude-sonnet-5``), rather than as free, and logged once; a
name with no Claude tier in it costs 0 (also logged once).
"""

from __future__ import annotations

import logging
import re

from ethereal.catalog import BATCH_DISCOUNT, CACHE_READ, CACHE_WRITE_1H, CACHE_WRITE_5M, Catalog, Model
from ethereal.guards import BoundedLRU, clip
from ethereal.usage import Usage

log = logging.getLogger("ethereal.metering")

# USD 10 per 1,000 searches = 10,000 micro-USD per search.
WEB_SEARCH_MICRO = 10_000

_FAMILY = re.compile(r"(?:^|[/:.])(?:claude-)?(opus|sonnet|haiku)-(\d)(?!\d)", re.IGNORECASE)
_OLD_FAMILY = re.compile(r"claude-(\d)(?:[-.]\d)?-(opus|sonnet|haiku)", re.IGNORECASE)
# names already warned about: keyed by client input, so bounded in count and bytes
_unknown_logged: BoundedLRU[str, bool] = BoundedLRU(max_entries=1000, max_bytes=256 * 1024)


def price_model(catalog: Catalog, name: str | None, fallback: Model | None = None) -> Model | None:
    """The model whose prices apply to ``name``: exact or alias, else newest of its family, else of its tier."""
    if not name:
        return fallback
    model = catalog.resolve(name)
    if model is not None:
        return model
    guess = catalog.derive(name)
    if guess is None:  # a family named inside a longer name (bedrock ids, dated variants)
        match = _FAMILY.search(name)
        old = None if match else _OLD_FAMILY.search(name)
        if match or old:
            tier, major = (match.group(1), match.group(2)) if match else (old.group(2), old.group(1))  # type: ignore[union-attr]
            tier = tier.lower()
            members = [m for m in catalog.models if m.family == f"{tier}-{major}"]
            if not members:  # a newer generation than the table: the newest of the same tier
                members = [m for m in catalog.models if m.family.startswith(tier + "-")]
            if members:
                guess = max(members, key=lambda m: m.created_at)
    if name not in _unknown_logged:
        _unknown_logged.put(name, True, len(name))
        if guess is not None:
            log.warning("model %r is not in the price table: priced like its family %s (add it with "
                        "ETHEREAL_MODELS_FILE)", clip(name), guess.family)
        elif fallback is None:
            log.warning("no price for model %r: its usage is recorded at cost 0", clip(name))
    return guess or fallback


def cost_micro(catalog: Catalog, model: Model | None, usage: Usage, *, batch: bool = False) -> int:
    """Integer micro-USD for one request's ``usage``.

    With ``usage.iterations`` each iteration is priced at its own model (or the
    request's), then summed; otherwise the token totals at ``model``'s prices.
    """
    if usage.iterations:
        total = 0.0
        for it in usage.iterations:
            m = price_model(catalog, it.model, model) if it.model else model
            if m is None:
                continue
            total += _raw_cost(m, it.input_tokens, it.output_tokens, it.cache_5m, it.cache_1h, it.cache_read)
    elif model is None:
        total = 0.0
    else:
        total = _raw_cost(model, usage.input_tokens, usage.output_tokens, usage.cache_5m, usage.cache_1h,
                          usage.cache_read)
    if batch:
        total *= BATCH_DISCOUNT
    # server tools are billed per use, outside the token discount
    return round(total) + usage.web_searches * WEB_SEARCH_MICRO


def _raw_cost(model: Model, inp: int, out: int, c5: int, c1: int, cr: int) -> float:
    # Same arithmetic as Catalog.cost_micro, so the two agree to the micro-dollar.
    pin = model.input_price
    return inp * pin + out * model.output_price + c5 * pin * CACHE_WRITE_5M + c1 * pin * CACHE_WRITE_1H \
        + cr * pin * CACHE_READ
