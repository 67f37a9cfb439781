"""What operators see of an error: clipped, control characters escaped, never more than the message."""

from __future__ import annotations

import dataclasses
import json

from ethereal.observability.http import error_message_in, fields_of, text_of
from ethereal.storage.records import ERROR_MESSAGE_MAX, UsageRecord, error_message_of


def test_clipped_and_escaped() -> None:
    assert error_message_of("max_tokens: Field required") == "max_tokens: Field required"
    assert error_message_of("a\nforged=line\r\x1b[31m\x00\u2028") == "a\\nforged=line\\r\\x1b[31m\\x00\\u2028"
    long = error_message_of("x" * 10_000)
    assert long is not None and len(long) == ERROR_MESSAGE_MAX and long.endswith("…")
    assert (
        error_message_of("é" * ERROR_MESSAGE_MAX) == "é" * ERROR_MESSAGE_MAX
    )  # exactly the limit: kept whole
    escaped = error_message_of("\n" * 150)  # escaping lengthens: still within the limit
    assert escaped is not None and len(escaped) == ERROR_MESSAGE_MAX
    assert (
        error_message_of("") is None and error_message_of(None) is None and error_message_of({"a": 1}) is None
    )


def test_only_the_message_of_an_error_body() -> None:
    openai = b'{"error":{"message":"bad\\nthing","type":"invalid_request_error","param":null,"code":null}}'
    anthropic = (
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"r"}'
    )
    assert error_message_in(openai) == "bad\\nthing"
    assert error_message_in(anthropic) == "Overloaded"
    assert error_message_in(b"<html>502</html>") is None and error_message_in(b'{"ok":true}') is None


def test_log_line_carries_it() -> None:
    rec = UsageRecord(
        request_id="req_1",
        key_id="key_a",
        credential=None,
        route="messages",
        model=None,
        status=400,
        stream=False,
        error_type="invalid_request_error",
        error_message='say "hi" \\n twice',
    )
    line = text_of("POST", "/v1/messages", 400, 1.0, "req_1", rec)
    assert line.endswith(' error_message="say \\"hi\\" \\\\n twice"') and "\n" not in line
    assert fields_of("POST", "/v1/messages", 400, 1.0, "req_1", rec)["error_message"] == rec.error_message
    # no record (a refusal before the key is known): the message the edge read from the answer
    bare = text_of("GET", "/v1/models", 401, 1.0, "req_2", None, "invalid x-api-key")
    assert bare.endswith(' error_message="invalid x-api-key"')
    assert (
        json.loads(json.dumps(fields_of("GET", "/", 426, 1.0, None, None, "use HTTP")))["error_message"]
        == "use HTTP"
    )
    assert "error_message" not in fields_of("GET", "/", 200, 1.0, None, None)


def test_each_client_value_is_escaped_alone_and_plain_ones_are_written_as_they_are() -> None:
    """One value that needs escaping (in any field) is escaped; the plain values beside it are not
    touched, whichever field carries it."""
    plain = UsageRecord("req_3", "key_a", "default", "messages", "claude-sonnet-4-6", 200, False)
    line = text_of("POST", "/v1/messages", 200, 1.0, "req_3", plain)
    assert "method=POST path=/v1/messages " in line
    assert " model=claude-sonnet-4-6 credential=default " in line
    for field in ("model", "credential", "error_type"):
        rec = dataclasses.replace(plain, **{field: "a b\\c\nd\u2028"})
        line = text_of("POST", "/v1/messages", 200, 1.0, "req_3", rec)
        assert f" {field}=a\\x20b\\x5cc\\x0ad\\u2028" in line, line
        assert "method=POST path=/v1/messages " in line and "\n" not in line
        others = {"model": "claude-sonnet-4-6", "credential": "default"}
        for other, value in others.items():
            if other != field:
                assert f" {other}={value}" in line
    forged = text_of("GET", "/healthz\nPOST /v1/messages", 404, 1.0, None, None)
    assert forged.startswith("method=GET path=/healthz\\x0aPOST\\x20/v1/messages ") and "\n" not in forged
