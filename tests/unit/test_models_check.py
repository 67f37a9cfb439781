"""``ethereal models list`` and ``ethereal models check``: the registry against upstream lists and
against LiteLLM's and Portkey's price files (small samples in their formats, tests/unit/peers/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ethereal.cli import main
from ethereal.models import Registry
from ethereal.models import check as mc

PEERS = Path(__file__).with_name("peers")
LITELLM = PEERS / "litellm_model_prices.json"
PORTKEY = PEERS / "portkey_anthropic.json"


def test_litellm_file_is_read_in_usd_per_token() -> None:
    source, entries = mc.read_peer(LITELLM)
    by_name = {e.name: e for e in entries}
    assert source == "LiteLLM"
    assert (
        "sample_spec" not in by_name and "bedrock/anthropic.claude-opus-5-5" not in by_name
    )  # other providers
    opus = by_name["claude-opus-5-5"]
    assert opus.rates == {
        "input": 4_000_000,
        "output": 20_000_000,
        "cache_write_5m": 5_000_000,
        "cache_write_1h": 8_000_000,
        "cache_read": 400_000,
    }  # pico-USD per token
    assert opus.context_window == 1_000_000 and opus.max_output == 128_000


def test_portkey_file_is_read_in_cents_per_token() -> None:
    source, entries = mc.read_peer(PORTKEY)
    by_name = {e.name: e for e in entries}
    assert source == "Portkey" and "default" not in by_name
    assert by_name["claude-sonnet-5-5"].rates == {
        "input": 2_000_000,
        "output": 10_000_000,
        "cache_write_5m": 2_500_000,
        "cache_read": 100_000,
        "cache_write_1h": 4_000_000,
    }
    assert by_name["claude-haiku-5-5"].context_window is None  # Portkey's pricing has no limits


def test_disagreements_per_kind_and_limits() -> None:
    registry = Registry()
    found, unknown = mc.compare_peer(registry, mc.read_peer(LITELLM)[1])
    got = {(d.model, d.field, d.registry, d.peer) for d in found}
    assert got == {
        ("claude-opus-5-5", "cache_read", 200_000, 400_000),  # 0.05x input in the registry, not 0.1x
        (
            "claude-sonnet-4-6",
            "context_window",
            1_000_000,
            200_000,
        ),  # matched through a dotted, prefixed name
        ("claude-sonnet-4-6", "max_output", 128_000, 64_000),
    }
    assert unknown == ["claude-nova-6"]
    found, unknown = mc.compare_peer(registry, mc.read_peer(PORTKEY)[1])
    assert [(d.model, d.field) for d in found] == [("claude-haiku-5-5", "cache_read")] and unknown == []
    assert "0.01 in the registry, 0.02 in Portkey" in found[0].describe("Portkey")


def test_upstream_list_comparison_never_calls_a_missing_model_an_error() -> None:
    registry = Registry()
    undescribed, not_served = mc.compare_upstream(
        registry, ["claude-opus-5-5", "claude-haiku-4-5", "claude-nova-6"]
    )
    assert undescribed == ["claude-nova-6"]
    assert "claude-sonnet-5-5" in not_served and "claude-opus-5-5" not in not_served
    assert "claude-haiku-4-5-20251001" not in not_served  # named by its alias
    assert not {m.id for m in registry.models if m.retired} & set(not_served)


def test_a_file_of_neither_format_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"claude-opus-5-5": {"price": 1}}))
    with pytest.raises(mc.PeerFileError, match="neither"):
        mc.read_peer(bad)
    bad.write_text("[")
    with pytest.raises(mc.PeerFileError, match="not JSON"):
        mc.read_peer(bad)


def test_cli_list_and_check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "ETHEREAL_UPSTREAM_URL",
        "ETHEREAL_UPSTREAM_KEY",
        "ANTHROPIC_API_KEY",
        "ETHEREAL_MODELS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ETHEREAL_DATA_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "claude-opus-5-5" in out and "claude-3-haiku-20240307" not in out  # retired: only with --all
    assert main(["models", "list", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    opus = next(r for r in rows if r["id"] == "claude-opus-5-5")
    assert opus["usd_per_mtok"] == {
        "input": 4.0,
        "output": 20.0,
        "cache_write_5m": 5.0,
        "cache_write_1h": 8.0,
        "cache_read": 0.2,
    }
    assert any(r["status"] == "retired" for r in rows)

    # disagreements are printed; the exit status says so only with --strict
    assert (
        main(["models", "check", "--no-upstreams", "--against", str(LITELLM), "--against", str(PORTKEY)]) == 0
    )
    out = capsys.readouterr().out
    assert "LiteLLM" in out and "Portkey" in out and "cache_read 0.2 in the registry, 0.4 in LiteLLM" in out
    assert main(["models", "check", "--no-upstreams", "--strict", "--against", str(LITELLM)]) == 1
    capsys.readouterr()
    agreeing = tmp_path / "agree.json"
    agreeing.write_text(
        json.dumps({"claude-opus-5-5": {"input_cost_per_token": 4e-06, "litellm_provider": "anthropic"}})
    )
    assert main(["models", "check", "--no-upstreams", "--strict", "--against", str(agreeing)]) == 0
    assert main(["models", "check", "--no-upstreams", "--against", str(tmp_path / "missing.json")]) == 2


def test_cli_check_reads_each_credentials_list(
    sim_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ethereal.sim.testing import control

    monkeypatch.setenv("ETHEREAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ETHEREAL_UPSTREAM_URL", sim_url)
    monkeypatch.setenv("ETHEREAL_UPSTREAM_KEY", "sim-key")
    monkeypatch.delenv("ETHEREAL_MODELS_FILE", raising=False)
    control(sim_url, "/_sim/models", {"clear": True, "add": ["claude-nova-6"]})  # only this one added
    try:
        assert main(["models", "check", "--json"]) == 0
        out = capsys.readouterr().out
        report = json.loads(out[out.index("{") :])
        default = report["upstreams"]["default"]
        assert default["served_not_described"] == ["claude-nova-6"]
        assert default["described_not_served"] == []  # the sim lists every model the registry serves
        assert main(["models", "list", "--upstreams"]) == 0
        out = capsys.readouterr().out
        assert "PROVISIONAL" in out and "claude-nova-6" in out
    finally:
        control(sim_url, "/_sim/models", {"clear": True})
