"""proxy.finish: one record per request, priced by the metering rules, settled to the same numbers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ethereal.catalog import Catalog
from ethereal.limits import Admission
from ethereal.metering.config import MeterConfig
from ethereal.metering.meter import Meter
from ethereal.metering.pricing import parse_iterations
from ethereal.proxy import Call, finish


class Settles:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def settle(self, admission: Admission, *, tokens: int, cost_micro: int) -> None:
        self.calls.append({"tokens": tokens, "cost_micro": cost_micro})


def gateway() -> Any:
    meter = Meter(store=None, config=MeterConfig(spool_dir=None))  # type: ignore[arg-type]
    return SimpleNamespace(catalog=Catalog(), limiter=Settles(), meter=meter, pool=None)


async def test_settle_matches_the_record_and_finish_is_idempotent() -> None:
    gw = gateway()
    call = Call(request_id="req_1", route="messages", admission=Admission(key_id="key_a"))
    call.model = gw.catalog.resolve("claude-sonnet-4-6")
    call.model_name = call.model.id
    iterations = parse_iterations({"iterations": [
        {"type": "compaction", "input_tokens": 100, "output_tokens": 83, "cache_read_input_tokens": 55096},
        {"type": "message", "input_tokens": 181, "output_tokens": 8,
         "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
         "cache_creation_input_tokens": 30},
        {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 1000, "output_tokens": 10},
    ]})
    rec = await finish(gw, call, status=200, input_tokens=181, output_tokens=8, iterations=iterations,
                       web_searches=2)
    assert (rec.input_tokens, rec.output_tokens, rec.cache_creation_5m, rec.cache_creation_1h, rec.cache_read) == (
        1281, 101, 10, 20, 55096)
    expected = round(281 * 3 + 91 * 15 + 10 * 3 * 1.25 + 20 * 3 * 2 + 55096 * 0.3 + 1000 * 5 + 10 * 25) + 20_000
    assert rec.cost_micro == expected and rec.web_search_requests == 2
    assert gw.limiter.calls == [{"tokens": 1281 + 101 + 10 + 20 + 55096, "cost_micro": expected}]
    again = await finish(gw, call, status=499)
    assert again is rec and len(gw.limiter.calls) == 1 and gw.meter.recorded == 1


async def test_unknown_model_priced_by_tier() -> None:
    gw = gateway()
    call = Call(request_id="req_2", route="messages")
    call.model_name = "claude-sonnet-5"  # the catalog does not know it
    rec = await finish(gw, call, status=200, input_tokens=1000, output_tokens=100)
    assert rec.cost_micro == 1000 * 3 + 100 * 15
