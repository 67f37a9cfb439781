"""Request ids in Anthropic's style: ``req_`` + 24 base62 characters.

The last 4 characters tag the id with the key that made the request (a hash of the
key's hash and the 20 random characters), so ``GET /v1/usage/{id}`` can tell at once
that an id was not issued to the asking key, without waiting for a record that
another worker may not have flushed yet. The tag reveals nothing about the key.
"""

from __future__ import annotations

import hashlib
import os

_B62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BYTE_TO_B62 = bytes(_B62[b % 62] for b in range(256))  # one table lookup per byte
_RANDOM = 20
_TAG = 4


def _base62(raw: bytes) -> str:
    return raw.translate(_BYTE_TO_B62).decode()


def _tag(random_part: str, key_hash: str) -> str:
    return _base62(hashlib.sha256(f"{key_hash}:{random_part}".encode()).digest()[:_TAG])


class _RandomBytes:
    """``os.urandom`` read 4 KiB at a time: one system call per ~200 ids instead of one per id.

    The same kernel randomness, handed out once each; a forked child starts with an empty
    buffer, so no two processes ever hand out the same bytes."""

    SIZE = 4096

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def reset(self) -> None:
        self.buf, self.pos = b"", 0

    def take(self, n: int) -> bytes:
        pos = self.pos
        if pos + n > len(self.buf):
            self.buf, pos = os.urandom(self.SIZE), 0
        self.pos = pos + n
        return self.buf[pos : pos + n]


_random = _RandomBytes()
os.register_at_fork(after_in_child=_random.reset)


def request_id(key_hash: str | None = None) -> str:
    """A fresh id; ``key_hash`` (sha256 hex of the client's key) tags it for ``issued_to``."""
    random_part = _base62(_random.take(_RANDOM))
    return f"req_{random_part}{_tag(random_part, key_hash or '')}"


def issued_to(request_id: str, key_hash: str) -> bool:
    """Whether ``request_id`` was issued for the key with this hash (false positives: 1 in 62**4)."""
    if not request_id.startswith("req_") or len(request_id) != 4 + _RANDOM + _TAG:
        return False
    random_part = request_id[4 : 4 + _RANDOM]
    return request_id[4 + _RANDOM :] == _tag(random_part, key_hash)


def response_id(request_id: str) -> str:
    """The id of the Responses API response a request answers (``resp_`` + the request id's
    random part): the id its stream announces and, at shutdown, the one its closing frame names."""
    return "resp_" + request_id.removeprefix("req_")


def message_id() -> str:
    return "msg_" + _base62(os.urandom(24))
