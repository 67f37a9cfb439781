"""A usage record keeps what it was priced with: the card, whether it was provisional, and the usage
labels that move a price (speed, inference_geo) or describe it (service_tier), from every path (a
stream's native tap, a whole Message, the spool, GET /v1/usage)."""

from __future__ import annotations

import orjson
from ethereal import _native
from ethereal.metering.spool import decode_lines, encode
from ethereal.pipeline import Call, Pipeline
from ethereal.storage.records import USAGE_COLUMNS, UsageRecord
from ethereal.usage import Usage

from tests.unit.test_metering_finish import pipeline

START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-opus-5-5",'
    b'"usage":{"input_tokens":1000,"output_tokens":1,"speed":"fast","inference_geo":"global",'
    b'"service_tier":"standard"}}}\n\n'
)
DELTA = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":100,"inference_geo":"us"}}\n\n'
)


def test_stream_tap_reports_speed_geo_and_tier() -> None:
    tap = _native.StreamTap()
    tap.feed(START)
    tap.feed(DELTA)
    usage = tap.usage()
    # message_delta's label wins; one it does not repeat keeps message_start's
    assert (usage.speed, usage.inference_geo, usage.service_tier) == ("fast", "us", "standard")
    assert usage.exact and usage.output_tokens == 100


def test_labels_are_bounded_on_both_paths() -> None:
    for bad in ("x" * 33, "", "fa\u0000st", 7, None, ["fast"]):
        body = {"input_tokens": 1, "output_tokens": 1, "speed": bad, "inference_geo": bad}
        assert Usage.from_message(body).speed is None
        tap = _native.StreamTap()
        tap.feed(
            b"event: message_start\ndata: "
            + orjson.dumps({"type": "message_start", "message": {"id": "m", "model": "m", "usage": body}})
            + b"\n\n"
        )
        assert (tap.usage().speed, tap.usage().inference_geo) == (None, None)
    assert Usage.from_message({"speed": "é" * 32}).speed == "é" * 32


async def test_finish_records_the_card_and_the_labels() -> None:
    pipe, _, _ = pipeline()
    call = pipe_call(pipe, "claude-opus-5-5")
    usage = Usage.from_message(
        {
            "input_tokens": 1000,
            "output_tokens": 100,
            "speed": "fast",
            "inference_geo": "us",
            "service_tier": "priority",
        }
    )
    rec = await pipe.finish(call, 200, usage)
    card = pipe.gw.registry.get("claude-opus-5-5").card_at(call.started)  # type: ignore[union-attr]
    assert rec.rate_card == card.id and not rec.priced_provisional
    assert (rec.speed, rec.inference_geo, rec.service_tier) == ("fast", "us", "priority")
    # Opus 5.5: $4/$20, fast 2x, us 1.1x
    assert rec.cost_micro == round((1000 * 4 + 100 * 20) * 2 * 1.1)
    api = rec.to_api()
    assert api["rate_card"] == card.id and api["priced"] == "exact"
    assert (api["speed"], api["inference_geo"], api["service_tier"]) == ("fast", "us", "priority")


async def test_a_provisional_price_is_flagged_on_the_record() -> None:
    pipe, _, _ = pipeline()
    call = pipe_call(pipe, None)
    call.model_name = "claude-sonnet-9"
    rec = await pipe.finish(call, 200, Usage(input_tokens=10, output_tokens=1))
    assert rec.priced_provisional and rec.rate_card is not None and rec.rate_card.startswith("provisional:")
    assert rec.to_api()["priced"] == "provisional"


async def test_iterations_on_other_models_keep_every_card() -> None:
    pipe, _, _ = pipeline()
    call = pipe_call(pipe, "claude-sonnet-4-6")
    usage = Usage.from_message(
        {
            "iterations": [
                {"type": "message", "input_tokens": 10, "output_tokens": 1},
                {
                    "type": "advisor_message",
                    "model": "claude-opus-4-6",
                    "input_tokens": 10,
                    "output_tokens": 1,
                },
            ]
        }
    )
    rec = await pipe.finish(call, 200, usage)
    assert rec.rate_card is not None
    own, other = rec.rate_card.split("+")
    assert own.startswith("claude-sonnet-4-6@") and other.startswith("claude-opus-4-6@")


def pipe_call(pipe: Pipeline, name: str | None) -> Call:
    call = Call(request_id="req_p", route="messages")
    if name is not None:
        call.model = pipe.gw.registry.resolve(name)
        assert call.model is not None
        call.model_name = call.model.id
    return call


def test_spool_segments_written_before_the_new_columns_still_replay() -> None:
    old_columns = [
        c
        for c in USAGE_COLUMNS
        if c not in ("rate_card", "priced_provisional", "speed", "inference_geo", "service_tier")
    ]
    old = UsageRecord(
        request_id="req_old",
        key_id="k",
        credential="c",
        route="messages",
        model="m",
        status=200,
        stream=False,
        input_tokens=5,
        cost_micro=9,
        started_at=1.0,
        ended_at=2.0,
    )
    header = orjson.dumps({"spool": 1, "columns": old_columns}) + b"\n"
    line = orjson.dumps([getattr(old, c) for c in old_columns]) + b"\n"
    records, bad = decode_lines(header + line)
    assert bad == 0 and records[0].request_id == "req_old" and records[0].cost_micro == 9
    assert records[0].rate_card is None and records[0].priced_provisional is False
    # and a new record round-trips its new fields
    new = UsageRecord(
        request_id="req_new",
        key_id="k",
        credential="c",
        route="messages",
        model="m",
        status=200,
        stream=False,
        rate_card="m@2026-01-01",
        priced_provisional=True,
        speed="fast",
        inference_geo="us",
        service_tier="standard",
    )
    header = orjson.dumps({"spool": 1, "columns": list(USAGE_COLUMNS)}) + b"\n"
    records, bad = decode_lines(header + encode([new]))
    assert bad == 0 and records[0] == new
