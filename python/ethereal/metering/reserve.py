"""What admission reserves for a request: the most it can cost, from the registry's cards.

Hard budgets hold only while a request's reservation covers what its bill can be (docs/limits.md),
so the input is reserved at the dearest rate the request can incur, not at the base input rate:

- a 1-hour cache write rate when any ``cache_control`` asks ``"ttl": "1h"``, the 5-minute write
  rate when the request caches at all (a block's ``cache_control``, the top-level automatic one,
  or breakpoints the adapter added: ``Outbound.cache_ttl``);
- the card's dearest tier (a prompt may cross a prompt-length tier: ``RateCard.dearest``);
- fast mode (``speed: "fast"``: the card's fast rate) and ``inference_geo`` multipliers;
- the batch rate for Message Batches items.

The output is reserved at ``max_tokens`` (its whole ceiling), server-tool fees at their
``max_uses`` (a web search tool without ``max_uses``: ``ReserveConfig.web_searches``), and a
document at its real page count (``/Type /Page`` objects of the decoded PDF, any whitespace,
never ``/Pages``) or, when it is not in the request (``url``/``file``), at
``ReserveConfig.remote_document_pages``. No input is reserved past the model's context window
(the API refuses such a prompt).

The body is walked only when one native pass over its bytes says there is something to find
(``cache_control``, ``document``, a server tool, ``speed``, ``inference_geo``), and the rates
part only for a key with a money budget; every amount is integer pico-USD rounded up once to the
micro-dollar.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

from ethereal import _native
from ethereal._native import (
    MARK_CACHE_CONTROL,
    MARK_DOCUMENT,
    MARK_ESCAPED,
    MARK_GEO,
    MARK_SPEED,
    MARK_WEB,
)
from ethereal.models import Model, Registry
from ethereal.models.registry import PICO

# a page object: "/Type" then any PDF whitespace (or a comment-free nothing) then "/Page" not
# followed by a name character ("/Pages" is the page tree, "/PageLabel" something else)
_PAGE = re.compile(rb"/Type[\x00\t\n\x0c\r ]*/Page(?![A-Za-z0-9_.#-])")


@dataclass(frozen=True, slots=True)
class ReserveConfig:
    """Ceilings for what the request does not say (settings: ``ETHEREAL_RESERVE_*``)."""

    web_searches: int = 10  # a web search (or fetch) tool without max_uses
    remote_document_pages: int = 100  # a url/file document: not in the request, its size unknown
    pdf_page_tokens: int = 3000  # Anthropic quotes 1,500-3,000 tokens a page (text + page image)


class Reservation(NamedTuple):
    """Tokens and micro-USD to hold for a request (input part, output part); a named tuple, as
    every governed request makes one."""

    input_tokens: int
    output_tokens: int
    input_micro: int = 0
    output_micro: int = 0
    searches: int = 0  # server-tool uses reserved (their fees are in output_micro)


def count_pdf_pages(pdf: bytes) -> int:
    """Page objects of a PDF (``/Type /Page`` with any whitespace between, never ``/Pages``)."""
    return len(_PAGE.findall(pdf))


def _decode(data: str) -> bytes:
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=False)
    except (binascii.Error, ValueError):
        return b""


def _blocks(data: dict[str, Any]) -> Any:
    """Every content block of the prompt (system, messages, one level inside tool results)."""
    system = data.get("system")
    if isinstance(system, list):
        yield from system
    for msg in data.get("messages") or ():
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            for block in content:
                yield block
                inner = block.get("content") if isinstance(block, dict) else None
                if isinstance(inner, list):
                    yield from inner


def document_tokens(data: dict[str, Any], config: ReserveConfig) -> int:
    """Tokens the documents can cost on top of the native estimate (which counts its own, smaller,
    per-page figure): each page at the configured worst case, a remote document at the ceiling."""
    extra = 0
    for block in _blocks(data):
        if not isinstance(block, dict) or block.get("type") != "document":
            continue
        source = block.get("source")
        kind = source.get("type") if isinstance(source, dict) else None
        if kind == "base64":
            raw = source.get("data") if isinstance(source, dict) else None
            pdf = _decode(raw) if isinstance(raw, str) else b""
            real = max(count_pdf_pages(pdf), 1)
        elif kind in ("text", "content"):
            continue  # the native estimate reads the text itself
        else:  # url, file: not in the request
            real = config.remote_document_pages
        extra += real * config.pdf_page_tokens
    return extra


def cache_ttl(data: dict[str, Any]) -> str | None:
    """``"1h"`` when any breakpoint asks a 1-hour ttl, ``"5m"`` when the request caches at all."""
    found: str | None = None

    def see(cc: Any) -> None:
        nonlocal found
        if isinstance(cc, dict):
            found = "1h" if cc.get("ttl") == "1h" or found == "1h" else "5m"

    see(data.get("cache_control"))
    for tool in data.get("tools") or ():
        if isinstance(tool, dict):
            see(tool.get("cache_control"))
    for block in _blocks(data):
        if isinstance(block, dict):
            see(block.get("cache_control"))
    return found


def server_tool_uses(data: dict[str, Any], config: ReserveConfig) -> tuple[int, int]:
    """(web searches, web fetches) the request may make: each tool's ``max_uses`` or the default."""
    searches = fetches = 0
    for tool in data.get("tools") or ():
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if not isinstance(kind, str):
            continue
        uses = tool.get("max_uses")
        n = (
            uses
            if isinstance(uses, int) and not isinstance(uses, bool) and uses >= 0
            else config.web_searches
        )
        if kind.startswith("web_search"):
            searches += n
        elif kind.startswith("web_fetch"):
            fetches += n
    return searches, fetches


