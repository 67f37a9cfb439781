"""What admission reserves (metering/reserve.py): the dearest a request can cost, from the cards."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from ethereal import _native
from ethereal.metering.reserve import ReserveConfig, count_pdf_pages, reserve
from ethereal.models import Registry
from ethereal.models.registry import PICO
from hypothesis import given
from hypothesis import strategies as st

REG = Registry()
CFG = ReserveConfig()
OPUS = REG.resolve("claude-opus-5-5")
HAIKU = REG.resolve("claude-haiku-5-5")
assert OPUS is not None and HAIKU is not None
NOW = 1_796_000_000.0  # 2026-12


def held(
    data: dict[str, Any],
    *,
    model: Any = OPUS,
    money: bool = True,
    caches: str | None = None,
    batch: bool = False,
    config: ReserveConfig = CFG,
) -> Any:
    body = orjson.dumps(data)
    return reserve(
        REG,
        model,
        data,
        body,
        at=NOW,
        input_tokens=_native.estimate_tokens(body),
        max_tokens=data["max_tokens"],
        money=money,
        config=config,
        caches=caches,
        batch=batch,
    )


def req(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-opus-5-5",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "x" * 4000}],
        **extra,
    }


def micro(tokens: int, rate_pico: int, mult: float = 1.0) -> int:
    return math.ceil(tokens * rate_pico * mult / PICO)


def test_plain_request_input_and_output_at_card_rates() -> None:
    r = held(req())
    rates = OPUS.card_at(NOW).dearest()
    assert r.output_tokens == 1000
    assert r.input_micro == micro(r.input_tokens, rates.input)
    assert r.output_micro == micro(1000, rates.output)
    assert r.searches == 0


@pytest.mark.parametrize(
    ("cc", "kind"),
    [
        ({"type": "ephemeral"}, "cache_write_5m"),
        ({"type": "ephemeral", "ttl": "5m"}, "cache_write_5m"),
        ({"type": "ephemeral", "ttl": "1h"}, "cache_write_1h"),
    ],
)
def test_cache_writes_reserve_the_write_rate(cc: dict[str, Any], kind: str) -> None:
    rates = OPUS.card_at(NOW).dearest()
    block = req(
        messages=[{"role": "user", "content": [{"type": "text", "text": "x" * 4000, "cache_control": cc}]}]
    )
    r = held(block)
    assert r.input_micro == micro(r.input_tokens, getattr(rates, kind))
    top = held(req(cache_control=cc))  # the top-level automatic breakpoint
    assert top.input_micro == micro(top.input_tokens, getattr(rates, kind))
    in_system = held(req(system=[{"type": "text", "text": "s", "cache_control": cc}]))
    assert in_system.input_micro == micro(in_system.input_tokens, getattr(rates, kind))
    in_tool = held(req(tools=[{"name": "t", "input_schema": {"type": "object"}, "cache_control": cc}]))
    assert in_tool.input_micro == micro(in_tool.input_tokens, getattr(rates, kind))


def test_one_hour_anywhere_wins_and_adapter_breakpoints_count() -> None:
    rates = OPUS.card_at(NOW).dearest()
    mixed = req(
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [
                            {"type": "text", "text": "y", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
                        ],
                    }
                ],
            }
        ],
    )
    r = held(mixed)
    assert r.input_micro == micro(r.input_tokens, rates.cache_write_1h)
    plain = held(req(), caches="5m")  # the Responses adapter added breakpoints
    assert plain.input_micro == micro(plain.input_tokens, rates.cache_write_5m)
    assert held(mixed, caches="5m").input_micro == r.input_micro


def test_tiered_card_reserves_the_dearest_tier() -> None:
    card = HAIKU.card_at(NOW)
    assert card.tiers, "Haiku 5.5's card has its 100K prompt tier (models.toml)"
    r = held(req(model="claude-haiku-5-5"), model=HAIKU)
    assert r.input_micro == micro(r.input_tokens, card.dearest().input)
    assert card.dearest().input > card.rates.input


def test_fast_geo_and_batch_multipliers_from_the_card() -> None:
    card = OPUS.card_at(NOW)
    base = held(req())
    assert card.fast is not None
    fast = held(req(speed="fast"))
    assert fast.output_micro == micro(1000, card.dearest().output, float(card.fast))
    geo = held(req(inference_geo="us"))
    assert geo.output_micro == micro(1000, card.dearest().output, float(card.geo["us"]))
    batch = held(req(), batch=True)
    assert batch.output_micro == micro(1000, card.dearest().output, float(card.batch))
    assert fast.input_micro > base.input_micro > batch.input_micro


def test_server_tool_fees_at_max_uses_or_the_default() -> None:
    fee = REG.server_tools.web_search_micro
    base = held(req())
    capped = held(req(tools=[{"type": "web_search_20260209", "name": "web_search", "max_uses": 3}]))
    assert capped.searches == 3
    assert capped.output_micro == base.output_micro + 3 * fee
    default = held(req(tools=[{"type": "web_search_20250305", "name": "web_search"}]))
    assert default.searches == CFG.web_searches
    assert default.output_micro == base.output_micro + CFG.web_searches * fee


def test_names_written_with_escapes_are_read_as_a_json_reader_reads_them() -> None:
    """The byte searches that skip the walk cannot be dodged by writing a name with \\u escapes
    (the upstream's JSON reader sees the same names): fast mode, a 1-hour write, a search tool."""
    card = OPUS.card_at(NOW)
    data = req(
        speed="fast",
        tools=[{"type": "web_search_20260209", "name": "web_search", "max_uses": 2}],
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    )
    plain = orjson.dumps(data)
    escaped = (
        plain.replace(b'"speed"', b'"sp\\u0065ed"')
        .replace(b'"cache_control"', b'"cache_contr\\u006fl"')
        .replace(b"web_", b"w\\u0065b_")
    )
    assert b'"speed"' not in escaped and b"web_" not in escaped
    assert orjson.loads(escaped) == data
    expect = held(data)
    got = reserve(
        REG,
        OPUS,
        orjson.loads(escaped),
        escaped,
        at=NOW,
        input_tokens=_native.estimate_tokens(plain),
        max_tokens=1000,
        money=True,
        config=CFG,
    )
    assert got == expect
    assert got.searches == 2
    assert card.fast is not None
    assert got.output_micro == micro(1000, card.dearest().output, float(card.fast)) + 2 * (
        REG.server_tools.web_search_micro
    )


def pdf(pages: int, sep: bytes = b" ") -> str:
    objs = b"".join(
        b"%d 0 obj << /Type" % (i + 3) + sep + b"/Page /Parent 2 0 R >> endobj\n" for i in range(pages)
    )
    doc = (
        b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Count "
        + str(pages).encode()
        + b" >> endobj\n"
        + objs
        + b"%%EOF"
    )
    return base64.b64encode(doc).decode()


@pytest.mark.parametrize("sep", [b" ", b"", b"  ", b"\n", b"\r\n\t "])
def test_pdf_pages_counted_whatever_the_whitespace(sep: bytes) -> None:
    assert count_pdf_pages(base64.b64decode(pdf(100, sep))) == 100
    doc = req(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": pdf(100, sep)},
                    },
                    {"type": "text", "text": "summarise"},
                ],
            }
        ]
    )
    r = held(doc, money=False)
    assert r.input_tokens >= 100 * CFG.pdf_page_tokens


