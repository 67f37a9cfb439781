"""Minted API keys: generation, hashing and the record the gateway keeps.

Only the sha256 of a key is ever stored; the plaintext is shown once at mint
time. The display form keeps the prefix and the last four characters.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key(prefix: str) -> str:
    # 86 url-safe characters (~512 bits) then "AA", the shape of Anthropic's keys.
    body = "".join(secrets.choice(_ALPHABET) for _ in range(93))
    return f"{prefix}{body}AA"


def new_key_id() -> str:
    return "key_" + uuid.uuid4().hex[:24]


@dataclass(slots=True)
class KeyRecord:
    id: str
    key_hash: str
    display: str  # prefix + "..." + last 4
    name: str = ""
    owner: str = ""  # the person who spends (the user id of spend limits, spend/)
    teams: list[str] = field(default_factory=list)  # the groups the owner spends for (rbac_group ids)
    plan: str | None = None
    budget_tokens: int | None = None
    budget_micro_usd: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    allowed_models: list[str] | None = None  # canonical ids or families; None = all
    expires_at: float | None = None  # unix seconds
    revoked: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("key_hash")
        return data


def mint(prefix: str, **attrs: Any) -> tuple[str, KeyRecord]:
    """A fresh key: its plaintext (show once) and the record to store."""
    plaintext = generate_key(prefix)
    record = KeyRecord(
        id=new_key_id(),
        key_hash=hash_key(plaintext),
        display=f"{prefix}...{plaintext[-4:]}",
        **attrs,
    )
    return plaintext, record


def teams_label(teams: list[str] | None) -> str | None:
    """A key's teams as a usage record keeps them: sorted, joined by "," (None for none)."""
    if not teams:
        return None
    return teams[0] if len(teams) == 1 else ",".join(sorted(teams))
