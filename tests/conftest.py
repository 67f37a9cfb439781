from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ethereal.cli import start_sim_subprocess
from ethereal.keys import KeyRecord, mint

from tests.procs import gateway_process, stop


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--gc-each-test",
        action="store_true",
        help="run the cyclic collector after each test, so a socket or file left in a reference "
        "cycle fails the test that left it, not whichever test the collector next runs in",
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.getoption("--gc-each-test"):
        gc.collect()
        gc.freeze()  # what importing the test modules built: not rescanned after every test


@pytest.fixture(autouse=True)
def _gc_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Set up before the test's other function fixtures, so torn down after them: the collection
    runs in the test's own teardown, where the unraisable check is, once they are finalized and
    the values they gave the test are dropped (pytest would drop them only after that check)."""
    yield
    if request.config.getoption("--gc-each-test"):
        funcargs = getattr(request.node, "funcargs", None)
        if isinstance(funcargs, dict):
            funcargs.clear()
        gc.collect()


# tests/e2e/test_litellm.py runs in its own environment (litellm pins openai<3): `make test-litellm`.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch litellm's price list
collect_ignore: list[str] = []
try:
    import litellm  # noqa: F401
except ImportError:
    collect_ignore.append("e2e/test_litellm.py")
# tests/e2e/test_aider.py drives .venv-aider's aider: `make test-aider` (sets ETHEREAL_AIDER) runs it.
if not os.environ.get("ETHEREAL_AIDER"):
    collect_ignore.append("e2e/test_aider.py")


@dataclass
class Gateway:
    url: str
    key: str
    data_dir: Path
    sim_url: str

    def mint(self, **attrs: Any) -> tuple[str, KeyRecord]:
        return mint_into(self.data_dir, **attrs)


def mint_into(data_dir: Path, **attrs: Any) -> tuple[str, KeyRecord]:
    plaintext, record = mint("sk-ant-api03-", **attrs)
    insert_key(data_dir, record)
    return plaintext, record


def insert_key(data_dir: Path, record: KeyRecord) -> None:
    """Store a key record in the embedded store of ``data_dir`` (migrated first)."""
    from ethereal.storage.sqlite import SQLiteStore

    async def go() -> None:
        store = await SQLiteStore.open(str(data_dir / "ethereal.sqlite3"))
        try:
            await store.migrate()
            await store.insert_keys([record])
        finally:
            await store.close()

    asyncio.run(go())


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the whole run (see tests/services.py)."""
    from tests.services import postgres_server

    with postgres_server() as (server, _data_dir):
        yield server


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """A fresh database in the throwaway cluster, one per test."""
    import uuid

    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    from tests.services import redis_server as start

    with start() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: Any) -> Iterator[str]:
    """The throwaway Redis, flushed before each test that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A throwaway 3-master Redis Cluster for the whole run (see tests/services.py)."""
    from tests.services import redis_cluster as start

    with start(3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: Any) -> str:
    """The throwaway cluster's ``redis+cluster://`` URL, every master flushed before the test."""
    redis_cluster.flush()
    return redis_cluster.url  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty, migrated store on each backend: the embedded SQLite file and a fresh PostgreSQL database."""
    from ethereal.storage import open_store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = await open_store(url)
    try:
        yield opened
    finally:
        await opened.close()


# An unclosed socket, file or pipe fails any test (pyproject.toml filterwarnings): in the gateway's
# code run in-process it is a proxy bug, in a test's own clients and helpers a leak all the same.
