"""The console in a real browser (Debian's chromium through Playwright) against a real gateway.

One operator session, in order: sign in, watch the live numbers move while traffic runs,
mint 3 keys with a budget, use one with the anthropic SDK and see its spend on the keys
page, revoke it and see the SDK refused, mass-mint 500 and download their CSV, read the
usage page, use the estimator signed out, sign out. Screenshots of every page go to
artifacts/console/.
"""

from __future__ import annotations

import csv
import threading
import time
from typing import Any

import anthropic
import orjson
import pytest
from ethereal import _native
from ethereal.guards import estimate_args
from ethereal.metering.pricing import price
from ethereal.models import Registry
from ethereal.usage import Usage

from tests.console.conftest import ADMIN_KEY, MESSAGE, Console, shot

pytestmark = pytest.mark.timeout(240)


def live_number(page: Any, name: str) -> int:
    return int(page.inner_text(f'[data-live="{name}"]').strip())


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def sdk(console: Console, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=console.url, api_key=key, max_retries=0, timeout=30)


def test_operator_session(console: Console, browser: Any, tmp_path: Any) -> None:
    checked: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console", lambda msg: errors.append(f"{msg.text} {msg.location}") if msg.type == "error" else None
    )

    # --- sign in
    page.goto(console.url + "/dashboard")
    assert page.url.endswith("/dashboard/login")
    shot(page, "01-sign-in")
    page.fill("#admin_key", ADMIN_KEY)
    page.click("form.card button[type=submit]")
    page.wait_for_url(console.url + "/dashboard")
    assert page.inner_text("h1") == "Overview"
    assert ADMIN_KEY not in page.content()
    checked.append("sign-in with the admin key lands on the overview; the key is not in the page")

    # --- live numbers move while traffic runs (the page polls every 2 s, no reload)
    traffic_key = console.mint(name="traffic")["key"]
    stop = threading.Event()
    sent = [0]

    def traffic() -> None:
        with sdk(console, traffic_key) as client:
            while not stop.is_set():
                client.messages.create(**MESSAGE)  # type: ignore[call-overload]
                sent[0] += 1
                time.sleep(0.05)

    thread = threading.Thread(target=traffic, daemon=True)
    before = live_number(page, "requests")
    thread.start()
    try:
        first = wait_for(lambda: (n := live_number(page, "requests")) > before and n, what="requests to rise")
        second = wait_for(lambda: (n := live_number(page, "requests")) > first and n, what="a second rise")
        assert second > first > before
        assert live_number(page, "tokens_total") > 0
        assert page.inner_text('[data-live="latency_ms.p50"]') != "—"
        page.wait_for_selector("#chart-live canvas")
        shot(page, "02-overview-live")
    finally:
        stop.set()
        thread.join(timeout=30)
    checked.append(
        f"overview requests/min rose {before} → {first} → {second} without a reload while the SDK sent"
        f" {sent[0]} requests; tokens and p50 latency shown; live chart drawn"
    )

    # --- mint 3 keys with a budget
    page.goto(console.url + "/dashboard/keys")
    page.fill("#mint input[name=count]", "3")
    page.fill("#mint input[name=name]", "browser-budget")
    page.fill("#mint input[name=owner]", "qa")
    page.fill("#mint input[name=budget_usd]", "0.05")
    page.click("#mint button[type=submit]")
    page.wait_for_selector("#minted:not([hidden])")
    plaintexts = page.locator("#minted-rows code.plaintext").all_inner_texts()
    ids = page.locator("#minted-rows tr td:first-child").all_inner_texts()
    assert len(plaintexts) == 3 and len(set(plaintexts)) == 3
    shot(page, "03-keys-minted")
    checked.append("minted 3 keys with a $0.05 budget from the keys page; 3 distinct plaintexts shown once")

    # --- use one with the anthropic SDK and watch its spend appear
    with sdk(console, plaintexts[0]) as client:
        for _ in range(3):
            reply = client.messages.create(**MESSAGE)  # type: ignore[call-overload]
            assert reply.usage.output_tokens == 5

    def recorded() -> int | None:
        spend = console.admin("GET", f"/keys/{ids[0]}").json()["spend"]
        return spend["cost_micro"] if spend["requests"] == 3 else None

    spent = wait_for(recorded, what="the 3 requests' spend to be recorded")
    page.goto(console.url + "/dashboard/keys?q=browser-budget")
    row = page.locator(f'tr[data-key-id="{ids[0]}"]')
    spend_text = row.locator("td.spend").inner_text()
    assert f"${spent / 1_000_000:.6f} of $0.05" in spend_text, spend_text  # below a cent: six digits
    assert "3 requests" in spend_text
    assert row.locator("meter").first.get_attribute("value") == str(spent)
    assert "never" not in row.inner_text()  # last used is shown
    shot(page, "04-keys-spend")
    checked.append(
        f"3 SDK calls with a minted key; the keys page shows its spend (${spent / 1e6:.6f} of $0.05, a"
        " budget bar, 3 requests, last used)"
    )

    # --- revoke it in the page, then the SDK is refused
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        row.locator("button", has_text="Revoke").click()
    assert page.locator(f'tr[data-key-id="{ids[0]}"] .state').inner_text() == "revoked"
    with sdk(console, plaintexts[0]) as client, pytest.raises(anthropic.AuthenticationError):
        wait_for_refusal(client)
    checked.append("revoked the key from the page (confirmation dialog); the next SDK request got 401")

    # --- edit a key's limits from the page
    other = page.locator(f'tr[data-key-id="{ids[1]}"]')
    other.locator("summary").click()
    other.locator("input[name=rpm]").fill("7")
    with page.expect_navigation():
        other.locator("details button[type=submit]").click()
    assert console.admin("GET", f"/keys/{ids[1]}").json()["rpm"] == 7
    checked.append("edited a key's RPM from the page (PATCH through the admin API)")

    # --- mass-mint 500 and download the CSV
    page.fill("#mint input[name=count]", "500")
    page.fill("#mint input[name=name]", "=bulk")  # a formula-like name: neutralised in the CSV
    page.fill("#mint input[name=owner]", "")
    page.fill("#mint input[name=budget_usd]", "1")
    page.click("#mint button[type=submit]")
    wait_for(lambda: page.locator("#minted-rows tr").count() == 500, timeout=30, what="500 minted rows")
    with page.expect_download() as info:
        page.click("#download-csv")
    path = tmp_path / "keys.csv"
    info.value.save_as(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 500 and len({r["key"] for r in rows}) == 500
    assert all(r["key"].startswith("sk-ant-api03-") and r["name"] == "'=bulk" for r in rows)
    with sdk(console, rows[-1]["key"]) as client:
        reply = client.messages.create(**MESSAGE)  # type: ignore[call-overload]
    assert reply.usage.output_tokens == 5
    listed = console.admin("GET", "/keys", params={"limit": 1000}).json()["data"]
    assert sum(1 for k in listed if k["name"] == "=bulk") == 500
    shot(page, "05-keys-mass-minted")
    checked.append(
        "mass-minted 500 keys in one go; downloaded the CSV: 500 distinct keys, and the last one works"
        " with the SDK"
    )

    # --- usage page: filter by key, export
    page.goto(console.url + f"/dashboard/usage?key_id={ids[0]}")
    # the 3 served requests; the refusal after revoking has no key behind it, so it is counted, not recorded
    assert page.locator("#usage tbody tr").count() == 3
    assert page.locator("#usage .status").all_inner_texts() == ["200"] * 3
    shot(page, "06-usage")
    csv_resp = page.request.get(console.url + f"/dashboard/usage.csv?key_id={ids[0]}&status=200")
    assert csv_resp.status == 200
    lines = csv_resp.text().strip().splitlines()
    assert lines[0].startswith("request_id,") and len(lines) == 4
    checked.append(
        "usage page filtered by key shows its 3 served requests; CSV export of its 200s has 3 rows"
    )

    # --- upstreams page
    page.goto(console.url + "/dashboard/upstreams")
    assert "healthy" in page.inner_text("#upstreams")
    shot(page, "07-upstreams")
    checked.append("upstreams page shows the credential as healthy with its last-minute requests")

    # --- the phone layout
    phone = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=context.storage_state())
    mobile = phone.new_page()
    mobile.goto(console.url + "/dashboard")
    width = mobile.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the overview scrolls sideways on a phone ({width}px)"
    shot(mobile, "08-overview-phone")
    phone.close()
    checked.append("overview fits a 390 px phone screen without sideways scrolling")

    # --- sign out
    page.goto(console.url + "/dashboard")
    with page.expect_navigation():
        page.click("form.signout button")
    assert page.url.endswith("/dashboard/login")
    page.goto(console.url + "/dashboard/keys")
    assert page.url.endswith("/dashboard/login")
    checked.append("sign-out returns to the sign-in page and the pages are closed again")

    # --- the estimator without signing in
    guest = browser.new_context(viewport={"width": 1280, "height": 900})
    gpage = guest.new_page()
    gpage.goto(console.url + "/estimate")
    prompt = "Summarise the history of the printing press in three paragraphs. " * 20
    gpage.fill("textarea[name=prompt]", prompt)
    gpage.fill("input[name=output_tokens]", "400")
    gpage.click("form.card button[type=submit]")
    gpage.wait_for_selector("#estimate-result")
    shown = int(gpage.inner_text("#input-tokens"))
    body = {
        "model": "estimate",
        "max_tokens": 400,
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
    }
    assert shown == _native.estimate_tokens(orjson.dumps(body))
    catalog = Registry()
    sonnet = catalog.get("claude-sonnet-4-6")
    expected = price(catalog, sonnet, Usage(input_tokens=shown, output_tokens=400), at=time.time()).cost_micro
    sonnet_row = gpage.locator("#prices tr", has_text="claude-sonnet-4-6").first.inner_text()
    assert f"${expected / 1e6:.6f}" in sonnet_row
    assert gpage.locator("#prices tbody tr").count() == len(catalog.listed())
    # a newer-tokenizer model: its own count, priced from it; today's models first
    opus = catalog.get("claude-opus-5-5")
    newer = int(gpage.inner_text("#input-tokens-newer"))
    assert newer == _native.estimate_tokens(orjson.dumps(body), **estimate_args(opus)) > shown
    opus_cost = price(catalog, opus, Usage(input_tokens=newer, output_tokens=400), at=time.time()).cost_micro
    opus_row = gpage.locator('#prices tr[data-model="claude-opus-5-5"]').inner_text()
    assert str(newer) in opus_row and f"${opus_cost / 1e6:.6f}" in opus_row
    assert gpage.locator("#prices tbody tr").first.get_attribute("data-model") != "claude-opus-4-7"
    assert "Median error" in gpage.inner_text("#accuracy")
    assert "held-out" in gpage.inner_text("#accuracy")
    shot(gpage, "09-estimator")
    guest.close()
    checked.append(
        f"estimator signed out: {shown} input tokens = _native.estimate_tokens of the same body; Sonnet 4.6"
        f" per-call price = metering's cost_micro (${expected / 1e6:.6f}); every catalog model listed;"
        f" accuracy table shown; Opus 5.5 counted on the newer tokenizer ({newer}) and priced from it"
    )

    assert not errors, f"browser errors: {errors}"
    context.close()
    (shot.__globals__["ARTIFACTS"] / "CHECKED.txt").write_text("\n".join(f"- {c}" for c in checked) + "\n")


def wait_for_refusal(client: anthropic.Anthropic) -> None:
    """The revoke reached the key cache at once on this worker; retry briefly in case of another."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        client.messages.create(**MESSAGE)  # type: ignore[call-overload]
        time.sleep(0.2)
