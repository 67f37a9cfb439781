"""Spend limits, the usage and cost reports and signed webhooks (#22), over real HTTP against a
gateway process, on both stores."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from ethereal.alerts import verify
from ethereal.storage import open_store
from ethereal.storage.base import UsageFilter

from tests.procs import gateway_process

ADMIN_KEY = "admin-" + "s" * 32
READ_KEY = "reader-" + "r" * 32
ORG = "/v1/organizations"


@dataclass
class Gw:
    url: str
    client: httpx.Client
    storage_url: str

    def call(self, method: str, path: str, key: str = ADMIN_KEY, **kw: Any) -> httpx.Response:
        return self.client.request(
            method, self.url + path, headers={"x-api-key": key, **kw.pop("headers", {})}, **kw
        )

    def mint(self, **attrs: Any) -> dict[str, Any]:
        resp = self.call("POST", "/admin/api/keys", json=attrs)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def message(
        self, key: str, text: str = "hello sim:tokens=7", model: str = "claude-sonnet-4-6"
    ) -> httpx.Response:
        return self.client.post(
            self.url + "/v1/messages",
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            json={"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]},
        )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, sim_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gw]:
    data_dir: Path = tmp_path_factory.mktemp(f"spend-{request.param}")
    env = {
        "ETHEREAL_ADMIN_KEY": ADMIN_KEY,
        "ETHEREAL_ADMIN_READ_KEY": READ_KEY,
        "ETHEREAL_METER_INTERVAL": "0.05",
    }
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        import uuid

        env["ETHEREAL_DATABASE_URL"] = server.create_database(f"t_{uuid.uuid4().hex[:12]}")
        storage_url = env["ETHEREAL_DATABASE_URL"]
    else:
        storage_url = f"sqlite:///{(data_dir / 'ethereal.sqlite3').resolve()}"
    with gateway_process(data_dir, sim_url, env=env) as url, httpx.Client(timeout=30) as client:
        yield Gw(url, client, storage_url)


def error_of(resp: httpx.Response, status: int, etype: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == etype, body
    assert body["request_id"] == resp.headers["request-id"]
    return body["error"]["message"]  # type: ignore[no-any-return]


def test_spend_limits_upsert_list_delete_and_audit(gw: Gw) -> None:
    spl = f"{ORG}/spend_limits"
    made = gw.call(
        "POST", spl, json={"amount": "500", "period": "daily", "scope": {"type": "user", "user_id": "ann"}}
    )
    assert made.status_code == 200, made.text
    lim = made.json()
    assert lim["type"] == "spend_limit" and lim["id"].startswith("spl_")
    assert (lim["amount"], lim["currency"], lim["period"], lim["scope"]) == (
        "500",
        "USD",
        "daily",
        {"type": "user", "user_id": "ann"},
    )
    # an upsert on (scope, period): the same limit, a new amount
    again = gw.call(
        "POST",
        spl,
        json={
            "amount": "900",
            "currency": "USD",
            "period": "daily",
            "scope": {"type": "user", "user_id": "ann"},
        },
    ).json()
    assert (again["id"], again["amount"]) == (lim["id"], "900")
    team = gw.call(
        "POST",
        spl,
        json={"amount": "2000", "period": "monthly", "scope": {"type": "rbac_group", "rbac_group_id": "eng"}},
    ).json()
    pool = gw.call(
        "POST",
        spl,
        json={
            "amount": "10000",
            "period": "monthly",
            "shared": True,
            "scope": {"type": "rbac_group", "rbac_group_id": "eng"},
        },
    ).json()
    org = gw.call(
        "POST", spl, json={"amount": None, "period": "weekly", "scope": {"type": "organization"}}
    ).json()
    assert pool["id"] != team["id"] and pool["shared"] is True and org["amount"] is None
    key_cap = gw.call(
        "POST",
        spl,
        json={"amount": "0", "period": "daily", "scope": {"type": "api_key", "api_key_id": "key_x"}},
    ).json()
    assert key_cap["amount"] == "0"
    # errors in Anthropic's envelope
    assert "currency" in error_of(
        gw.call(
            "POST",
            spl,
            json={"amount": "1", "currency": "EUR", "period": "daily", "scope": {"type": "organization"}},
        ),
        400,
        "invalid_request_error",
    )
    error_of(
        gw.call("POST", spl, json={"amount": "1.5", "period": "daily", "scope": {"type": "organization"}}),
        400,
        "invalid_request_error",
    )
    error_of(
        gw.call("POST", spl, json={"amount": "1", "period": "yearly", "scope": {"type": "organization"}}),
        400,
        "invalid_request_error",
    )
    # lists page by id
    page1 = gw.call("GET", spl, params={"limit": 2}).json()
    assert len(page1["data"]) == 2 and page1["has_more"] is True and page1["first_id"] == lim["id"]
    page2 = gw.call("GET", spl, params={"limit": 10, "after_id": page1["last_id"]}).json()
    assert len(page2["data"]) == 3 and page2["has_more"] is False
    back = gw.call("GET", spl, params={"limit": 10, "before_id": page2["first_id"]}).json()
    assert [x["id"] for x in back["data"]] == [x["id"] for x in page1["data"]]
    assert [x["id"] for x in gw.call("GET", spl, params={"rbac_group_id": "eng"}).json()["data"]] == [
        team["id"],
        pool["id"],
    ]
    assert gw.call("GET", f"{spl}/{team['id']}").json() == team
    # the read-only key reads, and cannot write
    assert gw.call("GET", spl, key=READ_KEY).status_code == 200
    error_of(
        gw.call(
            "POST",
            spl,
            key=READ_KEY,
            json={"amount": "1", "period": "daily", "scope": {"type": "organization"}},
        ),
        403,
        "permission_error",
    )
    error_of(gw.call("DELETE", f"{spl}/{team['id']}", key=READ_KEY), 403, "permission_error")
    error_of(gw.call("GET", spl, key="sk-ant-api03-nope"), 401, "authentication_error")
    # effective: each person's cap, its source and the spend so far
    ann = gw.mint(owner="ann", teams=["eng"])
    assert ann["owner"] == "ann" and ann["teams"] == ["eng"]
    eff = gw.call("GET", f"{spl}/effective", params={"user_ids[]": "ann"}, key=READ_KEY).json()
    by_period = {x["period"]: x for x in eff["data"]}
    assert {x["actor"]["user_id"] for x in eff["data"]} == {"ann"} and eff["has_more"] is False
    assert (by_period["daily"]["amount"], by_period["daily"]["source"]["type"]) == ("900", "user")
    assert (
        by_period["daily"]["spend_limit_id"] == lim["id"]
        and by_period["daily"]["period_to_date_spend"] == "0"
    )
    assert (by_period["monthly"]["amount"], by_period["monthly"]["source"]["type"]) == ("2000", "rbac_group")
    assert by_period["monthly"]["pools"][0]["id"] == pool["id"]
    assert (by_period["weekly"]["amount"], by_period["weekly"]["source"]["type"]) == (None, "organization")
    assert by_period["daily"]["resets_at"].endswith("T00:00:00Z")
    # delete, then 404
    gone = gw.call("DELETE", f"{spl}/{lim['id']}")
    assert gone.json() == {"id": lim["id"], "type": "spend_limit_deleted"}
    error_of(gw.call("GET", f"{spl}/{lim['id']}"), 404, "not_found_error")
    error_of(gw.call("DELETE", f"{spl}/{lim['id']}"), 404, "not_found_error")
    # every change audited, newest first, with before and after
    audit = gw.call("GET", f"{spl}/audit", params={"object_id": lim["id"]}, key=READ_KEY).json()["data"]
    assert [a["action"] for a in audit] == ["deleted", "updated", "created"]
    assert audit[1]["before"]["amount"] == "500" and audit[1]["after"]["amount"] == "900"
    assert audit[0]["after"] is None and audit[0]["actor"] == "admin_key"


def test_keys_carry_owner_and_teams_and_filter_by_them(gw: Gw) -> None:
    a = gw.mint(owner="zed", teams=["ops", "ml", "ops"])
    assert a["teams"] == ["ml", "ops"]
    batch = gw.call("POST", "/admin/api/keys/batch", json={"count": 2, "owner": "yan", "teams": "ml"}).json()
    assert [k["teams"] for k in batch["data"]] == [["ml"], ["ml"]]
    ml = {k["id"] for k in gw.call("GET", "/admin/api/keys", params={"team": "ml"}).json()["data"]}
    assert {a["id"], *(k["id"] for k in batch["data"])} <= ml
    assert gw.call("GET", "/admin/api/keys", params={"team": "ops"}).json()["data"][0]["id"] == a["id"]
    moved = gw.call("PATCH", f"/admin/api/keys/{a['id']}", json={"teams": None, "owner": "zoe"}).json()
    assert (moved["owner"], moved["teams"]) == ("zoe", [])
    error_of(
        gw.call("PATCH", f"/admin/api/keys/{a['id']}", json={"teams": ["a,b"]}), 400, "invalid_request_error"
    )


def _day_start(now: float) -> float:
    return float(int(now // 86400) * 86400)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _records(storage_url: str, since: float, until: float) -> list[Any]:
    store = await open_store(storage_url)
    try:
        out, before = [], None
        while True:
            page = await store.list_usage(UsageFilter(since=since, until=until), limit=1000, before=before)
            out.extend(page)
            if len(page) < 1000:
                return out
            before = (page[-1].started_at, page[-1].request_id)
    finally:
        await store.close()


def test_usage_and_cost_reports_agree_with_the_records(gw: Gw) -> None:
    alice = gw.mint(owner="alice", teams=["eng"])
    bob = gw.mint(owner="bob", teams=["eng", "ml"])
    for i in range(3):
        assert gw.message(alice["key"], f"hi {i} sim:tokens={5 + i}").status_code == 200
    for model in ("claude-sonnet-4-6", "claude-haiku-4-5"):
        assert gw.message(bob["key"], "hey sim:tokens=11", model=model).status_code == 200
    now = time.time()
    day = _day_start(now)
    deadline = time.monotonic() + 10
    while True:  # the meter writes within its flush interval
        records = asyncio.run(_records(gw.storage_url, day, day + 86400))
        mine = [r for r in records if r.key_id in (alice["id"], bob["id"])]
        if len(mine) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(mine) == 5 and {r.owner for r in mine} == {"alice", "bob"}
    assert {r.teams for r in mine} == {"eng", "eng,ml"}
    params = {
        "starting_at": _iso(day),
        "ending_at": _iso(day + 86400),
        "bucket_width": "1d",
        "group_by[]": ["api_key_id", "model"],
    }
    usage = gw.call("GET", f"{ORG}/usage_report/messages", key=READ_KEY, params=params).json()
    (bucket,) = usage["data"]
    assert (bucket["starting_at"], bucket["ending_at"], usage["has_more"]) == (
        _iso(day),
        _iso(day + 86400),
        False,
    )
    want: dict[tuple[Any, Any], list[int]] = {}
    for r in records:
        acc = want.setdefault((r.key_id, r.model), [0] * 6)
        for i, v in enumerate(
            (
                r.input_tokens,
                r.output_tokens,
                r.cache_read,
                r.cache_creation_5m,
                r.cache_creation_1h,
                r.web_search_requests,
            )
        ):
            acc[i] += v
    got = {
        (x["api_key_id"], x["model"]): [
            x["uncached_input_tokens"],
            x["output_tokens"],
            x["cache_read_input_tokens"],
            x["cache_creation"]["ephemeral_5m_input_tokens"],
            x["cache_creation"]["ephemeral_1h_input_tokens"],
            x["server_tool_use"]["web_search_requests"],
        ]
        for x in bucket["results"]
    }
    assert got == want
    assert all(x["workspace_id"] is None and x["service_tier"] is None for x in bucket["results"])
    # the cost report: to the cent (exact decimal cents), per key, and split by description
    for group in (["api_key_id"], ["description"], ["owner"]):
        cost = gw.call(
            "GET",
            f"{ORG}/cost_report",
            key=READ_KEY,
            params={"starting_at": _iso(day), "ending_at": _iso(day + 86400), "group_by[]": group},
        ).json()
        (cb,) = cost["data"]
        total = sum(Decimal(x["amount"]) for x in cb["results"])
        assert total == Decimal(sum(r.cost_micro for r in records)) / 10_000, group
        assert all(x["currency"] == "USD" for x in cb["results"])
    by_key = {
        x["api_key_id"]: Decimal(x["amount"])
        for x in gw.call(
            "GET",
            f"{ORG}/cost_report",
            params={"starting_at": _iso(day), "ending_at": _iso(day + 86400), "group_by[]": "api_key_id"},
        ).json()["data"][0]["results"]
    }
    assert by_key[alice["id"]] == Decimal(sum(r.cost_micro for r in mine if r.key_id == alice["id"])) / 10_000
    described = gw.call(
        "GET",
        f"{ORG}/cost_report",
        params={"starting_at": _iso(day), "ending_at": _iso(day + 86400), "group_by[]": "description"},
    ).json()
    kinds = {(x["cost_type"], x["token_type"]) for x in described["data"][0]["results"]}
    assert ("tokens", "uncached_input_tokens") in kinds and ("tokens", "output_tokens") in kinds
    assert all(x["description"] for x in described["data"][0]["results"])
    # group by team (an extension): a record of two teams counts under each
    teams = gw.call(
        "GET",
        f"{ORG}/usage_report/messages",
        params={
            "starting_at": _iso(day),
            "ending_at": _iso(day + 86400),
            "group_by[]": "team",
            "teams[]": ["ml"],
        },
    ).json()["data"][0]["results"]
    assert [(x["team"], x["output_tokens"]) for x in teams] == [
        ("ml", sum(r.output_tokens for r in mine if r.key_id == bob["id"]))
    ]
    # hours: 24 buckets of the day, paged
    hours = gw.call(
        "GET",
        f"{ORG}/usage_report/messages",
        params={"starting_at": _iso(day), "ending_at": _iso(day + 86400), "bucket_width": "1h", "limit": 12},
    ).json()
    assert len(hours["data"]) == 12 and hours["has_more"] is True and hours["next_page"]
    rest = gw.call(
        "GET",
        f"{ORG}/usage_report/messages",
        params={
            "starting_at": _iso(day),
            "ending_at": _iso(day + 86400),
            "bucket_width": "1h",
            "limit": 12,
            "page": hours["next_page"],
        },
    ).json()
    assert len(rest["data"]) == 12 and rest["has_more"] is False
    out = sum(x["output_tokens"] for b in hours["data"] + rest["data"] for x in b["results"])
    assert out == sum(r.output_tokens for r in records)
    error_of(
        gw.call("GET", f"{ORG}/usage_report/messages", params={"starting_at": _iso(day), "limit": 32}),
        400,
        "invalid_request_error",
    )
    error_of(
        gw.call(
            "GET", f"{ORG}/usage_report/messages", params={"starting_at": _iso(day), "group_by[]": "colour"}
        ),
        400,
        "invalid_request_error",
    )


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers ``fail_first`` 500s, then 204; keeps what arrived."""

    fail_first: int = 0
    got: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                status = 500 if len(outer.got) <= outer.fail_first else 204
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, n: int, timeout: float) -> list[tuple[dict[str, str], bytes, float]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.got)


