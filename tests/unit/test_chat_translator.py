"""The native ``ChatTranslator`` (Anthropic SSE → ``chat.completion.chunk``).

Over every recorded Anthropic stream: each chunk validates against the OpenAI spec's
``CreateChatCompletionStreamResponse``; the openai SDK's own stream accumulator turns the
chunks into the message that the non-streaming translation gives for the Message the
anthropic SDK assembles from the same stream; the output equals the pure-Python reference
(tests/reference_chat_translator.py) byte for byte, however the input is chunked.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ethereal import _native
from ethereal.adapters import openai_chat
from ethereal.errors import OPENAI_TYPES, openai_error_body
from ethereal.usage import Usage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.procs import FIXTURES, RECORDED
from tests.reference_chat_translator import ReferenceChatTranslator

STREAMS = sorted(RECORDED.glob("*.sse"))
SDK_STREAMS = sorted((FIXTURES / "anthropic" / "stream-fixtures-sdk-python").glob("*"))
OPENAI_SPEC = FIXTURES / "specs" / "openai-openapi.yaml"
ARGS = ("claude-sonnet-4-5-20250929", "chatcmpl-test", 1760000000)


def usage_tuple(u: Usage) -> tuple[int, int, int, int, int, bool]:
    return (u.input_tokens, u.output_tokens, u.cache_5m, u.cache_1h, u.cache_read, u.exact)


def translate(data: bytes, include_usage: bool = True, chunks: list[bytes] | None = None, **kw: Any) -> bytes:
    t = _native.ChatTranslator(*ARGS, include_usage, **kw)
    out = [t.feed(c) for c in (chunks if chunks is not None else [data])]
    out.append(t.finish())
    return b"".join(out)


def reference(data: bytes, include_usage: bool = True, **kw: Any) -> bytes:
    r = ReferenceChatTranslator(*ARGS, include_usage, **kw)
    return r.feed(data) + r.finish()


def frames(out: bytes) -> list[bytes]:
    assert out.endswith(b"\n\n")
    parts = out[:-2].split(b"\n\n")
    assert all(p.startswith(b"data: ") for p in parts), parts
    return [p[6:] for p in parts]


# ---- the spec's schema --------------------------------------------------------------------


def _json_schema(node: Any) -> Any:
    """OpenAPI's ``nullable: true`` as JSON Schema (the spec mixes 3.0 and 3.1 styles)."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def chunk_validator() -> Any:
    import jsonschema
    import yaml

    with open(OPENAI_SPEC, "rb") as fh:
        spec = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    root = {
        "$ref": "#/components/schemas/CreateChatCompletionStreamResponse",
        "components": {"schemas": _json_schema(spec["components"]["schemas"])},
    }
    return jsonschema.Draft202012Validator(root)


# ---- the openai SDK's accumulator vs the non-streaming translation ------------------------------


def accumulate_openai(out: bytes) -> tuple[Any, list[dict[str, Any]]]:
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    state = ChatCompletionStreamState()
    chunks = []
    parts = frames(out)
    assert parts[-1] == b"[DONE]"
    for raw in parts[:-1]:
        chunk = json.loads(raw)
        chunks.append(chunk)
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion(), chunks


def assemble_anthropic(data: bytes) -> dict[str, Any]:
    """The Message the anthropic SDK builds from the stream."""
    from anthropic.lib.streaming._messages import accumulate_event

    snapshot = None
    bufs: dict[int, bytes] = {}
    for _name, payload in _native.parse_sse(data):
        event = json.loads(payload)
        if event["type"] in ("ping", "error"):
            continue
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    return snapshot.model_dump(mode="json", warnings=False)


