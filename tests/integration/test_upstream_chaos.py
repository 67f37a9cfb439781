"""A short chaos run (loadtest/chaos.py): load through the gateway while the simulated upstream
credentials are SIGKILLed and restarted at random and faults are injected into the live ones.

Every request must either succeed or get a well-formed error, and every usage record (the
API's and the store's) must match what the client saw. ~30 s; marked slow, run in CI.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.procs import REPO


def load_chaos():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ethereal_chaos", REPO / "loadtest" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_chaos_every_request_succeeds_or_fails_cleanly_and_is_metered() -> None:
    chaos = load_chaos()
    args = chaos.parse_args(
        [
            "--duration",
            "20",
            "--sims",
            "4",
            "--concurrency",
            "8",
            "--kill-every",
            "1.5",
            "--down",
            "0.3:2.0",
            "--faults",
            "--seed",
            "7",
        ]
    )
    report = chaos.run(args)
    print(json.dumps(report, indent=2))
    assert report["malformed"] == 0, report["malformed_examples"]
    assert report["usage"]["mismatches"] == 0, report["usage"]["examples"]
    assert report["usage"]["checked"] == report["requests"] == report["usage"]["store_rows"]
    assert report["chaos"]["kills"] >= 6 and report["chaos"]["restarts"] == report["chaos"]["kills"]
    assert report["gateway_failovers"] > 0  # failures before the first byte were absorbed
    assert report["requests"] > 200
    # what the clients still see: streams cut after their first byte, and 503s while every
    # credential was down or cooling at once (the chaos here is far harsher than real outages)
    assert report["client_visible_error_rate"] < 0.3, report["errors"]
