"""The model registry: everything ethereal knows about a model, read from data.

One shipped file (``models.toml`` beside this module) holds every model Anthropic serves and
the legacy and retired ones: ids and aliases, family, dates and status, limits, rate cards
and request rules. An operator's file (``ETHEREAL_MODELS_FILE``) merges into it field by
field, in the same format. Nothing else in the code base keeps a model fact: pricing
(``metering.pricing``), the OpenAI adapters, the estimator, ``GET /v1/models``, the console
and the simulated upstream read this module.

Rates are held as integers in pico-USD per token (USD per million tokens × 10^6), and
multipliers (fast mode, ``inference_geo``, batch) as exact fractions, so a bill is integer
arithmetic rounded once, to the micro-dollar.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

log = logging.getLogger("ethereal.models")

DATA_FILE = Path(__file__).with_name("models.toml")

KINDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
THINKING_TYPES = ("adaptive", "enabled", "disabled", "between_tools")
STATUSES = ("active", "legacy", "limited", "deprecated", "retired")
PROMPT_KINDS = ("input", "cache_read", "cache_write")
MAX_MODEL_NAME = 256  # longer names are never looked up (they come from clients)
MAX_SEEN = 256  # models learnt from upstreams' lists or served provisionally (bounded)
PICO = 1_000_000  # pico-USD per micro-USD
MICRO_PER_USD = 1_000_000


class RegistryError(ValueError):
    """A models file that cannot be used; the message names the file and the field."""


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-token rates in pico-USD (USD/MTok × 10^6), one per kind."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int

    def usd(self, kind: str) -> float:
        """USD per million tokens, for display."""
        return float(getattr(self, kind)) / PICO

    def as_usd(self) -> dict[str, float]:
        return {k: self.usd(k) for k in KINDS}


@dataclass(frozen=True, slots=True)
class Tier:
    """A prompt-length tier: above ``above`` prompt tokens (counted over ``prompt``), every
    token of the request costs ``rates``."""

    above: int
    prompt: tuple[str, ...]
    rates: Rates


@dataclass(frozen=True, slots=True)
class RateCard:
    id: str  # "<model>@<effective_from>"
    model: str
    effective_from: float  # epoch seconds, inclusive
    effective_until: float | None  # exclusive; None: open-ended
    rates: Rates
    batch: Fraction  # × every token rate in a Message Batch
    fast: Fraction | None = None  # None: the card has no fast mode
    geo: Mapping[str, Fraction] = field(default_factory=dict)
    tiers: tuple[Tier, ...] = ()
    provisional: bool = False  # a stand-in card (model not described, or a kind the card lacks)
    # the highest rate of each kind over the base rates and every tier, worked out once
    top: Rates = field(init=False, compare=False, repr=False)

    # the smallest prompt a tier starts above (None: no tier): below it, the base rates apply
    tier_floor: int | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        all_rates = [self.rates, *(t.rates for t in self.tiers)]
        object.__setattr__(self, "top", Rates(*(max(getattr(r, k) for r in all_rates) for k in KINDS)))
        object.__setattr__(self, "tier_floor", min((t.above for t in self.tiers), default=None))

    def in_force(self, at: float) -> bool:
        return self.effective_from <= at and (self.effective_until is None or at < self.effective_until)

    def rates_for(self, prompt: Mapping[str, int]) -> Rates:
        """The rates for a request whose prompt has these token counts (by PROMPT_KINDS)."""
        for tier in sorted(self.tiers, key=lambda t: -t.above):
            if sum(prompt.get(k, 0) for k in tier.prompt) > tier.above:
                return tier.rates
        return self.rates

    def dearest(self) -> Rates:
        """The highest rate of each kind over the base rates and every tier (reservations)."""
        return self.top

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "effective_from": _day(self.effective_from),
            "effective_until": _day(self.effective_until) if self.effective_until is not None else None,
            "usd_per_mtok": self.rates.as_usd(),
            "batch": float(self.batch),
            "fast": float(self.fast) if self.fast is not None else None,
            "geo": {k: float(v) for k, v in self.geo.items()},
            "tiers": [
                {"above": t.above, "prompt": list(t.prompt), "usd_per_mtok": t.rates.as_usd()}
                for t in self.tiers
            ],
            "provisional": self.provisional,
        }


@dataclass(frozen=True, slots=True)
class Rules:
    """How a model wants to be asked (the request rules of models.toml)."""

    thinking_types: tuple[str, ...] = ("enabled", "disabled")
    thinking_default: str = "off"  # "adaptive" (on when omitted) or "off"
    thinking_off: str = "disabled"  # "disabled", "between_tools" or "none"
    thinking_off_max_effort: str | None = None
    effort_levels: tuple[str, ...] = ()
    effort_default: str | None = None
    display_default: str | None = None
    display_values: tuple[str, ...] = ()
    sampling: str = "any"  # "any", "one_of", "default_only"
    forced_tool_choice: bool = True
    forced_tool_with_thinking: bool = False
    prefill: bool = True
    structured_outputs: bool = False
    min_cache_tokens: int = 1024
    tokenizer: int = 1
    image_tier: int = 1
    # the tool-use system prompt Anthropic adds when `tools` is present, by tool_choice
    tool_prompt_auto: int = 346
    tool_prompt_any: int = 313
    keeps_thinking: bool = False  # earlier turns' thinking stays in context (and is counted)
    thinking_binding: str = "none"  # "none", "conversation", "account"
    inference_geo: bool = False
    fast_beta: str | None = None
    rate_limit_group: str | None = None
    # the native estimator's arguments for this model (guards.estimate_args), built once
    estimate_kwargs: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kwargs = {
            "tokenizer": self.tokenizer,
            "image_tier": self.image_tier,
            "tool_prompt": (self.tool_prompt_auto, self.tool_prompt_any),
            "keep_thinking": self.keeps_thinking,
        }
        object.__setattr__(self, "estimate_kwargs", kwargs)

    @property
    def adaptive(self) -> bool:
        return "adaptive" in self.thinking_types

    @property
    def budget_thinking(self) -> bool:
        """``thinking: {type: enabled, budget_tokens}`` accepted."""
        return "enabled" in self.thinking_types

    def effort_at_most(self, effort: str | None, ceiling: str) -> bool:
        level = effort or self.effort_default or "high"
        return EFFORTS.index(level) <= EFFORTS.index(ceiling) if level in EFFORTS else True

    def nearest_effort(self, wanted: str) -> str | None:
        """The level this model has that is nearest ``wanted`` (ties go down: cheaper)."""
        levels = self.effort_levels
        if not levels:
            return None
        if wanted in levels:
            return wanted
        order = {e: i for i, e in enumerate(EFFORTS)}
        target = order.get(wanted, order["medium"])
        return min(levels, key=lambda e: (abs(order[e] - target), order[e]))


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    display_name: str
    family: str | None  # the model line: fable, mythos, opus, sonnet, haiku (None: unknown)
    series: str | None  # e.g. "opus-4": key allow-lists may name it
    released: str  # YYYY-MM-DD
    status: str
    context_window: int
    max_output: int
    batch_max_output: int
    aliases: tuple[str, ...] = ()
    deprecated_on: str | None = None
    retires_on: str | None = None
    rules: Rules = field(default_factory=Rules)
    cards: tuple[RateCard, ...] = ()
    provisional: bool = False  # not described by the registry: forwarded and billed provisionally
    # card_at's last answer and the span of time it holds for: (from, until, card); every request
    # asks for the card of its start, almost always in the same span
    _span: tuple[float, float, RateCard | None] = field(
        default=(math.inf, -math.inf, None), init=False, compare=False, repr=False
    )

    @property
    def created_at(self) -> str:
        return f"{self.released}T00:00:00Z"

    @property
    def retired(self) -> bool:
        return self.status == "retired"

    def card_at(self, at: float) -> RateCard:
        """The rate card in force at ``at`` (epoch seconds): the latest one that started by then,
        else the first (a request older than every card is priced by the earliest)."""
        span = self._span
        if span[0] <= at < span[1]:
            return span[2]  # type: ignore[return-value]
        card = self._card_at(at)
        # the answer is the same anywhere between two neighbouring card boundaries
        edges = [c.effective_from for c in self.cards]
        edges += [c.effective_until for c in self.cards if c.effective_until is not None]
        lo = max((e for e in edges if e <= at), default=-math.inf)
        hi = min((e for e in edges if e > at), default=math.inf)
        object.__setattr__(self, "_span", (lo, hi, card))
        return card

    def _card_at(self, at: float) -> RateCard:
        cards = self.cards
        if len(cards) == 1:
            return cards[0]  # one card: in force whenever asked (the earliest is the fallback)
        current = None
        for card in cards:
            if card.in_force(at):
                return card
            if card.effective_from <= at:
                current = card
        return current or self.cards[0]

    @property
    def current(self) -> RateCard:
        import time

        return self.card_at(time.time())

    # the base prices in USD/MTok of the card in force now (admission, the console)
    @property
    def input_price(self) -> float:
        return self.current.rates.usd("input")

    @property
    def output_price(self) -> float:
        return self.current.rates.usd("output")

    def capabilities(self) -> dict[str, Any]:
        """Anthropic's ``capabilities`` object, from the rules."""
        r = self.rules
        yes = {"supported": True}
        no = {"supported": False}

        def sup(flag: bool) -> dict[str, bool]:
            return yes if flag else no

        thinking_types = {
            t: sup(t in r.thinking_types or (t == "disabled" and r.thinking_off == "disabled"))
            for t in THINKING_TYPES
        }
        effort = {"supported": bool(r.effort_levels), **{e: sup(e in r.effort_levels) for e in EFFORTS}}
        thinks = r.adaptive or r.budget_thinking
        return {
            "batch": yes,
            "citations": yes,
            "code_execution": sup(thinks),
            "image_input": yes,
            "pdf_input": yes,
            "structured_outputs": sup(r.structured_outputs),
            "context_management": {
                "supported": True,
                "clear_thinking_20251015": sup(thinks),
                "clear_tool_uses_20250919": yes,
                "compact_20260112": sup(r.tokenizer >= 2),
            },
            "effort": effort,
            "server_tools": {"supported": True, "code_execution": yes, "web_search": yes},
            "thinking": {"supported": thinks, "types": thinking_types},
        }

    def to_anthropic(self) -> dict[str, Any]:
        lifecycle = self.status if self.status in ("deprecated", "retired") else "active"
        return {
            "type": "model",
            "id": self.id,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "max_input_tokens": self.context_window,
            "max_tokens": self.max_output,
            "capabilities": self.capabilities(),
            "lifecycle": lifecycle,
            "deprecated_at": f"{self.deprecated_on}T00:00:00Z" if self.deprecated_on else None,
            "retires_at": f"{self.retires_on}T00:00:00Z" if self.retires_on else None,
            "line": self.family,
        }

    def to_openai(self) -> dict[str, object]:
        created = int(datetime.fromisoformat(self.created_at).timestamp())
        return {"id": self.id, "object": "model", "created": created, "owned_by": "anthropic"}

    def summary(self) -> dict[str, Any]:
        """What ``ethereal models list`` and the console show."""
        return {
            "id": self.id,
            "display_name": self.display_name,
            "family": self.family,
            "status": self.status,
            "aliases": list(self.aliases),
            "released": self.released,
            "deprecated_on": self.deprecated_on,
            "retires_on": self.retires_on,
            "context_window": self.context_window,
            "max_output": self.max_output,
            "provisional": self.provisional,
            "current_card": self.current.summary(),
        }