def test_remote_documents_reserve_the_configured_ceiling() -> None:
    doc = req(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
                ],
            }
        ]
    )
    r = held(doc, money=False)
    assert r.input_tokens >= CFG.remote_document_pages * CFG.pdf_page_tokens
    small = held(doc, money=False, config=ReserveConfig(remote_document_pages=2))
    assert small.input_tokens < r.input_tokens
    huge = held(doc, money=False, config=ReserveConfig(remote_document_pages=10_000))
    assert huge.input_tokens == OPUS.context_window  # never past what the model accepts


def test_token_only_keys_are_not_priced() -> None:
    r = held(req(cache_control={"type": "ephemeral", "ttl": "1h"}), money=False)
    assert r.input_micro == 0 and r.output_micro == 0


MARKED = {
    b'"document"': _native.MARK_DOCUMENT,
    b'"cache_control"': _native.MARK_CACHE_CONTROL,
    b'"speed"': _native.MARK_SPEED,
    b'"inference_geo"': _native.MARK_GEO,
    b'"web_': _native.MARK_WEB,
    b"\\u": _native.MARK_ESCAPED,
}


@given(
    st.lists(
        st.sampled_from(
            [*MARKED, b'"', b"\\", b"u", b"document", b"speed", b"web_", b'"x"', b" ", b"{", b":", b"\xff"]
        ),
        max_size=30,
    )
)
def test_one_pass_marks_exactly_the_names_a_search_for_each_finds(parts: list[bytes]) -> None:
    """``reserve_markers`` is the byte searches it replaced, in one pass: a bit for each name
    written anywhere in the body (inside any string, at any offset), none for a name that is not."""
    body = b"".join(parts)
    expected = 0
    for needle, bit in MARKED.items():
        if body.find(needle) >= 0:
            expected |= bit
    assert _native.reserve_markers(body) == expected
    big = b" " * 70_000 + body  # past the size the GIL is released at
    assert _native.reserve_markers(big) == expected


def test_a_request_asking_each_priced_thing_is_reserved_for_it_through_the_marks() -> None:
    def ask(**extra: Any) -> Any:
        return held({"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **extra})

    plain = held(
        {
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "speed web_search document cache_control"}],
        }
    )
    # the names written as text are not asked for: the plain input rate, no search
    assert plain.input_micro == micro(plain.input_tokens, OPUS.card_at(NOW).dearest().input)
    assert plain.searches == 0
    assert ask(speed="fast").input_micro > ask().input_micro
    assert ask(inference_geo="us").input_micro > ask().input_micro
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
    assert ask(tools=tools).searches == 2 and ask().searches == 0
