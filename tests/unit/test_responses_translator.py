"""The native ``ResponsesTranslator`` (Anthropic SSE → Responses API stream events).

Over every recorded Anthropic stream: each event validates against its schema in the OpenAI
spec (``ResponseStreamEvent``'s members, picked by ``type``); the openai SDK's own stream
state (what ``client.responses.stream`` uses) rebuilds a final response equal to the
non-streaming translation of the Message the anthropic SDK assembles from the same stream;
deltas add up to what the done events say; usage is what the native tap bills; and the output
equals the pure-Python reference (tests/reference_responses_translator.py) byte for byte,
however the input is chunked.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import pytest
from ethereal import _native
from ethereal.adapters import openai_responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.procs import FIXTURES, RECORDED
from tests.reference_responses_translator import ReferenceResponsesTranslator
from tests.unit.test_chat_translator import (
    _json_schema,
    anthropic_streams,
    assemble_anthropic,
    meters_like_stream_tap,
    same_output_however_chunked,
    usage_tuple,
)

STREAMS = sorted(RECORDED.glob("*.sse"))
SDK_STREAMS = sorted((FIXTURES / "anthropic" / "stream-fixtures-sdk-python").glob("*"))
OPENAI_SPEC = FIXTURES / "specs" / "openai-openapi.yaml"
MODEL = "claude-sonnet-4-5-20250929"
RESPONSE_ID = "resp_test1"


def make_request(**kw: Any) -> openai_responses.ResponsesRequest:
    body = {"model": MODEL, "input": "hi", **kw}
    return openai_responses.to_anthropic(
        body, model=MODEL, max_output=64000, response_id=RESPONSE_ID, created_at=1760000000
    )


REQUEST = make_request()


def translate(
    data: bytes,
    chunks: list[bytes] | None = None,
    request: openai_responses.ResponsesRequest = REQUEST,
    **kw: Any,
) -> bytes:
    t = _native.ResponsesTranslator(
        RESPONSE_ID,
        request.head_json(),
        custom_tools=request.custom_tools,
        namespaced=request.namespaced,
        **kw,
    )
    out = [t.feed(c) for c in (chunks if chunks is not None else [data])]
    out.append(t.finish())
    return b"".join(out)


def reference(data: bytes, request: openai_responses.ResponsesRequest = REQUEST, **kw: Any) -> bytes:
    r = ReferenceResponsesTranslator(
        RESPONSE_ID,
        request.head_json(),
        custom_tools=request.custom_tools,
        namespaced=request.namespaced,
        **kw,
    )
    return r.feed(data) + r.finish()


def events(out: bytes) -> list[dict[str, Any]]:
    assert out.endswith(b"\n\n")
    parsed = []
    for seq, frame in enumerate(out[:-2].split(b"\n\n")):
        name, _, data = frame.partition(b"\ndata: ")
        assert name.startswith(b"event: "), frame
        event = json.loads(data)
        assert event["type"] == name[7:].decode() and event["sequence_number"] == seq, frame
        parsed.append(event)
    return parsed


# ---- the spec's schemas ------------------------------------------------------------------------


@functools.cache
def validators() -> dict[str, Any]:
    """One validator per event type, from the members of ``ResponseStreamEvent``."""
    import jsonschema
    import yaml

    with open(OPENAI_SPEC, "rb") as fh:
        spec = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = _json_schema(spec["components"]["schemas"])
    out = {}
    for member in spec["components"]["schemas"]["ResponseStreamEvent"]["anyOf"]:
        name = member["$ref"].rsplit("/", 1)[1]
        kinds = schemas[name]["properties"]["type"].get("enum") or []
        for kind in kinds:
            root = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}
            out[kind] = jsonschema.Draft202012Validator(root)
    return out


def check_schema(event: dict[str, Any]) -> None:
    validator = validators().get(event["type"])
    assert validator is not None, f"no schema for {event['type']}"
    errors = sorted(validator.iter_errors(event), key=str)
    assert not errors, f"{event['type']}: {errors[0].message} at {list(errors[0].absolute_path)}"


# ---- the openai SDK's accumulator ---------------------------------------------------------------


def accumulate(out: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """The final response as ``client.responses.stream(...).get_final_response()`` builds it."""
    from openai._models import construct_type_unchecked
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=openai_responses_omit())
    evs = events(out)
    for event in evs:
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    return state._completed_response, evs


def openai_responses_omit() -> Any:
    from openai import omit

    return omit


def normalised_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        item = {k: v for k, v in item.items() if v is not None}
        if item["type"] == "function_call":
            item["arguments"] = json.loads(item["arguments"])
        out.append(item)
    return out


def deltas_add_up(evs: list[dict[str, Any]]) -> None:
    texts: dict[tuple[int, int], str] = {}
    args: dict[int, str] = {}
    summaries: dict[int, str] = {}
    for e in evs:
        kind = e["type"]
        if kind == "response.output_text.delta":
            key = (e["output_index"], e["content_index"])
            texts[key] = texts.get(key, "") + e["delta"]
        elif kind == "response.output_text.done":
            assert texts.get((e["output_index"], e["content_index"]), "") == e["text"]
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            args[e["output_index"]] = args.get(e["output_index"], "") + e["delta"]
        elif kind == "response.function_call_arguments.done":
            assert args[e["output_index"]] == e["arguments"]
        elif kind == "response.custom_tool_call_input.done":
            assert args.get(e["output_index"], "") == e["input"]
        elif kind == "response.reasoning_summary_text.delta":
            summaries[e["output_index"]] = summaries.get(e["output_index"], "") + e["delta"]
        elif kind == "response.reasoning_summary_text.done":
            assert summaries.get(e["output_index"], "") == e["text"]


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_recorded_stream(path: Path) -> None:
    data = path.read_bytes()
    out = translate(data)
    final, evs = accumulate(out)
    for event in evs:
        check_schema(event)
    assert [e["type"] for e in evs[:2]] == ["response.created", "response.in_progress"]
    assert evs[-1]["type"] in ("response.completed", "response.incomplete")
    assert {e["response"]["id"] for e in evs if "response" in e} == {RESPONSE_ID}
    deltas_add_up(evs)

    message = assemble_anthropic(data)
    expected = openai_responses.to_response(message, REQUEST)
    last = evs[-1]["response"]
    assert (
        last["status"] == expected["status"] and last["incomplete_details"] == expected["incomplete_details"]
    )
    assert normalised_items(last["output"]) == normalised_items(expected["output"])
    if final is not None:  # the SDK keeps the completed response (not an incomplete one)
        got = final.model_dump(mode="json", warnings=False, exclude_none=True)
        assert normalised_items(got["output"]) == normalised_items(expected["output"])
        assert final.output_text == "".join(
            p["text"] for i in expected["output"] if i["type"] == "message" for p in i["content"]
        )

    # usage: what the native tap bills for the same stream
    tap = _native.StreamTap()
    tap.feed(data)
    tap.finish()
    inp, output, c5, c1, cr, exact = usage_tuple(tap.usage())
    assert exact
    usage = last["usage"]
    assert usage["input_tokens"] == inp + c5 + c1 + cr and usage["output_tokens"] == output
    assert usage["input_tokens_details"] == {"cached_tokens": cr, "cache_write_tokens": c5 + c1}
    # (the SDK-assembled Message drops per-iteration usage, so only the reasoning estimate is compared)
    assert usage["output_tokens_details"] == expected["usage"]["output_tokens_details"]


@pytest.mark.parametrize("path", STREAMS + SDK_STREAMS, ids=lambda p: p.stem)
def test_matches_reference(path: Path) -> None:
    data = path.read_bytes()
    assert translate(data) == reference(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(STREAMS + SDK_STREAMS),
    st.lists(st.integers(1, 400), min_size=1, max_size=40),
    st.booleans(),
)
def test_any_chunking_same_output(path: Path, sizes: list[int], crlf: bool) -> None:
    same_output_however_chunked(translate, reference, path, sizes, crlf)


TOOLS_REQUEST = make_request(
    tools=[
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False},
        {"type": "custom", "name": "json_response"},
        {
            "type": "namespace",
            "name": "ns",
            "description": "d",
            "tools": [{"type": "function", "name": "f", "parameters": {}, "strict": False}],
        },
    ]
)


@settings(max_examples=300, deadline=None)
@given(anthropic_streams(), st.integers(1, 64), st.sampled_from(["plain", "custom", "json"]))
def test_generated_streams_match_reference(stream: tuple[bytes, str | None], chunk: int, mode: str) -> None:
    """Random text / thinking / tool / server-tool / redacted streams, cut or failing: the native bytes
    equal the reference's, every event validates, and the stream ends exactly once."""
    data, _ = stream
    kw: dict[str, Any] = {}
    request = REQUEST
    if mode == "json":
        kw["json_tool"] = "json_response"
    elif mode == "custom":
        request = TOOLS_REQUEST
    out = translate(
        data, chunks=[data[i : i + chunk] for i in range(0, len(data), chunk)], request=request, **kw
    )
    assert out == reference(data, request=request, **kw)
    evs = events(out)
    for event in evs:
        check_schema(event)
    finals = [
        e["type"]
        for e in evs
        if e["type"] in ("response.completed", "response.incomplete", "response.failed")
    ]
    assert finals == [evs[-1]["type"]]
    deltas_add_up(evs)


