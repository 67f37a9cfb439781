"""Keys for a benchmark's gateways, written by the code that will serve them: another checkout
(``--against``) has its own schema and key record, so its store is written by that checkout."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import insert_key

HUGE = 10**15
# the governed benchmarks' plan: a 5-hour and a weekly window no run reaches (ETHEREAL_PLANS)
BENCH_PLAN = {
    "bench": {
        "requests_per_5h": HUGE,
        "tokens_per_5h": HUGE,
        "requests_per_week": HUGE,
        "tokens_per_week": HUGE,
    }
}


def governed_key(name: str = "governed") -> tuple[str, Any]:
    """(plaintext, record) of a key with every limit at once (token and micro-USD budgets, RPM,
    TPM, a concurrency cap, the bench plan's windows), none of them reachable: each of its requests
    runs the limiter's admit and settle."""
    from ethereal.keys import mint
    from ethereal.storage.base import MAX_INT4

    return mint(
        "sk-ant-api03-",
        name=name,
        plan="bench",
        budget_tokens=HUGE,
        budget_micro_usd=HUGE,
        rpm=MAX_INT4,  # the largest a store keeps
        tpm=HUGE,
        max_concurrency=100_000,
    )


_INSERT_KEY = """
import asyncio, dataclasses, json, sys
from ethereal.keys import KeyRecord
from ethereal.storage import open_store
fields = {f.name for f in dataclasses.fields(KeyRecord)}
record = KeyRecord(**{k: v for k, v in json.loads(sys.argv[2]).items() if k in fields})
async def go():
    store = await open_store(sys.argv[1])  # migrated by the code that opens it
    try:
        await store.insert_keys([record])
    finally:
        await store.close()
asyncio.run(go())
"""


def insert_key_as(data_dir: Path, record: Any, env: dict[str, str], database_url: str | None = None) -> None:
    """The key in ``data_dir``'s embedded store (or the database ``database_url`` names), written
    by the code that will serve it (another checkout's schema and key record when ``env`` names one)."""
    if "PYTHONPATH" not in env and database_url is None:
        insert_key(data_dir, record)
        return
    subprocess.run(
        [
            sys.executable,
            "-c",
            _INSERT_KEY,
            database_url or f"sqlite:///{data_dir / 'ethereal.sqlite3'}",
            json.dumps(dataclasses.asdict(record)),
        ],
        env={**os.environ, **env},
        check=True,
    )