def test_webhooks_signed_retried_and_logged(gw: Gw, sim_url: str) -> None:
    receiver = Receiver(fail_first=1)
    try:
        made = gw.call(
            "POST",
            "/admin/api/webhooks",
            json={"url": receiver.url, "events": ["budget.threshold", "model.provisional"]},
        )
        assert made.status_code == 201, made.text
        hook = made.json()
        secret = hook["secret"]
        assert secret.startswith("whsec_") and hook["events"] == ["budget.threshold", "model.provisional"]
        listed = gw.call("GET", "/admin/api/webhooks").json()["data"]
        assert hook["id"] in {h["id"] for h in listed} and all("secret" not in h for h in listed)
        error_of(
            gw.call("POST", "/admin/api/webhooks", json={"url": "ftp://x/"}), 400, "invalid_request_error"
        )
        # a budget of a hundredth of a cent: the first request crosses 100 %
        key = gw.mint(owner="carl", budget_micro_usd=100)
        t0 = time.monotonic()
        assert gw.message(key["key"]).status_code == 200
        got = receiver.wait(2, 15)
        assert len(got) >= 2, got
        first, retry = got[0], got[1]
        assert first[2] - t0 < 5.0  # the first attempt within 5 s (answered 500)
        assert retry[0]["webhook-id"] == first[0]["webhook-id"]  # the same message, retried
        for headers, body, _ in (first, retry):
            assert verify(secret, headers, body)
            assert not verify("whsec_" + "A" * 32, headers, body)
        event = json.loads(retry[1])
        assert event["type"] == "budget.threshold"
        assert event["data"]["key_id"] == key["id"] and event["data"]["threshold"] == 100
        assert key["key"] not in retry[1].decode()  # no secret in a payload
        # the delivery log shows the two attempts
        deadline = time.monotonic() + 5
        while True:
            log = gw.call("GET", "/admin/api/webhooks/deliveries", params={"webhook_id": hook["id"]}).json()[
                "data"
            ]
            if (log and log[-1]["status"] == "delivered") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (log[-1]["attempts"], log[-1]["status"], log[-1]["last_status"]) == (2, "delivered", 204)
        # a model served at a provisional price (the registry does not describe it)
        free = gw.mint(owner="carl")
        httpx.post(
            sim_url + "/_sim/models", json={"id": "claude-sonnet-9-9"}
        ).raise_for_status()  # the upstream serves it
        assert gw.message(free["key"], model="claude-sonnet-9-9").status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            events = [json.loads(b) for _, b, _ in receiver.got]
            provisional = [e for e in events if e["type"] == "model.provisional"]
            if provisional:
                break
            time.sleep(0.02)
        assert provisional and provisional[0]["data"]["model"] == "claude-sonnet-9-9", events
        assert gw.call("DELETE", f"/admin/api/webhooks/{hook['id']}").json()["type"] == "webhook_deleted"
        audit = gw.call("GET", f"{ORG}/spend_limits/audit", params={"object_id": hook["id"]}).json()["data"]
        assert [a["action"] for a in audit] == ["deleted", "created"]
        assert all("secret" not in json.dumps(a) for a in audit)
    finally:
        receiver.close()


