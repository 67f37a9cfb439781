from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ethereal.cli import start_sim_subprocess
from ethereal.keys import KeyRecord, mint
from tests.procs import gateway_process, stop


@dataclass
class Gateway:
    url: str
    key: str
    data_dir: Path
    sim_url: str

    def mint(self, **attrs: Any) -> tuple[str, KeyRecord]:
        return mint_into(self.data_dir, **attrs)


def mint_into(data_dir: Path, **attrs: Any) -> tuple[str, KeyRecord]:
    from ethereal.storage.sqlite import SQLiteStore

    plaintext, record = mint("sk-ant-api03-", **attrs)

    async def go() -> None:
        store = await SQLiteStore.open(str(data_dir / "ethereal.sqlite3"))
        try:
            await store.migrate()
            await store.insert_keys([record])
        finally:
            await store.close()

    asyncio.run(go())
    return plaintext, record


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    proc, url = start_sim_subprocess()
    try:
        yield url
    finally:
        stop(proc)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("gateway")
    key, _ = mint_into(data_dir, name="test")
    with gateway_process(data_dir, sim_url) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)
