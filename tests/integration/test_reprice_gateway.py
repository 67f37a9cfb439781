"""A price correction end to end: a gateway process on PostgreSQL and Redis serves a key's requests
from the sim, the operator corrects a card in ETHEREAL_MODELS_FILE and re-prices the day (the admin
API, then the CLI beside the running gateway), and the key's spend, the usage report (the
usage_hourly rollup) and the limiter's budget counter in Redis all move to the new exact figure."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import orjson
from ethereal.models import load_registry

from tests.integration.test_limits_gateway import (
    ADMIN_KEY,
    HEADERS,
    body,
    governed,
    mint,
    redis_spent,
    usage_rows,
)
from tests.upstreams import eventually

MODEL = "claude-sonnet-4-6"
ADMIN = {"x-api-key": ADMIN_KEY}


def card(input_usd: str, output_usd: str) -> str:
    """Sonnet 4.6's card from its release, corrected field by field (the other rates stay shipped)."""
    return (
        f'[[models]]\nid = "{MODEL}"\n[[models.prices]]\neffective_from = 2026-02-17\n'
        f"input = {input_usd}\noutput = {output_usd}\ncache_read = 0.35\n"
    )


def exact(rows: list[Any], input_usd: str, output_usd: str, read_usd: str = "0.35") -> int:
    """The corrected cost, written out here: USD/MTok is micro-USD per token; rounded once, half up."""
    total = 0
    for r in rows:
        micro = (
            r["input_tokens"] * Fraction(input_usd)
            + r["output_tokens"] * Fraction(output_usd)
            + r["cache_creation_5m"] * Fraction("3.75")
            + r["cache_creation_1h"] * 6
            + r["cache_read"] * Fraction(read_usd)
        )
        total += int(micro + Fraction(1, 2)) + r["web_search_requests"] * 10_000
    return total


async def test_a_correction_moves_spend_report_and_budget_counter(
    tmp_path: Path, sim_url: str, pg_url: str, redis_url: str
) -> None:
    models = tmp_path / "models.toml"
    models.write_text("# the operator's corrections\n")
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 3600))
    with governed(tmp_path, sim_url, pg_url, redis_url, ETHEREAL_MODELS_FILE=str(models)) as url:
        key = mint(url, name="reprice", budget_usd=100)
        auth = {**HEADERS, "x-api-key": key["key"]}
        async with httpx.AsyncClient(timeout=30) as client:
            ids = []
            for i in range(4):
                resp = await client.post(
                    url + "/v1/messages", json=body(f"hello {i} " * 40, stream=i % 2 == 1), headers=auth
                )
                assert resp.status_code == 200, resp.text
                ids.append(resp.headers["request-id"])
            rows = await usage_rows(pg_url, key["id"], 4)
            assert len(rows) == 4
            shipped_cost = sum(r["cost_micro"] for r in rows)
            assert shipped_cost == exact(rows, "3", "15", "0.3") > 0
            assert {r["rate_card"] for r in rows} == {f"{MODEL}@2026-02-17"}
            # settles are sent without waiting for Redis's reply: the last may land after its row
            assert (
                await eventually(
                    lambda: redis_spent(redis_url, key["id"]), lambda got: got[1] == shipped_cost
                )
            )[1] == shipped_cost

            # the correction: input $3.50, output $16, cache reads $0.35
            models.write_text(card("3.5", "16"))
            target = exact(rows, "3.5", "16")
            dry = await client.post(
                url + "/admin/api/models/reprice", json={"since": day, "dry_run": True}, headers=ADMIN
            )
            assert dry.status_code == 200, dry.text
            assert dry.json()["records"]["changed"] == 4 and dry.json()["keys"][0]["after_micro"] == target
            assert (await redis_spent(redis_url, key["id"]))[1] == shipped_cost  # nothing moved

            resp = await client.post(url + "/admin/api/models/reprice", json={"since": day}, headers=ADMIN)
            assert resp.status_code == 200, resp.text
            out = resp.json()
            assert out["records"]["changed"] == 4 and out["keys_changed"] == 1
            assert out["keys"][0] == {
                "key_id": key["id"],
                "records": 4,
                "before_micro": shipped_cost,
                "after_micro": target,
                "delta_micro": target - shipped_cost,
            }
            assert out["before_micro"] == shipped_cost and out["after_micro"] == target
            assert out["registry_version"] == load_registry(models).version
            assert out["serving_registry_version"] != out["registry_version"] and "restarted" in out["note"]
            assert out["limiter_keys_moved"] == 1

            # every figure the operator reads moved to the new exact one
            spent = (await client.get(f"{url}/admin/api/keys/{key['id']}", headers=ADMIN)).json()["spend"]
            assert spent["cost_micro"] == target
            report = (await client.get(url + "/admin/api/usage?group_by=key_id", headers=ADMIN)).json()
            assert [g["cost_micro"] for g in report["data"] if g["key_id"] == key["id"]] == [target]
            assert (await redis_spent(redis_url, key["id"]))[1] == target
            await asyncio.sleep(2.1)  # a worker answers its own records from memory for 2 s (meter.py)
            one = (await client.get(f"{url}/v1/usage/{ids[0]}", headers=auth)).json()
            assert one["rate_card"] == f"{MODEL}@2026-02-17" and one["priced"] == "exact"
            assert one["cost_micro"] == exact([r for r in rows if r["request_id"] == ids[0]], "3.5", "16")
            status = (await client.get(url + "/admin/api/models", headers=ADMIN)).json()
            assert status["last_correction"]["id"] == out["id"] and status["expired"] == []
            health = (await client.get(url + "/healthz?verbose=1")).json()
            assert (
                health["models"]["registry_version"] == load_registry().version == status["registry_version"]
            )
            metrics = (await client.get(url + "/metrics", headers=ADMIN)).text
            assert f'ethereal_models_registry_info{{version="{status["registry_version"]}"}} 1.0' in metrics

            # the CLI beside the running gateway: the same store and Redis, another correction
            models.write_text(card("3.5", "17"))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("ETHEREAL_", "ANTHROPIC_"))}
            env.update(
                {
                    "ETHEREAL_DATABASE_URL": pg_url,
                    "ETHEREAL_REDIS_URL": redis_url,
                    "ETHEREAL_MODELS_FILE": str(models),
                    "ETHEREAL_DATA_DIR": str(tmp_path),
                }
            )
            cli = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "ethereal", "models", "reprice", "--since", day, "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert cli.returncode == 0, cli.stderr
            again = orjson.loads(cli.stdout)
            target2 = exact(rows, "3.5", "17")
            assert again["keys"][0]["before_micro"] == target and again["keys"][0]["after_micro"] == target2
            assert (await redis_spent(redis_url, key["id"]))[1] == target2
            spent = (await client.get(f"{url}/admin/api/keys/{key['id']}", headers=ADMIN)).json()["spend"]
            assert spent["cost_micro"] == target2

            # the next request is admitted against the corrected counter and settles on top of it
            resp = await client.post(url + "/v1/messages", json=body("after"), headers=auth)
            assert resp.status_code == 200
            rows = await usage_rows(pg_url, key["id"], 5)
            total = sum(r["cost_micro"] for r in rows)
            assert (await eventually(lambda: redis_spent(redis_url, key["id"]), lambda got: got[1] == total))[
                1
            ] == total
