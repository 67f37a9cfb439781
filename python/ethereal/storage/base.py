"""The storage interface every backend implements.

PostgreSQL is the source of truth in production; the SQLite file is the
embedded default. Both run the same contract tests.
"""

from __future__ import annotations

import abc
from importlib import resources
from typing import Any

from ethereal.keys import KeyRecord
from ethereal.storage.records import UsageRecord
from ethereal.storage.records import StoredCredential

KEY_MUTABLE_FIELDS = frozenset({
    "name", "owner", "plan", "budget_tokens", "budget_micro_usd", "rpm", "tpm", "max_concurrency",
    "allowed_models", "expires_at", "revoked", "metadata",
})


def migration_files(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) for every numbered migration of a dialect, in order."""
    folder = resources.files("ethereal.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class Store(abc.ABC):
    """Async storage of keys, usage records and upstream credentials."""

    dialect: str

    @abc.abstractmethod
    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise when the database cannot be reached."""

    # keys
    @abc.abstractmethod
    async def insert_keys(self, records: list[KeyRecord]) -> None:
        """Insert all records in one transaction (all or nothing)."""

    @abc.abstractmethod
    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def list_keys(
        self,
        *,
        owner: str | None = None,
        plan: str | None = None,
        state: str | None = None,  # "active" | "revoked" | "expired"
        limit: int = 100,
        after_id: str | None = None,
    ) -> list[KeyRecord]: ...

    @abc.abstractmethod
    async def update_key(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def delete_key(self, key_id: str) -> bool: ...

    # usage
    @abc.abstractmethod
    async def insert_usage(self, records: list[UsageRecord]) -> int:
        """Insert records, ignoring request_ids already stored; returns rows inserted."""

    @abc.abstractmethod
    async def get_usage(self, request_id: str) -> UsageRecord | None: ...

    @abc.abstractmethod
    async def usage_totals(
        self, *, group_by: str, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost summed per ``group_by`` (key_id, model or credential)."""

    @abc.abstractmethod
    async def spend_by_key(self, key_ids: list[str]) -> dict[str, dict[str, int]]:
        """Tokens and micro-USD spent so far per key."""

    # upstream credentials (the API key arrives and leaves encrypted)
    @abc.abstractmethod
    async def upsert_credential(self, credential: StoredCredential) -> None: ...

    @abc.abstractmethod
    async def get_credential(self, name: str) -> StoredCredential | None: ...

    @abc.abstractmethod
    async def list_credentials(self) -> list[StoredCredential]: ...

    @abc.abstractmethod
    async def delete_credential(self, name: str) -> bool: ...
