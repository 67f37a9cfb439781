"""The input estimate where the gateway uses it (the real app object in-process, the real sim).

Budget admission reserves the estimate for the request's own model plus the margin
(``guards.ESTIMATE_MARGIN``); ``count_tokens``, when no upstream can answer, returns the plain
estimate for the model, marked ``ethereal-estimated: true``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ethereal import _native
from ethereal.app import Ethereal
from ethereal.guards import estimate_args, estimate_input_tokens, with_margin
from ethereal.keys import mint
from ethereal.models import Registry
from ethereal.settings import Settings

from tests.asgi import call

pytestmark = pytest.mark.asyncio

PROMPT = "Summarise the gateway's budget rules for a new operator, in three short paragraphs. " * 40


async def _app(tmp_path: Path, upstream: str) -> Ethereal:
    entry = Ethereal(Settings(data_dir=tmp_path, upstream_url=upstream, upstream_key="sim-key"))
    await entry.start()
    return entry


@pytest.fixture
async def app(tmp_path: Path, sim_url: str) -> AsyncIterator[Ethereal]:
    entry = await _app(tmp_path, sim_url)
    try:
        yield entry
    finally:
        await entry.stop()


@pytest.fixture
async def no_upstream(tmp_path: Path) -> AsyncIterator[Ethereal]:
    with socket.socket() as s:  # a port nothing listens on: every upstream call fails to connect
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = await _app(tmp_path, f"http://127.0.0.1:{port}")
    try:
        yield entry
    finally:
        await entry.stop()


async def _call(app: Ethereal, path: str, key: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    return await call(app, path, key, body)


async def _key(app: Ethereal, **limits: Any) -> str:
    plaintext, record = mint("sk-ant-api03-", **limits)
    await app.gateway.store.insert_keys([record])
    return plaintext


def _messages(model: str, max_tokens: int = 64) -> bytes:
    return orjson.dumps(
        {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": PROMPT}]}
    )


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "claude-opus-5-5"])
async def test_admission_reserves_the_models_estimate_plus_the_margin(app: Ethereal, model: str) -> None:
    body = _messages(model)
    described = Registry().resolve(model)
    estimate = estimate_input_tokens(body, described)
    reserved = with_margin(estimate)
    assert reserved > estimate + 16
    # a budget that holds the plain estimate and the output allowance, but not the margin: refused
    short = await _key(app, budget_tokens=estimate + 64 + (reserved - estimate) // 2)
    status, _, text = await _call(app, "/v1/messages", short, body)
    assert status == 402, text
    # exactly the estimate + margin + the output allowance: admitted
    enough = await _key(app, budget_tokens=reserved + 64)
    status, _, text = await _call(app, "/v1/messages", enough, body)
    assert status == 200, text


async def test_the_newer_tokenizer_reserves_more() -> None:
    registry = Registry()
    body = _messages("m")
    older = estimate_input_tokens(body, registry.resolve("claude-sonnet-4-6"))
    newer = estimate_input_tokens(body, registry.resolve("claude-opus-5-5"))
    assert 1.25 < newer / older < 1.35  # text x1.3: the documented ratio


@pytest.mark.parametrize(
    "model", ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-5-5", "claude-fable-5-2"]
)
async def test_count_tokens_fallback_is_the_plain_estimate_for_the_model(
    no_upstream: Ethereal, model: str
) -> None:
    key = await _key(no_upstream)
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "tools": [
                {
                    "name": "lookup",
                    "description": "Look an order up by id.",
                    "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
                }
            ],
        }
    )
    status, headers, text = await _call(no_upstream, "/v1/messages/count_tokens", key, body)
    assert status == 200, text
    assert headers.get(b"ethereal-estimated") == b"true"
    described = Registry().resolve(model)
    assert described is not None
    want = _native.estimate_tokens(body, **estimate_args(described))
    assert orjson.loads(text) == {"input_tokens": want}  # no margin: a count, not a reservation
    assert want != _native.estimate_tokens(body) or described.rules.tokenizer == 1
