"""The cache-affinity key of a Messages request.

Anthropic's prompt cache is per account (per credential here) and keyed by the exact
prefix in the order tools → system → messages, up to a ``cache_control`` breakpoint.
Requests sharing that prefix should reach the same credential.

The key hashes the prefix up to the last breakpoint, *cut at the end of the first
message*. Without the cut, every turn of a conversation (whose last breakpoint moves
forward each turn, as Claude Code's does) would hash differently and hop between
credentials, finding a cold cache each time. With it, a conversation keeps one key for
its whole life (tools + system + its first message), different conversations spread
across credentials, and requests that cache only tools/system share the credential
that holds that cache. The model is part of the key: caches are per model.

Cheap: nothing is hashed unless ``cache_control`` appears in the body, and only the
prefix parts are serialised.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def _has_cc(block: Any) -> bool:
    return isinstance(block, dict) and "cache_control" in block and block["cache_control"] is not None


def _blocks(content: Any) -> list[Any]:
    """Content as blocks: a string is one text block (the API caches it as such)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _strip(blocks: Any) -> Any:
    """Blocks without their ``cache_control`` markers: a breakpoint that moves does not change
    the cached content, so it must not change the key."""
    if not isinstance(blocks, list):
        return blocks
    return [{k: v for k, v in b.items() if k != "cache_control"} if _has_cc(b) else b for b in blocks]


def cache_affinity(data: dict[str, Any], model: str | None, body: bytes | None = None) -> bytes | None:
    """16-byte key of the request's cache prefix, or None when it asks for no caching."""
    if body is not None and body.find(b'"cache_control"') < 0:  # find: ``in`` raises a TypeError inside
        return None
    tools = data.get("tools")
    tools = tools if isinstance(tools, list) else []
    system = data.get("system")
    messages = data.get("messages")
    messages = messages if isinstance(messages, list) else []
    top_level = data.get("cache_control") is not None

    # where is the last breakpoint? (section, index) in tools → system → messages order
    last: tuple[int, int] | None = None
    for i, tool in enumerate(tools):
        if _has_cc(tool):
            last = (0, i)
    system_blocks = _blocks(system)
    for i, block in enumerate(system_blocks):
        if _has_cc(block):
            last = (1, i)
    first_message_cached = False
    for m, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if _has_cc(message) or any(_has_cc(b) for b in _blocks(message.get("content"))):
            last = (2, m)
            if m == 0:
                first_message_cached = True
    if top_level and messages:
        last = (2, len(messages) - 1)  # automatic caching: the breakpoint is the last block
    if last is None:
        return None

    section, index = last
    parts: list[Any] = [model]
    if section == 0:
        parts.append(_strip(tools[: index + 1]))
    else:
        parts.append(_strip(tools))
        if section == 1:
            parts.append(_strip(system_blocks[: index + 1]))
        else:
            parts.append(_strip(system_blocks))
            first = messages[0] if messages else None
            if isinstance(first, dict):
                blocks = _blocks(first.get("content"))
                if index == 0 and first_message_cached:
                    # the breakpoint is inside the first message: hash up to that block
                    cut = max((i for i, b in enumerate(blocks) if _has_cc(b)), default=len(blocks) - 1)
                    blocks = blocks[: cut + 1]
                parts.append([first.get("role"), _strip(blocks)])
    try:
        raw = orjson.dumps(parts)
    except TypeError:
        return None
    return hashlib.blake2b(raw, digest_size=16).digest()
