"""Request ids in Anthropic's style: ``req_`` + 24 base62 characters."""

from __future__ import annotations

import os

_B62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(raw: bytes) -> str:
    return bytes(_B62[b % 62] for b in raw).decode()


def request_id() -> str:
    return "req_" + _base62(os.urandom(24))


def message_id() -> str:
    return "msg_" + _base62(os.urandom(24))
