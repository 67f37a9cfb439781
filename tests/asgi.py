"""The app driven in-process as an ASGI server drives it: one request's scope, its body, the reply."""

from __future__ import annotations

import asyncio
from typing import Any


def http_scope(
    path: str, key: str, body: bytes, *, method: str = "POST", bearer: bool = False
) -> dict[str, Any]:
    """An HTTP request's scope: ``key`` as ``x-api-key`` (with ``anthropic-version``), or with
    ``bearer`` as ``Authorization: Bearer`` (an OpenAI client's)."""
    auth = (
        [(b"authorization", f"Bearer {key}".encode())]
        if bearer
        else [(b"x-api-key", key.encode()), (b"anthropic-version", b"2023-06-01")]
    )
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            *auth,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }


def receive_body(body: bytes, *, client_stays: bool = False) -> Any:
    """The request body, then ``http.disconnect`` (the client is gone) or, with ``client_stays``,
    nothing more (as a server's receive blocks while the client stays connected)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if client_stays:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


async def call(
    app: Any,
    path: str,
    key: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    bearer: bool = False,
    client_stays: bool = False,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through ``app``: its status, headers and whole body."""
    out: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(
        http_scope(path, key, body, method=method, bearer=bearer),
        receive_body(body, client_stays=client_stays),
        send,
    )
    return out[0]["status"], dict(out[0].get("headers") or []), b"".join(m.get("body", b"") for m in out[1:])
