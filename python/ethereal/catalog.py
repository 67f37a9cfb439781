"""The model table: ids, aliases, context windows, output caps and prices.

Prices are US dollars per million tokens, which is the same number as
micro-dollars per token, so costs are computed in integer micro-USD without
floating error creeping into totals. The table can be extended or overridden
by a TOML file (``ETHEREAL_MODELS_FILE``) with ``[[models]]`` entries.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Cache and batch multipliers on the input price (Anthropic's published rules).
CACHE_WRITE_5M = 1.25
CACHE_WRITE_1H = 2.0
CACHE_READ = 0.1
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True, slots=True)
class Model:
    id: str  # canonical id, as the upstream knows it
    display_name: str
    created_at: str  # RFC 3339
    family: str  # e.g. "sonnet-4", "opus-4", "haiku-3"
    context_window: int
    max_output: int
    input_price: float  # USD per MTok
    output_price: float
    aliases: tuple[str, ...] = field(default=())
    derived: bool = False  # not in the table: named by the client, priced like its family

    def to_anthropic(self) -> dict[str, object]:
        return {
            "type": "model",
            "id": self.id,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "max_input_tokens": self.context_window,
            "max_tokens": self.max_output,
        }

    def to_openai(self) -> dict[str, object]:
        created = int(datetime.fromisoformat(self.created_at).timestamp())
        return {"id": self.id, "object": "model", "created": created, "owned_by": "anthropic"}


def _m(id_: str, name: str, created: str, family: str, ctx: int, out: int, pin: float, pout: float,
       *aliases: str) -> Model:
    return Model(id_, name, created, family, ctx, out, pin, pout, tuple(aliases))


# Newest first within each family: short names and "-latest" resolve to the first match.
DEFAULT_MODELS: tuple[Model, ...] = (
    _m("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16T00:00:00Z", "opus-4", 200_000, 128_000, 5, 25),
    _m("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z", "opus-4", 200_000, 128_000, 5, 25),
    _m("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z", "sonnet-4", 200_000, 64_000, 3, 15),
    _m("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z", "opus-4", 200_000, 64_000,
       5, 25, "claude-opus-4-5"),
    _m("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z", "haiku-4", 200_000, 64_000,
       1, 5, "claude-haiku-4-5"),
    _m("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z", "sonnet-4", 200_000,
       64_000, 3, 15, "claude-sonnet-4-5"),
    _m("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z", "opus-4", 200_000, 32_000,
       15, 75, "claude-opus-4-1"),
    _m("claude-opus-4-20250514", "Claude Opus 4", "2025-05-22T00:00:00Z", "opus-4", 200_000, 32_000, 15, 75,
       "claude-opus-4-0", "claude-4-opus", "claude-4-opus-20250514"),
    _m("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-22T00:00:00Z", "sonnet-4", 200_000, 64_000,
       3, 15, "claude-sonnet-4-0", "claude-4-sonnet", "claude-4-sonnet-20250514"),
    _m("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-24T00:00:00Z", "sonnet-3", 200_000,
       64_000, 3, 15, "claude-3-7-sonnet-latest"),
    _m("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z", "haiku-3", 200_000, 8_192,
       0.8, 4, "claude-3-5-haiku-latest"),
    _m("claude-3-5-sonnet-20241022", "Claude Sonnet 3.5 (New)", "2024-10-22T00:00:00Z", "sonnet-3", 200_000,
       8_192, 3, 15),
    _m("claude-3-haiku-20240307", "Claude Haiku 3", "2024-03-07T00:00:00Z", "haiku-3", 200_000, 4_096,
       0.25, 1.25),
)

_PROVIDER_PREFIX = re.compile(r"^(?:anthropic|claude|bedrock|vertex)[/:.]", re.IGNORECASE)
_SHORT = re.compile(r"^(?:claude-)?(opus|sonnet|haiku)-?(\d)(?:[-.](\d))?$")
_TIER_ONLY = re.compile(r"^(?:claude-)?(opus|sonnet|haiku)(?:-latest)?$")
# a name that says which family it belongs to: claude-opus-4-8, claude-sonnet-5, claude-3-5-haiku-x
_FAMILY = re.compile(r"^claude-(opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?:-\d{8})?(?:-latest)?$")
_OLD_FAMILY = re.compile(r"^claude-(\d+)(?:-(\d{1,2}))?-(opus|sonnet|haiku)(?:-\d{8})?(?:-latest)?$")
MAX_MODEL_NAME = 256  # longer names are refused before any lookup
MAX_SEEN = 256  # derived models listed once the upstream served them (bounded: names come from clients)


class Catalog:
    """Resolves what clients call a model to the canonical id, and prices usage.

    ``resolve``: the table's models by id or alias, provider prefixes (``anthropic/``) and short
    names (``sonnet-4``, ``opus``: the newest of the family) included. ``derive``: a model the
    table does not know but whose name says its family (``claude-opus-4-8``, ``claude-sonnet-5``)
    is priced like the newest known model of that family (or of its tier, for a newer
    generation); once the upstream has served it, ``listed`` includes it.
    """

    def __init__(self, models: tuple[Model, ...] | list[Model] = DEFAULT_MODELS) -> None:
        self.models: list[Model] = list(models)
        self._by_id: dict[str, Model] = {}
        for model in self.models:
            self._by_id[model.id] = model
            for alias in model.aliases:
                self._by_id.setdefault(alias, model)
        # "-latest" names for the 3.x generation: the newest compatible release (same tier and
        # generation), e.g. claude-3-5-sonnet-latest → claude-3-7-sonnet-20250219.
        if any(m.family == "sonnet-3" for m in self.models):
            self._by_id.setdefault("claude-3-5-sonnet-latest", self._newest("sonnet-3"))
        self._seen: dict[str, Model] = {}

    def _newest(self, family: str) -> Model:
        candidates = [m for m in self.models if m.family == family]
        return max(candidates, key=lambda m: m.created_at)

    def _newest_of_tier(self, tier: str) -> Model | None:
        members = [m for m in self.models if m.family.startswith(tier + "-")]
        return max(members, key=lambda m: m.created_at) if members else None

    def resolve(self, name: str) -> Model | None:
        """Canonical model for a client-supplied name, or None when unknown."""
        model = self._by_id.get(name)
        if model is not None:
            return model
        stripped = _PROVIDER_PREFIX.sub("", name.strip())
        model = self._by_id.get(stripped) or self._by_id.get(stripped.lower())
        if model is not None:
            return model
        lowered = stripped.lower()
        match = _SHORT.match(lowered)
        if match:
            tier, major, minor = match.groups()
            family = f"{tier}-{major}"
            members = [m for m in self.models if m.family == family]
            if minor is not None:
                members = [m for m in members if m.id.startswith(f"claude-{tier}-{major}-{minor}")]
            if members:
                return max(members, key=lambda m: m.created_at)
        match = _TIER_ONLY.match(lowered)
        if match:
            return self._newest_of_tier(match.group(1))
        return self._seen.get(lowered)

    def derive(self, name: str) -> Model | None:
        """A model for a name the table does not know but whose family it names, priced like the
        newest known model of that family (or of its tier for a newer generation); None otherwise."""
        stripped = _PROVIDER_PREFIX.sub("", name.strip()).lower()
        if len(stripped) > MAX_MODEL_NAME:
            return None
        match = _FAMILY.match(stripped)
        if match:
            tier, major, minor = match.group(1), match.group(2), match.group(3)
        else:
            old = _OLD_FAMILY.match(stripped)
            if old is None:
                return None
            major, minor, tier = old.group(1), old.group(2), old.group(3)
        members = [m for m in self.models if m.family == f"{tier}-{major}"]
        like = max(members, key=lambda m: m.created_at) if members else self._newest_of_tier(tier)
        if like is None:
            return None
        version = f"{major}.{minor}" if minor else major
        return Model(stripped, f"Claude {tier.capitalize()} {version}", like.created_at, f"{tier}-{major}",
                     like.context_window, like.max_output, like.input_price, like.output_price, derived=True)

    def mark_served(self, model: Model) -> None:
        """The upstream answered a derived model: list it from now on (bounded)."""
        if model.derived and model.id not in self._seen and len(self._seen) < MAX_SEEN:
            self._seen[model.id] = model

    def listed(self) -> list[Model]:
        """Every model to list: the table's, then the derived ones the upstream has served."""
        if not self._seen:
            return self.models
        return sorted([*self.models, *self._seen.values()], key=lambda m: m.created_at, reverse=True)

    def get(self, model_id: str) -> Model | None:
        return self._by_id.get(model_id)

    def cost_micro(
        self,
        model: Model | None,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_creation_5m: int = 0,
        cache_creation_1h: int = 0,
        cache_read: int = 0,
        batch: bool = False,
    ) -> int:
        """Cost in integer micro-USD (USD/MTok is micro-USD per token)."""
        if model is None:
            return 0
        pin = model.input_price
        cost = (
            input_tokens * pin
            + output_tokens * model.output_price
            + cache_creation_5m * pin * CACHE_WRITE_5M
            + cache_creation_1h * pin * CACHE_WRITE_1H
            + cache_read * pin * CACHE_READ
        )
        if batch:
            cost *= BATCH_DISCOUNT
        return round(cost)


def load_catalog(path: Path | None) -> Catalog:
    """The default table, with entries from a TOML file added or replacing by id."""
    if path is None:
        return Catalog()
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    models = {m.id: m for m in DEFAULT_MODELS}
    for entry in data.get("models", []):
        try:
            model = Model(
                id=entry["id"],
                display_name=entry.get("display_name", entry["id"]),
                created_at=entry.get("created_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
                family=entry.get("family", entry["id"]),
                context_window=int(entry.get("context_window", 200_000)),
                max_output=int(entry.get("max_output", 8_192)),
                input_price=float(entry["input_price"]),
                output_price=float(entry["output_price"]),
                aliases=tuple(entry.get("aliases", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad [[models]] entry {entry!r}: {exc}") from None
        models[model.id] = model
    return Catalog(sorted(models.values(), key=lambda m: m.created_at, reverse=True))
