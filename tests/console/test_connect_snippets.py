"""The Keys page's "Connect a coding tool" snippets (from ``ethereal.connect``): rendered by the
server with the gateway's URL and a ``<key>`` placeholder, filled in by the page with the key
just minted, each ready to copy."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import httpx
from ethereal import connect

from tests.console.conftest import ADMIN_KEY, Console, shot
from tests.procs import gateway_process


def keys_page(url: str) -> str:
    signed = httpx.post(url + "/dashboard/login", data={"admin_key": ADMIN_KEY}, follow_redirects=False)
    assert signed.status_code == 303, signed.text
    page = httpx.get(url + "/dashboard/keys", cookies=signed.cookies)
    assert page.status_code == 200
    return page.text


def snippets(page: str) -> dict[str, str]:
    found = re.findall(r'<code data-snippet="([a-z-]+)">(.*?)</code>', page, re.DOTALL)
    return {tool: html.unescape(text) for tool, text in found}


def test_server_renders_every_snippet_with_the_gateway_url(console: Console) -> None:
    shown = snippets(keys_page(console.url))
    assert list(shown) == list(connect.BY_ID)
    for tool, text in shown.items():
        assert text == connect.get(tool).render(connect.KEY, console.url), tool
    assert 'data-copy-snippet="claude-code"' in keys_page(console.url)


def test_public_url_is_the_one_shown(sim_url: str, tmp_path: Path) -> None:
    env = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_PUBLIC_URL": "https://llm.example.org"}
    with gateway_process(tmp_path, sim_url, env=env) as url:
        shown = snippets(keys_page(url))
    assert shown["codex"] == connect.get("codex").render(connect.KEY, "https://llm.example.org")
    assert url not in shown["claude-code"]


def test_minted_key_fills_the_snippets(console: Console, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(console.url + "/dashboard/login")
        page.fill("#admin_key", ADMIN_KEY)
        page.click("form.card button[type=submit]")
        page.wait_for_url(console.url + "/dashboard")
        page.goto(console.url + "/dashboard/keys")
        assert not page.is_visible("#connect")  # nothing to copy before a key exists
        page.fill("#mint input[name=name]", "connect-snippets")
        page.click("#mint button[type=submit]")
        page.wait_for_selector("#minted-rows code.plaintext")
        key = page.inner_text("#minted-rows code.plaintext").strip()
        assert key.startswith("sk-ant-")
        for tool in ("claude-code", "codex", "opencode", "cline", "aider-openai"):
            page.click(f'details[data-tool="{tool}"] summary') if tool != "claude-code" else None
            text = page.text_content(f'code[data-snippet="{tool}"]')
            assert text == connect.get(tool).render(key, console.url), tool
        assert page.is_visible('button[data-copy-snippet="claude-code"]')
        shot(page, "keys-connect-snippets")
        # the key works as the snippet says: the Claude Code one names the gateway and this key
        resp = httpx.post(
            console.url + "/v1/messages",
            headers={"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"},
            json={
                "model": connect.DEFAULT_MODEL,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi sim:tokens=3"}],
            },
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
    finally:
        context.close()
    assert not errors, errors
