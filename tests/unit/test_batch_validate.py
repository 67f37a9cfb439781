"""Checking a batch at create (batches/validate.py): item errors name their index, limits, the splice."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from ethereal.batches.ids import batch_id, item_request_id
from ethereal.batches.validate import check_batch, splice_models
from ethereal.errors import GatewayError
from ethereal.models import load_registry

CATALOG = load_registry(None)


def resolve(name: str) -> tuple[str, Any]:
    model = CATALOG.resolve(name)
    if name == "claude-opus-4-6":
        raise GatewayError(403, f"this API key may not use model {name!r}")
    return (model.id if model else name), model


def item(cid: str, **params: Any) -> dict[str, Any]:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    body.update(params)
    return {"custom_id": cid, "params": body}


def check(requests: Any, **kw: Any) -> Any:
    return check_batch(
        orjson.dumps({"requests": requests}), resolve=resolve, max_requests=kw.get("max_requests", 100)
    )


@pytest.mark.parametrize(
    ("bad", "status", "needle"),
    [
        (
            {"custom_id": "x", "params": {"model": "claude-sonnet-4-6", "messages": []}},
            400,
            "max_tokens: Field required",
        ),
        (item("x", max_tokens=0), 400, "max_tokens"),
        (item("x", model=""), 400, "model"),
        (item("x", model=7), 400, "model"),
        (item("x", messages="hi"), 400, "messages"),
        (item("x", stream=True), 400, "stream"),
        (item("x", max_tokens=10**6), 400, "maximum allowed number of output tokens"),
        (item("x", model="claude-opus-4-6"), 403, "may not use model"),
        (item("has space"), 400, "custom_id"),
        (item("x" * 65), 400, "custom_id"),
        (item(""), 400, "custom_id"),
        (item("ok-0"), 400, "unique"),  # a duplicate of the first item
        ({"custom_id": "x", "params": item("y")["params"], "extra": 1}, 400, "extra"),
        ("not an object", 400, "requests.1"),
    ],
)
def test_a_bad_item_names_its_index(bad: Any, status: int, needle: str) -> None:
    with pytest.raises(GatewayError) as refused:
        check([item("ok-0"), bad, item("ok-2")])
    assert refused.value.status == status
    assert refused.value.message.startswith("requests.1") and needle.lower() in refused.value.message.lower()
    assert refused.value.param == "requests.1"


def test_batch_limits() -> None:
    for body, needle in (
        ({"requests": []}, "at least one"),
        ({}, "Field required"),
        ({"requests": {}}, "array"),
        ({"requests": [item("a")], "x": 1}, "x: Extra"),
    ):
        with pytest.raises(GatewayError, match=needle):
            check_batch(orjson.dumps(body), resolve=resolve, max_requests=100)
    with pytest.raises(GatewayError, match="at most 3 requests"):
        check([item(f"i{i}") for i in range(4)], max_requests=3)


def test_estimate_is_input_plus_allowance_at_half_price() -> None:
    checked = check([item("a", max_tokens=1000), item("b", model="haiku-4", max_tokens=20000)])
    assert checked.count == 2 and checked.models == {"claude-sonnet-4-6", "claude-haiku-4-5-20251001"}
    assert checked.aliases == {"haiku-4": "claude-haiku-4-5-20251001"}
    # allowances 1000 and 8192 (the cap); output at half of 15 and 5 USD/MTok at least
    assert checked.estimated_tokens > 9192
    assert checked.estimated_micro >= (1000 * 15 + 8192 * 5) // 2


def test_splice_keeps_every_other_byte() -> None:
    raw = (
        b'{ "requests" : [ {"custom_id":"a", "params": {"model" : "sonnet-4","max_tokens":5,'
        b'"messages":[{"role":"user","content":"say \\"model\\": \\"sonnet-4\\""}],'
        b'"metadata":{"user_id":"u"}}},\n {"custom_id":"b","params":{"max_tokens":5,"model":"claude-haiku-4-5",'
        b'"messages":[{"role":"user","content":"x"}], "temperature": 1.0}} ] }'
    )
    checked = check_batch(raw, resolve=resolve, max_requests=10)
    out = splice_models(raw, checked)
    assert out == raw.replace(b'"model" : "sonnet-4"', b'"model" : "claude-sonnet-4-6"').replace(
        b'"model":"claude-haiku-4-5"', b'"model":"claude-haiku-4-5-20251001"'
    )
    plain = orjson.dumps({"requests": [item("a")]})
    assert splice_models(plain, check_batch(plain, resolve=resolve, max_requests=10)) is plain


def test_splice_touches_only_the_items_model() -> None:
    # a tool schema whose default is the alias, and a text that looks like the key: only the
    # item's own model changes
    raw = orjson.dumps(
        {
            "requests": [
                {
                    "custom_id": "a",
                    "params": {
                        "tools": [
                            {
                                "name": "t",
                                "input_schema": {"type": "object", "properties": {}, "model": "sonnet-4"},
                            }
                        ],
                        "messages": [{"role": "user", "content": '"model": "sonnet-4"'}],
                        "max_tokens": 5,
                        "model": "sonnet-4",
                    },
                }
            ]
        }
    )
    out = orjson.loads(splice_models(raw, check_batch(raw, resolve=resolve, max_requests=10)))
    params = out["requests"][0]["params"]
    assert (
        params["model"] == "claude-sonnet-4-6" and params["tools"][0]["input_schema"]["model"] == "sonnet-4"
    )
    assert params["messages"][0]["content"] == '"model": "sonnet-4"'


ITEM = b'{"custom_id":"a","params":{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"x"}]}}'


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (
            (
                b'{"custom_id":"b","custom_id":"c","params":{"model":"claude-sonnet-4-6","max_tokens":5,'
                b'"messages":[{"role":"user","content":"x"}]}}'
            ),
            "repeats the key 'custom_id'",
        ),
        (
            (
                b'{"custom_id":"b","params":{"model":"claude-sonnet-4-6","max_tokens":5,"model":"claude-opus-4-6",'
                b'"messages":[{"role":"user","content":"x"}]}}'
            ),
            "params: repeats the key 'model'",
        ),
        (
            (
                b'{"custom_id":"b","params":{"model":"claude-sonnet-4-6","max_tokens":5,"max_tokens":64000,'
                b'"messages":[{"role":"user","content":"x"}]}}'
            ),
            "params: repeats the key 'max_tokens'",
        ),
        (
            (
                b'{"custom_id":"b","params":{"model":"claude-sonnet-4-6","max_tokens":5,'
                b'"messages":[{"role":"user","content":"x"}]},"params":{}}'
            ),
            "repeats the key 'params'",
        ),
    ],
)
def test_an_item_or_its_params_repeating_a_key_is_refused(bad: bytes, needle: str) -> None:
    """The gateway and the upstream could read different values of a repeated key: 400 naming the item."""
    with pytest.raises(GatewayError) as refused:
        check_batch(b'{"requests":[' + ITEM + b"," + bad + b"]}", resolve=resolve, max_requests=10)
    assert refused.value.status == 400 and refused.value.param == "requests.1"
    assert refused.value.message.startswith("requests.1") and needle in refused.value.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"requests":[' + ITEM + b",]}",
        b'{"requests":[' + ITEM + b" " + ITEM + b"]}",
        b'{"requests":[' + ITEM + b",," + ITEM + b"]}",
        b'{"requests":[' + ITEM + b"] x}",
        b'{"requests":[' + ITEM[:-1] + b"]}",
        b'{"requests":[1 2]}',
        b'{"requests":[' + ITEM + b"],}",
        b'{"requests":[' + ITEM + b'],"requests":[' + ITEM + b"]}",
        b'{"requests":[' + ITEM + b"]",
        b'{"requests":[' + ITEM.replace(b'"x"', rb'"\q"') + b"]}",
    ],
)
def test_bytes_that_are_not_json_are_refused(body: bytes) -> None:
    with pytest.raises(GatewayError) as refused:
        check_batch(body, resolve=resolve, max_requests=10)
    assert refused.value.status == 400


def test_items_are_read_one_by_one_whatever_their_size_and_spacing() -> None:
    """Items of very different sizes, non-ASCII text, spacing anywhere JSON allows it: read the same
    as one parse of the whole body reads them."""
    requests = [
        item(f"i{i}", messages=[{"role": "user", "content": ("é😀 " if i % 3 else "a") * (i * 997 % 40000)}])
        for i in range(60)
    ]
    compact = orjson.dumps({"requests": requests})
    spaced = orjson.dumps({"requests": requests}, option=orjson.OPT_INDENT_2)
    for body in (compact, spaced, b' \n{ "requests" :\t[ ' + compact[13:-2] + b" ] } \n"):
        checked = check_batch(body, resolve=resolve, max_requests=100)
        assert checked.count == 60
    assert (
        check_batch(compact, resolve=resolve, max_requests=100).estimated_tokens == checked.estimated_tokens
    )
    with pytest.raises(GatewayError) as big:
        check_batch(compact, resolve=resolve, max_requests=100, max_item_bytes=50_000)
    first = next(i for i, r in enumerate(requests) if len(orjson.dumps(r)) > 50_000)
    assert big.value.status == 413 and big.value.message.startswith(f"requests.{first}:")
    with pytest.raises(GatewayError, match="at most 59 requests"):
        check_batch(compact, resolve=resolve, max_requests=59)


def test_ids_sort_by_time_and_item_ids_are_derived() -> None:
    import time

    first = batch_id()
    time.sleep(0.002)
    second = batch_id()
    assert first < second and len(first) == len(second) == 33
    assert item_request_id(first, "abc") == f"req_{first[9:]}_abc" == item_request_id(first, "abc")
    assert len(item_request_id(first, "x" * 64)) <= 96
