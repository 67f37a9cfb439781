"""No client can write a line of its own into the text access log (control characters escaped)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import Gateway
from tests.procs import gateway_process

FORGED = "request_id=req_forged method=GET path=/admin status=200"


def raw_get(base: str, target: str) -> int:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096)
    return int(head.split(b" ", 2)[1])


def test_percent_encoded_control_characters_cannot_forge_a_line(tmp_path: Path) -> None:
    encoded = FORGED.replace(" ", "%20")
    targets = [f"/healthz%0a{encoded}", f"/v1/nothing%0d%0a{encoded}", f"/v1/x%00{encoded}%0b%1b%7f"]
    with gateway_process(tmp_path, None, env={"ETHEREAL_LOG_FORMAT": "text"}) as base:
        for target in targets:
            assert raw_get(base, target) in (200, 404)
        log = next(tmp_path.glob("gateway-*.log"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # request lines are written in batches, off the request path
            text = log.read_text(errors="replace")
            if (
                text.count("x0arequest_id=req_forged") >= 1
                and "x00request_id" in text
                and "x0d\\x0arequest_id" in text
            ):
                break
            time.sleep(0.1)
    lines = text.splitlines()
    # every request line starts as the gateway writes it; no line starts with (or contains) the forged text raw
    assert not any(line.startswith("request_id=req_forged") for line in lines)
    assert not any(FORGED in line for line in lines)
    access = [line for line in lines if "request_id=req_forged" in line]
    assert len(access) == 3, access
    assert "\\x0arequest_id=req_forged\\x20method=GET" in access[0]
    assert "\\x0d\\x0arequest_id=req_forged" in access[1]
    assert "\\x00request_id=req_forged" in access[2] and "\\x0b\\x1b\\x7f" in access[2]
    assert "\x00" not in text and "\r" not in text


def test_a_model_name_with_control_characters_is_refused_before_anything_else(gateway: Gateway) -> None:
    """A model name reaches the log, metrics and the store: one with a control character (NUL:
    PostgreSQL refuses it in text) is a 400 naming the field, never a 500."""
    import httpx

    for bad in ("claude-x\x00", "claude\nsonnet", "claude\u2028x"):
        r = httpx.post(
            gateway.url + "/v1/messages",
            headers={"x-api-key": gateway.key},
            json={"model": bad, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (bad, r.text)
        assert "model" in r.json()["error"]["message"]
