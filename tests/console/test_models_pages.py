"""The console reads the model registry: the key editor's model choices, the usage page's model
names and provisional flag, the upstreams page's model lists and per-group 429 cooldowns."""

from __future__ import annotations

import time

import httpx
from ethereal.models import Registry

from tests.console.conftest import Console
from tests.console.test_security import session_client
from tests.upstreams import wait_for


def test_pages_read_the_registry(console: Console) -> None:
    registry = Registry()
    key = console.mint(name="models-page")["key"]
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    console.sim_serves("claude-nova-8")
    for model in ("opus", "claude-nova-8"):  # today's Opus, and a model only the upstream knows
        r = httpx.post(
            console.url + "/v1/messages",
            headers=headers,
            timeout=30,
            json={"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200, r.text
    client, _ = session_client(console.url)
    try:
        keys = client.get("/dashboard/keys").text
        assert 'list="model-choices"' in keys and '<option value="claude-opus-5-5">' in keys
        assert '<option value="opus-5">' in keys or '<option value="opus">' in keys  # series / family
        for retired in (m.id for m in registry.models if m.retired):
            assert f'<option value="{retired}">' not in keys

        def usage_page() -> str | None:
            text = client.get("/dashboard/usage").text
            # the record's row (the model choices list the id as soon as it was served)
            return text if 'title="claude-nova-8"' in text and "Claude Opus 5.5" in text else None

        usage = wait_for(usage_page, timeout=10)
        assert "Claude Opus 5.5" in usage  # the registry's display name for the record's model
        assert usage.count("state-provisional") >= 1 and 'title="claude-nova-8"' in usage

        time.sleep(0.1)
        upstreams = client.get("/dashboard/upstreams").text
        assert "its GET /v1/models:" in upstreams
    finally:
        client.close()
