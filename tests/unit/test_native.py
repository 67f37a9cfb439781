"""ethereal._native (Rust): StreamTap, estimate_tokens, parse_sse.

Build first: ``maturin develop --release``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from ethereal import _native
from ethereal.usage import Usage

from tests.procs import FIXTURES as FIXTURES_DIR
from tests.unit import sse_reference as ref


def usage_tuple(u: Usage) -> tuple[int, int, int, int, int, bool]:
    return (u.input_tokens, u.output_tokens, u.cache_5m, u.cache_1h, u.cache_read, u.exact)


def _fixtures_dir() -> Path:
    assert FIXTURES_DIR.is_dir(), f"fixture corpus not found at {FIXTURES_DIR} (set ETHEREAL_FIXTURES)"
    return FIXTURES_DIR


FIXTURES = _fixtures_dir() / "anthropic"
RECORDED = sorted((FIXTURES / "recorded" / "sse-extracted").glob("*.sse"))
SDK = sorted((FIXTURES / "stream-fixtures-sdk-python").glob("*.sse")) + sorted(
    (FIXTURES / "stream-fixtures-sdk-python").glob("*.txt")
)
STREAMS = RECORDED + SDK


def _chunks(data: bytes, rng: random.Random, max_size: int) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_size)
        out.append(data[i : i + n])
        i += n
    return out


def _tap(chunks: list[bytes]) -> _native.StreamTap:
    tap = _native.StreamTap()
    events = sum(tap.feed(c) for c in chunks)
    tap.finish()
    assert events == tap.state().events
    return tap


def test_corpus_present() -> None:
    assert len(RECORDED) >= 10


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_parse_sse_matches_reference(path: Path) -> None:
    data = path.read_bytes()
    assert _native.parse_sse(data) == ref.parse_sse(data)


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_random_chunkings_match_reference(path: Path) -> None:
    data = path.read_bytes()
    want = ref.usage(data)
    n_events = len(ref.parse_sse(data))
    rng = random.Random(path.name)
    for max_size in (1, 3, 17, 256, 4096, len(data)):
        tap = _tap(_chunks(data, rng, max_size))
        assert usage_tuple(tap.usage()) == want.as_tuple(), max_size
        assert tap.state().events == n_events
        assert tap.state().cache_split_reported == want.split_reported
        assert tap.state().stop_reason == want.stop_reason
        assert tap.state().saw_message_start and tap.state().saw_message_delta
        assert tap.state().error_type is None and tap.state().malformed_events == 0


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_properties_agree_with_usage_tuple(path: Path) -> None:
    data = path.read_bytes()
    tap = _tap([data])
    inp, out, c5, c1, cr, exact = usage_tuple(tap.usage())
    u = tap.usage()
    props = (u.input_tokens, u.output_tokens, u.cache_5m, u.cache_1h)
    assert props == (inp, out, c5, c1)
    assert u.cache_read == cr and exact
    assert u.cache_5m + u.cache_1h == c5 + c1
    assert tap.state().saw_message_stop and not tap.state().truncated
    start = json.loads(ref.parse_sse(data)[0][1])["message"]
    assert (tap.state().message_id, tap.state().model) == (start["id"], start["model"])
    assert tap.state().estimated_output_tokens > 0


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_cut_before_message_delta_is_estimated(path: Path) -> None:
    data = path.read_bytes()
    cut = data.index(b"event: message_delta")
    rng = random.Random(7)
    # Cut mid-frame too: the partial event must be discarded, not half-read.
    tap = _tap(_chunks(data[: cut + 25], rng, 100))
    assert tap.state().truncated
    assert not tap.state().saw_message_delta and not tap.state().saw_message_stop
    inp, out, *_, exact = usage_tuple(tap.usage())
    assert not exact
    start_output = json.loads(ref.parse_sse(data)[0][1])["message"]["usage"]["output_tokens"]
    assert out == max(tap.state().estimated_output_tokens, start_output)
    assert out >= 1
    assert inp == ref.usage(data[:cut]).input
    assert tap.state().stop_reason is None


def test_text_estimate_is_chars_over_four() -> None:
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_x","model":"m",'
        b'"usage":{"input_tokens":5,"cache_creation_input_tokens":100,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
    )
    delta = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"word"}}\n\n'
    )
    tap = _tap([start, delta * 100])
    assert tap.state().estimated_output_tokens == 100 + 1  # 400 chars / 4, plus block framing
    assert usage_tuple(tap.usage()) == (5, 101, 100, 0, 0, False)
    assert not tap.state().cache_split_reported  # metering assumes 5m and says so


def test_error_event() -> None:
    data = RECORDED[0].read_bytes()
    cut = data.index(b"event: content_block_stop")
    err = (
        b'event: error\ndata: {"type":"error","error":{"details":null,"type":"overloaded_error",'
        b'"message":"Overloaded"},"request_id":"req_011CX"       }\n\n'
    )
    tap = _tap([data[:cut], err])
    assert tap.state().error_type == "overloaded_error"
    assert tap.state().error_message == "Overloaded"
    assert not usage_tuple(tap.usage())[-1]
    assert not tap.state().truncated


def test_feed_large_chunk_and_garbage() -> None:
    data = b"".join(p.read_bytes() for p in RECORDED[:3])  # > 64 KiB path releases the GIL
    tap = _native.StreamTap()
    assert tap.feed(data) == len(ref.parse_sse(data))
    tap.feed(b"event: message_delta\ndata: {not json\n\n")
    assert tap.state().malformed_events == 1
    assert tap.feed(b"") == 0


def test_parse_sse_edge_cases() -> None:
    assert _native.parse_sse(b"\xef\xbb\xbfdata: a\r\ndata:b\r\r: c\n\nevent: e\ndata\n\n") == [
        ("message", "a\nb"),
        ("e", ""),
    ]
    assert _native.parse_sse(b"data: \xe6\x97\xa5\n\n") == [("message", "日")]
    assert _native.parse_sse(b"data: cut") == []


ENGLISH = (
    "The gateway forwards each request to the upstream, watches the stream on its way back, and bills "
    "what was produced. When a client disconnects early, the tap still knows how many tokens were made. "
)


def _body(**kw: object) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, **kw}).encode()


def test_estimate_english_is_about_a_token_a_word() -> None:
    # Anthropic counts about a token per common English word and one per punctuation mark
    # (chars / 4.3 here), not chars / 4
    text = ENGLISH * 30
    got = _native.estimate_tokens(_body(messages=[{"role": "user", "content": text}]))
    words = len(text.split())
    assert 0.95 < got / words < 1.35
    # estimate_text_tokens keeps the simulated upstream's chars / 4 contract (the stream tap's)
    assert abs(_native.estimate_text_tokens(text) / (len(text) / 4) - 1) < 0.05


def test_estimate_per_generation() -> None:
    body = _body(messages=[{"role": "user", "content": ENGLISH * 30}])
    older, newer = _native.estimate_tokens(body), _native.estimate_tokens(body, tokenizer=2, image_tier=2)
    assert abs(newer / older - 1.3) < 0.01  # the documented ratio, applied to text
    assert _native.estimate_tokens(body, tokenizer=1, image_tier=1) == older
    with pytest.raises(ValueError):
        _native.estimate_tokens(body, tokenizer=3)


def test_estimate_earlier_thinking_by_model() -> None:
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": ENGLISH * 10, "signature": "s"},
                {"type": "text", "text": "a"},
            ],
        },
        {"role": "user", "content": "and?"},
    ]
    body = _body(messages=history)
    dropped = _native.estimate_tokens(body)
    kept = _native.estimate_tokens(body, keep_thinking=True)
    assert kept - dropped > len((ENGLISH * 10).split()) * 0.9  # counted only where the model keeps it


def test_estimate_scripts() -> None:
    assert _native.estimate_text_tokens("日本語のテキスト") == 8
    assert _native.estimate_text_tokens("") == 0
    assert _native.estimate_text_tokens("12345678") > _native.estimate_text_tokens("abcdefgh")

    def est(text: str) -> int:
        return _native.estimate_tokens(_body(messages=[{"role": "user", "content": text}]))

    base = est("")
    assert (
        27 <= est("网关在请求到达上游之前估算令牌数量。" * 2) - base <= 41
    )  # about a token per CJK character
    assert est("Шлюз оценивает число токенов") > est("The gateway estimates tokens")


def _png(w: int, h: int) -> str:
    import base64
    import struct

    raw = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", w, h) + b"\x08\x06\x00\x00\x00"
    return base64.b64encode(raw).decode()


def test_estimate_images() -> None:
    def img(source: dict[str, str]) -> int:
        return _native.estimate_tokens(
            _body(messages=[{"role": "user", "content": [{"type": "image", "source": source}]}])
        )

    # the request, its message and the image block's framing: an image by URL costs exactly the cap
    framing = img({"type": "url", "url": "https://example.com/a.png"}) - 1600
    assert 0 < framing - _native.estimate_tokens(_body(messages=[{"role": "user", "content": []}])) <= 3
    small = img({"type": "base64", "media_type": "image/png", "data": _png(300, 200)})
    assert small - framing == 80  # 60000 / 750
    big = img({"type": "base64", "media_type": "image/png", "data": _png(5000, 5000)})
    assert 1500 <= big - framing <= 1600

    def img2(source: dict[str, str]) -> int:
        return (
            _native.estimate_tokens(
                _body(messages=[{"role": "user", "content": [{"type": "image", "source": source}]}]),
                image_tier=2,
            )
            - framing
        )

    assert (
        img2({"type": "base64", "media_type": "image/png", "data": _png(300, 200)}) == 11 * 8
    )  # ⌈w/28⌉×⌈h/28⌉
    assert 4700 <= img2({"type": "base64", "media_type": "image/png", "data": _png(5000, 5000)}) <= 4784
    assert img2({"type": "url", "url": "https://example.com/a.png"}) == 4784


def test_estimate_tools() -> None:
    base = _body(messages=[{"role": "user", "content": "hi"}])
    tool = {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    with_tools = _body(messages=[{"role": "user", "content": "hi"}], tools=[tool])
    extra = _native.estimate_tokens(with_tools) - _native.estimate_tokens(base)
    assert 346 + 20 <= extra <= 346 + 60  # the documented tool-use system prompt, then the definition
    custom = _native.estimate_tokens(with_tools, tool_prompt=(500, 400)) - _native.estimate_tokens(base)
    assert custom == extra + 500 - 346


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"[1, 2]", b'"x"'])
def test_estimate_rejects_bad_json(body: bytes) -> None:
    with pytest.raises(ValueError):
        _native.estimate_tokens(body)
