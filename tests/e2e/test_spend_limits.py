"""Spend limits enforced (#22), as real clients meet them: the anthropic SDK, Claude Code (``claude
-p``) and the Codex CLI, through a gateway process to the sim.

A person's daily cap of a few cents lets the first requests through, then answers 429
``billing_error`` with ``x-should-retry: false``: Claude Code shows the message and stops without
retrying; count_tokens still works; another person is unaffected; a team's monthly cap applies to
each member; deleting the cap lets the person through again at once. Codex CLI shows its
usage-limit message with the reset time after one request, with no retry.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from ethereal.spend.periods import period_end, reset_text
from ethereal.storage import open_store
from ethereal.storage.base import UsageFilter

from tests.e2e import faultmatrix as fm
from tests.procs import REPO, gateway_process

pytestmark = pytest.mark.timeout(600)

ADMIN_KEY = "admin-" + "s" * 32
CODEX = REPO / "clients" / "node_modules" / ".bin" / "codex"
BIG = "sim:tokens=2000 sim:tool=none"  # 2,000 output tokens of claude-sonnet-4-6: 3 cents


@dataclass
class Gw:
    url: str
    client: httpx.Client
    storage_url: str
    sim_url: str
    ids: dict[str, str]
    sdks: list[anthropic.Anthropic]

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client.request(method, self.url + path, headers={"x-api-key": ADMIN_KEY}, **kw)

    def mint(self, **attrs: Any) -> str:
        resp = self.call("POST", "/admin/api/keys", json={"name": "spend", **attrs})
        assert resp.status_code == 201, resp.text
        self.ids[resp.json()["key"]] = resp.json()["id"]
        return resp.json()["key"]  # type: ignore[no-any-return]

    def cap(self, cents: int, period: str, scope: dict[str, Any], shared: bool = False) -> str:
        body: dict[str, Any] = {"amount": str(cents), "period": period, "scope": scope}
        if shared:
            body["shared"] = True
        resp = self.call("POST", "/v1/organizations/spend_limits", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()["id"]  # type: ignore[no-any-return]

    def sdk(self, key: str) -> anthropic.Anthropic:
        client = anthropic.Anthropic(base_url=self.url, api_key=key, max_retries=0)
        self.sdks.append(client)
        return client

    def records(self, key_id: str) -> list[Any]:
        async def read() -> list[Any]:
            store = await open_store(self.storage_url)
            try:
                return list(await store.list_usage(UsageFilter(key_id=key_id), limit=1000))
            finally:
                await store.close()

        return asyncio.run(read())


@pytest.fixture(scope="module")
def gw(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    data_dir: Path = tmp_path_factory.mktemp("spend-e2e")
    env = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_METER_INTERVAL": "0.05"}
    storage_url = f"sqlite:///{(data_dir / 'ethereal.sqlite3').resolve()}"
    with gateway_process(data_dir, sim_url, env=env) as url, httpx.Client(timeout=60) as client:
        gw = Gw(url, client, storage_url, sim_url, {}, [])
        try:
            yield gw
        finally:
            for sdk in gw.sdks:
                sdk.close()


def big(client: anthropic.Anthropic) -> Any:
    return client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=4096,
        messages=[{"role": "user", "content": "write at length " + BIG}],
    )


def key_id_of(gw: Gw, plaintext: str) -> str:
    return gw.ids[plaintext]


def test_person_daily_cap_sdk_and_claude_code(gw: Gw, tmp_path: Path) -> None:
    why = fm.available()
    if why is not None:
        pytest.fail(why)
    # a few cents: Claude Code's first turn (on Haiku: its prompt of ~20K tokens reserved at the 1-hour
    # cache-write rate) fits, then the SDK spends the rest
    cap_id = gw.cap(25, "daily", {"type": "user", "user_id": "ann"})
    sdk_key, cc_key, bob_key = gw.mint(owner="ann"), gw.mint(owner="ann"), gw.mint(owner="bob")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    # the first requests go through: Claude Code, then the SDK until the cap is spent
    done, _ = fm.claude(
        work, home, gw.url, cc_key, "say hi sim:tool=none", "--model", "haiku", "--output-format", "text"
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ann = gw.sdk(sdk_key)
    served = 0
    with pytest.raises(anthropic.RateLimitError) as info:
        for _ in range(20):
            reply = ann.messages.with_raw_response.create(
                model="claude-sonnet-4-6",
                max_tokens=4096,
                messages=[{"role": "user", "content": "write at length " + BIG}],
            )
            util = float(reply.headers["ethereal-spend-limit-utilization"])
            assert reply.headers["ethereal-spend-limit-period"] == "daily" and 0 <= util < 1
            served += 1
    assert 1 <= served < 20
    err = info.value
    assert err.status_code == 429 and err.body["error"]["type"] == "billing_error"  # type: ignore[index]
    now = time.time()
    expect = f"spend limit reached (daily; resets {reset_text('daily', now)})"
    assert err.body["error"]["message"] == expect  # type: ignore[index]
    assert err.response.headers["x-should-retry"] == "false"
    assert abs(int(err.response.headers["retry-after"]) - (period_end("daily", now) - now)) <= 5
    # a served response says how full the fullest cap is
    raw = gw.client.post(
        gw.url + "/v1/messages",
        headers={"x-api-key": bob_key, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-sonnet-4-6",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi sim:tool=none"}],
        },
    )
    assert raw.status_code == 200 and "ethereal-spend-limit-utilization" not in raw.headers  # bob: no cap
    # count_tokens is never blocked
    counted = ann.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}]
    )
    assert counted.input_tokens > 0
    # another person is unaffected
    assert big(gw.sdk(bob_key)).content
    # Claude Code over the cap: shows the message, sends nothing again
    cc_id = key_id_of(gw, cc_key)
    before = [r for r in gw.records(cc_id) if r.status == 429]
    done, took = fm.claude(
        work,
        home,
        gw.url,
        cc_key,
        "say hi again sim:tool=none",
        "--model",
        "haiku",
        "--output-format",
        "text",
    )
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "spend limit reached (daily; resets" in shown, shown[-2000:]
    time.sleep(0.3)  # the meter's flush
    refused = [r for r in gw.records(cc_id) if r.status == 429][len(before) :]
    assert 1 <= len(refused) <= 2, [
        (r.route, r.error_type) for r in refused
    ]  # the side and main requests, once
    assert all(r.error_type == "billing_error" for r in refused)
    assert took < 60
    # deleting the cap lets ann through again within a second
    assert gw.call("DELETE", f"/v1/organizations/spend_limits/{cap_id}").status_code == 200
    t0 = time.monotonic()
    while True:
        try:
            ann.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi sim:tool=none"}],
            )
            break
        except anthropic.RateLimitError:
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.05)
    assert time.monotonic() - t0 < 1.0


def test_team_monthly_cap_applies_to_each_member(gw: Gw) -> None:
    gw.cap(4, "monthly", {"type": "rbac_group", "rbac_group_id": "qa"})
    members = [gw.sdk(gw.mint(owner=name, teams=["qa"])) for name in ("quinn", "quincy")]
    for client in members:
        big(client)  # 3 cents: fits by its input, admitted alone
        big(client)  # 3 + input fits: admitted alone, over by its output
        with pytest.raises(anthropic.RateLimitError) as info:
            big(client)
        assert info.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
        assert "(monthly; resets" in info.value.body["error"]["message"]  # type: ignore[index]
    assert big(gw.sdk(gw.mint(owner="outsider", teams=["ops"]))).content


def test_codex_over_a_cap(gw: Gw, tmp_path: Path) -> None:
    if not CODEX.exists():
        pytest.fail(f"Codex CLI not installed at {CODEX}: run `make clients`")
    gw.cap(0, "daily", {"type": "user", "user_id": "erin"})
    key = gw.mint(owner="erin")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "claude-sonnet-4-6"\n'
        'model_provider = "ethereal"\n'
        "[model_providers.ethereal]\n"
        'name = "ethereal"\n'
        f'base_url = "{gw.url}/v1"\n'
        'env_key = "ETHEREAL_CODEX_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 4\n"  # retries on: a usage limit must not be retried anyway
        "stream_max_retries = 4\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_", "ANTHROPIC_"))}
    env.update({"CODEX_HOME": str(home), "ETHEREAL_CODEX_KEY": key, "NO_COLOR": "1"})
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "-C", str(tmp_path), "say hi sim:tools=0"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=180,
        check=False,
    )
    took = time.monotonic() - t0
    shown = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode != 0, shown[-3000:]
    # Codex's own words, with the reset in the local zone: "You've hit your usage limit. Try again at
    # Dec 8th, 2026 12:00 AM."
    assert "hit your usage limit" in shown, shown[-3000:]
    reset = datetime.fromtimestamp(period_end("daily", time.time()), UTC).astimezone()
    assert f"Try again at {reset:%b} {reset.day}" in shown and reset.strftime("%-I:%M %p") in shown, shown[
        -3000:
    ]
    time.sleep(0.3)
    refused = [r for r in gw.records(key_id_of(gw, key)) if r.status == 429]
    assert len(refused) == 1 and refused[0].error_type == "billing_error", [
        (r.route, r.status) for r in refused
    ]
    assert took < 60
    # the chat route answers the same body and headers
    chat = gw.client.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 429 and chat.headers["x-should-retry"] == "false"
    reset = int(period_end("daily", time.time()))
    assert chat.json() == {
        "error": {
            "type": "usage_limit_reached",
            "code": "spend_limit_reached",
            "param": None,
            "message": f"spend limit reached (daily; resets {reset_text('daily', time.time())})",
            "resets_at": reset,
        }
    }
    assert abs(int(chat.headers["retry-after"]) - (reset - time.time())) <= 5


def test_batches_held_against_the_cap(gw: Gw) -> None:
    """A batch's estimate (at the batch price) is held on the person's caps at create; one that does
    not fit beside what is spent and held is refused like a request over the cap."""
    gw.cap(5, "daily", {"type": "user", "user_id": "bea"})
    client = gw.sdk(gw.mint(owner="bea"))

    def items(n: int) -> list[dict[str, Any]]:  # each holds 4,096 output tokens at half price: ~3 cents
        return [
            {
                "custom_id": f"i{i}",
                "params": {
                    "model": "claude-sonnet-4-6",
                    "max_tokens": 4096,
                    "messages": [{"role": "user", "content": f"item {i} sim:tokens=50"}],
                },
            }
            for i in range(n)
        ]

    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.batches.create(requests=items(2))  # ~6 cents: over the 5-cent cap
    assert info.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    assert info.value.response.headers["x-should-retry"] == "false"
    first = client.messages.batches.create(requests=items(1))  # ~3 cents held
    assert first.id
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.batches.create(requests=items(1))  # 3 held + 3 > 5
    assert info.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    # a small request still fits beside the hold
    assert client.messages.create(
        model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "hi sim:tool=none"}]
    ).content


def test_spend_limit_webhooks(gw: Gw) -> None:
    """A correctly signed ``spend_limit.exceeded`` within 5 s of the first refusal, retried after a 500;
    ``spend_limit.threshold`` as the spend crosses 50/80/100 %."""
    import json

    from ethereal.alerts import verify

    from tests.integration.test_spend_api import Receiver

    receiver, levels = Receiver(fail_first=1), Receiver()
    try:
        made = gw.call(
            "POST", "/admin/api/webhooks", json={"url": receiver.url, "events": ["spend_limit.exceeded"]}
        )
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        assert (
            gw.call(
                "POST", "/admin/api/webhooks", json={"url": levels.url, "events": ["spend_limit.threshold"]}
            ).status_code
            == 201
        )
        gw.cap(5, "daily", {"type": "user", "user_id": "wes"})
        client = gw.sdk(gw.mint(owner="wes"))
        big(client)  # 3 cents
        big(client)  # 60 %: the 50 % threshold seen; then 120 %
        with pytest.raises(anthropic.RateLimitError):
            big(client)
        t0 = time.monotonic()
        deadline = t0 + 15
        while time.monotonic() < deadline:
            events = [
                (h, b, at) for h, b, at in receiver.got if json.loads(b)["type"] == "spend_limit.exceeded"
            ]
            if len(events) >= 2:
                break
            time.sleep(0.02)
        assert len(events) >= 2, [json.loads(b) for _, b, _ in receiver.got]
        first, retry = events[0], events[1]
        assert first[2] - t0 < 5.0
        assert retry[0]["webhook-id"] == first[0]["webhook-id"]
        for headers, body, _ in (first, retry):
            assert verify(secret, headers, body)
        data = json.loads(retry[1])["data"]
        assert data["user_id"] == "wes" and data["period"] == "daily" and data["amount"] == "5"
        assert data["scope"] == {"type": "user", "user_id": "wes"} and data["resets_at"] > time.time()
        levels.wait(2, 5)
        thresholds = sorted(
            json.loads(b)["data"]["threshold"]
            for _, b, _ in levels.got
            if json.loads(b)["data"]["user_id"] == "wes"
        )
        assert thresholds == [50, 100], thresholds
    finally:
        receiver.close()
        levels.close()