@dataclass(frozen=True, slots=True)
class ServerToolRates:
    web_search_micro: int  # per search
    web_fetch_micro: int
    code_execution_container_hour_usd: float


# -- loading -----------------------------------------------------------------------------------


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _epoch(value: Any, where: str) -> float:
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if isinstance(value, str):
        try:
            d = date.fromisoformat(value)
        except ValueError:
            raise RegistryError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None
        return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
    raise RegistryError(f"{where}: expected a date (YYYY-MM-DD), got {type(value).__name__}")


def _date_str(value: Any, where: str) -> str | None:
    if value is None:
        return None
    return _day(_epoch(value, where))


def _num(value: Any, where: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RegistryError(f"{where}: expected a number, got {type(value).__name__}")
    try:
        frac = Fraction(str(value)) if not isinstance(value, int) else Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise RegistryError(f"{where}: {value!r} is not a number") from None
    if frac < 0 or not math.isfinite(float(frac)):
        raise RegistryError(f"{where}: must be a non-negative number")
    return frac


def _field(table: Mapping[str, Any], key: str, where: str) -> Any:
    """A field the registry cannot do without (the shipped models.toml has it; an operator file
    merges into that, so only a data file of its own can lack it)."""
    if key not in table:
        raise RegistryError(f"{where}.{key}: required")
    return table[key]


def _pico(value: Fraction, where: str) -> int:
    scaled = value * PICO
    if scaled.denominator != 1:
        raise RegistryError(f"{where}: more precision than a millionth of a dollar per million tokens")
    return int(scaled)


def _int(value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RegistryError(f"{where}: expected an integer ≥ {minimum}")
    return value


def _str(value: Any, where: str, choices: Iterable[str] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise RegistryError(f"{where}: expected a string")
    if choices is not None and value not in choices:
        raise RegistryError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _strs(value: Any, where: str, choices: Iterable[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RegistryError(f"{where}: expected a list of strings")
    return tuple(_str(v, f"{where}.{i}", choices) for i, v in enumerate(value))


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RegistryError(f"{where}: expected true or false")
    return value


def _rates(
    table: Mapping[str, Any],
    where: str,
    defaults: Mapping[str, Fraction],
    base: Mapping[str, Fraction] | None = None,
) -> tuple[Rates, bool]:
    """Rates of a card or tier; kinds it omits are filled from ``defaults`` (× its input).
    Returns the rates and whether any kind was filled."""
    values: dict[str, Fraction] = {}
    for kind in ("input", "output"):
        if kind in table:
            values[kind] = _num(table[kind], f"{where}.{kind}")
        elif base is not None and kind in base:
            values[kind] = base[kind]
        else:
            raise RegistryError(f"{where}.{kind}: missing (every card names its input and output rates)")
    filled = False
    for kind in ("cache_write_5m", "cache_write_1h", "cache_read"):
        if kind in table:
            values[kind] = _num(table[kind], f"{where}.{kind}")
        else:
            values[kind] = values["input"] * defaults[kind]
            filled = True
    return Rates(*(_pico(values[k], f"{where}.{k}") for k in KINDS)), filled


_CARD_KEYS = frozenset(
    {
        "effective_from",
        "effective_until",
        *KINDS,
        "batch",
        "fast",
        "geo",
        "tiers",
        "input_price",
        "output_price",
    }
)
_TIER_KEYS = frozenset({"above", "prompt", *KINDS})
_MODEL_KEYS = frozenset(
    {
        "id",
        "aliases",
        "display_name",
        "family",
        "series",
        "released",
        "status",
        "deprecated_on",
        "retires_on",
        "context_window",
        "max_output",
        "batch_max_output",
        "rules",
        "prices",
        "input_price",
        "output_price",
        "created_at",
    }
)
_RULE_KEYS = frozenset(Rules.__dataclass_fields__)


def _card(model_id: str, table: Mapping[str, Any], where: str, defaults: Mapping[str, Fraction]) -> RateCard:
    unknown = set(table) - _CARD_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown field {min(unknown)!r}")
    if "effective_from" not in table:
        raise RegistryError(f"{where}.effective_from: missing")
    start = _epoch(table["effective_from"], f"{where}.effective_from")
    until = (
        _epoch(table["effective_until"], f"{where}.effective_until") if "effective_until" in table else None
    )
    if until is not None and until <= start:
        raise RegistryError(f"{where}.effective_until: must be after effective_from")
    rates, _ = _rates(table, where, defaults)
    tiers = []
    for i, t in enumerate(table.get("tiers", [])):
        tw = f"{where}.tiers.{i}"
        if not isinstance(t, dict):
            raise RegistryError(f"{tw}: expected a table")
        unknown = set(t) - _TIER_KEYS
        if unknown:
            raise RegistryError(f"{tw}: unknown field {min(unknown)!r}")
        base = {k: Fraction(getattr(rates, k), PICO) for k in KINDS}
        trates, _ = _rates(t, tw, defaults, base)
        tiers.append(
            Tier(
                _int(t.get("above"), f"{tw}.above", minimum=1),
                _strs(t.get("prompt", list(PROMPT_KINDS)), f"{tw}.prompt", PROMPT_KINDS),
                trates,
            )
        )
    geo_raw = table.get("geo", {})
    if not isinstance(geo_raw, dict):
        raise RegistryError(f"{where}.geo: expected a table of region = multiplier")
    geo = {str(k): _num(v, f"{where}.geo.{k}") for k, v in geo_raw.items()}
    fast = _num(table["fast"], f"{where}.fast") if "fast" in table else None
    batch = _num(table["batch"], f"{where}.batch") if "batch" in table else defaults["batch"]
    return RateCard(
        id=f"{model_id}@{_day(start)}",
        model=model_id,
        effective_from=start,
        effective_until=until,
        rates=rates,
        batch=batch,
        fast=fast,
        geo=geo,
        tiers=tuple(tiers),
    )


def _rules(table: Any, where: str) -> Rules:
    if table is None:
        return Rules()
    if not isinstance(table, dict):
        raise RegistryError(f"{where}: expected a table")
    unknown = set(table) - _RULE_KEYS
    if unknown:
        raise RegistryError(f"{where}: unknown field {min(unknown)!r}")
    kw: dict[str, Any] = {}
    for name, value in table.items():
        w = f"{where}.{name}"
        if name == "thinking_types":
            kw[name] = _strs(value, w, THINKING_TYPES)
        elif name in ("effort_levels",):
            kw[name] = _strs(value, w, EFFORTS)
        elif name in ("display_values",):
            kw[name] = _strs(value, w)
        elif name == "thinking_default":
            kw[name] = _str(value, w, ("adaptive", "off"))
        elif name == "thinking_off":
            kw[name] = _str(value, w, ("disabled", "between_tools", "none"))
        elif name in ("thinking_off_max_effort", "effort_default"):
            kw[name] = _str(value, w, EFFORTS)
        elif name == "sampling":
            kw[name] = _str(value, w, ("any", "one_of", "default_only"))
        elif name == "thinking_binding":
            kw[name] = _str(value, w, ("none", "conversation", "account"))
        elif name in (
            "forced_tool_choice",
            "forced_tool_with_thinking",
            "prefill",
            "structured_outputs",
            "inference_geo",
            "keeps_thinking",
        ):
            kw[name] = _bool(value, w)
        elif name in ("min_cache_tokens", "tool_prompt_auto", "tool_prompt_any"):
            kw[name] = _int(value, w)
        elif name in ("tokenizer", "image_tier"):
            kw[name] = _int(value, w, minimum=1)
        else:  # display_default, fast_beta, rate_limit_group
            kw[name] = _str(value, w)
    return Rules(**kw)


_TOP_KEYS = {
    "schema": None,
    "defaults": frozenset(
        {
            "cache_write_5m",
            "cache_write_1h",
            "cache_read",
            "batch",
            "fast",
            "max_tokens",
            "context_window",
            "model",
        }
    ),
    "server_tools": frozenset({"web_search_per_1000", "web_fetch_per_1000", "code_execution_container_hour"}),
    "short_names": None,
    "provisional": frozenset({"families"}),
    "errors": None,
    "models": None,
}


def _check_tables(data: Mapping[str, Any]) -> None:
    """Every top-level table and the fields of the fixed ones are known (a misspelt field would
    otherwise be ignored without a word)."""
    unknown = set(data) - set(_TOP_KEYS)
    if unknown:
        raise RegistryError(f"unknown table or field {min(unknown)!r}")
    for name, keys in _TOP_KEYS.items():
        table = data.get(name)
        if table is None or name in ("schema", "models"):
            continue
        if not isinstance(table, dict):
            raise RegistryError(f"{name}: expected a table")
        if keys is not None and set(table) - keys:
            raise RegistryError(f"{name}: unknown field {min(set(table) - keys)!r}")
        if name in ("short_names", "errors"):
            for k, v in table.items():
                if not isinstance(v, str):
                    raise RegistryError(f"{name}.{k}: expected a string")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Field-by-field merge: tables merge recursively; lists and values replace."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _legacy_entry(entry: dict[str, Any], where: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    """Today's operator files name only ``input_price``/``output_price`` (and maybe ``created_at``):
    mapped onto one open-ended card, with a deprecation warning."""
    entry = dict(entry)
    pin = entry.pop("input_price", None)
    pout = entry.pop("output_price", None)
    created = entry.pop("created_at", None)
    log.warning(
        "%s: input_price/output_price are deprecated; write a [[models.prices]] card "
        "(docs/models.md). Mapped to one card with the default cache and batch multipliers.",
        where,
    )
    if created is not None and "released" not in entry:
        entry["released"] = str(created)[:10]
    if pin is None or pout is None:
        raise RegistryError(f"{where}: input_price and output_price go together")
    released = entry.get("released") or (existing or {}).get("released") or "2000-01-01"
    entry["prices"] = [{"effective_from": released, "input": pin, "output": pout}]
    return entry


def _parse(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: expected a TOML table")
    models = data.get("models", [])
    if not isinstance(models, list):
        raise RegistryError(f"{source}: models must be an array of tables ([[models]])")
    return dict(data)


def load_data(path: Path | None = None) -> dict[str, Any]:
    """The shipped data merged with an operator file (by model id, field by field)."""
    with open(DATA_FILE, "rb") as fh:
        base = _parse(tomllib.load(fh), str(DATA_FILE))
    if path is None:
        return base
    try:
        with open(path, "rb") as fh:
            over = _parse(tomllib.load(fh), str(path))
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise RegistryError(f"{path}: cannot be read: {exc.strerror}") from None
    merged = {
        k: (_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v)
        for k, v in over.items()
        if k != "models"
    }
    out = {**base, **merged}
    by_id = {m["id"]: dict(m) for m in base.get("models", [])}
    order = list(by_id)
    for i, entry in enumerate(over.get("models", [])):
        where = f"{path}: models.{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise RegistryError(f"{where}.id: every [[models]] entry names its id")
        mid = entry["id"]
        existing = by_id.get(mid)
        if "input_price" in entry or "output_price" in entry:
            entry = _legacy_entry(entry, f"{where} ({mid})", existing)
            if existing is None:
                by_id[mid] = entry
                order.append(mid)
            else:
                by_id[mid] = _merge(existing, entry)  # a legacy price replaces every card
            continue
        if existing is None:
            by_id[mid] = entry
            order.append(mid)
        else:
            merged_cards = (
                _merge_cards(existing.get("prices"), entry["prices"], f"{where} ({mid}).prices")
                if "prices" in entry
                else None
            )
            by_id[mid] = _merge(existing, entry)
            if merged_cards is not None:
                by_id[mid]["prices"] = merged_cards
    out["models"] = [by_id[m] for m in order]
    return out


def _card_day(card: Any, where: str) -> str:
    if not isinstance(card, dict):
        raise RegistryError(f"{where}: expected a table")
    if "effective_from" not in card:
        raise RegistryError(f"{where}.effective_from: missing (an operator's card names the day it starts)")
    return _day(_epoch(card["effective_from"], f"{where}.effective_from"))


def _merge_cards(base: Any, over: Any, where: str) -> list[Any]:
    """An operator's ``[[models.prices]]`` merge into the shipped cards by ``effective_from``: a card
    starting the same day as a shipped one overrides that card field by field (one rate can be
    corrected alone); a card starting another day is added (a shipped card with no
    ``effective_until`` then ends where the next card starts)."""
    if not isinstance(over, list):
        raise RegistryError(f"{where}: expected an array of tables ([[models.prices]])")
    cards = [dict(c) if isinstance(c, dict) else c for c in (base if isinstance(base, list) else [])]
    index = {_card_day(c, f"{where} (shipped)"): i for i, c in enumerate(cards)}
    seen: set[str] = set()
    for i, card in enumerate(over):
        day = _card_day(card, f"{where}.{i}")
        if day in seen:
            raise RegistryError(f"{where}.{i}: a second card starting {day}")
        seen.add(day)
        if day in index:
            cards[index[day]] = _merge(cards[index[day]], card)
        else:
            index[day] = len(cards)
            cards.append(dict(card))
    return cards


class Registry:
    """Every model the gateway knows, and the rules to resolve, price and translate for them."""

    def __init__(self, data: Mapping[str, Any] | None = None, *, source: str = "models.toml") -> None:
        if data is None:
            data = load_data()
        self.source = source
        self.version = hashlib.sha256(repr(_canonical(data)).encode()).hexdigest()[:16]
        _check_tables(data)
        # the multipliers, defaults and server-tool rates are the data's: none is assumed here
        d = data.get("defaults", {})
        self.defaults = {
            kind: _num(_field(d, kind, "defaults"), f"defaults.{kind}")
            for kind in ("cache_write_5m", "cache_write_1h", "cache_read", "batch", "fast")
        }
        self.default_max_tokens = _int(_field(d, "max_tokens", "defaults"), "defaults.max_tokens", minimum=1)
        self.default_context_window = _int(
            _field(d, "context_window", "defaults"), "defaults.context_window", minimum=1
        )
        st = data.get("server_tools", {})
        per_1000 = Fraction(MICRO_PER_USD, 1000)
        self.server_tools = ServerToolRates(
            web_search_micro=round(
                _num(_field(st, "web_search_per_1000", "server_tools"), "server_tools.web_search_per_1000")
                * per_1000
            ),
            web_fetch_micro=round(
                _num(_field(st, "web_fetch_per_1000", "server_tools"), "server_tools.web_fetch_per_1000")
                * per_1000
            ),
            code_execution_container_hour_usd=float(
                _num(
                    _field(st, "code_execution_container_hour", "server_tools"),
                    "server_tools.code_execution_container_hour",
                )
            ),
        )
        self.errors: dict[str, str] = {str(k): str(v) for k, v in data.get("errors", {}).items()}
        prov = data.get("provisional", {})
        self.families: tuple[str, ...] = _strs(prov.get("families", []), "provisional.families")
        self.models: list[Model] = []
        for i, entry in enumerate(data.get("models", [])):
            self.models.append(self._model(entry, f"models.{i}"))
        self.models.sort(key=lambda m: m.released, reverse=True)
        self._by_name: dict[str, Model] = {}
        for m in self.models:
            self._by_name[m.id] = m
        for m in self.models:
            for alias in m.aliases:
                self._by_name.setdefault(alias, m)
        self.short_names: dict[str, str] = {}
        for name, target in data.get("short_names", {}).items():
            if target not in self._by_name:
                raise RegistryError(f"short_names.{name}: {target!r} is not a model in the registry")
            self.short_names[str(name)] = self._by_name[target].id
        # the model a client set-up (ethereal connect, the console's snippets) names by default
        default = d.get("model")
        if default is not None and (not isinstance(default, str) or self.resolve(default) is None):
            raise RegistryError(f"defaults.model: {default!r} is not a model in the registry")
        servable = [m for m in self.models if not m.retired]
        self.default_model: Model = (self.resolve(default) if isinstance(default, str) else None) or servable[
            0
        ]
        self._seen: dict[str, Model] = {}  # learnt: upstream lists, provisional models served
        self._alerted: set[str] = set()  # provisional models on_provisional heard of
        self._upstream_ids: set[str] = set()
        self._provisional_cache: dict[str, Model] = {}

    def _model(self, entry: Any, where: str) -> Model:
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: expected a table")
        mid = entry.get("id")
        if not isinstance(mid, str) or not mid:
            raise RegistryError(f"{where}.id: missing")
        where = f"{where} ({mid})"
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise RegistryError(f"{where}: unknown field {min(unknown)!r}")
        if "input_price" in entry or "output_price" in entry:
            entry = _legacy_entry(entry, where, None)
        prices = entry.get("prices")
        if not isinstance(prices, list) or not prices:
            raise RegistryError(f"{where}.prices: at least one rate card ([[models.prices]])")
        cards = sorted(
            (self._card(mid, p, f"{where}.prices.{i}") for i, p in enumerate(prices)),
            key=lambda c: c.effective_from,
        )
        for i, (a, b) in enumerate(itertools.pairwise(cards)):
            if a.effective_from == b.effective_from:
                raise RegistryError(f"{where}.prices: two cards start on {_day(a.effective_from)} ({a.id})")
            if a.effective_until is None:  # an open-ended card ends where the next one starts
                cards[i] = replace(a, effective_until=b.effective_from)
            elif a.effective_until > b.effective_from:
                raise RegistryError(
                    f"{where}.prices: card {a.id} (until {_day(a.effective_until)}) overlaps {b.id}"
                )
        released = _date_str(entry.get("released"), f"{where}.released") or _day(cards[0].effective_from)
        # an entry that leaves its limits out (an operator's legacy price-only file) gets [defaults]'
        ctx = _int(
            entry.get("context_window", self.default_context_window), f"{where}.context_window", minimum=1
        )
        out = _int(entry.get("max_output", self.default_max_tokens), f"{where}.max_output", minimum=1)
        return Model(
            id=mid,
            display_name=_str(entry.get("display_name", mid), f"{where}.display_name"),
            family=_str(entry["family"], f"{where}.family") if "family" in entry else None,
            series=_str(entry["series"], f"{where}.series") if "series" in entry else None,
            released=released,
            status=_str(entry.get("status", "active"), f"{where}.status", STATUSES),
            context_window=ctx,
            max_output=out,
            batch_max_output=_int(entry.get("batch_max_output", out), f"{where}.batch_max_output", minimum=1),
            aliases=_strs(entry.get("aliases", []), f"{where}.aliases"),
            deprecated_on=_date_str(entry.get("deprecated_on"), f"{where}.deprecated_on"),
            retires_on=_date_str(entry.get("retires_on"), f"{where}.retires_on"),
            rules=_rules(entry.get("rules"), f"{where}.rules"),
            cards=tuple(cards),
        )

    def _card(self, mid: str, table: Any, where: str) -> RateCard:
        if not isinstance(table, dict):
            raise RegistryError(f"{where}: expected a table")
        return _card(mid, table, where, self.defaults)

    # -- lookups -------------------------------------------------------------------------------

    def get(self, model_id: str) -> Model | None:
        return self._by_name.get(model_id) or self._seen.get(model_id)

    def resolve(self, name: str) -> Model | None:
        """The model a client's name means: ids and aliases (with a provider prefix such as
        ``anthropic/``, any case, dots or dashes in the version), short names and ``-latest``
        aliases (today's models); None when the registry does not know it."""
        hit = self._by_name.get(name)
        if hit is not None:
            return hit
        if len(name) > MAX_MODEL_NAME:
            return None
        for candidate in _spellings(name):
            hit = self._by_name.get(candidate)
            if hit is not None:
                return hit
            target = self.short_names.get(candidate)
            if target is not None:
                return self._by_name[target]
            hit = self._seen.get(candidate)
            if hit is not None:
                return hit
        return None

    def canonical_name(self, name: str) -> str:
        """What goes upstream for a name the registry does not know: the client's own, without a
        provider prefix."""
        return _without_provider(name.strip()) or name

    def family_of(self, name: str) -> str | None:
        """The model line a name mentions (a dash-separated word), or None."""
        words = set(name.lower().replace("/", "-").replace(".", "-").replace(":", "-").split("-"))
        for fam in self.families:
            if fam in words:
                return fam
        return None

    def provisional(self, name: str) -> Model:
        """A model the upstream serves and the registry does not describe: forwarded as named,
        billed at the dearest current card of its family (else of the whole table), flagged."""
        hit = self._provisional_cache.get(name)
        if hit is not None:
            return hit
        fam = self.family_of(name)
        servable = [m for m in self.models if not m.retired and not m.provisional]
        pool = [m for m in servable if m.family == fam] if fam else []
        if not pool:
            pool = servable
        now = _now()
        like = max(pool, key=lambda m: _card_weight(m.card_at(now)))
        card = like.card_at(now)
        # the dearest card, with the dearest fast rate and geography of the table (never under-bills)
        fast = max(
            (c.fast for m in pool for c in m.cards if c.fast is not None), default=self.defaults["fast"]
        )
        geo: dict[str, Fraction] = {}
        for m in pool:
            for c in m.cards:
                for region, mult in c.geo.items():
                    geo[region] = max(geo.get(region, mult), mult)
        pcard = replace(
            card,
            id=f"provisional:{card.id}",
            model=name,
            effective_from=0.0,
            effective_until=None,
            fast=fast,
            geo=geo,
            provisional=True,
        )
        model = Model(
            id=name,
            display_name=name,
            family=fam,
            series=None,
            released=like.released,
            status="active",
            context_window=max(m.context_window for m in pool),
            max_output=max(m.max_output for m in pool),
            batch_max_output=max(m.batch_max_output for m in pool),
            rules=like.rules,
            cards=(pcard,),
            provisional=True,
        )
        if len(self._provisional_cache) < MAX_SEEN:
            self._provisional_cache[name] = model
        return model

    # called with (model id, card) the first time a provisional model is served (alerts/: a webhook)
    on_provisional: Callable[[str, str], None] | None = None

    def mark_served(self, model: Model) -> None:
        """The upstream answered a provisional model: listed from now on (bounded); the first
        time in this process, ``on_provisional`` hears of it."""
        if not model.provisional:
            return
        alerted = self._alerted
        if model.id not in alerted and len(alerted) < MAX_SEEN:
            alerted.add(model.id)
            if self.on_provisional is not None:
                try:
                    self.on_provisional(model.id, model.cards[0].id.removeprefix("provisional:"))
                except Exception:  # an alert never fails a request
                    log.exception("the provisional-model alert failed")
        if model.id not in self._seen and len(self._seen) < MAX_SEEN:
            self._seen[model.id] = model
            log.warning(
                "model %r is served by the upstream and not described by the registry: billed "
                "provisionally at %s (add it to ETHEREAL_MODELS_FILE)",
                model.id[:64],
                model.cards[0].id.removeprefix("provisional:"),
            )

    def learn_upstream(self, ids: Iterable[str]) -> list[str]:
        """Ids an upstream's ``GET /v1/models`` lists. The list only ever adds: an id the registry
        does not describe becomes listable (billed provisionally); nothing is refused because a
        list lacks it. Returns the ids new to this process."""
        new = []
        for mid in ids:
            if not isinstance(mid, str) or not mid or len(mid) > MAX_MODEL_NAME:
                continue
            if mid not in self._upstream_ids and len(self._upstream_ids) < 4 * MAX_SEEN:
                self._upstream_ids.add(mid)
                new.append(mid)
            if self._by_name.get(mid) is None and mid not in self._seen and len(self._seen) < MAX_SEEN:
                self._seen[mid] = self.provisional(mid)
        return new

    @property
    def upstream_ids(self) -> frozenset[str]:
        return frozenset(self._upstream_ids)

    def provisional_models(self) -> list[Model]:
        return [m for m in self._seen.values() if m.provisional]

    def listed(self) -> list[Model]:
        """What ``GET /v1/models`` lists: every model not retired, then the ones learnt from the
        upstream (or served provisionally), newest first."""
        out = [m for m in self.models if not m.retired]
        if self._seen:
            out = sorted([*out, *self._seen.values()], key=lambda m: m.released, reverse=True)
        return out

    def expired(self, at: float | None = None) -> list[Model]:
        """Models that are not retired and have no card in force (an alert: prices run stale)."""
        t = _now() if at is None else at
        return [m for m in self.models if not m.retired and not any(c.in_force(t) for c in m.cards)]

    def rate_limit_group(self, name: str | None) -> str:
        """The models an upstream 429 is about; a model the registry does not know is its own group."""
        if not name:
            return ""
        model = self.resolve(name)
        if model is None or model.provisional:
            return name
        return model.rules.rate_limit_group or model.id

    def error_text(self, key: str, **fields: Any) -> str:
        text = self.errors.get(key, key)
        try:
            return text.format(**fields)
        except (KeyError, IndexError, ValueError):
            return text


def _now() -> float:
    import time

    return time.time()


def _card_weight(card: RateCard) -> tuple[int, int]:
    r = card.dearest()
    return (r.input + r.output, r.cache_write_1h)


def _without_provider(s: str) -> str:
    """``anthropic/claude-x``, ``bedrock:claude-x``, ``anthropic.claude-x`` → ``claude-x``."""
    for sep in ("/", ":"):
        head, found, tail = s.partition(sep)
        if found and head.lower() in ("anthropic", "claude", "bedrock", "vertex", "vertex_ai"):
            s = tail
            break
    if s.lower().startswith("anthropic."):
        s = s[len("anthropic.") :]
    return s


def _spellings(name: str) -> list[str]:
    """A name as typed, without a provider prefix, lowercased, with dotted versions dashed, and
    with or without ``claude-`` (what clients write for the same model)."""
    out = [name]
    s = _without_provider(name.strip()).lower()
    out.append(s)
    dashed = s.replace(".", "-")
    if dashed != s:
        out.append(dashed)
    for v in list(out[1:]):
        out.append(v.removeprefix("claude-") if v.startswith("claude-") else f"claude-{v}")
    seen: set[str] = set()
    return [x for x in out if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_canonical(v) for v in value)
    return value if not isinstance(value, date | datetime) else value.isoformat()


def load_registry(path: Path | None = None) -> Registry:
    """The shipped registry merged with the operator's file; raises RegistryError naming the field."""
    data = load_data(path)
    source = f"{DATA_FILE.name}" + (f" + {path}" if path is not None else "")
    try:
        return Registry(data, source=source)
    except RegistryError as exc:
        raise RegistryError(f"{source}: {exc}") from None
