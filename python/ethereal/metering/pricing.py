"""What a request costs: its usage priced by the registry's rate card in force when it started.

Everything here is arithmetic over the registry's data (``models/models.toml``); no rate or
multiplier is written in code:

- each kind at its card's explicit rate: input, output, 5-minute and 1-hour cache writes,
  cache reads; a prompt-length tier (Haiku 5.5 above 100K prompt tokens) switches every kind
  of the request to the tier's rates;
- ``usage.speed == "fast"`` multiplies every rate by the card's fast rate, ``usage.inference_geo``
  by the card's rate for that region, a batch item by the card's batch rate;
- ``usage.iterations`` (compaction, advisor, fallback): the top-level usage then covers only the
  ``message`` iterations; what is billed is the sum over all iterations, each at its own
  model's card;
- server tools: web search per search (``server_tool_use.web_search_requests``), outside the
  batch discount. Code-execution container time is not in per-request usage and is not billed
  (docs/models.md).

A model the registry does not describe is billed at a provisional card (the dearest current
card of its family, else of the table): the result says so, and so does the record.

The sum is kept in integer pico-USD and rounded once, half up, to the micro-dollar.
"""

from __future__ import annotations

from typing import NamedTuple

from ethereal.models import Model, Registry
from ethereal.models.registry import PICO, RateCard
from ethereal.usage import Usage


class Priced(NamedTuple):
    cost_micro: int
    card: str | None  # the rate card's id (None: nothing to price)
    provisional: bool = False  # priced at a stand-in card: re-price when the registry learns the model
    # every card the price used, the request's own first: more than one when iterations ran on
    # other models (an advisor). What the usage record keeps (``rate_card``, joined by SEP).
    cards: tuple[str, ...] = ()

    @property
    def rate_card(self) -> str | None:
        """The record's ``rate_card``: the card's id, or the ids of every card used joined by ``+``
        (such a record cannot be re-priced from its totals: metering/reprice.py leaves it)."""
        if len(self.cards) > 1:
            return SEP.join(self.cards)[:MAX_RATE_CARD]
        return self.card


SEP = "+"
MAX_RATE_CARD = 256


NOTHING = Priced(0, None)


def model_for(registry: Registry, name: str | None, fallback: Model | None = None) -> Model | None:
    """The model whose card prices ``name``: described, else provisional; ``fallback`` for no name."""
    if not name:
        return fallback
    return registry.resolve(name) or registry.provisional(name)


def price(registry: Registry, model: Model | None, usage: Usage, *, at: float, batch: bool = False) -> Priced:
    """Integer micro-USD for one request's ``usage`` at the cards in force at ``at`` (epoch s)."""
    if model is None:
        return NOTHING
    card = model.card_at(at)
    geo = usage.inference_geo
    if not (usage.iterations or batch or usage.speed == "fast" or (geo and geo in card.geo)) and (
        card.tier_floor is None
        or usage.input_tokens + usage.cache_read + usage.cache_5m + usage.cache_1h <= card.tier_floor
    ):
        # the common request: plain per-kind rates (a prompt below every tier, no multiplier to
        # apply), one integer sum rounded half up to the micro-dollar
        r = card.rates
        pico = (
            usage.input_tokens * r.input
            + usage.output_tokens * r.output
            + usage.cache_5m * r.cache_write_5m
            + usage.cache_1h * r.cache_write_1h
            + usage.cache_read * r.cache_read
        )
        micro = (2 * pico + PICO) // (2 * PICO)
        if usage.web_searches:
            micro += usage.web_searches * registry.server_tools.web_search_micro
        return Priced(micro, card.id, card.provisional)
    provisional = card.provisional
    cards: tuple[str, ...] = ()
    if usage.iterations:
        num_sum = 0
        den = 1
        for it in usage.iterations:
            m = model_for(registry, it.model, model) if it.model else model
            assert m is not None
            c = card if m is model else m.card_at(at)
            if c is not card and c.id not in cards:
                cards = (*cards, c.id)
            provisional = provisional or c.provisional
            n, d, lacks = _cost(
                registry,
                c,
                it.input_tokens,
                it.output_tokens,
                it.cache_5m,
                it.cache_1h,
                it.cache_read,
                usage,
                batch,
            )
            provisional = provisional or lacks
            num_sum = num_sum * d + n * den
            den *= d
        total_num, total_den = num_sum, den
    else:
        total_num, total_den, lacks = _cost(
            registry,
            card,
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_5m,
            usage.cache_1h,
            usage.cache_read,
            usage,
            batch,
        )
        provisional = provisional or lacks
    micro = (2 * total_num + total_den * PICO) // (2 * total_den * PICO)  # pico → micro, halves up
    tools = registry.server_tools
    if usage.web_searches:
        micro += usage.web_searches * tools.web_search_micro
    return Priced(micro, card.id, provisional, (card.id, *cards) if cards else ())


def _cost(
    registry: Registry,
    card: RateCard,
    inp: int,
    out: int,
    c5: int,
    c1: int,
    cr: int,
    usage: Usage,
    batch: bool,
) -> tuple[int, int, bool]:
    """(numerator, denominator) of the cost in pico-USD, and whether a multiplier was missing from
    the card (fast mode on a card without a fast rate: the registry's default, flagged)."""
    rates = card.rates
    if card.tiers:
        rates = card.rates_for({"input": inp, "cache_read": cr, "cache_write": c5 + c1})
    pico = (
        inp * rates.input
        + out * rates.output
        + c5 * rates.cache_write_5m
        + c1 * rates.cache_write_1h
        + cr * rates.cache_read
    )
    num, den = pico, 1
    lacks = False
    if usage.speed == "fast":
        fast = card.fast
        if fast is None:
            fast, lacks = registry.defaults["fast"], True
        num, den = num * fast.numerator, den * fast.denominator
    geo = usage.inference_geo
    if geo:
        mult = card.geo.get(geo)
        if mult is not None:
            num, den = num * mult.numerator, den * mult.denominator
    if batch:
        num, den = num * card.batch.numerator, den * card.batch.denominator
    return num, den, lacks


def reserve_rates(model: Model | None, at: float) -> tuple[float, float]:
    """USD per million tokens to reserve input and output at: the dearest rate the request can
    incur on the card in force (a tier it may cross included)."""
    if model is None:
        return 0.0, 0.0
    r = model.card_at(at).dearest()
    return r.input / PICO, r.output / PICO
