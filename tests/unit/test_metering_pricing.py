"""Prices: the model table, cache and batch multipliers, aliases, iterations, web search."""

from __future__ import annotations

import pytest
from ethereal.catalog import Catalog
from ethereal.metering.pricing import WEB_SEARCH_MICRO, cost_micro, price_model
from ethereal.usage import Usage, cache_split, parse_iterations, web_search_requests

CAT = Catalog()


def test_plain_tokens_are_micro_usd_per_token() -> None:
    sonnet = CAT.resolve("claude-sonnet-4-5")
    assert sonnet is not None
    # $3/MTok in, $15/MTok out == 3 and 15 micro-USD per token
    assert cost_micro(CAT, sonnet, Usage(input_tokens=1000, output_tokens=100)) == 3000 + 1500


@pytest.mark.parametrize("name", ["claude-3-5-sonnet-latest", "anthropic/claude-sonnet-4-6", "sonnet-4",
                                  "claude-sonnet-4-6"])
def test_aliases_resolve_before_pricing(name: str) -> None:
    model = price_model(CAT, name)
    assert model is not None and model.input_price == 3 and model.output_price == 15


def test_cache_multipliers() -> None:
    opus = CAT.resolve("claude-opus-4-6")  # $5 in
    assert opus is not None
    assert cost_micro(CAT, opus, Usage(input_tokens=0, output_tokens=0, cache_5m=1000)) == 6250  # 1.25x
    assert cost_micro(CAT, opus, Usage(input_tokens=0, output_tokens=0, cache_1h=1000)) == 10000  # 2x
    assert cost_micro(CAT, opus, Usage(input_tokens=0, output_tokens=0, cache_read=1000)) == 500  # 0.1x
    assert cost_micro(CAT, opus, Usage(input_tokens=1000, output_tokens=1000), batch=True) == (5000 + 25000) // 2


def test_agrees_with_catalog_cost() -> None:
    for model in CAT.models:
        args = {"input_tokens": 1234, "output_tokens": 567, "cache_read": 8910}
        assert cost_micro(CAT, model, Usage(cache_5m=111, cache_1h=222, **args)) == CAT.cost_micro(
            model, cache_creation_5m=111, cache_creation_1h=222, **args)


def test_unknown_model_priced_like_its_family() -> None:
    newest_opus = max((m for m in CAT.models if m.family == "opus-4"), key=lambda m: m.created_at)
    guess = price_model(CAT, "claude-opus-4-8")
    assert guess is not None and guess.derived and guess.id == "claude-opus-4-8"
    assert (guess.input_price, guess.output_price, guess.family) == (newest_opus.input_price,
                                                                     newest_opus.output_price, "opus-4")
    assert price_model(CAT, "claude-3-5-sonnet-20240620").family == "sonnet-3"  # type: ignore[union-attr]
    assert price_model(CAT, "gpt-4o") is None
    assert cost_micro(CAT, None, Usage(input_tokens=10, output_tokens=10)) == 0


def test_cache_split_reported_or_assumed() -> None:
    assert cache_split({"cache_creation_input_tokens": 3913,
                        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 3913}}) \
        == (0, 3913, False)
    assert cache_split({"cache_creation_input_tokens": 500}) == (500, 0, True)
    assert cache_split({"cache_creation_input_tokens": 0}) == (0, 0, False)


COMPACTION_USAGE = {
    "input_tokens": 181, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 8,
    "iterations": [
        {"input_tokens": 100, "output_tokens": 83, "cache_read_input_tokens": 55096, "cache_creation_input_tokens": 0,
         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "type": "compaction"},
        {"input_tokens": 181, "output_tokens": 8, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
         "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "type": "message"},
    ],
}


def test_iterations_are_summed_and_priced_per_model() -> None:
    its = parse_iterations(COMPACTION_USAGE)
    assert its is not None and [i.type for i in its] == ["compaction", "message"]
    u = Usage.summed(its)
    assert (u.input_tokens, u.output_tokens, u.cache_5m, u.cache_1h, u.cache_read, u.ttl_assumed) == (
        281, 91, 0, 0, 55096, False)
    sonnet = CAT.resolve("claude-sonnet-4-5")
    assert cost_micro(CAT, sonnet, Usage.summed(its)) == round(
        281 * 3 + 91 * 15 + 55096 * 0.3)
    advisor = [
        {"input_tokens": 1000, "output_tokens": 10, "type": "message"},
        {"input_tokens": 2000, "output_tokens": 20, "type": "advisor_message", "model": "claude-opus-4-6"},
    ]
    its = parse_iterations({"iterations": advisor})
    assert its is not None
    assert cost_micro(CAT, sonnet, Usage.summed(its)) == (
        1000 * 3 + 10 * 15 + 2000 * 5 + 20 * 25)


def test_web_search_billed_per_use() -> None:
    usage = {"input_tokens": 10, "output_tokens": 1, "server_tool_use": {"web_search_requests": 3}}
    assert web_search_requests(usage) == 3
    sonnet = CAT.resolve("claude-sonnet-4-5")
    assert cost_micro(CAT, sonnet, Usage(input_tokens=10, output_tokens=1, web_searches=3)) == 45 + 3 * WEB_SEARCH_MICRO


def test_tap_reports_iterations_and_searches_across_chunks() -> None:
    """The native tap reads the final message_delta's iterations (with their models) and web
    searches itself, whatever the chunking: one Usage value, no second parser in Python."""
    import orjson
    from ethereal import _native

    usage = {**COMPACTION_USAGE, "server_tool_use": {"web_search_requests": 2}}
    delta = b"event: message_delta\ndata: " + orjson.dumps(
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}) + b"   \n\n"
    stream = b"event: ping\ndata: {\"type\": \"ping\"}\n\n" * 3000 + delta + \
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    tap = _native.StreamTap()
    for i in range(0, len(stream), 7):
        tap.feed(stream[i:i + 7])
    tap.finish()
    got = tap.usage()
    assert isinstance(got, Usage)
    assert got == Usage.from_message(usage)  # the stream and the message agree field for field
    assert [it.type for it in got.iterations] == ["compaction", "message"] and got.web_searches == 2
