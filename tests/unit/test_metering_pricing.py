"""Every model's bill against Anthropic's published rates, to the micro-dollar.

The rates below are written out from the published price tables (../shared/CLAUDE-API-2026-12.md
§1), not read from the registry: a wrong card in models.toml fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
from ethereal.metering.pricing import model_for, price
from ethereal.models import Registry
from ethereal.usage import Usage, parse_iterations, web_search_requests

REG = Registry()


def at(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


NOW = at("2026-12-07")

# USD per MTok (= micro-USD per token): input, output, 5-minute write, 1-hour write, cache read
PUBLISHED: dict[str, tuple[float, float, float, float, float]] = {
    "claude-fable-5-2": (8, 40, 10, 16, 0.20),
    "claude-mythos-5-2": (8, 40, 10, 16, 0.20),
    "claude-fable-5-1": (10, 50, 12.50, 20, 0.25),
    "claude-mythos-5-1": (10, 50, 12.50, 20, 0.25),
    "claude-fable-5": (10, 50, 12.50, 20, 1.00),
    "claude-mythos-5": (10, 50, 12.50, 20, 1.00),
    "claude-opus-5-5": (4, 20, 5, 8, 0.20),
    "claude-opus-5": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-8": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-7": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-6": (5, 25, 6.25, 10, 0.50),
    "claude-opus-4-5-20251101": (5, 25, 6.25, 10, 0.50),
    "claude-sonnet-5-5": (2, 10, 2.50, 4, 0.10),
    "claude-sonnet-5": (2, 10, 2.50, 4, 0.20),
    "claude-sonnet-4-6": (3, 15, 3.75, 6, 0.30),
    "claude-haiku-5-5": (0.10, 0.50, 0.125, 0.20, 0.01),
    "claude-haiku-4-5-20251001": (1, 5, 1.25, 2, 0.10),
}
# a Claude Code turn: uncached input, 5-minute writes, 1-hour writes, cache reads, output
MIX = (150, 2_000, 3_000, 90_000, 1_000)


def expected(rates: tuple[float, ...], mix: tuple[int, ...] = MIX, mult: float = 1.0) -> int:
    """Exact decimal arithmetic, rounded once to the micro-dollar, halves up."""
    inp, c5, c1, cr, out = mix
    pin, pout, w5, w1, rd = (Decimal(str(r)) for r in rates)
    total = (inp * pin + c5 * w5 + c1 * w1 + cr * rd + out * pout) * Decimal(str(mult))
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usage(mix: tuple[int, ...] = MIX, **kw: object) -> Usage:
    inp, c5, c1, cr, out = mix
    return Usage(input_tokens=inp, cache_5m=c5, cache_1h=c1, cache_read=cr, output_tokens=out, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_each_current_and_legacy_model_bills_the_published_rates(model_id: str) -> None:
    model = REG.resolve(model_id)
    assert model is not None and model.id == model_id and not model.provisional
    got = price(REG, model, usage(), at=NOW)
    assert got.cost_micro == expected(PUBLISHED[model_id]), model_id
    assert got.card is not None and got.card.startswith(model_id + "@") and not got.provisional


def test_the_issues_claude_code_turn_figures() -> None:
    """The figures the model-world issue quotes for a typical Claude Code turn."""
    figures = {
        "claude-sonnet-5-5": 36_300,
        "claude-opus-5-5": 72_600,
        "claude-haiku-5-5": 2_265,
        "claude-sonnet-5": 45_300,
    }
    for model_id, micro in figures.items():
        assert price(REG, REG.resolve(model_id), usage(), at=NOW).cost_micro == micro, model_id


def test_haiku_5_5_on_both_sides_of_its_100k_prompt_tier() -> None:
    haiku = REG.resolve("claude-haiku-5-5")
    below = (1_000, 4_000, 5_000, 90_000, 2_000)  # prompt 100,000: not above the threshold
    above = (1_001, 4_000, 5_000, 90_000, 2_000)  # prompt 100,001: every token at the tier's rates
    assert price(REG, haiku, usage(below), at=NOW).cost_micro == expected(
        PUBLISHED["claude-haiku-5-5"], below
    )
    assert price(REG, haiku, usage(above), at=NOW).cost_micro == expected(
        (0.50, 2.50, 0.625, 1.00, 0.05), above
    )
    # batch is tiered the same way, at half of each side
    assert price(REG, haiku, usage(above), at=NOW, batch=True).cost_micro == expected(
        (0.50, 2.50, 0.625, 1.00, 0.05), above, 0.5
    )


def test_opus_5_5_fast_mode_is_twice_every_rate() -> None:
    opus = REG.resolve("claude-opus-5-5")
    got = price(REG, opus, usage(speed="fast"), at=NOW)
    assert got.cost_micro == expected((8, 40, 10, 16, 0.40)) and not got.provisional


def test_inference_geo_us_is_1_1x_every_token_class() -> None:
    sonnet = REG.resolve("claude-sonnet-5-5")
    assert price(REG, sonnet, usage(inference_geo="us"), at=NOW).cost_micro == expected(
        PUBLISHED["claude-sonnet-5-5"], mult=1.1
    )
    # a region without a surcharge, or none reported
    assert price(REG, sonnet, usage(inference_geo="global"), at=NOW).cost_micro == expected(
        PUBLISHED["claude-sonnet-5-5"]
    )


def test_batch_item_is_half_of_every_token_rate() -> None:
    for model_id in ("claude-opus-5-5", "claude-sonnet-4-6", "claude-fable-5-2"):
        got = price(REG, REG.resolve(model_id), usage(), at=NOW, batch=True).cost_micro
        assert got == expected(PUBLISHED[model_id], mult=0.5), model_id


def test_effective_dated_card_on_both_sides_of_its_date() -> None:
    """Sonnet 5.5's cache read went from $0.20 to $0.10 on 2026-10-07."""
    sonnet = REG.resolve("claude-sonnet-5-5")
    before = price(REG, sonnet, usage(), at=at("2026-10-06T23:59:59"))
    after = price(REG, sonnet, usage(), at=at("2026-10-07T00:00:00"))
    assert before.cost_micro == expected((2, 10, 2.50, 4, 0.20)) == 45_300
    assert after.cost_micro == expected((2, 10, 2.50, 4, 0.10)) == 36_300
    assert before.card != after.card