def reserve(
    registry: Registry,
    model: Model | None,
    data: dict[str, Any],
    body: bytes,
    *,
    at: float,
    input_tokens: int,
    max_tokens: int,
    money: bool,
    config: ReserveConfig,
    caches: str | None = None,
    batch: bool = False,
) -> Reservation:
    """The reservation of one Messages request (``data`` parsed from ``body``, the Anthropic body).

    ``input_tokens`` is the native estimate of ``body``; ``caches`` what the adapter knows it
    added (``"5m"``/``"1h"`` breakpoints); ``money``: price it (the key has a money budget)."""
    in_t = max(0, int(input_tokens))
    # one native pass says which names the body writes (``_native.reserve_markers``); a walk
    # happens only for those. A body that writes a name with \u escapes ("cache_contr\u006fl"
    # is "cache_control" to a JSON reader) is always walked.
    marks = _native.reserve_markers(body)
    if marks & (MARK_ESCAPED | MARK_DOCUMENT):
        in_t += document_tokens(data, config)
    if model is not None and model.context_window > 0:
        in_t = min(in_t, model.context_window)
    out_t = max(0, int(max_tokens))
    if not money or model is None:
        return Reservation(in_t, out_t)
    card = model.card_at(at)
    rates = card.top  # the dearest rate of each kind (a prompt may cross a tier)
    ttl = caches
    if marks & (MARK_ESCAPED | MARK_CACHE_CONTROL) and ttl != "1h":
        found = cache_ttl(data)
        if found == "1h" or ttl is None:
            ttl = found
    in_rate = rates.input
    if ttl is not None:
        in_rate = max(in_rate, rates.cache_write_5m if ttl == "5m" else rates.cache_write_1h)
    num = den = 1  # the multiplier (fast mode, geo, batch) as an exact fraction
    if batch or marks & (MARK_ESCAPED | MARK_SPEED | MARK_GEO):
        mult = Fraction(1)
        if data.get("speed") == "fast":
            mult *= card.fast if card.fast is not None else registry.defaults["fast"]
        geo = data.get("inference_geo")
        if isinstance(geo, str) and geo in card.geo:
            mult *= card.geo[geo]
        if batch:
            mult *= card.batch
        num, den = mult.numerator, mult.denominator
    searches = fetches = 0
    if marks & (MARK_ESCAPED | MARK_WEB):
        searches, fetches = server_tool_uses(data, config)
    # pico-USD (an exact fraction) rounded up to the micro-dollar (amounts are never negative)
    unit = den * PICO
    in_m = -(-(in_t * in_rate * num) // unit)
    out_m = -(-(out_t * rates.output * num) // unit)
    if searches or fetches:
        tools = registry.server_tools
        out_m += searches * tools.web_search_micro + fetches * tools.web_fetch_micro
    return Reservation(in_t, out_t, in_m, out_m, searches + fetches)


def batch_item(
    registry: Registry | None,
    model: Model | None,
    params: dict[str, Any],
    body: bytes,
    *,
    at: float,
    input_tokens: int,
    max_tokens: int,
    config: ReserveConfig,
) -> Reservation:
    """A Message Batches item's hold: as a request at the card's batch rate."""
    if registry is None:
        registry = _default_registry()
    return reserve(
        registry,
        model,
        params,
        body,
        at=at,
        input_tokens=input_tokens,
        max_tokens=max_tokens,
        money=True,
        config=config,
        batch=True,
    )


_REGISTRY: list[Registry] = []


def _default_registry() -> Registry:
    if not _REGISTRY:
        from ethereal.models import load_registry

        _REGISTRY.append(load_registry())
    return _REGISTRY[0]
