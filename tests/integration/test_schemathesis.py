"""Schemathesis, driven by Anthropic's own OpenAPI spec, against the gateway in front of the sim.

Every generated request (valid and invalid, positive and negative modes) must get no 5xx,
every 4xx in Anthropic's error shape, and the gateway must still serve after each case.
``ETHEREAL_SCHEMATHESIS_EXAMPLES`` sets the cases per operation (default 10, what
``make test`` runs); ``scripts/fuzz.sh`` runs many more.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from tests.conftest import Gateway

SPEC = next((Path(__file__).resolve().parents[2] / "fixtures" / "specs").glob("anthropic-openapi*.json"))
EXAMPLES = int(os.environ.get("ETHEREAL_SCHEMATHESIS_EXAMPLES", "10"))
# what the gateway serves itself (batches, files and skills get a 404 in the same shape)
SERVED = r"^/v1/(messages|messages/count_tokens|models|models/\{model_id\})(\?beta=true)?$"

schema = schemathesis.openapi.from_path(SPEC).include(path_regex=SERVED)

CASES = {"count": 0, "statuses": {}}


def check_anthropic_shape(status: int, headers: dict[str, list[str]], content: bytes) -> None:
    assert status < 500, f"{status}: {content[:500]!r}"
    if status >= 400:
        body = json.loads(content)
        assert body.get("type") == "error", body
        error = body.get("error")
        assert (
            isinstance(error, dict)
            and isinstance(error.get("type"), str)
            and isinstance(error.get("message"), str)
        )
        if status in (429, 503, 529):
            assert "retry-after" in {name.lower() for name in headers}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate],
    derandomize=True,
    database=None,
)
def test_anthropic_spec(case: schemathesis.Case, gateway: Gateway) -> None:
    headers = dict(case.headers or {})
    headers.pop("x-api-key", None)
    headers.pop("authorization", None)
    headers["x-api-key"] = gateway.key
    case.headers = headers
    response = case.call(base_url=gateway.url, timeout=30)
    CASES["count"] += 1
    statuses: dict[int, int] = CASES["statuses"]  # type: ignore[assignment]
    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    check_anthropic_shape(response.status_code, response.headers, response.content)
    # still serving after every case
    assert httpx.get(gateway.url + "/healthz", timeout=10).status_code == 200
