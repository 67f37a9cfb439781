"""Which upstream account produced a replayed thinking block.

On models whose thinking is bound to an account (``thinking_binding = "account"`` in
models.toml: Sonnet 5.5, Haiku 5.5), a thinking block sent back on a later turn is accepted only
by the account that produced it (or a linked one). A conversation must therefore stay on a
credential of that account, whatever the pool's affinity or failover would choose.

A credential's account is learnt from the ``anthropic-organization-id`` header of its answers
(``Credential.account``). A block's account is learnt here, by the digest of its signature (or a
redacted block's data): from a whole reply's thinking blocks when the gateway reads the reply, and
from the blocks a request replays once a credential of some account accepted it (a block the
upstream accepted is valid there). Streamed replies are relayed by the native translators without
Python seeing their blocks: such a block is learnt on the first later turn that replays it.

Bounded (``MAX_BLOCKS``, oldest forgotten first): a forgotten block is treated as unknown, which
leaves the choice to the pool as for any request.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

MAX_BLOCKS = 65_536


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=16, person=b"eth-thinking").digest()


def replayed_tokens(messages: Iterable[Any]) -> list[str]:
    """The signatures (and redacted data) of the thinking blocks a Claude body replays."""
    out = []
    for msg in messages:
        if (
            not isinstance(msg, dict)
            or msg.get("role") != "assistant"
            or not isinstance(msg.get("content"), list)
        ):
            continue
        for block in msg["content"]:
            if isinstance(block, dict):
                if block.get("type") == "thinking" and isinstance(block.get("signature"), str):
                    out.append(block["signature"])
                elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
                    out.append(block["data"])
    return out


class ThinkingAccounts:
    """Signature digest → the account that holds it (bounded, least recently used forgotten)."""

    def __init__(self, limit: int = MAX_BLOCKS) -> None:
        self.limit = limit
        self._blocks: OrderedDict[bytes, str] = OrderedDict()

    def record(self, tokens: Iterable[str], account: str | None) -> None:
        if not account:
            return
        for token in tokens:
            key = _digest(token)
            self._blocks[key] = account
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.limit:
            self._blocks.popitem(last=False)

    def account_of(self, tokens: Iterable[str]) -> str | None:
        """The account of the newest replayed block that is known (the last turns decide)."""
        for token in reversed(list(tokens)):
            found = self._blocks.get(_digest(token))
            if found is not None:
                return found
        return None

    def __len__(self) -> int:
        return len(self._blocks)