def test_the_anthropic_sdk_reads_and_writes_spend_limits(gw: Gw) -> None:
    """Anthropic's own SDK (its Admin API client for spend limits) against the gateway."""
    import anthropic

    client = anthropic.Anthropic(api_key=ADMIN_KEY, base_url=gw.url, max_retries=0)
    reader = anthropic.Anthropic(api_key=READ_KEY, base_url=gw.url, max_retries=0)
    limits = client.beta.organization.spend_limits
    made = limits.set(amount="1234", period="weekly", scope={"type": "user", "user_id": "sdk-user"})
    assert (made.type, made.amount, made.currency, made.period, made.is_enabled) == (
        "spend_limit",
        "1234",
        "USD",
        "weekly",
        True,
    )
    assert made.scope.type == "user" and made.scope.user_id == "sdk-user"  # type: ignore[union-attr]
    assert made.id.startswith("spl_") and made.created_at.tzinfo is not None
    for i in range(3):
        limits.set(amount=str(100 + i), period="daily", scope={"type": "user", "user_id": f"sdk-page-{i}"})
    ids = [x.id for x in reader.beta.organization.spend_limits.list(limit=2)]  # the SDK follows next_page
    assert made.id in ids and len(ids) == len(set(ids)) >= 4
    assert reader.beta.organization.spend_limits.retrieve(made.id).amount == "1234"
    gw.mint(owner="sdk-user")
    rows = list(reader.beta.organization.spend_limits.effective.list(user_ids=["sdk-user"]))
    assert [(r.period, r.amount, r.spend_limit_id) for r in rows] == [("weekly", "1234", made.id)]
    assert rows[0].actor.user_id == "sdk-user" and rows[0].period_to_date_spend == "0"  # type: ignore[union-attr]
    with pytest.raises(anthropic.PermissionDeniedError):
        reader.beta.organization.spend_limits.set(amount="1", period="daily", scope={"type": "organization"})
    gone = limits.delete(made.id)
    assert (gone.id, gone.type) == (made.id, "spend_limit_deleted")
    with pytest.raises(anthropic.NotFoundError):
        limits.retrieve(made.id)