def normalised(message: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {"id": c["id"], "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
        for c in message.get("tool_calls") or []
    ]
    return {
        "content": message.get("content") or None,
        "tool_calls": calls,
        "reasoning_content": message.get("reasoning_content") or None,
        "reasoning_signature": message.get("reasoning_signature"),
    }


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_recorded_stream(path: Path) -> None:
    data = path.read_bytes()
    out = translate(data)
    validator = chunk_validator()
    completion, chunks = accumulate_openai(out)
    for chunk in chunks:
        errors = sorted(validator.iter_errors(chunk), key=str)
        assert not errors, f"{chunk}: {errors[0].message}"
    # one id/created/model; the role first; finish_reason once, on the last choice chunk
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {(ARGS[1], ARGS[2], ARGS[0])}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    choice_chunks = [c for c in chunks if c["choices"]]
    assert [c["choices"][0]["finish_reason"] is not None for c in choice_chunks].count(True) == 1
    assert choice_chunks[-1]["choices"][0]["finish_reason"] is not None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0

    message = assemble_anthropic(data)
    expected = openai_chat.to_chat_completion(message, completion_id=ARGS[1], created=ARGS[2], model=ARGS[0])
    got = completion.choices[0].message.model_dump(mode="json", warnings=False)
    assert normalised(got) == normalised(expected["choices"][0]["message"])
    assert completion.choices[0].finish_reason == expected["choices"][0]["finish_reason"]

    # usage: exactly what the native tap bills for the same stream
    tap = _native.StreamTap()
    tap.feed(data)
    tap.finish()
    inp, output, c5, c1, cr, exact = usage_tuple(tap.usage())
    assert exact
    assert chunks[-1]["usage"] == {
        "prompt_tokens": inp + c5 + c1 + cr,
        "completion_tokens": output,
        "total_tokens": inp + c5 + c1 + cr + output,
        "prompt_tokens_details": {"cached_tokens": cr, "cache_write_tokens": c5 + c1},
    }


@pytest.mark.parametrize("path", STREAMS + SDK_STREAMS, ids=lambda p: p.stem)
@pytest.mark.parametrize("include_usage", [True, False])
def test_matches_reference(path: Path, include_usage: bool) -> None:
    data = path.read_bytes()
    assert translate(data, include_usage) == reference(data, include_usage)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(STREAMS + SDK_STREAMS),
    st.lists(st.integers(1, 400), min_size=1, max_size=40),
    st.booleans(),
)
def test_any_chunking_same_output(path: Path, sizes: list[int], crlf: bool) -> None:
    same_output_however_chunked(translate, reference, path, sizes, crlf)


def same_output_however_chunked(
    translate: Callable[..., bytes],
    reference: Callable[[bytes], bytes],
    path: Path,
    sizes: list[int],
    crlf: bool,
) -> None:
    """A translator (``translate(data, chunks=…)``) gives the same bytes for the stream at ``path`` cut
    into chunks of ``sizes`` (cycled) as whole, and those are the reference's; with CRLF line ends too."""
    data = path.read_bytes()
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    whole = translate(data)
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        chunks.append(data[pos : pos + n])
        pos, i = pos + n, i + 1
    assert translate(data, chunks=chunks) == whole
    assert whole == reference(data)


def test_every_split_point_of_a_tool_stream() -> None:
    data = next(p for p in STREAMS if p.name.startswith("sdkpy-555fb399")).read_bytes()
    whole = translate(data)
    for cut in range(1, len(data)):
        assert translate(data, chunks=[data[:cut], data[cut:]]) == whole


# ---- generated streams ------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"


@st.composite
def anthropic_streams(draw: Any) -> tuple[bytes, str | None]:
    """A well-formed stream of random text / thinking / tool blocks (sometimes cut or failing)."""
    json_tool = draw(st.sampled_from([None, "json_response"]))
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_x",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "usage": {
                    "input_tokens": draw(st.integers(0, 10**6)),
                    "output_tokens": 1,
                    "cache_read_input_tokens": draw(st.integers(0, 10**5)),
                },
            },
        }
    ]
    kinds = draw(
        st.lists(st.sampled_from(["text", "thinking", "tool_use", "json", "server", "redacted"]), max_size=6)
    )
    for index, kind in enumerate(kinds):
        if kind == "text":
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            )
            for piece in draw(st.lists(_text, max_size=4)):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    }
                )
        elif kind == "thinking":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                }
            )
            for piece in draw(st.lists(_text, max_size=4)):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece},
                    }
                )
            events.append(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": f"c2ln{index}=="},
                }
            )
        elif kind == "redacted":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "redacted_thinking", "data": f"ZGF0{index}"},
                }
            )
        elif kind == "server":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "server_tool_use",
                        "id": f"srvtoolu_{index}",
                        "name": "web_search",
                        "input": {},
                    },
                }
            )
        else:
            name = "json_response" if kind == "json" else draw(st.sampled_from(["get_weather", "f"]))
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}},
                }
            )
            args = json.dumps({"q": draw(_text)}, ensure_ascii=draw(st.booleans()))
            cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=3)))
            for a, b in zip([0, *cuts], [*cuts, len(args)], strict=True):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": args[a:b]},
                    }
                )
        events.append({"type": "content_block_stop", "index": index})
        if draw(st.booleans()):
            events.append({"type": "ping"})
    ending = draw(st.sampled_from(["stop", "stop", "error", "cut"]))
    if ending == "error":
        events.append(
            {
                "type": "error",
                "error": {
                    "type": draw(st.sampled_from(sorted(OPENAI_TYPES))),
                    "message": draw(_text) or "x",
                },
            }
        )
    elif ending == "stop":
        reason = draw(
            st.sampled_from(["end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal", "pause_turn"])
        )
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": {"output_tokens": draw(st.integers(0, 10**5))},
            }
        )
        events.append({"type": "message_stop"})
    data = b"".join(_sse(e) for e in events)
    if ending == "cut":
        data = data[: len(data) - draw(st.integers(0, 20))]
    return data, json_tool