# ---- reasoning round trip, errors ------------------------------------------------------------------


def test_reasoning_round_trip() -> None:
    """What a stream hands out as reasoning items restores the exact Claude blocks next turn."""
    seen = 0
    for path in STREAMS:
        data = path.read_bytes()
        blocks = [
            b for b in assemble_anthropic(data)["content"] if b["type"] in ("thinking", "redacted_thinking")
        ]
        if not blocks:
            continue
        seen += 1
        output = events(translate(data))[-1]["response"]["output"]
        restored = [
            b
            for item in output
            if item["type"] == "reasoning"
            for b in openai_responses.restore_reasoning(item)
        ]
        want = [
            {k: b[k] for k in (("thinking", "signature") if b["type"] == "thinking" else ("data",))}
            | {"type": b["type"]}
            for b in blocks
        ]
        assert restored == want, path.name
    assert seen >= 2


def test_foreign_or_altered_reasoning_is_dropped() -> None:
    block = {"type": "thinking", "thinking": "x", "signature": "c2ln"}
    enc = openai_responses.encode_reasoning(block)
    assert openai_responses.restore_reasoning({"encrypted_content": enc}) == [block]
    assert openai_responses.restore_reasoning({"encrypted_content": "gAAAAABo-openai"}) == []
    assert openai_responses.restore_reasoning({"encrypted_content": enc[:-4] + "!!!!"}) == []
    bad = openai_responses.REASONING_PREFIX + base64.b64encode(b'{"type":"thinking","thinking":"x"}').decode()
    assert openai_responses.restore_reasoning({"encrypted_content": bad}) == []


MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
)


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("overloaded_error", "server_error"),
        ("rate_limit_error", "rate_limit_exceeded"),
        ("api_error", "server_error"),
    ],
)
def test_error_event_is_response_failed(error_type: str, code: str) -> None:
    event = json.dumps({"type": "error", "error": {"type": error_type, "message": "boom"}}).encode()
    evs = events(translate(MESSAGE_START + b"event: error\ndata: " + event + b"\n\n"))
    check_schema(evs[-1])
    assert evs[-1]["type"] == "response.failed"
    assert evs[-1]["response"]["error"] == {"code": code, "message": "boom"}


def test_cut_stream_fails_and_bills_the_estimate() -> None:
    text = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        + b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"abcdefgh"}}\n\n' * 5
    )
    t = _native.ResponsesTranslator(RESPONSE_ID, REQUEST.head_json())
    out = t.feed(MESSAGE_START + text + b'event: content_block_delta\ndata: {"ty')
    end = t.finish()
    evs = events(out + end)
    assert evs[-1]["type"] == "response.failed" and evs[-1]["response"]["error"]["code"] == "server_error"
    assert t.finish() == b""
    assert t.state().truncated and not t.state().saw_message_stop and t.done
    inp, output, *_rest, exact = usage_tuple(t.usage())
    assert inp == 3 and output >= 10 and not exact


def test_usage_accessors_match_stream_tap() -> None:
    meters_like_stream_tap(lambda: _native.ResponsesTranslator(RESPONSE_ID, REQUEST.head_json()))
