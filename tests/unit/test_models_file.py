"""ETHEREAL_MODELS_FILE: merged field by field into the shipped data, validated at start with errors
that name the field (docs/models.md)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ethereal.metering.pricing import price
from ethereal.models import RegistryError, load_registry
from ethereal.models.registry import PICO
from ethereal.usage import Usage

SONNET_55 = "claude-sonnet-5-5"
DEC = 1_765_000_000.0 + 365 * 86400  # a day in December 2026


def registry_with(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "models.toml"
    path.write_text(text)
    return load_registry(path)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(RegistryError) as info:
        registry_with(tmp_path, text)
    return str(info.value)


def test_a_misspelt_field_is_named(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        f'[[models]]\nid = "{SONNET_55}"\n[[models.prices]]\neffective_from = 2026-10-07\ncache_reed = 0.1\n',
    )
    assert "cache_reed" in message and SONNET_55 in message and str(tmp_path) in message
    assert "'defalts'" in refused(tmp_path, "[defalts]\nbatch = 0.5\n")
    assert "defaults: unknown field 'bach'" in refused(tmp_path, "[defaults]\nbach = 0.5\n")
    assert "rules: unknown field 'prefil'" in refused(
        tmp_path, f'[[models]]\nid = "{SONNET_55}"\n[models.rules]\nprefil = true\n'
    )


def test_a_bad_type_is_named(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        f'[[models]]\nid = "{SONNET_55}"\n[[models.prices]]\n'
        'effective_from = 2026-10-07\ncache_read = "cheap"\n',
    )
    assert "prices.1.cache_read" in message and "not a number" in message
    assert "context_window" in refused(tmp_path, f'[[models]]\nid = "{SONNET_55}"\ncontext_window = "1M"\n')
    assert "effective_from" in refused(
        tmp_path,
        f'[[models]]\nid = "{SONNET_55}"\n[[models.prices]]\n'
        'effective_from = "soon"\ninput = 1\noutput = 2\n',
    )


def test_the_defaults_are_the_datas_own(tmp_path: Path) -> None:
    """The multipliers, the default limits and the server-tool rates come from the data alone: a
    data set without one is refused with the field named (the code assumes none of them), and a
    price-only entry for a new model takes its limits from [defaults]."""
    from ethereal.models import Registry
    from ethereal.models.registry import load_data

    for table, key in (
        ("defaults", "cache_read"),
        ("defaults", "batch"),
        ("defaults", "max_tokens"),
        ("defaults", "context_window"),
        ("server_tools", "web_search_per_1000"),
    ):
        data = load_data()
        del data[table][key]
        with pytest.raises(RegistryError, match=f"{table}.{key}: required"):
            Registry(data)
    registry = registry_with(
        tmp_path,
        "[defaults]\ncontext_window = 300_000\nmax_tokens = 16_000\n"
        '[[models]]\nid = "acme-model-1"\ninput_price = 1.0\noutput_price = 2.0\n',
    )
    model = registry.get("acme-model-1")
    assert model is not None and (model.context_window, model.max_output) == (300_000, 16_000)


def test_overlapping_cards_are_refused(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        '[[models]]\nid = "acme-model-1"\n'
        "[[models.prices]]\neffective_from = 2026-01-01\neffective_until = 2026-03-01\n"
        "input = 1\noutput = 2\n"
        "[[models.prices]]\neffective_from = 2026-02-01\ninput = 1\noutput = 3\n",
    )
    assert "overlaps" in message and "acme-model-1@2026-01-01" in message
    assert "a second card starting 2026-10-07" in refused(
        tmp_path,
        f'[[models]]\nid = "{SONNET_55}"\n[[models.prices]]\neffective_from = 2026-10-07\ninput = 1\n'
        "[[models.prices]]\neffective_from = 2026-10-07\noutput = 1\n",
    )


def test_legacy_prices_are_mapped_with_a_deprecation_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ethereal.models"):
        registry = registry_with(
            tmp_path, f'[[models]]\nid = "{SONNET_55}"\ninput_price = 3.0\noutput_price = 15.0\n'
        )
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    model = registry.get(SONNET_55)
    assert model is not None and len(model.cards) == 1  # the legacy price replaces every card, as it meant
    rates = model.cards[0].rates
    assert (rates.input, rates.output, rates.cache_read, rates.cache_write_1h) == (
        3 * PICO,
        15 * PICO,
        PICO * 3 // 10,
        6 * PICO,
    )


def test_one_rate_of_one_card_is_overridden_field_by_field(tmp_path: Path) -> None:
    shipped = load_registry().get(SONNET_55)
    registry = registry_with(
        tmp_path,
        f'[[models]]\nid = "{SONNET_55}"\n'
        "[[models.prices]]\neffective_from = 2026-10-07\ncache_read = 0.08\n",
    )
    model = registry.get(SONNET_55)
    assert shipped is not None and model is not None
    assert [c.id for c in model.cards] == [c.id for c in shipped.cards]  # merged by effective_from
    before, after = shipped.card_at(DEC), model.card_at(DEC)
    assert after.rates.cache_read == 80_000 and before.rates.cache_read == 100_000
    assert (after.rates.input, after.rates.output, after.rates.cache_write_1h) == (
        before.rates.input,
        before.rates.output,
        before.rates.cache_write_1h,
    )
    assert model.cards[0] == shipped.cards[0]  # the earlier card is untouched
    assert registry.version != load_registry().version


def test_a_new_card_is_added_and_closes_the_open_one(tmp_path: Path) -> None:
    registry = registry_with(
        tmp_path,
        f'[[models]]\nid = "{SONNET_55}"\n'
        "[[models.prices]]\neffective_from = 2026-12-01\ninput = 1.5\noutput = 7.5\n",
    )
    model = registry.get(SONNET_55)
    assert model is not None
    assert [c.id for c in model.cards][-2:] == [f"{SONNET_55}@2026-10-07", f"{SONNET_55}@2026-12-01"]
    assert model.cards[-2].effective_until == model.cards[-1].effective_from
    usage = Usage(input_tokens=1000, output_tokens=100)
    nov = DEC - 30 * 86400
    assert price(registry, model, usage, at=nov).cost_micro == 1000 * 2 + 100 * 10
    assert price(registry, model, usage, at=DEC).cost_micro == 1500 + 750


def test_an_operator_adds_a_model(tmp_path: Path) -> None:
    registry = registry_with(
        tmp_path,
        '[[models]]\nid = "claude-opus-6"\ndisplay_name = "Claude Opus 6"\n'
        'family = "opus"\nreleased = 2026-12-01\n'
        "[[models.prices]]\neffective_from = 2026-12-01\ninput = 6\noutput = 30\n"
        "cache_read = 0.3\n",
    )
    model = registry.resolve("claude-opus-6")
    assert model is not None and not model.provisional and model.display_name == "Claude Opus 6"
    priced = price(registry, model, Usage(input_tokens=100, cache_read=1000), at=DEC)
    assert (
        priced.cost_micro == 600 + 300
        and priced.card == "claude-opus-6@2026-12-01"
        and not priced.provisional
    )
    assert not registry.expired()


def test_serve_with_a_bad_models_file_exits_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        f'[[models]]\nid = "{SONNET_55}"\n[[models.prices]]\neffective_from = 2026-10-07\ncache_reed = 0.1\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
    env.update({"ETHEREAL_MODELS_FILE": str(path), "ETHEREAL_DATA_DIR": str(tmp_path)})
    proc = subprocess.run(
        [sys.executable, "-m", "ethereal", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "configuration error" in proc.stderr and "cache_reed" in proc.stderr
    assert "Traceback" not in proc.stderr
    check = subprocess.run(
        [sys.executable, "-m", "ethereal", "models", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 2 and "cache_reed" in check.stderr and "Traceback" not in check.stderr


def test_the_estimators_rules_are_data(tmp_path: Path) -> None:
    """Tokenizer generation, image tier and tool-use prompt per model: shipped, overridable, checked."""
    shipped = load_registry()
    opus, sonnet46 = shipped.get("claude-opus-5-5"), shipped.get("claude-sonnet-4-6")
    assert opus is not None and sonnet46 is not None
    assert (opus.rules.tokenizer, opus.rules.image_tier) == (2, 2)
    assert (sonnet46.rules.tokenizer, sonnet46.rules.image_tier) == (1, 1)
    assert sonnet46.rules.tool_prompt_auto != 346  # measured on the recorded requests
    assert opus.rules.keeps_thinking and sonnet46.rules.keeps_thinking  # documented: Opus 4.5+, Sonnet 4.6+
    sonnet45 = shipped.get("claude-sonnet-4-5-20250929")
    assert sonnet45 is not None and not sonnet45.rules.keeps_thinking
    claude4 = shipped.get("claude-sonnet-4-20250514")
    assert claude4 is not None and (claude4.rules.tool_prompt_auto, claude4.rules.tool_prompt_any) == (
        346,
        313,
    )
    over = registry_with(
        tmp_path, f'[[models]]\nid = "{SONNET_55}"\n[models.rules]\ntool_prompt_auto = 700\n'
    )
    model = over.get(SONNET_55)
    assert model is not None and model.rules.tool_prompt_auto == 700 and model.rules.tokenizer == 2
    assert "tool_prompt_any" in refused(
        tmp_path, f'[[models]]\nid = "{SONNET_55}"\n[models.rules]\ntool_prompt_any = "many"\n'
    )