def test_the_card_asked_for_last_is_remembered_only_for_its_own_span_of_time() -> None:
    """``card_at`` keeps its last answer with the span it holds for: asked in any order, on and
    either side of every card boundary, it answers what a walk over the cards answers."""
    checked = 0
    for model in REG.models:
        if len(model.cards) < 2:
            continue
        edges = sorted(
            {c.effective_from for c in model.cards} | {c.effective_until or 0 for c in model.cards}
        )
        times = [t + d for t in edges if t for d in (-1.0, -0.001, 0.0, 0.001, 1.0)]
        times += [edges[1] - 10 * 365 * 86400, NOW, NOW + 10 * 365 * 86400]
        for t in [*times, *reversed(times), *times[::3], *times[1::2]]:
            assert model.card_at(t) is model._card_at(t), (model.id, t)
        checked += 1
    assert checked >= 3  # the registry has models whose price changed


def test_fast_mode_follows_its_removal_dates() -> None:
    opus48 = REG.resolve("claude-opus-4-8")
    fast = usage(speed="fast")
    assert price(REG, opus48, fast, at=at("2026-11-01")).cost_micro == expected(
        PUBLISHED["claude-opus-4-8"], mult=2
    )
    # after the removal a "fast" report has no card rate: billed at the registry default, flagged
    late = price(REG, opus48, fast, at=NOW)
    assert late.provisional and late.cost_micro == expected(PUBLISHED["claude-opus-4-8"], mult=2)
    opus47 = REG.resolve("claude-opus-4-7")
    assert price(REG, opus47, fast, at=at("2026-05-01")).cost_micro == expected(
        PUBLISHED["claude-opus-4-7"], mult=6
    )


def test_web_search_is_billed_per_search_outside_the_batch_discount() -> None:
    opus = REG.resolve("claude-opus-5-5")
    plain = Usage(input_tokens=1000, output_tokens=100)
    searched = Usage(input_tokens=1000, output_tokens=100, web_searches=3)
    assert (
        price(REG, opus, searched, at=NOW).cost_micro == price(REG, opus, plain, at=NOW).cost_micro + 30_000
    )
    assert price(REG, opus, searched, at=NOW, batch=True).cost_micro == 3000 + 30_000


def test_iterations_each_at_their_own_models_card() -> None:
    iterations = parse_iterations(
        {
            "iterations": [
                {
                    "type": "compaction",
                    "input_tokens": 100,
                    "output_tokens": 83,
                    "cache_read_input_tokens": 55096,
                },
                {"type": "message", "input_tokens": 181, "output_tokens": 8},
                {
                    "type": "advisor_message",
                    "model": "claude-opus-5-5",
                    "input_tokens": 1000,
                    "output_tokens": 10,
                },
                {
                    "type": "fallback_message",
                    "model": "claude-sonnet-5-5",
                    "input_tokens": 500,
                    "output_tokens": 50,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 2000,
                },
            ]
        }
    )
    assert iterations is not None
    haiku = REG.resolve("claude-haiku-5-5")
    got = price(REG, haiku, Usage.summed(iterations), at=NOW).cost_micro
    want = round(
        (281 * 0.10 + 91 * 0.50 + 55096 * 0.01) + (1000 * 4 + 10 * 20) + (500 * 2 + 50 * 10 + 2000 * 0.10)
    )
    assert got == want


