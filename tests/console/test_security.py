"""The console's guard rails over real HTTP: sessions, cookie flags, CSRF, the estimator's rate limit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.console.conftest import ADMIN_KEY, MESSAGE, Console
from tests.procs import gateway_process

PAGES = ("/dashboard", "/dashboard/keys", "/dashboard/limits", "/dashboard/upstreams", "/dashboard/usage")
ESTIMATOR_RPM = 3


@pytest.fixture(scope="module")
def guarded(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data_dir = tmp_path_factory.mktemp("console-security")
    env = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_ESTIMATOR_RPM": str(ESTIMATOR_RPM)}
    with gateway_process(data_dir, sim_url, env=env) as url:
        yield Console(url=url, data_dir=data_dir)


def sign_in(url: str, key: str = ADMIN_KEY, **headers: str) -> httpx.Response:
    return httpx.post(
        url + "/dashboard/login", data={"admin_key": key}, headers=headers, follow_redirects=False
    )


def session_client(url: str) -> tuple[httpx.Client, str]:
    """A client holding a console session, and the CSRF token its pages carry."""
    resp = sign_in(url)
    assert resp.status_code == 303, resp.text
    client = httpx.Client(base_url=url, cookies=resp.cookies)
    page = client.get("/dashboard/keys")
    assert page.status_code == 200
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match
    return client, match.group(1)


def test_pages_and_their_api_refuse_without_a_session(guarded: Console) -> None:
    for path in PAGES:
        resp = httpx.get(guarded.url + path, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login", path
    for path in ("/dashboard/api/live", "/dashboard/api/series", "/dashboard/usage.csv"):
        resp = httpx.get(guarded.url + path)
        assert resp.status_code == 401, path
        assert resp.json()["error"]["type"] == "authentication_error"
    assert httpx.get(guarded.url + "/admin/api/keys").status_code == 401
    # a forged cookie is no session
    forged = httpx.get(
        guarded.url + "/dashboard/api/live", cookies={"ethereal_console": "abc.9999999999.xyz"}
    )
    assert forged.status_code == 401


def test_a_client_key_cannot_sign_in(guarded: Console) -> None:
    client_key = guarded.mint(name="client")["key"]
    resp = sign_in(guarded.url, client_key)
    assert resp.status_code == 401
    assert "set-cookie" not in resp.headers
    assert client_key not in resp.text
    # nor use the admin API with it, header or cookie
    assert httpx.get(guarded.url + "/admin/api/keys", headers={"x-api-key": client_key}).status_code == 401
    assert sign_in(guarded.url, "").status_code == 401


def test_cookie_flags(guarded: Console) -> None:
    resp = sign_in(guarded.url)
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith("ethereal_console=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert ADMIN_KEY not in cookie
    behind_tls = sign_in(guarded.url, **{"x-forwarded-proto": "https"})
    assert "; Secure" in behind_tls.headers["set-cookie"]
    page = httpx.get(guarded.url + "/dashboard", cookies=resp.cookies)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert ADMIN_KEY not in page.text


def test_cross_site_posts_are_refused(guarded: Console) -> None:
    client, csrf = session_client(guarded.url)
    try:
        # the admin API answers a session only with the page's token, reads included
        assert client.get("/admin/api/keys").status_code == 403
        assert client.get("/admin/api/keys", headers={"x-csrf-token": csrf}).status_code == 200
        # a change without the page's token: what a cross-site form or fetch would send
        bare = client.post("/admin/api/keys", json={"name": "forged"})
        assert bare.status_code == 403 and bare.json()["error"]["type"] == "permission_error"
        wrong = client.post("/admin/api/keys", json={"name": "forged"}, headers={"x-csrf-token": "nope"})
        assert wrong.status_code == 403
        other_site = client.post(
            "/admin/api/keys",
            json={"name": "forged"},
            headers={"x-csrf-token": csrf, "origin": "https://evil.example"},
        )
        assert other_site.status_code == 403
        listed = client.get("/admin/api/keys", headers={"x-csrf-token": csrf}).json()["data"]
        assert all(k["name"] != "forged" for k in listed)
        same_site = client.post(
            "/admin/api/keys",
            json={"name": "from-console"},
            headers={"x-csrf-token": csrf, "origin": guarded.url},
        )
        assert same_site.status_code == 201
        # sign-in from another site's form is refused too
        assert sign_in(guarded.url, origin="https://evil.example").status_code == 403
        # sign-out needs the token; with it the session ends
        assert client.post("/dashboard/logout", data={}).status_code == 403
        kept = {"ethereal_console": client.cookies["ethereal_console"]}  # a copy made before signing out
        out = client.post("/dashboard/logout", data={"csrf": csrf})
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    finally:
        client.close()
    stale = httpx.get(guarded.url + "/dashboard/api/live", cookies=kept)
    assert stale.status_code == 401


def test_estimator_rate_limit_holds(guarded: Console) -> None:
    form = {"prompt": "hello", "output_tokens": "10"}
    for _ in range(ESTIMATOR_RPM):
        assert httpx.post(guarded.url + "/estimate", data=form).status_code == 200
    refused = httpx.post(guarded.url + "/estimate", data=form)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    as_json = httpx.post(guarded.url + "/dashboard/estimate", json=form)
    assert as_json.status_code == 429 and as_json.json()["error"]["type"] == "rate_limit_error"
    # the page itself stays readable
    assert httpx.get(guarded.url + "/estimate").status_code == 200


def test_bad_input_never_500s(guarded: Console) -> None:
    client, _ = session_client(guarded.url)
    try:
        for query in (
            "status=abc",
            "since=yesterday",
            "status=4xx&until=2026-13-45",
            "before=x,y",
            "key_id=" + "k" * 500,
        ):
            resp = client.get("/dashboard/usage?" + query)
            assert resp.status_code in (200, 400), (query, resp.status_code)
        assert client.get("/dashboard/keys?state=bogus&plan=nope&after_id=zz").status_code == 200
        assert client.get("/dashboard/static/../routes.py").status_code == 404
    finally:
        client.close()
    bad = httpx.post(
        guarded.url + "/dashboard/estimate", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code in (400, 429)


def test_console_disabled_without_admin_key(sim_url: str, tmp_path: Path) -> None:
    with gateway_process(tmp_path, sim_url) as url:
        page = httpx.get(url + "/dashboard")
        assert page.status_code == 403 and "ETHEREAL_ADMIN_KEY" in page.text
        assert sign_in(url, "anything-at-all-here").status_code == 403
        assert httpx.get(url + "/estimate").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 403
        # the gateway itself is unaffected
        key_page = httpx.post(url + "/v1/messages", json=MESSAGE, headers={"x-api-key": "x"})
        assert key_page.status_code == 401


def test_console_under_a_base_path(sim_url: str, tmp_path: Path) -> None:
    """Mounted under ETHEREAL_BASE_PATH, every link, redirect and admin call carries the prefix."""
    env = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_BASE_PATH": "/gw"}
    with gateway_process(tmp_path, sim_url, env=env) as url:
        first = httpx.get(url + "/gw/dashboard", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/gw/dashboard/login"
        signed = httpx.post(
            url + "/gw/dashboard/login", data={"admin_key": ADMIN_KEY}, follow_redirects=False
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/gw/dashboard"
        page = httpx.get(url + "/gw/dashboard/keys", cookies=signed.cookies)
        assert page.status_code == 200
        assert 'href="/gw/dashboard/static/console.css"' in page.text
        assert 'data-mint="/gw/admin/api/keys/batch"' in page.text
        assert httpx.get(url + "/gw/dashboard/static/console.css").status_code == 200