@settings(max_examples=300, deadline=None)
@given(anthropic_streams(), st.booleans(), st.booleans(), st.integers(1, 64))
def test_generated_streams_match_reference(
    stream: tuple[bytes, str | None], include_usage: bool, legacy: bool, chunk: int
) -> None:
    data, json_tool = stream
    kw = {"json_tool": json_tool, "legacy_functions": legacy}
    out = translate(
        data, include_usage, chunks=[data[i : i + chunk] for i in range(0, len(data), chunk)], **kw
    )
    assert out == reference(data, include_usage, **kw)
    for raw in frames(out):
        if raw != b"[DONE]":
            json.loads(raw)  # every frame is one JSON document


# ---- errors, ends, options -------------------------------------------------------------------

MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
)


@pytest.mark.parametrize("error_type", [*sorted(OPENAI_TYPES), "something_new"])
def test_error_event_matches_http_error_shape(error_type: str) -> None:
    event = json.dumps({"type": "error", "error": {"details": None, "type": error_type, "message": "boom"}})
    out = translate(MESSAGE_START + b"event: error\ndata: " + event.encode() + b" \n\n")
    parts = frames(out)
    assert parts[-1] == openai_error_body(error_type, "boom")  # the same body as an HTTP error
    assert b"[DONE]" not in out


def test_openai_sdk_raises_on_error_frame() -> None:
    import httpx
    import openai

    event = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    body = translate(MESSAGE_START + b"event: error\ndata: " + event + b"\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = openai.OpenAI(
        api_key="k",
        base_url="http://t/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(stream)


def test_cut_stream_ends_with_error_frame_and_estimate() -> None:
    text = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        + b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"abcdefgh"}}\n\n' * 5
    )
    t = _native.ChatTranslator(*ARGS, True)
    out = t.feed(MESSAGE_START + text + b'event: content_block_delta\ndata: {"ty')
    end = t.finish()
    assert json.loads(frames(end)[-1])["error"]["type"] == "server_error"
    assert t.finish() == b""  # idempotent
    assert t.state().truncated and not t.state().saw_message_stop and t.done
    inp, output, *_rest, exact = usage_tuple(t.usage())
    assert inp == 3 and output >= 10 and not exact  # billed from the estimate, like StreamTap
    assert out.count(b'"content":"abcdefgh"') == 5


def test_legacy_function_call_and_json_tool() -> None:
    data = next(
        p for p in STREAMS if p.name.startswith("sdkpy-555fb399-a54c-455b-9ac5-2c9673f18e12.0")
    ).read_bytes()
    completion, _ = accumulate_openai(translate(data, legacy_functions=True))
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "function_call"
    assert message.function_call.name == "get_weather" and json.loads(message.function_call.arguments)
    name = json.loads(_native.parse_sse(data)[1][1])["content_block"]["name"]
    completion, _ = accumulate_openai(translate(data, json_tool=name))
    assert completion.choices[0].finish_reason == "stop" and not completion.choices[0].message.tool_calls
    assert json.loads(completion.choices[0].message.content) == {
        "location": "San Francisco, CA",
        "units": "f",
    }


def test_usage_accessors_match_stream_tap() -> None:
    meters_like_stream_tap(lambda: _native.ChatTranslator(*ARGS, False))


def meters_like_stream_tap(make: Callable[[], _native.ChatTranslator | _native.ResponsesTranslator]) -> None:
    """A translator's ``usage()`` and ``state()`` are the native tap's, over every recorded stream."""
    for path in STREAMS:
        data = path.read_bytes()
        t = make()
        tap = _native.StreamTap()
        t.feed(data)
        tap.feed(data)
        t.finish()
        tap.finish()
        assert t.usage() == tap.usage()
        for name in (
            "estimated_output_tokens",
            "cache_split_reported",
            "stop_reason",
            "message_id",
            "model",
            "error_type",
            "saw_message_stop",
            "events",
        ):
            assert getattr(t.state(), name) == getattr(tap.state(), name), name


def test_reasoning_signature_round_trip() -> None:
    """What a stream hands out as reasoning restores the exact blocks on the next turn."""
    for path in STREAMS:
        data = path.read_bytes()
        message = assemble_anthropic(data)
        blocks = [b for b in message["content"] if b["type"] in ("thinking", "redacted_thinking")]
        if not blocks:
            continue
        completion, _ = accumulate_openai(translate(data))
        got = completion.choices[0].message.model_dump(mode="json", warnings=False)
        restored = openai_chat.restore_reasoning(
            {
                "reasoning_content": got.get("reasoning_content"),
                "reasoning_signature": got["reasoning_signature"],
            }
        )
        want = [
            {k: b[k] for k in (("thinking", "signature") if b["type"] == "thinking" else ("data",))}
            | {"type": b["type"]}
            for b in blocks
        ]
        assert restored == want, path.name
