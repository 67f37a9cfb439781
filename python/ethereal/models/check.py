"""``ethereal models list`` and ``ethereal models check``: the registry as an operator reads it,
and the registry against what others say.

``check`` compares the registry with

* each upstream credential's ``GET /v1/models`` (ids served and not described: billed
  provisionally until described; ids described and not served: only noted, lists can be partial);
* a peer price map given as a path, read one way and never written:
  LiteLLM's ``model_prices_and_context_window.json`` (USD per token: ``input_cost_per_token``,
  ``output_cost_per_token``, ``cache_creation_input_token_cost``,
  ``cache_creation_input_token_cost_above_1hr``, ``cache_read_input_token_cost``; limits
  ``max_input_tokens``, ``max_output_tokens``) or Portkey's ``pricing/anthropic.json``
  (US cents per token under ``pricing_config.pay_as_you_go``: ``request_token``,
  ``response_token``, ``cache_write_input_token``, ``cache_read_input_token``,
  ``additional_units.cache_write_1h``). Rates are compared per kind with the card in force now,
  in exact integers (pico-USD per token); a peer entry is matched to a registry model by its id
  or any alias the registry resolves (``anthropic/`` prefixes and dotted versions included).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ethereal.models.registry import KINDS, PICO, Model, Registry

MAX_PEER_BYTES = 64 * 1024 * 1024

# one way: peer field -> registry kind
LITELLM_RATES = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "cache_read_input_token_cost": "cache_read",
}
PORTKEY_RATES = {
    "request_token": "input",
    "response_token": "output",
    "cache_write_input_token": "cache_write_5m",
    "cache_read_input_token": "cache_read",
}
# pico-USD per unit of each format's price
LITELLM_UNIT = Decimal(10) ** 12  # USD per token
PORTKEY_UNIT = Decimal(10) ** 10  # US cents per token


class PeerFileError(ValueError):
    """A peer price file that cannot be read; the message names the file."""


@dataclass(frozen=True, slots=True)
class PeerEntry:
    name: str  # the peer's own key
    rates: dict[str, int]  # kind -> pico-USD per token (only the kinds it names)
    context_window: int | None = None
    max_output: int | None = None


@dataclass(frozen=True, slots=True)
class Disagreement:
    model: str
    peer_name: str
    field: str  # a rate kind, "context_window" or "max_output"
    registry: int
    peer: int

    def describe(self, source: str) -> str:
        if self.field in KINDS:
            return (
                f"{self.model}: {self.field} {_usd(self.registry)} in the registry, {_usd(self.peer)} in "
                f"{source} ({self.peer_name}) USD/MTok"
            )
        return f"{self.model}: {self.field} {self.registry:,} in the registry, {self.peer:,} in {source} ({self.peer_name})"


def _usd(pico: int) -> str:
    return f"{Decimal(pico) / PICO:.4f}".rstrip("0").rstrip(".")


def _pico(value: Any, unit: Decimal) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        exact = Decimal(str(value)) * unit
    except InvalidOperation:
        return None
    if exact < 0:
        return None
    return int(exact.to_integral_value())


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_peer(path: Path) -> tuple[str, list[PeerEntry]]:
    """(format name, entries) of a LiteLLM or Portkey price file, by its shape."""
    try:
        if path.stat().st_size > MAX_PEER_BYTES:
            raise PeerFileError(f"{path}: larger than {MAX_PEER_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PeerFileError(f"{path}: cannot be read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeerFileError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PeerFileError(f"{path}: expected a JSON object of models")
    tables = [v for v in data.values() if isinstance(v, dict)]
    if any("pricing_config" in v for v in tables):
        return "Portkey", _portkey(data)
    if any(k in v for v in tables for k in ("input_cost_per_token", "litellm_provider", "max_input_tokens")):
        return "LiteLLM", _litellm(data)
    raise PeerFileError(
        f"{path}: neither LiteLLM's model_prices_and_context_window.json nor Portkey's "
        "pricing/<provider>.json"
    )


def _litellm(data: dict[str, Any]) -> list[PeerEntry]:
    out = []
    for name, entry in data.items():
        if not isinstance(entry, dict) or name == "sample_spec":
            continue
        provider = entry.get("litellm_provider")
        if provider is not None and provider != "anthropic":
            continue  # the same model on Bedrock or Vertex has its own prices
        rates = {
            kind: p
            for field, kind in LITELLM_RATES.items()
            if field in entry and (p := _pico(entry[field], LITELLM_UNIT)) is not None
        }
        out.append(
            PeerEntry(name, rates, _int(entry.get("max_input_tokens")), _int(entry.get("max_output_tokens")))
        )
    return out


def _portkey(data: dict[str, Any]) -> list[PeerEntry]:
    out = []
    for name, entry in data.items():
        if not isinstance(entry, dict) or name == "default":
            continue
        config = entry.get("pricing_config")
        payg = config.get("pay_as_you_go") if isinstance(config, dict) else None
        if not isinstance(payg, dict):
            continue
        rates: dict[str, int] = {}
        for field, kind in PORTKEY_RATES.items():
            price = payg.get(field)
            p = _pico(price.get("price"), PORTKEY_UNIT) if isinstance(price, dict) else None
            if p is not None:
                rates[kind] = p
        extra = payg.get("additional_units")
        hour = extra.get("cache_write_1h") if isinstance(extra, dict) else None
        p = _pico(hour.get("price"), PORTKEY_UNIT) if isinstance(hour, dict) else None
        if p is not None:
            rates["cache_write_1h"] = p
        out.append(PeerEntry(name, rates))
    return out


def compare_peer(
    registry: Registry, entries: list[PeerEntry], at: float | None = None
) -> tuple[list[Disagreement], list[str]]:
    """Rate and limit disagreements between the registry (the card in force at ``at``) and a peer's
    entries; and the peer's Anthropic entries the registry does not know (for information)."""
    now = time.time() if at is None else at
    out: list[Disagreement] = []
    unknown: list[str] = []
    for entry in entries:
        model = registry.resolve(entry.name)
        if model is None or model.provisional:
            if entry.name.lower().removeprefix("anthropic/").startswith("claude"):
                unknown.append(entry.name)
            continue
        rates = model.card_at(now).rates
        for kind in KINDS:
            theirs = entry.rates.get(kind)
            ours = getattr(rates, kind)
            if theirs is not None and theirs != ours:
                out.append(Disagreement(model.id, entry.name, kind, ours, theirs))
        for field, theirs in (("context_window", entry.context_window), ("max_output", entry.max_output)):
            ours = getattr(model, field)
            if theirs is not None and theirs != ours:
                out.append(Disagreement(model.id, entry.name, field, ours, theirs))
    return out, unknown


