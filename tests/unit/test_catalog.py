"""Model names users type resolve, with the published prices; unknown names are priced by family."""

from __future__ import annotations

import pytest
from ethereal.catalog import Catalog
from ethereal.metering.pricing import cost_micro, price_model
from ethereal.usage import Usage

CAT = Catalog()

# name typed → (canonical id, $/MTok input, $/MTok output)
NAMES = [
    ("claude-opus-4-7", "claude-opus-4-7", 5, 25),
    ("anthropic/claude-opus-4-7", "claude-opus-4-7", 5, 25),
    ("claude-opus-4-6", "claude-opus-4-6", 5, 25),
    ("claude-opus-4-5", "claude-opus-4-5-20251101", 5, 25),
    ("claude-sonnet-4-6", "claude-sonnet-4-6", 3, 15),
    ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5-20250929", 3, 15),
    ("claude-haiku-4-5", "claude-haiku-4-5-20251001", 1, 5),
    ("anthropic/claude-4-sonnet", "claude-sonnet-4-20250514", 3, 15),
    ("anthropic/claude-4-opus", "claude-opus-4-20250514", 15, 75),
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022", 3, 15),
    ("anthropic/claude-3-5-haiku-latest", "claude-3-5-haiku-20241022", 0.8, 4),
    # short family names: the newest of the family
    ("sonnet", "claude-sonnet-4-6", 3, 15),
    ("opus", "claude-opus-4-7", 5, 25),
    ("haiku", "claude-haiku-4-5-20251001", 1, 5),
    ("claude-opus-latest", "claude-opus-4-7", 5, 25),
]


@pytest.mark.parametrize(("name", "canonical", "pin", "pout"), NAMES)
def test_names_users_type_resolve_with_their_prices(name: str, canonical: str, pin: float, pout: float) -> None:
    model = CAT.resolve(name)
    assert model is not None and model.id == canonical and not model.derived
    assert (model.input_price, model.output_price) == (pin, pout)


# names the table does not know but whose family they name: forwarded as typed, priced by family
DERIVED = [
    ("claude-opus-4-8", "claude-opus-4-8", "opus-4", 5, 25),  # the product docs' own example
    ("anthropic/claude-opus-4-8", "claude-opus-4-8", "opus-4", 5, 25),
    ("claude-sonnet-5", "claude-sonnet-5", "sonnet-5", 3, 15),  # Claude Code's default: newest sonnet's price
    ("claude-haiku-4-6-20260301", "claude-haiku-4-6-20260301", "haiku-4", 1, 5),
    ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20240620", "sonnet-3", 3, 15),
]


@pytest.mark.parametrize(("name", "forwarded", "family", "pin", "pout"), DERIVED)
def test_unknown_names_of_a_family_are_priced_like_it(name: str, forwarded: str, family: str, pin: float,
                                                      pout: float) -> None:
    assert CAT.resolve(name) is None
    model = CAT.derive(name)
    assert model is not None and model.derived
    assert (model.id, model.family, model.input_price, model.output_price) == (forwarded, family, pin, pout)
    assert price_model(CAT, name).input_price == pin  # type: ignore[union-attr]
    assert cost_micro(CAT, model, Usage(input_tokens=1_000_000, output_tokens=1_000_000)) == (pin + pout) * 1_000_000


@pytest.mark.parametrize("name", ["gpt-4o", "llama-3-70b", "claude-instant", "x" * 300, "claude-opus-4-8" + "9" * 300])
def test_a_name_with_no_family_has_no_price(name: str) -> None:
    assert CAT.resolve(name) is None and CAT.derive(name) is None


def test_derived_models_are_listed_once_served_and_bounded() -> None:
    cat = Catalog()
    model = cat.derive("claude-opus-4-8")
    assert model is not None and model.id not in {m.id for m in cat.listed()}
    cat.mark_served(model)
    cat.mark_served(model)
    ids = [m.id for m in cat.listed()]
    assert ids.count("claude-opus-4-8") == 1 and cat.resolve("claude-opus-4-8") == model
    for i in range(1000):
        cat.mark_served(cat.derive(f"claude-sonnet-4-{i % 90 + 10}-2026{i:04d}"))  # type: ignore[arg-type]
    assert len(cat.listed()) <= len(cat.models) + 256
