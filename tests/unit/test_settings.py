"""Settings are validated once, the same way from the environment and from the TOML file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from ethereal.metering.config import MeterConfig
from ethereal.settings import SettingsError, load_settings


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ethereal.toml"
    path.write_text(text)
    return path


def test_unknown_toml_key_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="'max_attempt'"):
        load_settings(_toml(tmp_path, "[ethereal]\nmax_attempt = 2\n"))


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("max_attempts = 0\n", ("ETHEREAL_MAX_ATTEMPTS", "0"), "must be >= 1"),
        ("connect_timeout = -1.0\n", ("ETHEREAL_CONNECT_TIMEOUT", "-1"), "must be >= 0.1"),
        ("failover_deadline = nan\n", ("ETHEREAL_FAILOVER_DEADLINE", "nan"), "finite"),
        ('limits_fail_open = "maybe"\n', ("ETHEREAL_LIMITS_FAIL_OPEN", "maybe"), "boolean"),
        ('meter_on_full = "sometimes"\n', ("ETHEREAL_METER_ON_FULL", "sometimes"), "drop"),
        ("meter_batch_size = true\n", ("ETHEREAL_METER_BATCH_SIZE", "x"), "integer"),
    ],
)
def test_toml_and_environment_values_get_the_same_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: tuple[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(_toml(tmp_path, text))
    monkeypatch.setenv(*env)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_meter_settings_come_from_the_one_settings_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETHEREAL_METER_LOOKUP_WAIT", "0.25")
    settings = load_settings(
        _toml(tmp_path, "meter_batch_size = 7\nmeter_queue_max = 70\n[plans.pro]\nrequests_per_5h = 3\n"),
        data_dir=str(tmp_path),
    )
    cfg = MeterConfig.from_settings(settings)
    assert (cfg.batch_size, cfg.queue_max, cfg.lookup_wait, cfg.spool_dir) == (
        7,
        70,
        0.25,
        tmp_path / "spool",
    )
    assert settings.plans == {"pro": {"requests_per_5h": 3}}


def test_settings_reach_workers_as_an_object(tmp_path: Path) -> None:
    """Workers are spawned with the validated object (pickled), never through os.environ."""
    settings = load_settings(data_dir=str(tmp_path), upstream_url="http://127.0.0.1:9", upstream_key="k")
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_several_workers_without_redis_are_refused_unless_per_worker_limits_are_accepted(
    tmp_path: Path,
) -> None:
    """Without Redis each worker keeps its own budget counters: N workers would let a key spend
    N times its budget, so the gateway refuses to start that way unless told it is known."""
    with pytest.raises(SettingsError, match="ETHEREAL_REDIS_URL") as info:
        load_settings(data_dir=str(tmp_path), workers=2)
    assert "2x its budget" in str(info.value) and "ETHEREAL_LIMITS_PER_WORKER" in str(info.value)
    assert load_settings(data_dir=str(tmp_path), workers=2, limits_per_worker="true").workers == 2
    assert load_settings(data_dir=str(tmp_path), workers=2, redis_url="redis://127.0.0.1:6379/0").workers == 2
    assert load_settings(data_dir=str(tmp_path), workers=1).workers == 1
