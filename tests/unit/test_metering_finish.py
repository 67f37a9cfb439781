"""Pipeline.finish: one record per request, priced by the metering rules, settled to the same numbers."""

from __future__ import annotations

from typing import Any, cast

from ethereal.gateway import Gateway
from ethereal.keychanges import KeyChanges
from ethereal.limits import Admission
from ethereal.limits.plans import Plans
from ethereal.metering.config import MeterConfig
from ethereal.metering.meter import Meter
from ethereal.models import Registry
from ethereal.pipeline import Call, Pipeline
from ethereal.settings import Settings
from ethereal.usage import Usage, parse_iterations


class Settles:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def settle(
        self, admission: Admission, *, tokens: int, cost_micro: int, ended_at: float | None = None
    ) -> None:
        self.calls.append({"tokens": tokens, "cost_micro": cost_micro})


class NoStore:
    """finish never touches the store (the meter writes later, off the request path)."""


def pipeline() -> tuple[Pipeline, Settles, Meter]:
    settles = Settles()
    meter = Meter(store=cast(Any, NoStore()), config=MeterConfig(spool_dir=None))
    gw = Gateway(
        settings=Settings(),
        registry=Registry(),
        plans=Plans(),
        store=cast(Any, NoStore()),
        auth=cast(Any, None),
        limiter=cast(Any, settles),
        meter=meter,
        pool=cast(Any, None),
        client=cast(Any, None),
        upstreams=cast(Any, None),
        key_changes=KeyChanges(),
    )
    return Pipeline(gw), settles, meter


async def test_settle_matches_the_record_and_finish_is_idempotent() -> None:
    pipe, settles, meter = pipeline()
    call = Call(request_id="req_1", route="messages", admission=Admission(key_id="key_a"))
    call.model = pipe.gw.registry.resolve("claude-sonnet-4-6")
    assert call.model is not None
    call.model_name = call.model.id
    iterations = parse_iterations(
        {
            "iterations": [
                {
                    "type": "compaction",
                    "input_tokens": 100,
                    "output_tokens": 83,
                    "cache_read_input_tokens": 55096,
                },
                {
                    "type": "message",
                    "input_tokens": 181,
                    "output_tokens": 8,
                    "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
                    "cache_creation_input_tokens": 30,
                },
                {
                    "type": "advisor_message",
                    "model": "claude-opus-4-6",
                    "input_tokens": 1000,
                    "output_tokens": 10,
                },
            ]
        }
    )
    assert iterations is not None
    rec = await pipe.finish(call, 200, Usage.summed(iterations, web_searches=2))
    assert (
        rec.input_tokens,
        rec.output_tokens,
        rec.cache_creation_5m,
        rec.cache_creation_1h,
        rec.cache_read,
    ) == (1281, 101, 10, 20, 55096)
    expected = (
        round(281 * 3 + 91 * 15 + 10 * 3 * 1.25 + 20 * 3 * 2 + 55096 * 0.3 + 1000 * 5 + 10 * 25) + 20_000
    )
    assert rec.cost_micro == expected and rec.web_search_requests == 2
    assert settles.calls == [{"tokens": 1281 + 101 + 10 + 20 + 55096, "cost_micro": expected}]
    again = await pipe.finish(call, 499, Usage())
    assert again is rec and len(settles.calls) == 1 and meter.recorded == 1


async def test_unknown_model_priced_provisionally_at_its_familys_dearest_card() -> None:
    pipe, _, _ = pipeline()
    call = Call(request_id="req_2", route="messages")
    call.model_name = "claude-sonnet-9"  # the registry does not describe it
    rec = await pipe.finish(call, 200, Usage(input_tokens=1000, output_tokens=100))
    assert rec.cost_micro == 1000 * 3 + 100 * 15  # Sonnet 4.6's $3/$15: the dearest Sonnet card


async def test_priced_by_the_model_the_upstream_served() -> None:
    """The upstream may serve another model than the one asked for: the bill follows what ran."""
    pipe, _, _ = pipeline()
    call = Call(request_id="req_3", route="messages")
    call.model = pipe.gw.registry.resolve("claude-sonnet-4-6")
    call.model_name = "claude-sonnet-4-6"
    served = Usage.from_message({"input_tokens": 1000, "output_tokens": 100}, served_model="claude-opus-4-6")
    rec = await pipe.finish(call, 200, served)
    assert rec.cost_micro == 1000 * 5 + 100 * 25 and rec.model == "claude-sonnet-4-6"


def test_non_numeric_usage_counts_as_zero() -> None:
    """An upstream usage object with junk in it is read leniently: never a 500 for a served reply."""
    usage = Usage.from_message(
        {
            "input_tokens": "12",
            "output_tokens": None,
            "cache_read_input_tokens": 1.5e400,
            "cache_creation_input_tokens": -4,
            "server_tool_use": {"web_search_requests": "x"},
        }
    )
    assert (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read,
        usage.cache_5m,
        usage.web_searches,
    ) == (0, 0, 0, 0, 0)
    assert usage.exact and Usage.from_message(None).exact is False
