"""``Usage``: what one request consumed, from the upstream's report to the database row.

One value for every path: a stream's native tap or translator (``_native.StreamTap.usage()``
builds it in Rust from the stream's events), a non-streamed Message's ``usage`` object
(``Usage.from_message``), a request refused before the upstream (``Usage()``). Pricing (``metering.pricing.cost_micro``) and the
usage record (``storage.records.UsageRecord``) take it as it is, so the paths cannot
disagree on what a field means.

The upstream's numbers are read leniently: a count that is not a non-negative integer
(a string, a float, null) counts as 0 and never turns a served response into a 500.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class Iteration:
    """One sampling pass of a request, as listed in ``usage.iterations`` (compaction, advisor)."""

    type: str
    model: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_5m: int = 0
    cache_1h: int = 0
    cache_read: int = 0
    ttl_assumed: bool = False


@dataclass(slots=True)
class Usage:
    """Never changed once built (not frozen: every request builds one, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, twice the cost)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_5m: int = 0  # cache writes with the 5-minute TTL
    cache_1h: int = 0  # cache writes with the 1-hour TTL
    cache_read: int = 0
    web_searches: int = 0  # server-side web searches, billed per use
    # with iterations, the token fields are their sums and each iteration is priced at its own model
    iterations: tuple[Iteration, ...] = ()
    exact: bool = (
        True  # False: estimated (a stream cut before its final usage, an upstream that said nothing)
    )
    ttl_assumed: bool = False  # the upstream gave only a cache-write total: billed as 5-minute writes
    served_model: str | None = None  # the model the upstream reports serving (priced by it when it differs)
    speed: str | None = None  # usage.speed: "fast" is billed at the card's fast rate
    inference_geo: str | None = None  # usage.inference_geo: a region the card prices (e.g. "us")
    service_tier: str | None = (
        None  # usage.service_tier as reported (standard, priority, batch): recorded only
    )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_5m + self.cache_1h + self.cache_read

    @classmethod
    def from_message(cls, usage: Any, *, served_model: Any = None) -> Usage:
        """From a Message's (or a final ``message_delta``'s) ``usage`` object; ``exact=False`` if absent."""
        model = served_model if isinstance(served_model, str) and served_model else None
        if not isinstance(usage, dict):
            return cls(exact=False, served_model=model)
        # most replies carry neither: no call for what is absent
        iterations = parse_iterations(usage) if "iterations" in usage else None
        searches = web_search_requests(usage) if "server_tool_use" in usage else 0
        # the labels, when reported ("standard", "global", "standard": read as they are, checked once)
        speed = usage.get("speed")
        geo = usage.get("inference_geo")
        tier = usage.get("service_tier")
        if speed is not None and (type(speed) is not str or speed not in PLAIN_LABELS):
            speed = label(speed)
        if geo is not None and (type(geo) is not str or geo not in PLAIN_LABELS):
            geo = label(geo)
        if tier is not None and (type(tier) is not str or tier not in PLAIN_LABELS):
            tier = label(tier)
        if iterations:
            return cls.summed(
                iterations,
                web_searches=searches,
                served_model=model,
                speed=speed,
                inference_geo=geo,
                service_tier=tier,
            )
        c5, c1, assumed = cache_split(usage)
        inp = usage.get("input_tokens")
        out = usage.get("output_tokens")
        read = usage.get("cache_read_input_tokens")
        return cls(
            input_tokens=inp if type(inp) is int and inp >= 0 else count(inp),
            output_tokens=out if type(out) is int and out >= 0 else count(out),
            cache_5m=c5,
            cache_1h=c1,
            cache_read=read if type(read) is int and read >= 0 else count(read),
            web_searches=searches,
            ttl_assumed=assumed,
            served_model=model,
            speed=speed,
            inference_geo=geo,
            service_tier=tier,
        )

    @classmethod
    def summed(
        cls,
        iterations: list[Iteration],
        *,
        web_searches: int = 0,
        exact: bool = True,
        served_model: str | None = None,
        speed: str | None = None,
        inference_geo: str | None = None,
        service_tier: str | None = None,
    ) -> Usage:
        inp = out = c5 = c1 = cr = 0
        assumed = False
        for it in iterations:
            inp += it.input_tokens
            out += it.output_tokens
            c5 += it.cache_5m
            c1 += it.cache_1h
            cr += it.cache_read
            assumed = assumed or it.ttl_assumed
        return cls(
            input_tokens=inp,
            output_tokens=out,
            cache_5m=c5,
            cache_1h=c1,
            cache_read=cr,
            web_searches=web_searches,
            iterations=tuple(iterations),
            exact=exact,
            ttl_assumed=assumed,
            served_model=served_model,
            speed=speed,
            inference_geo=inference_geo,
            service_tier=service_tier,
        )


def count(value: Any) -> int:
    """A token count as the upstream sent it: a non-negative integer, anything else is 0."""
    if type(value) is int:  # what the upstream sends (a bool's type is bool, not int)
        return max(0, value)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float) and math.isfinite(value):
        return max(0, int(value))
    return 0


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


# labels seen on nearly every reply, accepted without a scan (``label`` checks anything else)
# the usual labels, each to one string object (records keep the shared one, not the parsed copy)
PLAIN_LABELS: dict[str | None, str | None] = {
    s: s for s in ("standard", "fast", "global", "us", "not_available", "priority", "batch")
}


def label(value: Any) -> str | None:
    """A short label the upstream reports (``speed``, ``inference_geo``, ``service_tier``): a
    non-empty string of at most 32 characters and no control character (as the native tap reads
    it), never truncated (a cut label would name another mode); else None."""
    if isinstance(value, str) and value and len(value) <= 32 and _CONTROL.search(value) is None:
        return value
    return None


def cache_split(usage: dict[str, Any]) -> tuple[int, int, bool]:
    """(5m, 1h, ttl_assumed): the reported split, else the total taken as 5-minute writes."""
    # a plain count (what the upstream sends) is taken as it is: ``count`` only for anything else
    total = usage.get("cache_creation_input_tokens")
    if type(total) is not int or total < 0:
        total = count(total)
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        c5 = split.get("ephemeral_5m_input_tokens")
        if type(c5) is not int or c5 < 0:
            c5 = count(c5)
        c1 = split.get("ephemeral_1h_input_tokens")
        if type(c1) is not int or c1 < 0:
            c1 = count(c1)
        # writes the split does not account for (never seen) are 5-minute writes
        rest = total - c5 - c1
        return (c5 + rest if rest > 0 else c5), c1, False
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
        out.append(
            Iteration(
                type=str(item.get("type") or "message")[:64],
                model=model[:256] if isinstance(model, str) and model else None,
                input_tokens=count(item.get("input_tokens")),
                output_tokens=count(item.get("output_tokens")),
                cache_5m=c5,
                cache_1h=c1,
                cache_read=count(item.get("cache_read_input_tokens")),
                ttl_assumed=assumed,
            )
        )
    return out


def web_search_requests(usage: Any) -> int:
    if not isinstance(usage, dict):
        return 0
    stu = usage.get("server_tool_use")
    if not isinstance(stu, dict):
        return 0
    n = stu.get("web_search_requests")
    return n if type(n) is int and n > 0 else (0 if n == 0 else count(n))
