"""The console shows provisional prices (a badge on usage rows, the models billed provisionally on
the upstreams page) and the last price correction, on the embedded store with the in-process
limiter, corrected through the admin API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.console.conftest import ADMIN_KEY, Console
from tests.console.test_security import session_client
from tests.procs import gateway_process

UNKNOWN = "claude-sonnet-9"
DESCRIBED = f"""
[[models]]
id = "{UNKNOWN}"
family = "sonnet"
released = 2020-01-01
[[models.prices]]
effective_from = 2020-01-01
input = 1
output = 2
"""


@pytest.fixture(scope="module")
def gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Console, Path]]:
    data_dir = tmp_path_factory.mktemp("console-models")
    models = data_dir / "models.toml"
    models.write_text("# the operator's corrections\n")
    env = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_MODELS_FILE": str(models)}
    with gateway_process(data_dir, sim_url, env=env) as url:
        yield Console(url=url, data_dir=data_dir, sim_url=sim_url), models
    httpx.post(sim_url + "/_sim/models", json={"clear": True}, timeout=10).raise_for_status()


def test_provisional_badge_and_last_correction(gateway: tuple[Console, Path]) -> None:
    console, models = gateway
    key = console.mint(name="provisional", budget_usd=10)
    console.sim_serves(UNKNOWN)  # the upstream serves a model the registry does not describe
    resp = httpx.post(
        console.url + "/v1/messages",
        headers={"x-api-key": key["key"], "anthropic-version": "2023-06-01"},
        json={"model": UNKNOWN, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    rid = resp.headers["request-id"]
    usage = httpx.get(f"{console.url}/v1/usage/{rid}", headers={"x-api-key": key["key"]}, timeout=10).json()
    assert usage["priced"] == "provisional" and usage["rate_card"].startswith("provisional:")
    client, _ = session_client(console.url)
    try:
        deadline = time.monotonic() + 10
        while rid not in (page := client.get(f"/dashboard/usage?key_id={key['id']}").text):
            assert time.monotonic() < deadline, "the record was not flushed"
            time.sleep(0.1)
        assert "provisional price" in page and 'id="last-correction"' not in page
        upstreams = client.get("/dashboard/upstreams").text
        assert 'id="provisional-models"' in upstreams and UNKNOWN in upstreams
        status = console.admin("GET", "/models").json()
        assert UNKNOWN in status["provisional"] and status["last_correction"] is None

        models.write_text(DESCRIBED)  # the operator describes the model, then re-prices today
        out = console.admin(
            "POST", "/models/reprice", json={"since": time.strftime("%Y-%m-%d", time.gmtime())}
        )
        assert out.status_code == 200, out.text
        result = out.json()
        assert result["records"]["now_exact"] == 1 and result["limiter_keys_moved"] == 1
        assert result["keys"][0]["key_id"] == key["id"]
        page = client.get(f"/dashboard/usage?key_id={key['id']}").text
        assert 'id="last-correction"' in page and "provisional price" not in page
        assert result["registry_version"] in page
        time.sleep(2.1)  # the worker answers its own records from memory for 2 s
        usage = httpx.get(
            f"{console.url}/v1/usage/{rid}", headers={"x-api-key": key["key"]}, timeout=10
        ).json()
        assert usage["priced"] == "exact" and usage["rate_card"] == f"{UNKNOWN}@2020-01-01"
        spent = console.admin("GET", f"/keys/{key['id']}").json()["spend"]["cost_micro"]
        assert spent == result["keys"][0]["after_micro"] == usage["cost_micro"]
        bad = console.admin("POST", "/models/reprice", json={"since": "last week"})
        assert bad.status_code == 400 and "since" in bad.json()["error"]["message"]
    finally:
        client.close()
