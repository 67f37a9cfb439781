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
    return check_batch({"requests": requests}, resolve=resolve, max_requests=kw.get("max_requests", 100))


@pytest.mark.parametrize(("bad", "status", "needle"), [
    ({"custom_id": "x", "params": {"model": "claude-sonnet-4-6", "messages": []}}, 400, "max_tokens: Field required"),
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
])
def test_a_bad_item_names_its_index(bad: Any, status: int, needle: str) -> None:
    with pytest.raises(GatewayError) as refused:
        check([item("ok-0"), bad, item("ok-2")])
    assert refused.value.status == status
    assert refused.value.message.startswith("requests.1") and needle.lower() in refused.value.message.lower()
    assert refused.value.param == "requests.1"


def test_batch_limits() -> None:
    for body, needle in (({"requests": []}, "at least one"), ({}, "Field required"), ({"requests": {}}, "array"),
                         ({"requests": [item("a")], "x": 1}, "x: Extra")):
        with pytest.raises(GatewayError, match=needle):
            check_batch(body, resolve=resolve, max_requests=100)
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
    raw = (b'{ "requests" : [ {"custom_id":"a", "params": {"model" : "sonnet-4","max_tokens":5,'
           b'"messages":[{"role":"user","content":"say \\"model\\": \\"sonnet-4\\""}],'
           b'"metadata":{"user_id":"u"}}},\n {"custom_id":"b","params":{"max_tokens":5,"model":"claude-haiku-4-5",'
           b'"messages":[{"role":"user","content":"x"}], "temperature": 1.0}} ] }')
    data = orjson.loads(raw)
    out = splice_models(raw, data, {"sonnet-4": "claude-sonnet-4-6", "claude-haiku-4-5": "claude-haiku-4-5-20251001"})
    assert out == raw.replace(b'"model" : "sonnet-4"', b'"model" : "claude-sonnet-4-6"').replace(
        b'"model":"claude-haiku-4-5"', b'"model":"claude-haiku-4-5-20251001"')
    assert splice_models(raw, data, {}) is raw


def test_splice_falls_back_when_a_nested_key_looks_the_same() -> None:
    # a tool schema whose default is the alias: splicing the bytes would change it too, so the
    # body is re-serialised (same meaning, only the items' models changed)
    raw = orjson.dumps({"requests": [{"custom_id": "a", "params": {
        "model": "sonnet-4", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "t", "input_schema": {"type": "object", "properties": {}, "model": "sonnet-4"}}]}}]})
    out = orjson.loads(splice_models(raw, orjson.loads(raw), {"sonnet-4": "claude-sonnet-4-6"}))
    params = out["requests"][0]["params"]
    assert params["model"] == "claude-sonnet-4-6" and params["tools"][0]["input_schema"]["model"] == "sonnet-4"


def test_ids_sort_by_time_and_item_ids_are_derived() -> None:
    import time

    first = batch_id()
    time.sleep(0.002)
    second = batch_id()
    assert first < second and len(first) == len(second) == 33
    assert item_request_id(first, "abc") == f"req_{first[9:]}_abc" == item_request_id(first, "abc")
    assert len(item_request_id(first, "x" * 64)) <= 96
