"""Reading each credential's ``GET /v1/models`` (upstream/service.py): every page, bounded; the
ids only ever add to the registry; a failure is logged once and changes nothing; routing never
consults the lists (only a credential's operator-set ``models`` restricts it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from ethereal.models import Registry
from ethereal.settings import Settings
from ethereal.sim.testing import control
from ethereal.upstream import service
from ethereal.upstream.client import UpstreamClient
from ethereal.upstream.pool import Credential, Pool
from ethereal.upstream.service import UpstreamService

from tests.procs import free_port

NOVA = "claude-nova-6"


@pytest.fixture
def nova(sim_url: str) -> Iterator[str]:
    control(sim_url, "/_sim/models", {"clear": True, "add": [NOVA]})  # only this one besides the registry
    try:
        yield sim_url
    finally:
        control(sim_url, "/_sim/models", {"clear": True})


async def test_discovery_reads_every_page_and_only_adds(
    nova: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service, "MODELS_PAGE", 4)  # the sim's dozen ids come in several pages
    registry = Registry()
    dead = f"http://127.0.0.1:{free_port()}"
    pool = Pool(
        [
            Credential("a", nova, "key-a"),
            Credential("dead", dead, "key-d"),
            Credential("sonnets", nova, "key-s", models=["claude-sonnet-*"]),
        ],
        group_of=registry.rate_limit_group,
    )
    client = UpstreamClient()
    svc = UpstreamService(Settings(), pool, client, registry)
    try:
        assert registry.resolve(NOVA) is None
        ids = await svc.discover(pool.get("a"))
        every = [m["id"] for m in control(nova, "/_sim/models")["added"]]
        assert ids is not None and ids[0] == NOVA and len(ids) == len(set(ids)) > 8 and set(every) <= set(ids)
        learnt = registry.resolve(NOVA)
        assert learnt is not None and learnt.provisional and NOVA in [m.id for m in registry.listed()]
        view = svc.models_listed("a")
        assert view is not None and view["undescribed"] == [NOVA] and view["count"] == len(ids)
        assert view["error"] is None and view["truncated"] is False and view["at"]

        # a list that cannot be read: None, logged once per streak, never fatal
        with caplog.at_level(logging.WARNING, logger="ethereal.upstream"):
            assert await svc.discover(pool.get("dead")) is None
            assert await svc.discover(pool.get("dead")) is None
        assert sum("GET /v1/models failed" in r.message for r in caplog.records) == 1
        assert svc.models_listed("dead")["error"] and svc.models_listed("dead")["count"] == 0

        # a list that lacks a model changes nothing about routing: every credential still takes
        # every model (the list of "a" lacks this one); only the operator's `models` restricts
        for model in ("claude-opus-5-5", "claude-never-listed-1", NOVA):
            assert {c.name for c in pool.candidates(model)} == {"a", "dead"}
            taken = await pool.acquire(model, exclude=["dead"])
            assert getattr(taken, "name", None) == "a"
            pool.release(taken)
        assert {c.name for c in pool.candidates("claude-sonnet-5-5")} == {"a", "dead", "sonnets"}

        # bounded: at most MODELS_MAX_IDS ids, flagged truncated
        monkeypatch.setattr(service, "MODELS_MAX_IDS", 3)
        ids = await svc.discover(pool.get("a"))
        assert ids is not None and len(ids) == 3 and svc.models_listed("a")["truncated"] is True
    finally:
        await client.close()