def test_short_names_mean_todays_models() -> None:
    assert {n: REG.resolve(n).id for n in ("opus", "sonnet", "haiku", "claude-opus-latest")} == {  # type: ignore[union-attr]
        "opus": "claude-opus-5-5",
        "sonnet": "claude-sonnet-5-5",
        "haiku": "claude-haiku-5-5",
        "claude-opus-latest": "claude-opus-5-5",
    }
    for name in ("anthropic/claude-sonnet-4-6", "claude-sonnet-4.6", "Claude-Sonnet-4-6", "sonnet-4"):
        assert REG.resolve(name).id == "claude-sonnet-4-6", name  # type: ignore[union-attr]


def test_unknown_models_are_provisional_at_the_dearest_card_never_free() -> None:
    fable9 = model_for(REG, "claude-fable-9")
    assert fable9 is not None and fable9.provisional and fable9.id == "claude-fable-9"
    got = price(REG, fable9, usage(), at=NOW)
    assert got.provisional and got.cost_micro == expected(PUBLISHED["claude-fable-5-1"])  # dearest Fable card
    nova = model_for(REG, "claude-nova-6")  # no family named: the dearest servable card of the table
    assert nova is not None and nova.provisional
    assert price(REG, nova, Usage(input_tokens=1000), at=NOW).cost_micro == 10_000


def test_no_model_costs_nothing() -> None:
    assert price(REG, None, usage(), at=NOW).cost_micro == 0


COMPACTION_USAGE = {
    "input_tokens": 181,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 8,
    "iterations": [
        {
            "input_tokens": 100,
            "output_tokens": 83,
            "cache_read_input_tokens": 55096,
            "cache_creation_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "type": "compaction",
        },
        {
            "input_tokens": 181,
            "output_tokens": 8,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "type": "message",
        },
    ],
}


def test_iterations_are_summed_and_priced_per_model() -> None:
    its = parse_iterations(COMPACTION_USAGE)
    assert its is not None and [i.type for i in its] == ["compaction", "message"]
    u = Usage.summed(its)
    assert (u.input_tokens, u.output_tokens, u.cache_5m, u.cache_1h, u.cache_read, u.ttl_assumed) == (
        281,
        91,
        0,
        0,
        55096,
        False,
    )
    sonnet = REG.resolve("claude-sonnet-4-6")
    assert price(REG, sonnet, Usage.summed(its), at=NOW).cost_micro == round(281 * 3 + 91 * 15 + 55096 * 0.3)
    advisor = [
        {"input_tokens": 1000, "output_tokens": 10, "type": "message"},
        {"input_tokens": 2000, "output_tokens": 20, "type": "advisor_message", "model": "claude-opus-4-6"},
    ]
    its = parse_iterations({"iterations": advisor})
    assert its is not None
    assert price(REG, sonnet, Usage.summed(its), at=NOW).cost_micro == (
        1000 * 3 + 10 * 15 + 2000 * 5 + 20 * 25
    )


def test_web_search_billed_per_use() -> None:
    usage = {"input_tokens": 10, "output_tokens": 1, "server_tool_use": {"web_search_requests": 3}}
    assert web_search_requests(usage) == 3
    sonnet = REG.resolve("claude-sonnet-4-6")
    assert (
        price(REG, sonnet, Usage(input_tokens=10, output_tokens=1, web_searches=3), at=NOW).cost_micro
        == 45 + 3 * 10_000
    )


def test_tap_reports_iterations_and_searches_across_chunks() -> None:
    """The native tap reads the final message_delta's iterations (with their models) and web
    searches itself, whatever the chunking: one Usage value, no second parser in Python."""
    import orjson
    from ethereal import _native

    usage = {**COMPACTION_USAGE, "server_tool_use": {"web_search_requests": 2}}
    delta = (
        b"event: message_delta\ndata: "
        + orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage})
        + b"   \n\n"
    )
    stream = (
        b'event: ping\ndata: {"type": "ping"}\n\n' * 3000
        + delta
        + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    tap = _native.StreamTap()
    for i in range(0, len(stream), 7):
        tap.feed(stream[i : i + 7])
    tap.finish()
    got = tap.usage()
    assert isinstance(got, Usage)
    assert got == Usage.from_message(usage)  # the stream and the message agree field for field
    assert [it.type for it in got.iterations] == ["compaction", "message"] and got.web_searches == 2
