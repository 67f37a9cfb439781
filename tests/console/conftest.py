"""A gateway with the console enabled, and Debian's chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import REPO, gateway_process

ADMIN_KEY = "console-admin-" + "k" * 24
ARTIFACTS = REPO / "artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hello sim:tokens=5"}],
}


@dataclass
class Console:
    url: str
    data_dir: Path
    sim_url: str = ""

    def sim_serves(self, *models: str) -> None:
        """The simulated upstream lists and serves these ids (models the registry does not describe)."""
        httpx.post(self.sim_url + "/_sim/models", json={"add": list(models)}, timeout=10).raise_for_status()

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.url + "/admin/api" + path, headers={"x-api-key": ADMIN_KEY}, timeout=30, **kw
        )

    def mint(self, **attrs: Any) -> dict[str, Any]:
        resp = self.admin("POST", "/keys", json=attrs)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def console(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data_dir = tmp_path_factory.mktemp("console")
    env = {"ETHEREAL_ADMIN_KEY": ADMIN_KEY, "ETHEREAL_ESTIMATOR_RPM": "1000"}
    with gateway_process(data_dir, sim_url, env=env) as url:
        yield Console(url=url, data_dir=data_dir, sim_url=sim_url)
    # the shared sim serves only the registry's models again (sim_serves added others)
    httpx.post(sim_url + "/_sim/models", json={"clear": True}, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            instance.close()


def shot(page: Any, name: str) -> Path:
    """Saves a full-page screenshot under artifacts/console/ (kept by CI as a test artifact)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
