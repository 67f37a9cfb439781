"""Plan table: defaults, TOML / ETHEREAL_PLANS overrides, validation at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from ethereal.limits import rfc3339
from ethereal.limits.plans import FIVE_HOURS, WEEK, Plans
from ethereal.settings import SettingsError, load_settings


def test_defaults_and_loose_names() -> None:
    plans = Plans()
    pro = plans.get("Pro")
    assert pro is not None and [(w.seconds, w.buckets) for w in pro.windows] == [
        (FIVE_HOURS, 60),
        (WEEK, 168),
    ]
    assert plans.get("Max 5×") is plans.get("max-5x") is plans.get("max5") is plans.get("MAX5X")
    assert plans.get("max20").windows[0].requests == 900  # type: ignore[union-attr]
    assert plans.get("enterprise") is None and plans.get(None) is None


def test_overrides_keep_unset_defaults_and_add_windows() -> None:
    plans = Plans({"pro": {"requests_per_5h": 10}, "team": {"windows": [{"seconds": 3600, "tokens": 5}]}})
    pro = plans.get("pro")
    assert pro is not None and pro.windows[0].requests == 10 and pro.windows[0].tokens == 1_500_000
    team = plans.get("team")
    assert team is not None and team.windows[0].window_ms == 3_600_000 and team.windows[0].requests is None


@pytest.mark.parametrize(
    "bad",
    [
        {"pro": {"requests_per_5h": -1}},
        {"pro": {"colour": 1}},
        {"x": {"windows": [{"seconds": 0}]}},
        {"x": 3},
    ],
)
def test_bad_plan_tables_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Plans(bad)


def test_settings_read_plans_from_toml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ethereal.toml"
    config.write_text("[plans.pro]\nrequests_per_5h = 7\n")
    assert Plans(load_settings(config).plans).get("pro").windows[0].requests == 7  # type: ignore[union-attr]
    monkeypatch.setenv("ETHEREAL_PLANS", '{"max5x": {"tokens_per_week": 3}}')
    plans = Plans(load_settings().plans)
    assert plans.get("max5x").windows[1].tokens == 3  # type: ignore[union-attr]
    monkeypatch.setenv("ETHEREAL_PLANS", '{"max5x": {"tokens_per_week": "lots"}}')
    with pytest.raises(SettingsError, match="tokens_per_week"):
        load_settings()
    monkeypatch.setenv("ETHEREAL_PLANS", "not json")
    with pytest.raises(SettingsError, match="ETHEREAL_PLANS"):
        load_settings()


def test_rfc3339_rounds_up_to_the_second() -> None:
    assert rfc3339(1_700_000_000_001) == b"2023-11-14T22:13:21Z"
