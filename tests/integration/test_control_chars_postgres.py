"""A NUL byte (or another control character) in an id a client puts in a path or a query is a
clean 404 or 400 on PostgreSQL (which refuses NUL in text), never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.batches_util import mint_into_url
from tests.procs import gateway_process

ADMIN = "control-chars-admin-key-0123456789"
HEADERS = {"anthropic-version": "2023-06-01"}
CONTROL = ["%00", "%01", "%0a", "%1f", "%7f"]


@pytest.fixture(scope="module")
def served(
    postgres: Any, sim_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    pg_url = postgres.create_database("t_control_chars")
    key, _ = mint_into_url(pg_url, name="ids")
    env = {"ETHEREAL_DATABASE_URL": pg_url, "ETHEREAL_ADMIN_KEY": ADMIN}
    with gateway_process(tmp_path_factory.mktemp("control-chars"), sim_url, env=env) as url:
        yield url, key


@pytest.mark.parametrize("char", CONTROL)
@pytest.mark.parametrize(
    ("method", "path", "who"),
    [
        ("GET", "/v1/messages/batches/msgbatch_01{c}x", "key"),
        ("GET", "/v1/messages/batches/msgbatch_01{c}x", "admin"),
        ("POST", "/v1/messages/batches/msgbatch_01{c}x/cancel", "key"),
        ("DELETE", "/v1/messages/batches/msgbatch_01{c}x", "key"),
        ("GET", "/v1/messages/batches/msgbatch_01{c}x/results", "key"),
        ("GET", "/v1/messages/batches?after_id=msgbatch_01{c}x", "key"),
        ("GET", "/v1/messages/batches?before_id=msgbatch_01{c}x", "admin"),
        ("GET", "/v1/usage/req_01{c}x", "key"),
        ("GET", "/v1/usage/req_01{c}x", "admin"),
        ("GET", "/v1/models/claude{c}x", "key"),
        ("GET", "/admin/api/keys/key_{c}x", "admin"),
        ("PATCH", "/admin/api/keys/key_{c}x", "admin"),
        ("POST", "/admin/api/keys/key_{c}x/revoke", "admin"),
        ("DELETE", "/admin/api/keys/key_{c}x", "admin"),
        ("GET", "/admin/api/upstreams/up{c}x", "admin"),
        ("PATCH", "/admin/api/upstreams/up{c}x", "admin"),
        ("DELETE", "/admin/api/upstreams/up{c}x", "admin"),
        ("POST", "/admin/api/upstreams/up{c}x/disable", "admin"),
    ],
)
def test_a_control_character_in_an_id_is_never_a_500(
    served: tuple[str, str], method: str, path: str, who: str, char: str
) -> None:
    url, key = served
    headers = {**HEADERS, "x-api-key": ADMIN if who == "admin" else key}
    body = b"{}" if method in ("PATCH", "POST") else None
    resp = httpx.request(method, url + path.format(c=char), headers=headers, content=body, timeout=30)
    assert resp.status_code in (400, 404), (resp.status_code, resp.text[:300])
    assert resp.json()["error"]["type"] in ("invalid_request_error", "not_found_error")


@pytest.mark.parametrize("char", CONTROL)
@pytest.mark.parametrize(
    "query",
    [
        "/admin/api/usage?key_id=key_{c}x",
        "/admin/api/usage?model=claude{c}x",
        "/v1/messages/batches?limit=5&after_id=msgbatch_01{c}x",
    ],
)
def test_a_nul_in_a_query_is_a_400(served: tuple[str, str], query: str, char: str) -> None:
    """A NUL anywhere in the query is refused before routing; another control character is a value
    like any other (that names nothing, here), never a 500."""
    url, _ = served
    resp = httpx.get(url + query.format(c=char), headers={**HEADERS, "x-api-key": ADMIN}, timeout=30)
    if char == "%00" or "after_id" in query:
        assert resp.status_code == 400, (resp.status_code, resp.text[:300])
        assert resp.json()["error"]["type"] == "invalid_request_error"
    else:
        assert resp.status_code == 200, (resp.status_code, resp.text[:300])


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", "/admin/api/keys", {"name": "a\u0000b"}),
        ("POST", "/admin/api/keys", {"name": "ok", "metadata": {"team": "a\u0000b"}}),
        ("POST", "/admin/api/keys", {"name": "ok", "metadata": {"a\u0000b": 1}}),
        (
            "POST",
            "/admin/api/upstreams",
            {"name": "up\u0000x", "api_key": "k", "base_url": "http://127.0.0.1:1"},
        ),
    ],
)
def test_a_nul_in_an_admin_body_is_never_a_500(
    served: tuple[str, str], method: str, path: str, payload: dict[str, Any]
) -> None:
    url, _ = served
    resp = httpx.request(
        method, url + path, headers={**HEADERS, "x-api-key": ADMIN}, json=payload, timeout=30
    )
    assert resp.status_code == 400, (resp.status_code, resp.text[:300])
