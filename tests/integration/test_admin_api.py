"""The admin API for keys, over real HTTP against a gateway process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import gateway_process

ADMIN_KEY = "admin-" + "x" * 32
MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hello sim:tokens=5"}],
}


@dataclass
class Admin:
    url: str
    client: httpx.Client

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"x-api-key": ADMIN_KEY, **kw.pop("headers", {})}
        return self.client.request(method, self.url + "/admin/api" + path, headers=headers, **kw)

    def mint(self, **attrs: Any) -> dict[str, Any]:
        resp = self.call("POST", "/keys", json=attrs)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def message(self, key: str, **overrides: Any) -> httpx.Response:
        return self.client.post(
            self.url + "/v1/messages",
            json={**MESSAGE, **overrides},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        )


@pytest.fixture(scope="module")
def admin(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    data_dir: Path = tmp_path_factory.mktemp("admin-gw")
    with (
        gateway_process(data_dir, sim_url, env={"ETHEREAL_ADMIN_KEY": ADMIN_KEY}) as url,
        httpx.Client(timeout=30) as client,
    ):
        yield Admin(url, client)


def error_of(resp: httpx.Response, status: int, etype: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == etype, body
    assert body["request_id"] == resp.headers["request-id"]
    return body["error"]["message"]  # type: ignore[no-any-return]


def test_mint_use_and_show(admin: Admin) -> None:
    created = admin.mint(
        name="ci",
        owner="team-a",
        plan="pro",
        budget_usd=1.5,
        rpm=100,
        allowed_models=["sonnet-4"],
        metadata={"ticket": "OPS-1"},
        expires_at="2099-01-01T00:00:00Z",
    )
    assert created["key"].startswith("sk-ant-api03-") and created["display"].endswith(created["key"][-4:])
    assert "key_hash" not in created
    assert (created["budget_micro_usd"], created["plan"], created["state"]) == (1_500_000, "pro", "active")
    resp = admin.message(created["key"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "45"  # the plan's 5 h window is the tightest
    # its spend shows up once the meter has flushed
    deadline = time.monotonic() + 10
    while True:
        shown = admin.call("GET", f"/keys/{created['id']}").json()
        if shown["spend"]["requests"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert shown["spend"]["requests"] == 1 and shown["spend"]["cost_micro"] > 0
    assert "key" not in shown  # the plaintext is shown once


def test_user_keys_and_wrong_keys_never_work_on_admin_routes(admin: Admin) -> None:
    user = admin.mint()["key"]
    for headers in (
        {"x-api-key": user},
        {"authorization": f"Bearer {user}"},
        {},
        {"x-api-key": ADMIN_KEY[:-1]},
    ):
        resp = admin.client.get(admin.url + "/admin/api/keys", headers=headers)
        error_of(resp, 401, "authentication_error")
    # and the admin key is not an API key
    error_of(admin.message(ADMIN_KEY), 401, "authentication_error")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"rpm": 0}, "rpm"),
        ({"rpm": "10"}, "rpm"),
        ({"rpm": 2**31}, "rpm"),  # past PostgreSQL's INTEGER: refused, never a failed write
        ({"max_concurrency": 2**31}, "max_concurrency"),
        ({"tpm": 2**62 + 1}, "tpm"),
        ({"budget_micro_usd": 10**19}, "budget_micro_usd"),  # past 64 bits
        ({"tpm": True}, "tpm"),
        ({"budget_tokens": -1}, "budget_tokens"),
        ({"budget_usd": "a lot"}, "budget_usd"),
        ({"plan": "platinum"}, "plan"),
        ({"allowed_models": []}, "allowed_models"),
        ({"allowed_models": ["sonnet-4", "gpt-4o"]}, "allowed_models.1"),
        ({"expires_at": "next tuesday"}, "expires_at"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"name": 7}, "name"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_mint_validation_names_the_field(admin: Admin, body: dict[str, Any], field: str) -> None:
    message = error_of(admin.call("POST", "/keys", json=body), 400, "invalid_request_error")
    assert message.startswith(f"{field}:"), message


def test_bad_json_and_wrong_shapes(admin: Admin) -> None:
    resp = admin.call("POST", "/keys", content=b"{nope", headers={"content-type": "application/json"})
    error_of(resp, 400, "invalid_request_error")
    error_of(admin.call("POST", "/keys", json=[1]), 400, "invalid_request_error")


def test_batch_mint_all_or_nothing(admin: Admin) -> None:
    before = len(admin.call("GET", "/keys", params={"owner": "batch-team", "limit": 1000}).json()["data"])
    assert before == 0
    resp = admin.call("POST", "/keys/batch", json={"count": 25, "owner": "batch-team", "rpm": 5})
    assert resp.status_code == 201, resp.text
    minted = resp.json()["data"]
    assert len(minted) == 25 and len({k["key"] for k in minted}) == 25 and all(k["rpm"] == 5 for k in minted)
    message = error_of(admin.call("POST", "/keys/batch", json={"count": 501}), 400, "invalid_request_error")
    assert message.startswith("count:")
    error_of(admin.call("POST", "/keys/batch", json={"count": 0}), 400, "invalid_request_error")
    # one bad entry refuses the whole batch, naming it
    bad = {"keys": [{"owner": "batch-team", "name": "a"}, {"owner": "batch-team", "rpm": -3}]}
    assert error_of(admin.call("POST", "/keys/batch", json=bad), 400, "invalid_request_error").startswith(
        "keys.1.rpm:"
    )
    per_key = admin.call(
        "POST", "/keys/batch", json={"keys": [{"owner": "batch-team", "name": f"k{i}"} for i in range(3)]}
    )
    assert per_key.status_code == 201 and [k["name"] for k in per_key.json()["data"]] == ["k0", "k1", "k2"]
    listed = admin.call("GET", "/keys", params={"owner": "batch-team", "limit": 1000}).json()["data"]
    assert len(listed) == 28
    # a batch of 500 is one call
    big = admin.call("POST", "/keys/batch", json={"count": 500, "owner": "big-batch"})
    assert big.status_code == 201 and big.json()["count"] == 500


def test_list_pagination_and_filters(admin: Admin) -> None:
    ids = [admin.mint(owner="pager", plan="max20x" if i % 2 else None)["id"] for i in range(5)]
    page = admin.call("GET", "/keys", params={"owner": "pager", "limit": 2}).json()
    assert [k["id"] for k in page["data"]] == sorted(ids)[:2] and page["has_more"] is True
    page2 = admin.call(
        "GET", "/keys", params={"owner": "pager", "limit": 2, "after_id": page["last_id"]}
    ).json()
    assert [k["id"] for k in page2["data"]] == sorted(ids)[2:4]
    page3 = admin.call(
        "GET", "/keys", params={"owner": "pager", "limit": 2, "after_id": page2["last_id"]}
    ).json()
    assert len(page3["data"]) == 1 and page3["has_more"] is False
    plans = admin.call("GET", "/keys", params={"owner": "pager", "plan": "Max 20x"}).json()["data"]
    assert len(plans) == 2 and all("spend" in k for k in plans)
    admin.call("POST", f"/keys/{ids[0]}/revoke")
    revoked = admin.call("GET", "/keys", params={"owner": "pager", "state": "revoked"}).json()["data"]
    assert [k["id"] for k in revoked] == [ids[0]]
    for params, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"state": "zombie"}, "state"),
        ({"sort": "id"}, "sort"),
    ):
        message = error_of(admin.call("GET", "/keys", params=params), 400, "invalid_request_error")
        assert message.startswith(f"{field}:")


def test_patch_revoke_delete(admin: Admin) -> None:
    created = admin.mint(name="before")
    key, key_id = created["key"], created["id"]
    assert admin.message(key).status_code == 200
    patched = admin.call(
        "PATCH",
        f"/keys/{key_id}",
        json={"name": "after", "allowed_models": ["haiku-4"], "tpm": 10_000, "metadata": {"x": 1}},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["allowed_models"]) == ("after", ["haiku-4"])
    time.sleep(0.6)  # this worker dropped the key from its cache; be sure anyway (TTL 0.5 s in tests)
    error_of(admin.message(key), 403, "permission_error")
    ok = admin.message(key, model="claude-haiku-4-5")
    assert ok.status_code == 200 and ok.headers["anthropic-ratelimit-tokens-limit"] == "10000"
    for body, field in (
        ({"rpm": 0}, "rpm"),
        ({"key_hash": "x"}, "key_hash"),
        ({"revoked": "yes"}, "revoked"),
        ({}, "body"),
    ):
        message = error_of(admin.call("PATCH", f"/keys/{key_id}", json=body), 400, "invalid_request_error")
        assert message.startswith(f"{field}:"), message
    error_of(admin.call("PATCH", "/keys/key_nope", json={"rpm": 5}), 404, "not_found_error")
    # expiry in the past: 401
    assert admin.call("PATCH", f"/keys/{key_id}", json={"expires_at": time.time() - 1}).status_code == 200
    assert "expired" in error_of(admin.message(key, model="claude-haiku-4-5"), 401, "authentication_error")
    assert admin.call("PATCH", f"/keys/{key_id}", json={"expires_at": None}).json()["state"] == "active"
    # revoke: refused at once on this gateway
    revoked = admin.call("POST", f"/keys/{key_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert "revoked" in error_of(admin.message(key, model="claude-haiku-4-5"), 401, "authentication_error")
    deleted = admin.call("DELETE", f"/keys/{key_id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    error_of(admin.call("GET", f"/keys/{key_id}"), 404, "not_found_error")
    error_of(admin.call("DELETE", f"/keys/{key_id}"), 404, "not_found_error")
    error_of(admin.message(key), 401, "authentication_error")


def test_plans_listed(admin: Admin) -> None:
    names = {p["name"] for p in admin.call("GET", "/plans").json()["data"]}
    assert {"pro", "max5x", "max20x"} <= names


def test_admin_api_disabled_without_admin_key(gateway: Any) -> None:
    resp = httpx.get(gateway.url + "/admin/api/keys", headers={"x-api-key": gateway.key})
    assert resp.status_code == 403 and resp.json()["error"]["type"] == "permission_error"
