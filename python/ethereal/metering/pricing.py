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
from dataclasses import dataclass
from typing import Any

from ethereal.catalog import BATCH_DISCOUNT, CACHE_READ, CACHE_WRITE_1H, CACHE_WRITE_5M, Catalog, Model

log = logging.getLogger("ethereal.metering")

# USD 10 per 1,000 searches = 10,000 micro-USD per search.
WEB_SEARCH_MICRO = 10_000

_FAMILY = re.compile(r"(?:^|[/:.])(?:claude-)?(opus|sonnet|haiku)-(\d)(?!\d)", re.IGNORECASE)
_OLD_FAMILY = re.compile(r"claude-(\d)(?:[-.]\d)?-(opus|sonnet|haiku)", re.IGNORECASE)
_unknown_logged: set[str] = set()


@dataclass(slots=True, frozen=True)
class Iteration:
    """One sampling pass of a request, as listed in ``usage.iterations``."""

    type: str
    model: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_5m: int = 0
    cache_1h: int = 0
    cache_read: int = 0
    ttl_assumed: bool = False


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float):
        return max(0, int(value))
    return 0


def cache_split(usage: dict[str, Any]) -> tuple[int, int, bool]:
    """(5m, 1h, ttl_assumed): the reported split, else the total taken as 5-minute writes."""
    total = _int(usage.get("cache_creation_input_tokens"))
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        c5 = _int(split.get("ephemeral_5m_input_tokens"))
        c1 = _int(split.get("ephemeral_1h_input_tokens"))
        # writes the split does not account for (never seen) are 5-minute writes
        return c5 + max(0, total - c5 - c1), c1, False
    return total, 0, total > 0


def parse_iterations(usage: Any) -> list[Iteration] | None:
    """``usage.iterations`` as a list, or None when absent or malformed."""
    if not isinstance(usage, dict):
        return None
    raw = usage.get("iterations")
    if not isinstance(raw, list) or not raw:
        return None
    out: list[Iteration] = []
    for item in raw:
        if not isinstance(item, dict):
            return None
        c5, c1, assumed = cache_split(item)
        model = item.get("model")
        out.append(Iteration(
            type=str(item.get("type") or "message"),
            model=model if isinstance(model, str) and model else None,
            input_tokens=_int(item.get("input_tokens")),
            output_tokens=_int(item.get("output_tokens")),
            cache_5m=c5, cache_1h=c1,
            cache_read=_int(item.get("cache_read_input_tokens")),
            ttl_assumed=assumed,
        ))
    return out


def web_search_requests(usage: Any) -> int:
    if not isinstance(usage, dict):
        return 0
    stu = usage.get("server_tool_use")
    return _int(stu.get("web_search_requests")) if isinstance(stu, dict) else 0


def price_model(catalog: Catalog, name: str | None, fallback: Model | None = None) -> Model | None:
    """The model whose prices apply to ``name``: exact or alias, else newest of its family, else of its tier."""
    if not name:
        return fallback
    model = catalog.resolve(name)
    if model is not None:
        return model
    match = _FAMILY.search(name)
    old = None if match else _OLD_FAMILY.search(name)
    guess: Model | None = None
    if match or old:
        tier, major = (match.group(1), match.group(2)) if match else (old.group(2), old.group(1))  # type: ignore[union-attr]
        tier = tier.lower()
        members = [m for m in catalog.models if m.family == f"{tier}-{major}"]
        if not members:  # a newer generation than the table: the newest of the same tier
            members = [m for m in catalog.models if m.family.startswith(tier + "-")]
        if members:
            guess = max(members, key=lambda m: m.created_at)
    if name not in _unknown_logged and len(_unknown_logged) < 1000:
        _unknown_logged.add(name)
        if guess is not None:
            log.warning("model %r is not in the price table: priced like %s (add it with ETHEREAL_MODELS_FILE)",
                        name, guess.id)
        elif fallback is None:
            log.warning("no price for model %r: its usage is recorded at cost 0", name)
    return guess or fallback


def iteration_totals(iterations: list[Iteration]) -> tuple[int, int, int, int, int, bool]:
    """(input, output, 5m, 1h, read, ttl_assumed) summed over every iteration."""
    inp = out = c5 = c1 = cr = 0
    assumed = False
    for it in iterations:
        inp += it.input_tokens
        out += it.output_tokens
        c5 += it.cache_5m
        c1 += it.cache_1h
        cr += it.cache_read
        assumed = assumed or it.ttl_assumed
    return inp, out, c5, c1, cr, assumed


def cost_micro(
    catalog: Catalog,
    model: Model | None,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_5m: int = 0,
    cache_1h: int = 0,
    cache_read: int = 0,
    iterations: list[Iteration] | None = None,
    web_searches: int = 0,
    batch: bool = False,
) -> int:
    """Integer micro-USD for one request.

    With ``iterations`` the token arguments are ignored: each iteration is priced
    at its own model (or the request's), then summed.
    """
    if iterations:
        total = 0.0
        for it in iterations:
            m = price_model(catalog, it.model, model) if it.model else model
            if m is None:
                continue
            total += _raw_cost(m, it.input_tokens, it.output_tokens, it.cache_5m, it.cache_1h, it.cache_read)
    else:
        if model is None:
            total = 0.0
        else:
            total = _raw_cost(model, input_tokens, output_tokens, cache_5m, cache_1h, cache_read)
    if batch:
        total *= BATCH_DISCOUNT
    # server tools are billed per use, outside the token discount
    return round(total) + web_searches * WEB_SEARCH_MICRO


def _raw_cost(model: Model, inp: int, out: int, c5: int, c1: int, cr: int) -> float:
    # Same arithmetic as Catalog.cost_micro, so the two agree to the micro-dollar.
    pin = model.input_price
    return inp * pin + out * model.output_price + c5 * pin * CACHE_WRITE_5M + c1 * pin * CACHE_WRITE_1H \
        + cr * pin * CACHE_READ
