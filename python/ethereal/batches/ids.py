"""Ids of batches and of their items' usage records."""

from __future__ import annotations

import os
import time

_B62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # in ASCII order


def _base62(value: int, width: int) -> str:
    out = bytearray()
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(_B62[digit])
    return out[::-1].decode()


def batch_id() -> str:
    """``msgbatch_`` + 24 base62 characters whose first 8 are the creation time in milliseconds,
    so ids sort by creation time (the newest-first listing and its cursors need no other column)."""
    return (
        "msgbatch_" + _base62(int(time.time() * 1000), 8) + _base62(int.from_bytes(os.urandom(12), "big"), 16)
    )


def item_request_id(batch: str, custom_id: str) -> str:
    """The usage record id of one item: ``req_`` + the batch id's 24 characters + ``_`` + custom_id.

    Derived, not random: replaying a batch's results writes the same ids, which the stores
    ignore (ON CONFLICT DO NOTHING), so an item is never billed twice."""
    return f"req_{batch.removeprefix('msgbatch_')}_{custom_id}"
