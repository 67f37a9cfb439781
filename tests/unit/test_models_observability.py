"""The registry's observability: its version and expired cards in /metrics and /healthz?verbose=1,
requests priced at a provisional card counted by a bounded model label."""

from __future__ import annotations

from pathlib import Path

import orjson
from ethereal.lifecycle import Lifecycle
from ethereal.models import Registry, load_registry
from ethereal.observability.metrics import Metrics
from ethereal.storage.records import UsageRecord


def record(i: int, model: str, provisional: bool) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{i}",
        key_id="k",
        credential="c",
        route="messages",
        model=model,
        status=200,
        stream=False,
        input_tokens=10,
        cost_micro=5,
        priced_provisional=provisional,
        rate_card="provisional:x" if provisional else None,
        duration_ms=1.0,
    )


def test_provisional_prices_are_counted_with_bounded_labels() -> None:
    registry = Registry()
    served = registry.provisional("claude-sonnet-9")
    registry.mark_served(served)  # the upstream served it: a model the registry lists
    metrics = Metrics(registry)
    for i, (model, provisional) in enumerate(
        [
            ("claude-sonnet-9", True),
            ("claude-sonnet-9", True),
            ("x" * 200, True),
            ("claude-sonnet-4-6", False),
        ]
    ):
        metrics.observe(record(i, model, provisional))
    metrics.flush()
    text = metrics.render().decode()
    assert 'ethereal_provisional_priced_requests_total{model="claude-sonnet-9"} 2.0' in text
    assert 'ethereal_provisional_priced_requests_total{model="other"} 1.0' in text  # a name no one listed
    assert 'model="claude-sonnet-4-6"' not in text.split("ethereal_provisional_priced")[1]
    assert f'ethereal_models_registry_info{{version="{registry.version}"}} 1.0' in text


def test_an_expired_card_is_an_alert(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nid = "acme-model-1"\nreleased = 2020-01-01\n[[models.prices]]\n'
        "effective_from = 2020-01-01\neffective_until = 2020-06-01\ninput = 1\noutput = 2\n"
    )
    registry = load_registry(path)
    assert [m.id for m in registry.expired()] == ["acme-model-1"]
    metrics = Metrics(registry)
    assert metrics.check_models() == ["acme-model-1"]
    text = metrics.render().decode()
    assert 'ethereal_models_expired{model="acme-model-1"} 1.0' in text
    assert not Registry().expired()  # the shipped data has a card in force for every model served


def test_healthz_verbose_carries_the_gateway_details() -> None:
    life = Lifecycle()
    life.details["models"] = lambda: {"registry_version": "abc", "expired": ["m"], "alert": "no card"}

    def broken() -> dict[str, str]:
        raise RuntimeError("boom")

    life.details["broken"] = broken
    status, body = life.health(verbose=True)
    data = orjson.loads(body)
    assert (
        status == 200 and data["models"]["registry_version"] == "abc" and data["models"]["expired"] == ["m"]
    )
    assert data["broken"] == {"error": "RuntimeError"}  # a detail never fails the health check
    assert life.health(verbose=False)[0] == 200
