"""Account-bound thinking (Sonnet 5.5, Haiku 5.5) over a pool of two upstream accounts.

Two sims stand for two upstream accounts (their ``anthropic-organization-id``). A chat tool loop
with thinking on Sonnet 5.5 replays its thinking block on the next turn: that turn goes only to the
account that produced the block, whatever the pool would otherwise pick; once no credential of that
account is left, the replayed thinking is left out (``ethereal-dropped-thinking``) and the request
is served by the other account instead of being refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from ethereal.sim.testing import control, start_sim_process

from tests.conftest import mint_into
from tests.procs import gateway_process
from tests.upstreams import ADMIN, SECRET, Admin, seed_credentials

MODEL = "claude-sonnet-5-5"
ACCOUNTS = {"a": "org-aaaa", "b": "org-bbbb"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        sims = {
            n: stack.enter_context(start_sim_process(organization_id=org))[1] for n, org in ACCOUNTS.items()
        }
        data_dir = tmp_path_factory.mktemp("binding")
        seed_credentials(data_dir, [{"name": n, "base_url": u} for n, u in sims.items()])
        key, _ = mint_into(data_dir, name="binding")
        env = {
            "ETHEREAL_SECRET_KEY": SECRET,
            "ETHEREAL_ADMIN_KEY": ADMIN,
            "ETHEREAL_UPSTREAM_RELOAD_INTERVAL": "0.3",
            "ETHEREAL_UPSTREAM_PROBE_INTERVAL": "0",
            "ETHEREAL_UPSTREAM_BACKOFF_BASE": "10",
        }
        with gateway_process(data_dir, None, env=env) as url:
            yield {"url": url, "key": key, "admin": Admin(url), "sims": sims}


def served_by(gw: dict[str, Any], headers: Any) -> str:
    """The credential (sim) that answered: the one whose log holds the upstream request id."""
    upstream_id = headers["upstream-request-id"]
    for name, url in gw["sims"].items():
        seen = control(url, "/_sim/seen")["requests"]
        if any(r.get("request_id") == upstream_id for r in seen):
            return str(name)
    raise AssertionError(f"no sim saw {upstream_id}")


def test_replayed_thinking_stays_on_its_account(gw: dict[str, Any]) -> None:
    with openai.OpenAI(base_url=gw["url"] + "/v1", api_key=gw["key"], max_retries=0) as client:
        # both credentials answer once, so the gateway knows each one's account
        for _ in range(6):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=16
            )
        messages: list[Any] = [{"role": "user", "content": "Weather in Paris? sim:tools=1"}]
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
            tools=[WEATHER],  # type: ignore[list-item]
            reasoning_effort="low",
            max_tokens=2048,
        )
        first = raw.parse()
        home = served_by(gw, raw.headers)
        message = first.choices[0].message.model_dump(exclude_none=True)
        assert message.get("reasoning_signature")
        messages += [
            message,
            {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "18C"},
        ]
        # the home credential cools down (a 529 on a request of its own): the pool now prefers the other
        # one for any request, but a turn replaying the thinking still goes home
        control(gw["sims"][home], "/_sim/faults", {"fault": "529", "count": 1})
        for i in range(20):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"ping {i}"}], max_tokens=16
            )
            if not control(gw["sims"][home], "/_sim/faults")["faults"]:
                break
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=16
        )
        assert served_by(gw, raw.headers) != home  # cooling: not preferred
        for i in range(3):
            turn = [*messages, {"role": "user", "content": f"And tomorrow? ({i})"}] if i else messages
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=turn,
                tools=[WEATHER],  # type: ignore[list-item]
                reasoning_effort="low",
                max_tokens=2048,
            )
            assert raw.parse().choices[0].message is not None
            assert served_by(gw, raw.headers) == home
            assert "ethereal-dropped-thinking" not in raw.headers
        # the account's only credential goes away: the thinking is left out, said so, and served elsewhere
        admin: Admin = gw["admin"]
        admin.disable(home, "binding test")
        try:
            other = next(n for n in ACCOUNTS if n != home)
            for _ in range(50):  # the gateway reloads its credentials every 0.3 s
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=messages,
                    tools=[WEATHER],  # type: ignore[list-item]
                    reasoning_effort="low",
                    max_tokens=2048,
                )
                if "ethereal-dropped-thinking" in raw.headers:
                    break
            assert raw.headers["ethereal-dropped-thinking"] == "1; reason=account-unavailable"
            assert served_by(gw, raw.headers) == other
            assert raw.parse().choices[0].message.content
        finally:
            admin.enable(home)
