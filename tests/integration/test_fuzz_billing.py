"""Property: every billable route either refuses a hostile body before the upstream sees it, or
bills what the upstream reported; never a 500.

Bodies start valid for their route (``/v1/messages``, ``/v1/chat/completions``, ``/v1/responses``,
streamed and not) and get a few fields (known ones, nested ones, unknown ones) replaced by hostile
values: deep nesting (either side of every depth limit), wrong types, NUL bytes, huge numbers,
unicode. Against a real gateway over loopback with a budgeted key; the sim's ``GET /_sim/requests``
proves what the upstream saw (``received``, counted on arrival) and what it reported (the usage of
each generated reply, by its request-id), compared with the gateway's ``GET /v1/usage/{id}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from ethereal.sim.testing import control
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway, mint_into
from tests.procs import gateway_process

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")

MODEL = "claude-haiku-4-5"


@dataclass(frozen=True)
class Deep:
    """A value wrapped in ``depth`` containers, written as text (orjson and the stdlib stop short of 1,024)."""

    depth: int
    kind: str
    inner: Any

    def __repr__(self) -> str:
        return f"Deep({self.depth}, {self.kind!r}, {self.inner!r})"


def dump(value: Any) -> str:
    if isinstance(value, Deep):
        head, tail = ('{"a":', "}") if value.kind == "{" else ("[", "]")
        return head * value.depth + dump(value.inner) + tail * value.depth
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


WORDS = [
    "",
    "\x00",
    "a\x00b",
    "claude-haiku-4-5",
    "user",
    "assistant",
    "system",
    "tool",
    "function",
    "custom",
    "text",
    "object",
    "array",
    "string",
    "json_schema",
    "json_object",
    "auto",
    "required",
    "none",
    "any",
    "image",
    "input_text",
    "message",
    "function_call",
    "function_call_output",
    "high",
    "ephemeral",
    "\u202e\ufeff",
    "😀" * 8,
    "x" * 300,
    "req_\x00",
    "data:image/png;base64,AAAA",
    "https://example.com/a",
]
KEYS = [
    "type",
    "name",
    "text",
    "content",
    "role",
    "schema",
    "parameters",
    "properties",
    "arguments",
    "function",
    "json_schema",
    "input",
    "output",
    "call_id",
    "id",
    "format",
    "effort",
    "summary",
    "a",
    "\x00",
    "",
]
NUMBERS = [
    0,
    -1,
    1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    -(10**30),
    1e308,
    -1e308,
    5e-324,
    0.5,
    1.0000000001,
    2.5,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), children, max_size=3),
    ),
    max_leaves=8,
)
# each side of orjson's write limit (254), the translating routes' bound (128) and the read limit (1,024)
deep = st.builds(
    Deep,
    st.sampled_from([100, 127, 128, 129, 200, 252, 253, 254, 255, 300, 1022, 1100]),
    st.sampled_from(["{", "["]),
    st.one_of(scalars, st.just({})),
)
hostile = st.one_of(
    values,
    values,
    deep,
    st.lists(deep, min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(KEYS), deep, min_size=1, max_size=2),
)

Path = tuple[str | int, ...]

TOOL_SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
# route → (valid bodies, each a context the mutations reach into; the fields the mutations replace)
ROUTES: dict[str, tuple[list[dict[str, Any]], list[Path]]] = {
    "/v1/messages": (
        [
            {"model": MODEL, "max_tokens": 24, "messages": [{"role": "user", "content": "hi"}]},
            {
                "model": MODEL,
                "max_tokens": 24,
                "system": [{"type": "text", "text": "be brief"}],
                "tools": [{"name": "f", "description": "d", "input_schema": TOOL_SCHEMA}],
                "metadata": {"user_id": "u"},
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "x"}}],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}],
                    },
                ],
            },
        ],
        [
            ("model",),
            ("max_tokens",),
            ("messages",),
            ("messages", 0),
            ("messages", 0, "role"),
            ("messages", 0, "content"),
            ("messages", 0, "content", 0),
            ("messages", 0, "content", 0, "text"),
            ("messages", 1, "content", 0, "input"),
            ("messages", 1, "content", 0, "id"),
            ("messages", 2, "content", 0, "content"),
            ("system",),
            ("system", 0, "text"),
            ("metadata",),
            ("metadata", "user_id"),
            ("tools",),
            ("tools", 0),
            ("tools", 0, "name"),
            ("tools", 0, "input_schema"),
            ("tool_choice",),
            ("thinking",),
            ("thinking", "budget_tokens"),
            ("temperature",),
            ("top_p",),
            ("top_k",),
            ("stop_sequences",),
            ("stream",),
            ("service_tier",),
            ("container",),
            ("mcp_servers",),
            ("output_config",),
            ("cache_control",),
            ("x-unknown",),
        ],
    ),
    "/v1/chat/completions": (
        [
            {"model": MODEL, "max_tokens": 24, "messages": [{"role": "user", "content": "hi"}]},
            {
                "model": MODEL,
                "max_completion_tokens": 24,
                "user": "u",
                "metadata": {"k": "v"},
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "description": "d", "parameters": TOOL_SCHEMA},
                    }
                ],
                "tool_choice": "auto",
                "stop": ["\n\n"],
                "temperature": 0.5,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"q":"x"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
                ],
            },
            {
                "model": MODEL,
                "max_tokens": 24,
                "reasoning_effort": "low",
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": TOOL_SCHEMA},
                },
                "messages": [{"role": "user", "content": "hi"}],
            },
        ],
        [
            ("model",),
            ("messages",),
            ("messages", 0),
            ("messages", 0, "role"),
            ("messages", 0, "content"),
            ("messages", 1, "content"),
            ("messages", 1, "content", 0),
            ("messages", 1, "content", 0, "type"),
            ("messages", 1, "content", 0, "image_url"),
            ("messages", 1, "content", 0, "file"),
            ("messages", 0, "name"),
            ("messages", 2),
            ("messages", 2, "tool_calls"),
            ("messages", 2, "tool_calls", 0),
            ("messages", 2, "tool_calls", 0, "id"),
            ("messages", 2, "tool_calls", 0, "function", "arguments"),
            ("messages", 2, "tool_calls", 0, "function", "name"),
            ("messages", 2, "reasoning_signature"),
            ("messages", 2, "reasoning_content"),
            ("messages", 2, "thinking_blocks"),
            ("messages", 2, "function_call"),
            ("messages", 3, "tool_call_id"),
            ("messages", 3, "content"),
            ("max_tokens",),
            ("max_completion_tokens",),
            ("temperature",),
            ("top_p",),
            ("top_k",),
            ("n",),
            ("stop",),
            ("response_format",),
            ("response_format", "type"),
            ("response_format", "json_schema"),
            ("response_format", "json_schema", "name"),
            ("response_format", "json_schema", "schema"),
            ("tools",),
            ("tools", 0),
            ("tools", 0, "type"),
            ("tools", 0, "function"),
            ("tools", 0, "function", "name"),
            ("tools", 0, "function", "parameters"),
            ("tool_choice",),
            ("tool_choice", "function", "name"),
            ("functions",),
            ("function_call",),
            ("reasoning_effort",),
            ("thinking",),
            ("stream",),
            ("stream_options",),
            ("stream_options", "include_usage"),
            ("user",),
            ("metadata",),
            ("logit_bias",),
            ("seed",),
            ("parallel_tool_calls",),
            ("modalities",),
            ("prediction",),
            ("store",),
            ("x-unknown",),
        ],
    ),
    "/v1/responses": (
        [
            {"model": MODEL, "max_output_tokens": 24, "input": "hi"},
            {
                "model": MODEL,
                "max_output_tokens": 24,
                "instructions": "be brief",
                "metadata": {"k": "v"},
                "tools": [
                    {"type": "function", "name": "f", "description": "d", "parameters": TOOL_SCHEMA},
                    {
                        "type": "custom",
                        "name": "c",
                        "format": {"type": "grammar", "syntax": "lark", "definition": "x"},
                    },
                    {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "g"}]},
                    {"type": "web_search"},
                ],
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "auto",
                    "tools": [{"type": "function", "name": "f"}],
                },
                "prompt_cache_key": "pck",
                "reasoning": {"effort": "low", "summary": "auto"},
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                    {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"q":"x"}'},
                    {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
                    {"type": "reasoning", "encrypted_content": "eth1r.e30", "summary": []},
                ],
            },
            {
                "model": MODEL,
                "max_output_tokens": 24,
                "input": [{"role": "user", "content": "hi"}],
                "text": {
                    "format": {"type": "json_schema", "name": "r", "schema": TOOL_SCHEMA},
                    "verbosity": "low",
                },
            },
        ],
        [
            ("model",),
            ("input",),
            ("input", 0),
            ("input", 0, "role"),
            ("input", 0, "content"),
            ("input", 0, "content", 0),
            ("input", 0, "content", 0, "type"),
            ("input", 0, "content", 0, "image_url"),
            ("input", 1),
            ("input", 1, "type"),
            ("input", 1, "call_id"),
            ("input", 1, "name"),
            ("input", 1, "namespace"),
            ("input", 1, "arguments"),
            ("input", 2, "output"),
            ("input", 3, "encrypted_content"),
            ("instructions",),
            ("metadata",),
            ("metadata", "k"),
            ("tools",),
            ("tools", 0),
            ("tools", 0, "type"),
            ("tools", 0, "name"),
            ("tools", 0, "parameters"),
            ("tools", 1, "format"),
            ("tools", 2, "tools"),
            ("tools", 2, "name"),
            ("tools", 3, "filters"),
            ("tools", 3, "user_location"),
            ("tool_choice",),
            ("tool_choice", "type"),
            ("tool_choice", "mode"),
            ("tool_choice", "tools"),
            ("tool_choice", "tools", 0),
            ("tool_choice", "tools", 0, "type"),
            ("text",),
            ("text", "format"),
            ("text", "format", "type"),
            ("text", "format", "name"),
            ("text", "format", "schema"),
            ("text", "verbosity"),
            ("reasoning",),
            ("reasoning", "effort"),
            ("reasoning", "summary"),
            ("temperature",),
            ("top_p",),
            ("truncation",),
            ("user",),
            ("safety_identifier",),
            ("store",),
            ("include",),
            ("prompt_cache_key",),
            ("parallel_tool_calls",),
            ("max_output_tokens",),
            ("stream",),
            ("service_tier",),
            ("max_tool_calls",),
            ("client_metadata",),
            ("stream_options",),
            ("x-unknown",),
        ],
    ),
}


def put(body: dict[str, Any], path: Path, value: Any) -> None:
    """Sets ``path`` in ``body``, making (or replacing) the containers on the way."""
    node: Any = body
    for i, step in enumerate(path):
        last = i == len(path) - 1
        nxt = path[i + 1] if not last else None
        if isinstance(step, int):
            while len(node) <= step:
                node.append({})
            if last:
                node[step] = value
            elif not isinstance(node[step], (dict, list)) or isinstance(nxt, int) != isinstance(
                node[step], list
            ):
                node[step] = [] if isinstance(nxt, int) else {}
        else:
            if last:
                node[step] = value
            elif not isinstance(node.get(step), (dict, list)) or isinstance(nxt, int) != isinstance(
                node[step], list
            ):
                node[step] = [] if isinstance(nxt, int) else {}
        if not last:
            node = node[step]


@st.composite
def bodies(draw: st.DrawFn, route: str) -> tuple[str, bool]:
    bases, paths = ROUTES[route]
    body = json.loads(json.dumps(draw(st.sampled_from(bases))))
    stream = draw(st.booleans())
    body["stream"] = stream
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        put(body, path, draw(hostile))
    return dump(body), body.get("stream") is True


@pytest.fixture(scope="module")
def gw(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("fuzz-billing")
    # a budget: every request is estimated and admitted (the reservation paths), never refused for money
    key, _ = mint_into(data_dir, name="fuzz", budget_micro_usd=10**12)
    with gateway_process(data_dir, sim_url) as url:
        yield Gateway(url=url, key=key, data_dir=data_dir, sim_url=sim_url)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def received(sim_url: str) -> int:
    return int(control(sim_url, "/_sim/requests")["received"])


def check(gw: Gateway, client: httpx.Client, route: str, payload: str) -> None:
    auth = (
        {"x-api-key": gw.key, "anthropic-version": "2023-06-01"}
        if route == "/v1/messages"
        else {"authorization": f"Bearer {gw.key}"}
    )
    before = received(gw.sim_url)
    with client.stream(
        "POST", gw.url + route, content=payload.encode(), headers={**auth, "content-type": "application/json"}
    ) as resp:
        resp.read()
    status = resp.status_code
    assert status < 500, (status, resp.text[:500], payload[:500])
    seen = received(gw.sim_url) - before
    if status >= 400:
        error = resp.json()
        assert isinstance(error.get("error"), dict), resp.text[:300]
        if route == "/v1/messages":
            assert error["type"] == "error" and isinstance(error["error"]["type"], str)
        else:
            assert set(error["error"]) == {"message", "type", "param", "code"}, error
        if seen == 0:
            return  # refused before the upstream saw it
        # the upstream saw it and refused it too (its own 4xx, passed through): nothing to bill
    assert seen == 1, (status, seen, payload[:300])
    rid = resp.headers["request-id"]
    rec = client.get(f"{gw.url}/v1/usage/{rid}", headers=auth).json()
    if status >= 400:
        assert rec["status"] == status and rec["cost_micro"] == 0, rec
        return
    assert rec["status"] == 200 and rec["error_type"] is None, (rec, resp.text[-500:], payload[:300])
    replies = control(gw.sim_url, "/_sim/requests")["replies"]
    reported = (
        replies[rec["upstream_request_id"]]["usage"]
        if "upstream_request_id" in rec
        else replies[resp.headers["upstream-request-id"]]["usage"]
    )
    billed = {
        "input_tokens": rec["input_tokens"],
        "output_tokens": rec["output_tokens"],
        "cache_creation_5m": rec["cache_creation"]["ephemeral_5m_input_tokens"],
        "cache_creation_1h": rec["cache_creation"]["ephemeral_1h_input_tokens"],
        "cache_read": rec["cache_read_input_tokens"],
    }
    assert billed == reported, (billed, reported, payload[:300])
    assert rec["cost_micro"] > 0


# ETHEREAL_FUZZ_EXAMPLES=2000 explores further (a fresh seed each run); by default a fixed sample, well under a minute
EXPLORE = int(os.environ.get("ETHEREAL_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXPLORE or 150,
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


@pytest.mark.parametrize("route", list(ROUTES))
def test_hostile_bodies_are_refused_before_the_upstream_or_billed_what_it_reported(
    gw: Gateway, client: httpx.Client, route: str
) -> None:
    @FUZZ
    @given(bodies(route))
    def run(case: tuple[str, bool]) -> None:
        payload, _stream = case
        check(gw, client, route, payload)

    run()


BATCH_PATHS: list[Path] = [
    ("requests",),
    ("requests", 0),
    ("requests", 0, "custom_id"),
    ("requests", 0, "params"),
    ("requests", 0, "params", "model"),
    ("requests", 0, "params", "max_tokens"),
    ("requests", 0, "params", "messages"),
    ("requests", 0, "params", "metadata"),
    ("requests", 0, "params", "tools"),
    ("requests", 0, "params", "stream"),
    ("requests", 1),
    ("x-unknown",),
]


@st.composite
def batch_bodies(draw: st.DrawFn) -> str:
    body: dict[str, Any] = {
        "requests": [
            {
                "custom_id": "a",
                "params": {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            }
        ]
    }
    for path in draw(st.lists(st.sampled_from(BATCH_PATHS), min_size=1, max_size=2)):
        put(body, path, draw(hostile))
    return dump(body)


def test_hostile_batches_are_refused_before_the_upstream_or_created(
    gw: Gateway, client: httpx.Client
) -> None:
    """A batch is billed when its results are read (tests/integration/test_batches_gateway.py); here:
    a hostile create is a 4xx the upstream never saw, or a batch the upstream holds; never a 500."""
    auth = {"x-api-key": gw.key, "anthropic-version": "2023-06-01", "content-type": "application/json"}

    @settings(FUZZ, max_examples=max(EXPLORE, 40))
    @given(batch_bodies())
    def run(payload: str) -> None:
        before = received(gw.sim_url)
        resp = client.post(gw.url + "/v1/messages/batches", content=payload.encode(), headers=auth)
        assert resp.status_code < 500, (resp.status_code, resp.text[:300], payload[:300])
        seen = received(gw.sim_url) - before
        if resp.status_code >= 400:  # the gateway's refusal (seen == 0) or the upstream's own, passed through
            assert resp.json()["type"] == "error" and isinstance(resp.json()["error"]["type"], str)
        else:
            assert seen >= 1 and resp.json()["id"].startswith("msgbatch_")

    run()