def compare_upstream(registry: Registry, ids: list[str]) -> tuple[list[str], list[str]]:
    """(ids served that the registry does not describe, registry models not retired that the list
    does not name by id or alias). The second is a note, never an error: lists can be partial."""
    served_models: set[str] = set()
    undescribed = []
    for mid in ids:
        model = registry.resolve(mid)
        if model is None or model.provisional:
            undescribed.append(mid)
        else:
            served_models.add(model.id)
    not_served = [m.id for m in registry.models if not m.retired and m.id not in served_models]
    return undescribed, not_served


def list_rows(models: list[Model], at: float | None = None) -> list[dict[str, Any]]:
    """What ``ethereal models list`` prints: status, limits, current per-kind prices, flags."""
    now = time.time() if at is None else at
    rows = []
    for m in models:
        card = m.card_at(now)
        rows.append(
            {
                "id": m.id,
                "status": m.status,
                "provisional": m.provisional,
                "family": m.family,
                "aliases": list(m.aliases),
                "context_window": m.context_window,
                "max_output": m.max_output,
                "card": card.id,
                "usd_per_mtok": card.rates.as_usd(),
                "tiers": len(card.tiers),
                "fast": float(card.fast) if card.fast is not None else None,
                "geo": {k: float(v) for k, v in card.geo.items()},
                "deprecated_on": m.deprecated_on,
                "retires_on": m.retires_on,
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (
        "model",
        "status",
        "context",
        "max out",
        *(k.replace("cache_write_", "write ").replace("cache_read", "read") for k in KINDS),
        "notes",
    )
    lines = [head]
    for r in rows:
        notes = []
        if r["provisional"]:
            notes.append("PROVISIONAL: not described, billed at " + r["card"].removeprefix("provisional:"))
        if r["tiers"]:
            notes.append(f"{r['tiers']} prompt tier(s)")
        if r["fast"] is not None:
            notes.append(f"fast x{r['fast']:g}")
        if r["retires_on"]:
            notes.append(f"retires {r['retires_on']}")
        lines.append(
            (
                r["id"],
                r["status"],
                f"{r['context_window']:,}",
                f"{r['max_output']:,}",
                *(f"{r['usd_per_mtok'][k]:g}" for k in KINDS),
                "; ".join(notes),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
    return (
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
            for row in lines
        ).rstrip()
        + "\n"
        + "(prices in USD per million tokens, the card in force now)"
    )
