"""The console's Limits page: caps per person, team and organization set from the page (the org
API with the session and its CSRF token), each person's spend against their cap, webhooks; the
keys page filters by owner and team."""

from __future__ import annotations

import re

import httpx

from tests.console.conftest import Console
from tests.console.test_security import session_client
from tests.upstreams import wait_for

SPL = "/v1/organizations/spend_limits"


def test_limits_page_and_key_filters(console: Console) -> None:
    ivy = console.mint(name="ivy-laptop", owner="ivy", teams=["design"])
    console.mint(name="jon-ci", owner="jon", teams=["design", "infra"])
    console.mint(name="kim-ci", owner="kim", teams=["infra"])
    r = httpx.post(
        console.url + "/v1/messages",
        timeout=30,
        headers={"x-api-key": ivy["key"], "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-sonnet-4-6",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi sim:tokens=5"}],
        },
    )
    assert r.status_code == 200, r.text
    client, csrf = session_client(console.url)
    try:
        # what the page's script sends: the Admin API's shape, with the session and the CSRF token
        headers = {"x-csrf-token": csrf, "origin": console.url}
        for body in (
            {"amount": "0", "period": "daily", "scope": {"type": "user", "user_id": "ivy"}},
            {
                "amount": "2500",
                "period": "monthly",
                "scope": {"type": "rbac_group", "rbac_group_id": "design"},
            },
            {
                "amount": "90000",
                "period": "monthly",
                "shared": True,
                "scope": {"type": "rbac_group", "rbac_group_id": "infra"},
            },
            {"amount": "10000", "period": "weekly", "scope": {"type": "organization"}},
        ):
            made = client.post(SPL, json=body, headers=headers)
            assert made.status_code == 200, made.text
        refused = client.post(SPL, json={"amount": "1", "period": "daily", "scope": {"type": "organization"}})
        assert refused.status_code == 403  # no CSRF token: refused
        audit = client.get(SPL + "/audit").json()["data"]
        assert audit[0]["actor"] == "console"

        def page() -> str | None:
            text = client.get("/dashboard/limits").text
            return text if 'data-user="ivy"' in text and "blocked until" in text else None

        text = wait_for(page, timeout=10)
        assert 'data-user="jon"' in text and 'data-user="kim"' in text
        ivy_row = re.search(r'<tr data-user="ivy">(.*?)</tr>', text, re.DOTALL)
        assert ivy_row and "of $0.00" in ivy_row.group(1) and "user" in ivy_row.group(1)
        jon_row = re.search(r'<tr data-user="jon">(.*?)</tr>', text, re.DOTALL)
        assert jon_row and "of $25.00" in jon_row.group(1) and "rbac_group" in jon_row.group(1)
        assert "(pooled)" in text and 'id="pools"' in text
        assert 'data-spend-limit="/v1/organizations/spend_limits"' in text and 'id="webhook"' in text
        keys = client.get("/dashboard/keys", params={"team": "infra"}).text
        assert "jon-ci" in keys and "kim-ci" in keys and "ivy-laptop" not in keys
        keys = client.get("/dashboard/keys", params={"owner": "ivy"}).text
        assert "ivy-laptop" in keys and "jon-ci" not in keys
    finally:
        client.close()
