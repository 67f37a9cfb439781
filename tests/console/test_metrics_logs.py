"""``/metrics`` after known traffic across two uvicorn workers, and the JSON request log.

The gateway runs with 2 workers (prometheus multiprocess mode); whichever worker answers
the scrape must report every worker's requests. Counters are compared with the traffic
sent and with the usage records (the admin usage API), to the token and micro-dollar.
Workers write their samples every quarter second (observability/metrics.py), so the
fixture waits until the scrape shows the traffic, then every test reads settled numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from ethereal.upstream.service import ENV_NAME
from prometheus_client.parser import text_string_to_metric_families

from tests.console.conftest import ADMIN_KEY, MESSAGE
from tests.procs import free_port, gateway_process

METRICS_TOKEN = "metrics-token-" + "m" * 20
N_PLAIN, N_STREAM, N_UNKNOWN, N_UNAUTH = 12, 6, 4, 3
PROMPT_MARK = "hello sim:tokens=5"


@dataclass
class Run:
    url: str
    log: Path
    keys: list[str]
    metrics_port: int


@pytest.fixture(scope="module")
def run(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    data_dir = tmp_path_factory.mktemp("metrics")
    metrics_port = free_port()
    env = {
        "ETHEREAL_ADMIN_KEY": ADMIN_KEY,
        "ETHEREAL_METRICS_TOKEN": METRICS_TOKEN,
        "ETHEREAL_LOG_FORMAT": "json",
        "ETHEREAL_METRICS_PORT": str(metrics_port),
    }
    with gateway_process(data_dir, sim_url, env=env, workers=2) as url:
        admin = {"x-api-key": ADMIN_KEY}
        limited = httpx.post(
            url + "/admin/api/keys", json={"name": "limited", "rpm": 1000}, headers=admin
        ).json()
        plain = httpx.post(url + "/admin/api/keys", json={"name": "plain"}, headers=admin).json()
        keys = [limited["key"], plain["key"]]
        with anthropic.Anthropic(base_url=url, api_key=keys[0], max_retries=0) as sdk:
            for _ in range(N_PLAIN):
                assert sdk.messages.create(**MESSAGE).usage.output_tokens == 5  # type: ignore[call-overload]
        with anthropic.Anthropic(base_url=url, api_key=keys[1], max_retries=0) as streamer:
            for _ in range(N_STREAM):
                with streamer.messages.stream(**MESSAGE) as stream:  # type: ignore[arg-type]
                    assert stream.get_final_message().usage.output_tokens == 5
            for _ in range(N_UNKNOWN):
                with pytest.raises(anthropic.NotFoundError):  # a model no one serves: the upstream's own 404
                    streamer.messages.create(**{**MESSAGE, "model": "made-up-model-x"})  # type: ignore[call-overload]
        for _ in range(N_UNAUTH):
            assert (
                httpx.post(url + "/v1/messages", json=MESSAGE, headers={"x-api-key": "sk-wrong"}).status_code
                == 401
            )
        expected = N_PLAIN + N_STREAM + N_UNKNOWN
        deadline = time.monotonic() + 30  # a busy machine: the workers flush and publish every 0.2-1 s

        def settled() -> bool:
            m = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            return (
                total(m, "ethereal_requests_total") >= expected
                and total(m, "ethereal_http_responses_total", status_class="4xx") >= N_UNKNOWN + N_UNAUTH
            )

        while not settled():
            assert time.monotonic() < deadline, "the workers' samples never reached the scrape"
            time.sleep(0.05)
        while (
            sum(
                row["requests"]
                for row in httpx.get(
                    url + "/admin/api/usage", params={"group_by": "model"}, headers=admin
                ).json()["data"]
            )
            < expected
        ):
            assert time.monotonic() < deadline, "the usage records never reached the database"
            time.sleep(0.05)
        yield Run(
            url=url,
            log=data_dir / f"gateway-{url.rsplit(':', 1)[1]}.log",
            keys=keys,
            metrics_port=metrics_port,
        )


def scrape(url: str, **headers: str) -> dict[str, list[Any]]:
    resp = httpx.get(url, headers=headers)
    assert resp.status_code == 200, resp.text
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(resp.text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def total(families: dict[str, list[Any]], sample: str, **labels: str) -> float:
    for name, samples in families.items():
        del name
        found = [
            s.value
            for s in samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        if found:
            return float(sum(found))
    return 0.0


def test_counters_equal_the_traffic_sent(run: Run) -> None:
    usage = httpx.get(
        run.url + "/admin/api/usage", params={"group_by": "model"}, headers={"x-api-key": ADMIN_KEY}
    ).json()
    by_model = {row["model"]: row for row in usage["data"]}
    sonnet = by_model["claude-sonnet-4-6"]
    m = scrape(run.url + "/metrics", authorization=f"Bearer {METRICS_TOKEN}")

    served = N_PLAIN + N_STREAM
    all_metered = served + N_UNKNOWN
    assert total(m, "ethereal_requests_total", route="messages") == all_metered
    assert (
        total(m, "ethereal_requests_total", route="messages", status="200", model="claude-sonnet-4-6")
        == served
    )
    # an unknown model name never becomes a label value of its own
    assert total(m, "ethereal_requests_total", status="404", model="other") == N_UNKNOWN
    assert total(m, "ethereal_request_duration_seconds_count", route="messages") == all_metered
    assert total(m, "ethereal_time_to_first_byte_seconds_count", route="messages") >= N_STREAM
    assert total(m, "ethereal_tokens_total", model="claude-sonnet-4-6", kind="output") == served * 5
    assert (
        total(m, "ethereal_tokens_total", model="claude-sonnet-4-6", kind="output") == sonnet["output_tokens"]
    )
    assert (
        total(m, "ethereal_tokens_total", model="claude-sonnet-4-6", kind="input") == sonnet["input_tokens"]
    )
    assert total(m, "ethereal_cost_micro_usd_total", model="claude-sonnet-4-6") == sonnet["cost_micro"] > 0
    # a name the registry does not know goes upstream (the upstream's 404 answers it)
    assert total(m, "ethereal_upstream_attempts_total", credential=ENV_NAME) == served + N_UNKNOWN
    assert total(m, "ethereal_upstream_failovers_total") == 0
    # only the key with an RPM limit goes through the limiter
    assert total(m, "ethereal_limiter_decisions_total", outcome="admitted") == N_PLAIN
    assert total(m, "ethereal_limiter_admit_seconds_count") == N_PLAIN
    assert total(m, "ethereal_http_responses_total", status_class="4xx") >= N_UNKNOWN + N_UNAUTH
    assert total(m, "ethereal_in_flight_requests") == 1  # the scrape itself
    assert total(m, "ethereal_meter_dropped_records_total") == 0
    assert "ethereal_meter_queue_depth" in m and "ethereal_meter_spool_bytes" in m


def test_every_worker_is_counted(run: Run) -> None:
    """Scrape several times: each answer, from whichever worker, has the same totals."""
    seen = {
        total(scrape(run.url + "/metrics", **{"x-api-key": ADMIN_KEY}), "ethereal_requests_total")
        for _ in range(6)
    }
    assert seen == {N_PLAIN + N_STREAM + N_UNKNOWN}


def test_metrics_guard(run: Run) -> None:
    assert httpx.get(run.url + "/metrics").status_code == 401
    assert (
        httpx.get(run.url + "/metrics", headers={"authorization": f"Bearer {run.keys[0]}"}).status_code == 401
    )
    assert httpx.get(run.url + "/metrics", headers={"authorization": "Bearer " + "m" * 40}).status_code == 401
    # the separate port is open by design (keep it on a private network)
    open_port = scrape(f"http://127.0.0.1:{run.metrics_port}/metrics")
    assert total(open_port, "ethereal_requests_total") == N_PLAIN + N_STREAM + N_UNKNOWN


def access_lines(run: Run, path: str) -> tuple[str, list[dict[str, Any]]]:
    text = run.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return text, [line for line in lines if line["logger"] == "ethereal.access" and line["path"] == path]


def test_json_request_log(run: Run) -> None:
    # request lines are written in batches (observability/logs.py AccessLog.INTERVAL): wait for them
    expected = N_PLAIN + N_STREAM + N_UNKNOWN + N_UNAUTH
    deadline = time.monotonic() + 10
    text, messages = access_lines(run, "/v1/messages")
    while len(messages) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        text, messages = access_lines(run, "/v1/messages")
    assert len(messages) == expected  # one line per request
    served = [line for line in messages if line["status"] == 200]
    assert len(served) == N_PLAIN + N_STREAM
    for line in served:
        assert line["level"] == "info" and line["request_id"].startswith("req_")
        assert line["key_id"].startswith("key_") and line["model"] == "claude-sonnet-4-6"
        assert line["route"] == "messages" and line["credential"] == ENV_NAME
        assert line["output_tokens"] == 5 and line["cost_micro"] > 0 and line["duration_ms"] > 0
    assert sum(1 for line in messages if line["status"] == 401 and "key_id" not in line) == N_UNAUTH
    # never a body, a key or a credential
    for secret in (*run.keys, ADMIN_KEY, METRICS_TOKEN, "sim-upstream-key", "sk-wrong", PROMPT_MARK):
        assert secret not in text
